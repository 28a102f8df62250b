"""Value types of a DSTM domain: leases, pools, nodes, TEPs, port sets, errors, messages.

The bottom layer: it imports nothing else of dstm_orch and nothing of Ansible, NETCONF,
HTTP or the CLI.
"""
