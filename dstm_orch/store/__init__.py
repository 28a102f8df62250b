"""The durable lease store: leases, their history and events, the allocation index and
the push journal, with every uniqueness invariant enforced by the database.

Imports only :mod:`dstm_orch.domain`.
"""

from dstm_orch.store.sqlite import (
    WHOLE,
    AddressTakenError,
    Event,
    Holding,
    Ipv6TakenError,
    LeaseStore,
    PushRecord,
    Slot,
    Transaction,
)

__all__ = [
    "WHOLE",
    "AddressTakenError",
    "Event",
    "Holding",
    "Ipv6TakenError",
    "LeaseStore",
    "PushRecord",
    "Slot",
    "Transaction",
]
