#!/usr/bin/env python3
"""A dynamic inventory script (Ansible's script protocol: ``--list`` and ``--host``).

It stands for a CMDB or IPAM export: one TEP and two DSTM nodes, their variables in
``_meta.hostvars``. Used by tests/test_inventory_sources.py.
"""

import json
import sys

INVENTORY = {
    "dstm_teps": {"hosts": ["tep1"]},
    "dstm_nodes": {"hosts": ["n1", "n2"]},
    "_meta": {
        "hostvars": {
            "tep1": {"ansible_host": "2001:db8:100::a", "dstm_tep_driver": "ip6tnl"},
            "n1": {"ansible_host": "2001:db8:100::11"},
            "n2": {"ansible_host": "2001:db8:100::12",
                   "dstm_node_static_ipv4": "198.51.100.7"},
        },
    },
}

if __name__ == "__main__":
    if sys.argv[1:2] == ["--host"]:
        print(json.dumps(INVENTORY["_meta"]["hostvars"].get(sys.argv[2], {})))
    else:
        print(json.dumps(INVENTORY))
