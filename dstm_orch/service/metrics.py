"""Prometheus metrics of ``dstm-orch serve`` (``GET /metrics``), with ``prometheus_client``.

One :class:`Metrics` per server, each with its own registry (several servers may run in
one process, as in tests). Names (all prefixed ``dstm_``):

- ``dstm_leases_active{pool}``: leases current now (a gauge read from the store at
  each scrape);
- ``dstm_requests_total{verb,result}``: node API requests (``verb`` request, renew,
  release; ``result`` ok or the refusal's reason code);
- ``dstm_allocations_total``, ``dstm_renews_total``, ``dstm_releases_total``,
  ``dstm_reclaims_total``: lease events made by this server (reclaims: leases ended by
  the lifecycle loop, draft section 5's lease end);
- ``dstm_reclaim_cycles_total``, ``dstm_reclaim_backlog`` (ended leases left after a
  cycle that hit its bound);
- ``dstm_push_seconds{tep}`` (histogram) and ``dstm_push_failures_total{tep}``;
- ``dstm_inventory_reloads_total{result}`` (ok or error);
- ``dstm_pool_capacity{pool,unit}`` and ``dstm_pool_used{pool,unit}``: a pool's usable
  addresses (its ranges less its exclusions) and port sets (per address, the PSIDs whose
  port set holds a usable port, RFC 7597 section 5.1; 1 for whole addresses), and how
  many of each the current leases hold (``unit`` is ``addresses`` or ``port_sets``);
- ``dstm_withdrawal_seconds{tep}`` (histogram): from a lease's end (its lifetime's end
  for a reclaimed lease; when the server read the revocation or release otherwise) to
  the completed push of its TEP that withdrew it (draft section 5);
- ``dstm_drift_checks_total{tep,result}``: periodic drift checks of a TEP's table
  (``in_step``, ``drifted``: it differed from the leases and is pushed again, ``error``);
- ``dstm_commit_group_size`` (histogram): lease changes per durable transaction (group
  commit, :mod:`dstm_orch.service.writer`), ``dstm_commit_pending``: changes
  waiting for their group's commit, and ``dstm_commit_group_retries_total``: groups
  PostgreSQL rolled back as transient (serialization failure, deadlock) and the writer
  ran again whole.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _LeaseCollector:
    def __init__(self, count: Callable[[], dict[str, int]]):
        self.count = count

    def collect(self):
        family = GaugeMetricFamily("dstm_leases_active", "Leases current now, by pool",
                                   labels=["pool"])
        for pool, n in sorted(self.count().items()):
            family.add_metric([pool], n)
        yield family


class _PoolCollector:
    def __init__(self, usage: Callable[[], dict[str, dict[str, tuple[int, int]]]]):
        self.usage = usage

    def collect(self):
        capacity = GaugeMetricFamily(
            "dstm_pool_capacity", "Usable addresses and port sets of a pool",
            labels=["pool", "unit"])
        used = GaugeMetricFamily(
            "dstm_pool_used", "Addresses and port sets of a pool held by current leases",
            labels=["pool", "unit"])
        for pool, units in sorted(self.usage().items()):
            for unit, (total, held) in sorted(units.items()):
                capacity.add_metric([pool, unit], total)
                used.add_metric([pool, unit], held)
        yield capacity
        yield used


class Metrics:
    """The server's metrics (see the module docstring).

    Args:
        lease_counts: returns the current leases per pool name (called at each scrape).
        pool_usage: returns per pool ``{"addresses": (usable, held), "port_sets":
            (usable, held)}`` (called at each scrape; None: no pool figures).
    """

    def __init__(self, lease_counts: Callable[[], dict[str, int]],
                 pool_usage: Callable[[], dict[str, dict[str, tuple[int, int]]]] | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(_LeaseCollector(lease_counts))
        if pool_usage is not None:
            r.register(_PoolCollector(pool_usage))
        self.requests = Counter("dstm_requests", "Node API requests by verb and result",
                                ["verb", "result"], registry=r)
        self._requests: dict[tuple[str, str], Counter] = {}
        self.allocations = Counter("dstm_allocations", "Leases granted", registry=r)
        self.renews = Counter("dstm_renews", "Leases renewed", registry=r)
        self.releases = Counter("dstm_releases", "Leases released by nodes", registry=r)
        self.reclaims = Counter("dstm_reclaims", "Ended leases reclaimed", registry=r)
        self.cycles = Counter("dstm_reclaim_cycles", "Reclamation cycles run", registry=r)
        self.backlog = Gauge("dstm_reclaim_backlog", "Ended leases left after the last cycle",
                             registry=r)
        self.push_seconds = Histogram("dstm_push_seconds", "Duration of pushes to a TEP",
                                      ["tep"], registry=r,
                                      buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.withdrawal = Histogram("dstm_withdrawal_seconds", "From a lease's end to the "
                                    "push that withdrew it from its TEP", ["tep"], registry=r,
                                    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300))
        self.push_failures = Counter("dstm_push_failures", "Pushes to a TEP that failed",
                                     ["tep"], registry=r)
        self.reloads = Counter("dstm_inventory_reloads", "Inventory reloads by result",
                               ["result"], registry=r)
        self.drift_checks = Counter("dstm_drift_checks", "Drift checks of a TEP by result",
                                    ["tep", "result"], registry=r)
        self.group_size = Histogram("dstm_commit_group_size", "Lease changes per durable "
                                    "transaction (group commit)", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.group_retries = Counter("dstm_commit_group_retries", "Group transactions "
                                     "rolled back as transient (PostgreSQL serialization "
                                     "failure or deadlock) and run again whole", registry=r)
        self.pending = Gauge("dstm_commit_pending", "Lease changes waiting for their "
                             "group's commit", registry=r)

    def request(self, verb: str, result: str) -> None:
        """Count one node API request (``dstm_requests_total{verb,result}``); each label
        pair's child is looked up once (``labels()`` costs a lock and a key build)."""
        child = self._requests.get((verb, result))
        if child is None:
            child = self._requests[verb, result] = self.requests.labels(verb, result)
        child.inc()

    def render(self) -> bytes:
        """Return the text exposition format of every metric."""
        return generate_latest(self.registry)
