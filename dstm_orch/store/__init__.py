"""The durable lease store: leases, their history and events, the allocation index and
the push journal, with every uniqueness invariant enforced by the database.

Modules: ``connection`` (the file, its transactions), ``identity`` (is an existing
file ours), ``migrations`` (the schema), ``leases`` (leases and their history),
``index`` (which addresses and port sets have room), ``journal`` (pushes to devices);
``postgres`` and ``pg_migrations`` the same store in PostgreSQL, ``select`` which one a
``--state`` value names (``open_store``), ``teplock`` the per-TEP push lock.
Imports only :mod:`dstm_orch.domain`.
"""

from dstm_orch.domain.model import WHOLE
from dstm_orch.store.connection import (
    LeaseStore,
    Transaction,
    TransientGroupError,
    TransientStoreError,
    retried,
)
from dstm_orch.store.identity import SCHEMA_VERSION
from dstm_orch.store.index import Slot
from dstm_orch.store.journal import PushRecord
from dstm_orch.store.leases import AddressTakenError, Event, Holding, Ipv6TakenError
from dstm_orch.store.select import is_postgres, open_store
from dstm_orch.store.teplock import TepBusyError

__all__ = [
    "SCHEMA_VERSION",
    "WHOLE",
    "AddressTakenError",
    "Event",
    "Holding",
    "Ipv6TakenError",
    "LeaseStore",
    "PushRecord",
    "Slot",
    "TepBusyError",
    "Transaction",
    "TransientGroupError",
    "TransientStoreError",
    "is_postgres",
    "open_store",
    "retried",
]
