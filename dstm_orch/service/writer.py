"""Group commit for ``dstm-orch serve``: the lease changes of requests that arrive
together are written in one durable transaction (SQLite, or PostgreSQL).

One writer thread owns one store (an SQLite connection, or a PostgreSQL store whose
group holds one pooled connection). Requests queue their change (a function
of the store); the thread takes every change waiting, at most ``MAX_GROUP``, runs them
in one ``LeaseStore.group`` transaction, each in its own SAVEPOINT, commits once (one
WAL fsync, ``synchronous=FULL``) and only then hands each request its own outcome: its
lease, or its own refusal (a refused change is rolled back alone and the others are
written). While a group commits, the next one gathers in the queue, so the group size
follows the load and nothing waits for a timer; the changes that arrive while a group
waits for the store's write lock (another server or a CLI process holds it) join that
group once the lock is held. If the group itself fails (the commit,
or SQLite rolled the transaction back, or PostgreSQL's connection was lost), its
changes run again one transaction each, so a change that breaks the transaction fails
alone (after a PostgreSQL commit whose outcome is unknown too, as the nodes' retries
would: a change run again finds the node's lease, so no address is handed out twice). A
group PostgreSQL rolls back as transient (a serialization failure or a
deadlock, ``TransientGroupError``) runs again whole, every change against the state of
the new transaction, up to ``TRANSIENT_ATTEMPTS`` times, then one transaction each; no
change of a rolled-back run is answered (a change is a function of the store: running
it again recomputes it).

Draft-ietf-ngtrans-dstm-08 section 5 (the server guarantees the uniqueness of an
address for a period and memorizes the mapping): an answer leaves only once its lease
is on disk; the database's unique indexes and triggers judge every change as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from dstm_orch.domain.errors import StoreError
from dstm_orch.store import LeaseStore, TransientGroupError, is_postgres, open_store
from dstm_orch.store.connection import TRANSIENT_ATTEMPTS

log = logging.getLogger("dstm_orch.service")

MAX_GROUP = 64
"""The most changes one transaction holds (bounds a group's latency and its undo)."""

Change = Callable[[LeaseStore], Any]
"""A request's store work, run on the writer's thread inside the group transaction."""

_STOP = object()


class GroupWriter:
    """The writer thread (see the module docstring).

    Args:
        store_path: the lease store, an SQLite file or a ``postgresql://`` URL (the
            thread opens its own store).
        max_group: the most changes per transaction (1: one transaction per change).
        observe: called with each committed group's size (metrics), on the thread.
        retry: called each time a group is rolled back as transient and runs again.

    Raises:
        StoreError: the thread could not open the store (from :meth:`start`).
    """

    def __init__(self, store_path: str | Path, max_group: int = MAX_GROUP,
                 observe: Callable[[int], None] | None = None,
                 retry: Callable[[], None] | None = None):
        if max_group < 1:
            raise ValueError(f"max_group must be 1 or more, not {max_group}")
        self.store_path = store_path if is_postgres(store_path) else Path(store_path)
        self.max_group = max_group
        self._observe = observe
        self._retry = retry
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._error: BaseException | None = None
        self._count = threading.Lock()
        self.pending = 0
        """Changes in the writer's queue or group, not settled yet."""
        self.groups = 0
        """Transactions committed (or failed) so far."""
        self.retries = 0
        """Groups rolled back as transient and run again whole."""
        self._batches: dict[asyncio.AbstractEventLoop, list] = {}
        self._backlog: list = []  # taken from the queue, not yet in a group (writer thread)
        self._stopping = False

    def start(self) -> None:
        """Start the thread and wait until it has opened the store.

        Raises:
            StoreError: the store cannot be opened.
        """
        self._thread = threading.Thread(target=self._run, name="dstm-writer", daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Run the changes already queued, then stop the thread and close its store."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def submit(self, change: Change, settle: Callable[[Any, BaseException | None], None],
               loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Queue ``change``; ``settle(result, error)`` is called once it is durable (or
        refused), on the writer's thread, or on ``loop`` when given."""
        with self._count:
            self.pending += 1
        self._queue.put([(change, settle, loop)])

    def run_async(self, change: Change) -> asyncio.Future:
        """Queue ``change`` from a coroutine; the future gets its outcome once durable."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.cancelled():
                return
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        # The requests that reach here in one turn of the loop (the handlers of one
        # batch of readable sockets) go to the writer together, in one queue item: had
        # the writer woken on the first, it would commit that one alone and the others
        # in a second group, two fsyncs where one does.
        batch = self._batches.setdefault(loop, [])
        batch.append((change, settle, loop))
        if len(batch) == 1:
            loop.call_soon(self._flush, loop)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        # ``pending`` counts what the writer's queue holds: a batch counts once queued.
        batch = self._batches.pop(loop)
        with self._count:
            self.pending += len(batch)
        self._queue.put(batch)

    def run(self, change: Change) -> Any:
        """Queue ``change`` from a thread and wait for its outcome (raised if an error)."""
        future: Future = Future()

        def settle(result: Any, error: BaseException | None) -> None:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        self.submit(change, settle)
        return future.result()

    def _run(self) -> None:
        try:
            # One connection for the group, one spare (the pool replaces a lost one).
            store = open_store(self.store_path, pool_size=2)
        except BaseException as exc:
            self._error = exc
            self._opened.set()
            return
        self._opened.set()
        try:
            while self._backlog or not self._stopping:
                if not self._backlog:
                    item = self._queue.get()
                    if item is _STOP:
                        self._stopping = True
                        continue
                    self._backlog.extend(item)
                jobs: list = []
                self._gather(jobs)
                self._group(store, jobs, gather=True)
        finally:
            store.close()

    def _gather(self, jobs: list) -> None:
        """Move changes that are waiting (the backlog, then the queue, without blocking)
        into ``jobs``, up to ``max_group``."""
        while len(self._backlog) < self.max_group - len(jobs) and not self._stopping:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._stopping = True
            else:
                self._backlog.extend(item)
        room = self.max_group - len(jobs)
        jobs.extend(self._backlog[:room])
        del self._backlog[:room]

    def _group(self, store: LeaseStore, jobs: list, gather: bool = False) -> None:
        """Run ``jobs`` in one group (with ``gather``, also the changes that arrived
        while the group waited for the store's write lock) and settle each."""
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                outcomes = self._attempt(store, jobs, gather and attempt == 1)
                break
            except TransientGroupError as exc:
                if attempt < TRANSIENT_ATTEMPTS:
                    log.warning("group of %d changes rolled back as transient (%s); "
                                "running it again", len(jobs), exc)
                    with self._count:
                        self.retries += 1
                    if self._retry is not None:
                        self._retry()
                    continue
                failure: StoreError = exc
            except StoreError as exc:
                failure = exc
            if len(jobs) > 1:
                log.warning("group of %d changes failed (%s); running each alone",
                            len(jobs), failure)
                for job in jobs:
                    self._group(store, [job])
                return
            outcomes = [(None, failure)]
            break
        if self._observe is not None:
            self._observe(len(jobs))
        self._settle(jobs, outcomes)

    def _attempt(self, store: LeaseStore, jobs: list, gather: bool) -> list:
        """Run ``jobs`` in one group transaction; return their outcomes once committed.
        With ``gather``, the changes waiting once the write lock is held join ``jobs``
        first (another writer, a second server or the CLI, held it meanwhile).

        Raises:
            TransientGroupError: the group was rolled back as transient (run it again).
            StoreError: the group failed (nothing of it was written, or for a
                PostgreSQL commit whose outcome is unknown, perhaps all of it).
        """
        outcomes: list[tuple[Any, BaseException | None]] = []
        with store.group():
            if gather:
                self._gather(jobs)
            for change, _, _ in jobs:
                try:
                    with store.write():
                        outcomes.append((change(store), None))
                except TransientGroupError:
                    raise
                except Exception as exc:  # the request's own failure, undone alone
                    outcomes.append((None, exc))
                if not store.in_group:
                    raise StoreError(f"lease store {store.path}: the group's "
                                     "transaction was rolled back or lost")
        return outcomes

    def _settle(self, jobs: list, outcomes: list) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        with self._count:
            self.pending -= len(jobs)
            self.groups += 1
        for (_, settle, loop), (result, error) in zip(jobs, outcomes, strict=True):
            if loop is None:
                settle(result, error)
            else:
                by_loop.setdefault(loop, []).append((settle, result, error))
        for loop, items in by_loop.items():
            # One wake-up of the event loop for the whole group.
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                loop.call_soon_threadsafe(_settle_all, items)


def _settle_all(items: list) -> None:
    for settle, result, error in items:
        settle(result, error)
