"""``dstm-orch serve`` as a long-running service: the node API, the lifecycle loop, the
operator API with metrics and health, inventory reload, signals.

Draft-ietf-ngtrans-dstm-08 sections 5 and 6: the DSTM server hands out temporary IPv4
addresses, takes them back when their lease ends and keeps the TEP's mapping table equal
to the leases. :class:`Daemon` runs, on one asyncio loop:

- the node API (:mod:`dstm_orch.service.httpd`) on ``--listen``;
- the operator API on ``--api-listen`` (default ``[::1]:3787``, loopback), every
  ``/v1/`` route needing ``Authorization: Bearer <dstm_server_api_token>`` (a vaulted
  variable of the group ``all``; without it the ``/v1/`` routes answer 403)::

      GET    /v1/leases            the active leases (``?history=1``: all of them)
      GET    /v1/leases/{node}     one node's lease (404 without one)
      POST   /v1/leases/{node}     allocate (JSON body ``{"lifetime": seconds}``, optional)
      DELETE /v1/leases/{node}     revoke
      POST   /v1/reclaim           run a reclamation cycle now
      POST   /v1/reload            re-read the inventory (as SIGHUP does)

  and, without a token, ``GET /metrics`` (:mod:`dstm_orch.service.metrics`),
  ``/healthz`` (the loop answers) and ``/readyz`` (the inventory is loaded, the store
  answers, no TEP has failed its pushes for more than ``READY_PUSH_FAILING`` seconds);
- the lifecycle loop (:mod:`dstm_orch.service.lifecycle`) in its own thread.

SIGHUP reloads the inventory: a broken one is refused (logged, counted in
``dstm_inventory_reloads_total{result="error"}``) and the old one kept. With
``watch_inventory`` a change to the inventory's files does the same reload once the tree
has been quiet for ``watch_settle`` seconds (:mod:`dstm_orch.service.inventory_watch`).
SIGTERM and SIGINT stop gracefully: listeners close, in-flight requests are answered, the
lifecycle loop finishes its push, the store is closed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from aiohttp import web

from dstm_orch.domain.errors import DstmError, LeaseNotFoundError, UnknownNodeError
from dstm_orch.domain.model import utcnow
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.service.httpd import WORKERS, ipv6_socket, json_response, node_app, start_sites
from dstm_orch.service.inventory_watch import SETTLE, WatchedInventory, inventory_changes
from dstm_orch.service.lifecycle import Lifecycle, ReclaimPolicy, effective_policy
from dstm_orch.service.loading import Loaded, load
from dstm_orch.service.metrics import CONTENT_TYPE
from dstm_orch.service.pushers import close_pusher
from dstm_orch.service.server import RoamingService

log = logging.getLogger("dstm_orch.service")

API_PORT = 3787
READY_PUSH_FAILING = 300.0
"""Seconds a TEP's pushes may keep failing before ``/readyz`` answers 503."""


@dataclass
class Options:
    """What ``serve`` was asked for (the CLI's options, parsed)."""

    inventory: str
    state: str | None
    listen: tuple[str, int]
    api_listen: tuple[str, int] | None
    vault_password_file: str | None
    limits: object
    push: str
    source_check: bool
    tls: ssl.SSLContext | None
    policy: ReclaimPolicy
    policy_from_cli: frozenset[str] = field(default_factory=frozenset)
    """The fields of ``policy`` given on the command line: they override the inventory's
    ``lease_policy`` (the others come from there when it sets them)."""
    watch_inventory: bool = False
    """Reload when a file of the inventory changes (``--watch-inventory``)."""
    watch_settle: float = SETTLE
    """Seconds the inventory's files must stay unchanged before that reload."""


def notify(state: str) -> None:
    """Tell systemd (``Type=notify``) the service's state, when started by it: one
    datagram to ``$NOTIFY_SOCKET`` (sd_notify(3) protocol); nothing otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", state, exc)


class Daemon:
    """The server (see the module docstring).

    Raises:
        InventoryError, RoamingError, StoreError: the inventory, its secrets or the store
            cannot be used (at start; a reload keeps the old inventory instead).
        DstmError: ``watch_inventory`` with an inventory that is no directory or file.
        OSError: a listen address cannot be bound.
    """

    def __init__(self, options: Options):
        self.options = options
        self.loaded = self._load()
        self.service = RoamingService(self.loaded.domain, self.loaded.state, self.loaded.guard,
                                      self.loaded.pusher, options.source_check)
        self.lifecycle = Lifecycle(self.service, self.policy(self.loaded), self.reload)
        self.node_socket = ipv6_socket(options.listen)
        self.api_socket = ipv6_socket(options.api_listen) if options.api_listen else None
        self.executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="dstm-request")
        self.reload_error: str | None = None
        self.reload_problems: list = []  # the refused reload's Problem list (file, key)
        self.watched = (WatchedInventory.of(options.inventory) if options.watch_inventory
                        else None)
        self.watch_error: str | None = None
        self._reloading = threading.Lock()
        self._stop: asyncio.Event | None = None

    def policy(self, loaded: Loaded) -> ReclaimPolicy:
        """The lifecycle bounds: the command line's, else the inventory's ``lease_policy``
        (``reclaim_interval``, ``max_reclaim_leases``, ``max_reclaim_time``), else the
        defaults."""
        return effective_policy(self.options.policy, loaded.domain.reclaim,
                                self.options.policy_from_cli)

    def _load(self) -> Loaded:
        o = self.options
        return load(o.inventory, o.state, vault_password_file=o.vault_password_file,
                    limits=o.limits, push=o.push)

    def reload(self) -> str | None:
        """Re-read the inventory; keep the old one if the new one is broken. Return
        None, or the error that kept the old inventory. Reloads (SIGHUP, the operator
        API, the inventory watch, the lifecycle loop) run one at a time."""
        with self._reloading:
            return self._reload_notified()

    def _reload_notified(self) -> str | None:
        notify("RELOADING=1")
        try:
            return self._reload_inventory()
        except Exception as exc:  # a signal handler's job: never lose the error
            log.exception("reload failed")
            return str(exc)
        finally:
            notify("READY=1")

    def _reload_inventory(self) -> str | None:
        try:
            loaded = self._load()
            if loaded.state != self.loaded.state:
                raise DstmError(f"the lease store moved from {self.loaded.state} to "
                                f"{loaded.state}; restart the server to change it")
            self.service.replace(loaded.domain, loaded.guard, loaded.pusher)
            close_pusher(self.loaded.pusher)   # its kept NETCONF sessions (the new one has its own)
        except DstmError as exc:
            self.reload_error = str(exc)
            self.reload_problems = list(getattr(exc, "problems", ()))
            self.service.metrics.reloads.labels("error").inc()
            log.error("reload refused, still serving the previous inventory: %s",
                      " ".join(line.strip() for line in self.reload_error.splitlines()))
            return self.reload_error
        self.loaded, self.reload_error, self.reload_problems = loaded, None, []
        policy = self.policy(loaded)
        if policy != self.lifecycle.policy:
            self.lifecycle.policy = policy
            log.info("lifecycle: %s", policy.describe())
        self.service.metrics.reloads.labels("ok").inc()
        log.info("reloaded inventory %s: %d node(s)", loaded.inventory.path,
                 len(loaded.guard.nodes))
        self.lifecycle.wake()
        return None

    @property
    def urls(self) -> tuple[str, str | None]:
        host, port = self.node_socket.getsockname()[:2]
        node = f"{'https' if self.options.tls else 'http'}://[{host}]:{port}"
        api = None
        if self.api_socket is not None:
            host, port = self.api_socket.getsockname()[:2]
            api = f"http://[{host}]:{port}"
        return node, api

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        try:
            asyncio.run(self._main())
        finally:
            self.executor.shutdown(wait=True)
            close_pusher(self.service.pusher)
            self.service.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(
            self.executor, self.reload))
        sites = [(node_app(self.service, self.executor), self.node_socket, self.options.tls)]
        if self.api_socket is not None:
            sites.append((self._api_app(), self.api_socket, None))
        runners = await start_sites(sites)
        self.lifecycle.start()
        watch = (asyncio.create_task(self._watch_inventory(self.watched))
                 if self.watched is not None else None)
        notify("READY=1")
        node, api = self.urls
        log.info("serving %d node(s) on %s, operator API %s, push: %s",
                 len(self.service.guard.nodes), node, api or "off", self.service.pusher.label)
        try:
            await self._stop.wait()
            notify("STOPPING=1")
            log.info("stopping: answering in-flight requests")
        finally:
            self._stop.set()
            for runner in runners:
                await runner.cleanup()
            if watch is not None:
                await watch
            await loop.run_in_executor(None, self.lifecycle.stop)
            log.info("stopped")

    async def _watch_inventory(self, watched: WatchedInventory) -> None:
        """Reload (as SIGHUP does) after each settled batch of changes to the inventory's
        files, until the server stops. A watch that fails is logged and shown by
        ``/readyz``; SIGHUP and ``POST /v1/reload`` still reload."""
        settle = self.options.watch_settle
        log.info("watching the inventory %s for changes (reload once quiet for %g s)",
                 watched.root, settle)
        try:
            async for paths in inventory_changes(watched, self._stop, settle):
                shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more"
                                                 if len(paths) > 10 else "")
                log.info("inventory changed (%d path(s): %s): reloading", len(paths), shown)
                await asyncio.get_running_loop().run_in_executor(self.executor, self.reload)
        except Exception as exc:  # the server goes on without its watch
            self.watch_error = str(exc) or type(exc).__name__
            log.error("inventory watch stopped (%s); SIGHUP and POST /v1/reload still "
                      "reload", self.watch_error, exc_info=not isinstance(exc, OSError))

    # -- the operator API ------------------------------------------------------------

    def _api_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[self._auth])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/v1/leases", self._list)
        app.router.add_get("/v1/leases/{node}", self._show)
        app.router.add_post("/v1/leases/{node}", self._allocate)
        app.router.add_delete("/v1/leases/{node}", self._revoke)
        app.router.add_post("/v1/reclaim", self._reclaim)
        app.router.add_post("/v1/reload", self._reload)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if request.path.startswith("/v1/"):
            token = self.loaded.api_token
            if token is None:
                return json_response(403, {"error": "forbidden", "message": "no operator "
                                           "token: set dstm_server_api_token (ansible-vault)"})
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, b"Bearer " + token):
                return json_response(401, {"error": "unauthorized", "message": "missing or "
                                           "wrong bearer token"},)
        return await handler(request)

    async def _blocking(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    def _allocator(self) -> Allocator:
        return Allocator(self.service.domain, self.service.store())

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self._blocking(self.service.metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        return json_response(200, {"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        def check() -> list[str]:
            problems = []
            try:
                with self.service.store().write():
                    pass
            except DstmError as exc:
                problems.append(f"store: {exc}")
            now = time.time()
            for sync in self.service.syncs():
                if sync.failing_since and now - sync.failing_since > READY_PUSH_FAILING:
                    problems.append(f"TEP {sync.tep}: pushes failing for "
                                    f"{now - sync.failing_since:.0f} s")
            if self.reload_error:
                problems.append(f"last reload refused (old inventory kept): "
                                f"{self.reload_error}")
            if self.watch_error:
                problems.append(f"inventory watch stopped: {self.watch_error}")
            return problems

        problems = await self._blocking(check)
        # A refused reload or a stopped watch leaves the server serving: ready, with the
        # error shown.
        failing = [p for p in problems
                   if not p.startswith(("last reload", "inventory watch"))]
        return json_response(503 if failing else 200,
                             {"ready": not failing, "problems": problems})

    async def _list(self, request: web.Request) -> web.Response:
        history = request.query.get("history") in ("1", "true")
        leases = await self._blocking(lambda: self._allocator().leases(history))
        return json_response(200, {"leases": [lease.as_dict() for lease in leases]})

    async def _show(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        if node not in self.service.domain.nodes:
            return self._unknown(node)
        lease = await self._blocking(lambda: self._allocator().lease_of(node))
        if lease is None:
            return json_response(404, {"error": "no_lease",
                                       "message": f"node {node!r} holds no lease"})
        return json_response(200, lease.as_of(utcnow()).as_dict())

    def _unknown(self, node: str) -> web.Response:
        return json_response(404, {"error": "unknown_node", "message": f"node {node!r} is "
                                   f"not a node of domain {self.service.domain.name!r} "
                                   "(dstm_nodes)"})

    async def _allocate(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        try:
            data = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError:
            data = None
        lifetime = data.get("lifetime") if isinstance(data, dict) else "bad"
        if lifetime is not None and (not isinstance(lifetime, int) or lifetime < 1):
            return json_response(400, {"error": "malformed", "message": "the body is "
                                       "{\"lifetime\": seconds} (optional, 1 or more)"})
        return await self._write("allocate", node,
                                 lambda: self._allocator().allocate(node, lifetime))

    async def _revoke(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        return await self._write("revoke", node, lambda: self._allocator().revoke(node))

    async def _write(self, action: str, node: str, change) -> web.Response:
        if node not in self.service.domain.nodes:
            return self._unknown(node)
        try:
            lease = await self._blocking(change)
        except UnknownNodeError:
            return self._unknown(node)
        except LeaseNotFoundError as exc:
            return json_response(404, {"error": "no_lease", "message": str(exc)})
        except DstmError as exc:
            log.info("operator API: %s node %s refused: %s", action, node, exc)
            return json_response(409, {"error": "refused", "message": str(exc)})
        log.info("operator API: %s node %s -> %s (lease %d)", action, node, lease.ipv4,
                 lease.id)
        self.lifecycle.wake()
        return json_response(200, lease.as_dict())

    async def _reclaim(self, request: web.Request) -> web.Response:
        ended = await self._blocking(self.lifecycle.reclaim)
        self.lifecycle.wake()
        return json_response(200, {"reclaimed": [lease.as_dict() for lease in ended]})

    async def _reload(self, request: web.Request) -> web.Response:
        error = await self._blocking(self.reload)
        if error:
            return json_response(422, {"error": "reload_refused", "message": error,
                                       "problems": [asdict(problem) for problem
                                                    in self.reload_problems]})
        return json_response(200, {"reloaded": True, "nodes": len(self.loaded.guard.nodes)})
