"""Click commands of the roaming exchange: ``serve`` and the group ``client``.

``dstm_orch.cli.main`` registers them in the ``dstm-orch`` group. No logic lives here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Callable

import click

from dstm_orch.cli.logs import ProcessLogs
from dstm_orch.domain.protocol import RoamingError
from dstm_orch.service.guard import Limits
from dstm_orch.service.httpd import DEFAULT_PORT, parse_listen
from dstm_orch.service.inventory_watch import LONGEST_WAIT, SETTLE

API_PORT = 3787


class _Rate(click.ParamType):
    """``N/SECONDS``: N requests per SECONDS seconds."""

    name = "N/SECONDS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        count, sep, period = str(value).partition("/")
        try:
            parsed = (int(count), float(period) if sep else 1.0)
        except ValueError:
            parsed = (0, 0.0)
        if parsed[0] < 1 or parsed[1] <= 0:
            self.fail(f"{value!r} is not N/SECONDS (for example 20/60: 20 requests a minute)",
                      param, ctx)
        return parsed


RATE = _Rate()


@click.command()
@click.option("-i", "--inventory", envvar="DSTM_ORCH_INVENTORY", required=True,
              type=click.Path(), help="Ansible inventory: a directory, file, script or "
              "plugin configuration, as for ansible -i (env DSTM_ORCH_INVENTORY).")
@click.option("--state", envvar="DSTM_ORCH_STATE", type=click.Path(dir_okay=False),
              help="Lease store: an SQLite file, or a postgresql:// URL that several "
              "servers of the domain share (env DSTM_ORCH_STATE).")
@click.option("--listen", required=True, metavar="[IPV6]:PORT",
              help=f"IPv6 address and port of the node API (IPv6 only; default port "
              f"{DEFAULT_PORT}).")
@click.option("--api-listen", default=f"[::1]:{API_PORT}", show_default=True,
              metavar="[IPV6]:PORT|off", help="Operator API, /metrics, /healthz and "
              "/readyz (keep it on loopback); 'off' disables it.")
@click.option("--vault-password-file", envvar="ANSIBLE_VAULT_PASSWORD_FILE",
              type=click.Path(dir_okay=False), help="Decrypts dstm_node_secret and "
              "dstm_server_api_token (env ANSIBLE_VAULT_PASSWORD_FILE).")
@click.option("--window", type=click.IntRange(min=1), default=30, show_default=True,
              metavar="SECONDS", help="Clock window of a request's timestamp, +-seconds.")
@click.option("--node-rate", type=RATE, default="20/60", show_default=True,
              help="Requests per node per period.")
@click.option("--global-rate", type=RATE, default="500/1", show_default=True,
              help="Requests of all clients per period.")
@click.option("--max-leases", type=click.IntRange(min=0), metavar="N",
              help="Cap on the leases all nodes hold together through the node API "
              "(default: none).")
@click.option("--push", type=click.Choice(["teps", "none", "ansible"]), default="teps",
              show_default=True, help="How TEPs are updated: 'teps' pushes each TEP whose "
              "leases changed (Ansible or NETCONF, as `apply`); 'none' records leases only. "
              "'ansible' is the old name of 'teps'.")
@click.option("--reclaim-interval", type=click.FloatRange(min=0.1), default=5.0,
              show_default=True, metavar="SECONDS", help="Seconds between reclamation "
              "cycles of ended leases (overrides lease_policy.reclaim_interval).")
@click.option("--max-reclaim-leases", type=click.IntRange(min=0), default=100,
              show_default=True, metavar="N", help="Leases reclaimed per cycle at most "
              "(0: no bound; overrides lease_policy.max_reclaim_leases).")
@click.option("--max-reclaim-time", type=click.FloatRange(min=0), default=0.25,
              show_default=True, metavar="SECONDS", help="Time a cycle may spend "
              "reclaiming (0: no bound; overrides lease_policy.max_reclaim_time).")
@click.option("--drift-interval", type=click.FloatRange(min=0), default=0.0,
              show_default=True, metavar="SECONDS", help="Seconds between drift checks of "
              "each TEP's mapping table (a router's read over NETCONF, a Linux TEP's "
              "mapping playbook in check mode); a table that differs from the leases is "
              "pushed again (0: no drift check).")
@click.option("--no-source-check", is_flag=True, help="Accept a claimed IPv6 address "
              "that is not the request's source (behind a proxy; weaker).")
@click.option("--cert", type=click.Path(dir_okay=False, exists=True),
              help="TLS certificate (PEM); with --key the node API speaks HTTPS.")
@click.option("--key", type=click.Path(dir_okay=False, exists=True), help="TLS private key.")
@click.option("--watch-inventory", is_flag=True, envvar="DSTM_ORCH_WATCH_INVENTORY",
              help="Reload the inventory when one of its files changes (created, modified, "
              "deleted, renamed; .git/ and editors' swap files aside), as SIGHUP does, "
              "once they have stayed unchanged for --watch-settle seconds (env "
              "DSTM_ORCH_WATCH_INVENTORY=1).")
@click.option("--watch-settle", type=click.FloatRange(min=0.05, max=LONGEST_WAIT),
              default=SETTLE, show_default=True, metavar="SECONDS", help="How long the "
              "inventory's files must stay unchanged before --watch-inventory reloads (a "
              "git checkout writing many files leads to one reload).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="One line per event on stderr, as text or JSON.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              envvar="DSTM_ORCH_LOG_LEVEL", default="info", show_default=True,
              help="The least severe events logged (env DSTM_ORCH_LOG_LEVEL).")
def serve(inventory: str, state: str | None, listen: str, api_listen: str,
          vault_password_file: str | None, window: int, node_rate: tuple[int, float],
          global_rate: tuple[int, float], max_leases: int | None, push: str,
          reclaim_interval: float, max_reclaim_leases: int, max_reclaim_time: float,
          drift_interval: float, no_source_check: bool, cert: str | None, key: str | None,
          watch_inventory: bool, watch_settle: float, log_format: str,
          log_level: str) -> None:
    """Run the DSTM server of the domain (draft sections 5 and 6): lease requests of
    every node over HTTP on IPv6, reclamation of ended leases, pushes to the TEPs,
    operator API and metrics. SIGHUP (and, with --watch-inventory, a change to the
    inventory's files) reloads the inventory; SIGTERM stops gracefully."""
    from dstm_orch.service.daemon import Daemon, Options
    from dstm_orch.service.httpd import tls_context
    from dstm_orch.service.lifecycle import ReclaimPolicy

    if bool(cert) != bool(key):
        raise click.UsageError("--cert and --key go together")
    limits = Limits(window=window, node_requests=node_rate[0], node_period=node_rate[1],
                    global_requests=global_rate[0], global_period=global_rate[1],
                    max_leases=max_leases)
    _logging(log_format, log_level)
    options = Options(
        inventory=inventory, state=state, listen=_listen(listen, "--listen"),
        api_listen=None if api_listen == "off" else _listen(api_listen, "--api-listen",
                                                            API_PORT),
        vault_password_file=vault_password_file, limits=limits, push=push,
        source_check=not no_source_check, tls=tls_context(cert, key) if cert else None,
        policy=ReclaimPolicy(interval=reclaim_interval, max_leases=max_reclaim_leases,
                             max_time=max_reclaim_time, drift=drift_interval),
        policy_from_cli=_given({"reclaim_interval": "interval",
                                "max_reclaim_leases": "max_leases",
                                "max_reclaim_time": "max_time"}),
        watch_inventory=watch_inventory, watch_settle=watch_settle)
    Daemon(options).run()


def _listen(value: str, option: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Parse a listen option's ``[IPV6]:PORT``; a bad one is a usage error (exit 2)."""
    try:
        return parse_listen(value, default_port)
    except RoamingError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _given(names: dict[str, str]) -> frozenset[str]:
    """The values of ``names`` (option name -> policy field) whose option was given on
    the command line or in the environment, not left at its default."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return frozenset(field for option, field in names.items()
                     if ctx.get_parameter_source(option) not in (ParameterSource.DEFAULT,
                                                                  None))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record), "level": record.levelname,
                           "logger": record.name, "message": record.getMessage()})


def _logging(log_format: str, level: str) -> None:
    """Log every event of ``dstm_orch`` at ``level`` and above on stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    click.get_current_context().ensure_object(ProcessLogs).log_to_stderr(handler,
                                                                         level.upper())


def _client_options(func: Callable) -> Callable:
    options = [
        click.option("--server", "server", envvar="DSTM_ORCH_SERVER", required=True,
                     metavar="[IPV6]:PORT", help="The DSTM server (env DSTM_ORCH_SERVER)."),
        click.option("--node", required=True, help="This node's inventory name."),
        click.option("--secret-file", type=click.Path(dir_okay=False),
                     help="File holding the node's shared secret (mode 600); without it "
                     "requests go unsigned (a node with dstm_node_auth: source)."),
        click.option("--ipv6", help="This node's current IPv6 address (default: read "
                     "from --uplink)."),
        click.option("--uplink", default="eth0", show_default=True,
                     help="Interface toward the IPv6 network."),
        click.option("--cafile", type=click.Path(dir_okay=False, exists=True),
                     help="CA certificate: use HTTPS and check the server with it."),
        click.option("--timeout", type=click.FloatRange(min=1), default=120.0,
                     show_default=True, help="Seconds to wait for the answer."),
        click.option("--no-configure", is_flag=True, help="Only talk to the server; "
                     "leave this host's addresses and routes alone."),
        click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


LIFETIME = click.option("--lifetime", type=click.IntRange(min=1), metavar="SECONDS",
                        help="Lease lifetime asked for (default: the pool's).")


@click.group()
def client() -> None:
    """A node's side (every node of the domain, roaming or not): request, renew or
    release its lease and configure itself, once or as the agent `client run`."""


@client.command()
@_client_options
@LIFETIME
def request(**options) -> None:
    """Obtain a lease (or the current one, moved to this address); configure the node."""
    _run("request", **options)


@client.command()
@_client_options
@LIFETIME
def renew(**options) -> None:
    """Extend the lease, moving the TEP's mapping to this address; configure the node."""
    _run("renew", **options)


@client.command()
@_client_options
def release(**options) -> None:
    """Give the lease back; remove the address and routes from the node."""
    _run("release", lifetime=None, **options)


def _server_address(server: str) -> tuple[str, int]:
    """The --server value as (IPv6 address, port) (a usage error when it is not one)."""
    try:
        return parse_listen(server, what="server address")
    except RoamingError as exc:
        raise click.BadParameter(str(exc), param_hint="--server") from None


def _given_ipv6(ipv6: str) -> ipaddress.IPv6Address:
    """The node's IPv6 address given with --ipv6 (a usage error when it is not one)."""
    try:
        return ipaddress.IPv6Address(ipv6)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ipv6") from None


def _run(action: str, *, server: str, node: str, secret_file: str | None, ipv6: str | None,
         uplink: str, cafile: str | None, timeout: float, no_configure: bool, as_json: bool,
         lifetime: int | None) -> None:
    from dstm_orch.agent.client import RoamingClient, read_secret, uplink_ipv6
    from dstm_orch.agent.node import NodeConfig, NodeLease

    address = _server_address(server)
    current = _given_ipv6(ipv6) if ipv6 else uplink_ipv6(uplink, toward=address[0])
    secret = read_secret(secret_file) if secret_file else None
    with RoamingClient(address, node, secret, cafile=cafile,
                       timeout=timeout) as conn:
        answer = conn.call(action, current, lifetime)
    changes: list[str] = []
    if not no_configure:
        config = NodeConfig(uplink)
        changes = (config.remove() if action == "release"
                   else config.apply(NodeLease.from_answer(answer)))
    if as_json:
        click.echo(json.dumps(answer | {"configured": changes}, indent=2, sort_keys=True))
        return
    if action == "release":
        click.echo(f"{node}: released {answer['ipv4']}")
    else:
        left = "forever" if answer["remaining"] is None else f"{answer['remaining']} s left"
        click.echo(f"{node}: {answer['ipv4']} via TEP {answer['tep_ipv6']} from {current}, "
                   f"{left} (until {answer['end'] or 'never'})")
    for change in changes:
        click.echo(f"  {change}")


STATE_DIR = click.option(
    "--state-dir", envvar="DSTM_ORCH_CLIENT_STATE_DIR", default="/run/dstm-orch-client",
    show_default=True, type=click.Path(file_okay=False),
    help="Where `client run` records its lease for `client status` (agent.json; env "
    "DSTM_ORCH_CLIENT_STATE_DIR).")


@client.command("run")
@_client_options
@LIFETIME
@STATE_DIR
def run_agent(server: str, node: str, secret_file: str | None, ipv6: str | None, uplink: str,
              cafile: str | None, timeout: float, no_configure: bool, as_json: bool,
              lifetime: int | None, state_dir: str) -> None:
    """Keep this node's lease as a service: request, renew at half the time left,
    release and unconfigure on SIGTERM; `client status` shows its lease."""
    import signal
    import threading

    from dstm_orch.agent.client import RoamingClient, read_secret, uplink_ipv6
    from dstm_orch.agent.keeper import LeaseKeeper
    from dstm_orch.agent.node import NodeConfig
    from dstm_orch.agent.state import AgentState, AgentStateError

    address = _server_address(server)
    state = AgentState(state_dir)
    with contextlib.suppress(AgentStateError):
        other = state.read()
        if other.running and other.pid != os.getpid():
            raise AgentStateError(f"an agent (pid {other.pid}, node {other.node}) already "
                                  f"runs with the state directory {state_dir}")
    try:
        state.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AgentStateError(f"cannot create the agent's state directory {state_dir}: "
                              f"{exc.strerror} (choose another with --state-dir)") from None
    if not os.access(state.path.parent, os.W_OK):
        raise AgentStateError(f"the agent's state directory {state_dir} is not writable "
                              "(choose another with --state-dir)")
    if ipv6:
        fixed = _given_ipv6(ipv6)

        def current() -> ipaddress.IPv6Address:
            return fixed
    else:
        def current() -> ipaddress.IPv6Address:
            return uplink_ipv6(uplink, toward=address[0])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("dstm_orch.agent").addHandler(handler)
    logging.getLogger("dstm_orch.agent").setLevel(logging.INFO)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    secret = read_secret(secret_file) if secret_file else None
    with RoamingClient(address, node, secret, cafile=cafile, timeout=timeout) as conn:
        LeaseKeeper(conn, current, lifetime, None if no_configure else NodeConfig(uplink),
                    stop, state).run()


@client.command("status")
@STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def agent_status(state_dir: str, as_json: bool) -> None:
    """Show the lease of the `client run` agent on this node (address, port set, end,
    time left) and its next renewal; exit 1 when no agent runs."""
    from dstm_orch.agent.state import AgentState

    status = AgentState(state_dir).read()
    if as_json:
        click.echo(json.dumps(status.as_dict(), indent=2, sort_keys=True))
    else:
        facts = status.as_dict()
        ports = facts["port_set"]
        ranges = ", ".join(f"{first}-{last}" for first, last in ports["ranges"]) if ports else ""
        click.echo(f"{status.node}: {facts['ipv4']}{' ports ' + ranges if ranges else ''} "
                   f"via TEP {facts['tep_ipv6']} (server {status.server})")
        if status.time_left is None:
            click.echo("  lease: static, does not end")
        elif status.time_left > 0:
            click.echo(f"  lease ends {facts['end']} ({status.time_left} s left)")
        else:
            click.echo(f"  lease ended {facts['end']}")
        if status.renews_in is not None and status.running:
            when = (f"in {status.renews_in} s" if status.renews_in >= 0 else
                    f"overdue by {-status.renews_in} s, retrying")
            click.echo(f"  next renewal {facts['next_renewal']} ({when})")
        click.echo(f"  agent pid {status.pid}: "
                   + ("running" if status.running else
                      "NOT running (its last lease above; the kernel drops the address at "
                      "the lease's end)"))
    if not status.running:
        raise SystemExit(1)
