"""Option documentation shared by the dstm.orch modules that build ip6tnl (4over6) tunnels."""


class ModuleDocFragment:
    """``dstm.orch.tunnel``: the MTU and hop limit of the tunnels a module builds
    (dstm.orch.mapping_table on a TEP, dstm.orch.node_lease on a node)."""

    DOCUMENTATION = r"""
options:
  tunnel_mtu:
    description:
      - The tunnels' MTU, bytes of IPv4 packet - by default a 1500-byte IPv6 path minus
        the 40-byte IPv6 header. Null leaves the kernel's value (the uplink's MTU minus
        40), not compared.
    type: int
    default: 1460
  tunnel_hop_limit:
    description: The hop limit of the tunnels' outer IPv6 header (RFC 2473 section 6.3).
    type: int
    default: 64
"""
