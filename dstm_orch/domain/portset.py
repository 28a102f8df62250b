"""Port sets by PSID (RFC 7597 section 5.1): the ports option of draft-ietf-ngtrans-dstm-08.

The one implementation lives in the Ansible collection ``dstm.orch`` (its module_utils
``portset``), which the modules that check and enforce port sets on hosts import too;
this module re-exports it for the controller. See that module for the layout
``A | PSID | j``, :class:`PortSet` and the errors raised.
"""

from ansible_collections.dstm.orch.plugins.module_utils.portset import (
    DEFAULT_PSID_OFFSET,
    PORT_BITS,
    USABLE_PORTS,
    PortSet,
    check_layout,
    port_mask,
    psid_of,
    usable_psids,
)

__all__ = [
    "DEFAULT_PSID_OFFSET",
    "PORT_BITS",
    "USABLE_PORTS",
    "PortSet",
    "check_layout",
    "port_mask",
    "psid_of",
    "usable_psids",
]
