"""The lab: a DSTM domain in network namespaces, reached over IPv6 SSH (README, "The lab").

Public API (the CLI's ``dstm-orch lab up|down|status|exec`` calls these):
:func:`lab_up`, :func:`lab_down`, :func:`lab_status`, :func:`lab_exec`,
:func:`namespace_of`, with :class:`LabStatus`/:class:`HostStatus` as results and
:func:`build_plan` for what would be built and :func:`network_batches` for the ``ip``
batches that build it.
"""

from __future__ import annotations

from dstm_orch.lab.lifecycle import (
    lab_down,
    lab_exec,
    lab_exec_argv,
    lab_status,
    lab_up,
    namespace_of,
    network_batches,
)
from dstm_orch.lab.plan import LabHost, LabPlan, Role, Route, Veth, build_plan
from dstm_orch.lab.status import HostStatus, LabStatus

__all__ = [
    "HostStatus",
    "LabHost",
    "LabPlan",
    "LabStatus",
    "Role",
    "Route",
    "Veth",
    "build_plan",
    "lab_down",
    "lab_exec",
    "lab_exec_argv",
    "lab_status",
    "lab_up",
    "namespace_of",
    "network_batches",
]
