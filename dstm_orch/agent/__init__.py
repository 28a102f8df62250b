"""The node side (draft-ietf-ngtrans-dstm-08 section 4.1, the DSTM client): the signed
request to the DSTM server and the node's own IPv4-over-IPv6 configuration.
"""
