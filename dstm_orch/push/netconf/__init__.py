"""Router TEPs over NETCONF: the RFC 8676 ``ietf-softwire-br`` binding table (render,
parse, diff), YANG validation with libyang, and the push with a confirmed commit.
"""
