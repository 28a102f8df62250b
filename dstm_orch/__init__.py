"""dstm-orch: the DSTM server of draft-ietf-ngtrans-dstm-08 as a configuration orchestrator."""

__version__ = "0.1.0"
