"""The ``dstm-orch`` command line: presentation only, one module per command group."""
