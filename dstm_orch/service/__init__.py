"""``dstm-orch serve``: the DSTM server of a domain (draft-ietf-ngtrans-dstm-08
sections 4.1, 5 and 6): admission, lease requests, renewals and releases over HTTP on
IPv6, and the pushes that follow them.
"""
