"""Option documentation shared by the dstm.orch modules that own a set of kernel entries."""


class ModuleDocFragment:
    """``dstm.orch.owned``: purge and the check and diff modes; ``.protocol``: the mark."""

    DOCUMENTATION = r"""
options:
  purge:
    description:
      - Delete the owned entries that are not wanted. With V(false) they are kept and
        reported as part of the state after the run.
    type: bool
    default: true
attributes:
  check_mode:
    description: Reports what would change, with the commands that would run.
    support: full
  diff_mode:
    description: Shows the owned entries before and after, one line each.
    support: full
"""

    PROTOCOL = r"""
options:
  protocol:
    description:
      - The protocol number that marks the entries this module owns (C(proto) of
        C(ip route), C(protocol) of C(ip rule)); entries with other numbers, the
        kernel's and other software's, are never touched. Numbers 0 to 4 belong to the
        kernel and are refused.
    type: int
    default: 211
"""
