"""The ``dstm-orch`` command line: a thin shell over the allocator, renderers and pushers.

Exit codes: 0 success, 1 a known error (one line saying why), 2 a usage error, 3 an
unexpected error (see the log), 130 interrupted.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from dstm_orch import __version__
from dstm_orch.cli.serve import client, serve
from dstm_orch.config.inventory import DstmInventory, load_inventory
from dstm_orch.config.paths import default_state
from dstm_orch.domain.errors import DstmError, LeaseNotFoundError
from dstm_orch.domain.model import Lease, utcnow
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.store import LeaseStore

log = logging.getLogger("dstm_orch")
LOG_FILE = Path(tempfile.gettempdir()) / "dstm-orch.log"


class Context:
    """What every command needs: the inventory and, lazily, the lease store."""

    def __init__(self, inventory: str, state: str | None, as_json: bool):
        self.inventory_path = inventory
        self.state_path = state
        self.as_json = as_json
        self._inventory: DstmInventory | None = None
        self._store: LeaseStore | None = None

    @property
    def inventory(self) -> DstmInventory:
        if self._inventory is None:
            self._inventory = load_inventory(self.inventory_path)
        return self._inventory

    @property
    def store(self) -> LeaseStore:
        if self._store is None:
            path = Path(self.state_path or default_state(self.inventory.domain.name))
            self._store = LeaseStore(path)
        return self._store

    @property
    def allocator(self) -> Allocator:
        return Allocator(self.inventory.domain, self.store)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def common(func: Callable) -> Callable:
    """Add ``-i/--inventory``, ``--state`` and ``--json`` to a command."""

    @click.option("-i", "--inventory", envvar="DSTM_ORCH_INVENTORY", required=True,
                  type=click.Path(file_okay=False), help="Inventory directory "
                  "(env DSTM_ORCH_INVENTORY).")
    @click.option("--state", envvar="DSTM_ORCH_STATE", type=click.Path(dir_okay=False),
                  help="Lease store file (env DSTM_ORCH_STATE; default "
                  "/var/lib/dstm-orch/<domain>.sqlite).")
    @click.option("--json", "as_json", is_flag=True, help="Print data as JSON.")
    @functools.wraps(func)
    def wrapper(inventory: str, state: str | None, as_json: bool, **kwargs):
        ctx = Context(inventory, state, as_json)
        try:
            return func(ctx, **kwargs)
        finally:
            ctx.close()

    return wrapper


HOSTKEY = click.option("--no-host-key-check", is_flag=True,
                       help="NETCONF: do not verify device host keys (prints a warning).")

LIFETIME = click.option("--lifetime", type=click.IntRange(min=1), metavar="SECONDS",
                        help="Lease lifetime in seconds (default: the pool's).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dstm-orch")
def cli() -> None:
    """DSTM server as a configuration orchestrator (draft-ietf-ngtrans-dstm-08)."""


@cli.command()
@click.argument("node")
@LIFETIME
@common
def allocate(ctx: Context, node: str, lifetime: int | None) -> None:
    """Lease an IPv4 address to NODE (draft section 5); a static node gets its reservation."""
    _print_leases(ctx, [ctx.allocator.allocate(node, lifetime)], single=True)


@cli.command()
@click.argument("node")
@LIFETIME
@common
def renew(ctx: Context, node: str, lifetime: int | None) -> None:
    """Extend NODE's lease by a new lifetime from now (draft section 5)."""
    _print_leases(ctx, [ctx.allocator.renew(node, lifetime)], single=True)


@cli.command()
@click.argument("node")
@common
def revoke(ctx: Context, node: str) -> None:
    """End NODE's lease now; run "apply" to remove it from the devices."""
    _print_leases(ctx, [ctx.allocator.revoke(node)], single=True)


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Include ended leases (the history).")
@common
def leases(ctx: Context, show_all: bool) -> None:
    """List the current leases (with --all, every lease ever granted)."""
    allocator = ctx.allocator
    found = allocator.leases(include_history=True) if show_all else allocator.active_leases()
    _print_leases(ctx, found)


@cli.command()
@click.option("--max-leases", type=click.IntRange(min=1), help="Reclaim at most this many.")
@common
def expire(ctx: Context, max_leases: int | None) -> None:
    """Reclaim leases whose lifetime has run out; run "apply" to clear the devices."""
    _print_leases(ctx, ctx.allocator.expire(max_leases=max_leases))


@cli.command()
@click.argument("ipv4")
@click.option("--port", type=click.IntRange(0, 65535), help="A TCP or UDP port of IPV4.")
@click.option("--at", "at_text", metavar="TIME",
              help="ISO 8601 time, UTC unless it names a zone (default: now).")
@common
def who(ctx: Context, ipv4: str, port: int | None, at_text: str | None) -> None:
    """Tell which node (name, IPv6 address) held IPV4, and --port of it, at --at.

    Answers from the lease history, past expired and revoked leases included
    (DESIGN.md invariant 3); without --port, every node that shared the address.
    """
    try:
        address = ipaddress.IPv4Address(ipv4)
    except ValueError as exc:
        raise click.BadParameter(f"{ipv4!r} is not an IPv4 address", param_hint="IPV4") from exc
    moment = _instant(at_text) if at_text else utcnow().replace(microsecond=0)
    found = ctx.allocator.who(address, port, moment)
    when = moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if not found:
        what = f"{address} port {port}" if port is not None else str(address)
        raise LeaseNotFoundError(f"no lease held {what} at {when}")
    if ctx.as_json:
        click.echo(json.dumps({
            "ipv4": str(address), "port": port, "at": when,
            "holders": [{"node": h.lease.node, "node_ipv6": str(h.node_ipv6),
                         "lease": h.lease.as_dict()} for h in found],
        }, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for col in ("node", "node_ipv6", "ipv4", "ports", "start", "until", "state"):
        table.add_column(col)
    for holding in found:
        d = holding.lease.as_dict()
        table.add_row(d["node"], str(holding.node_ipv6), d["ipv4"], _ports(holding.lease),
                      d["start"], d["ended"] or d["end"] or "never", d["state"])
    Console(width=200).print(table)


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time", param_hint="--at") from exc
    moment = moment.replace(microsecond=0)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _ports(lease: Lease) -> str:
    return str(lease.port_set) if lease.port_set else "all"


@cli.command()
@click.option("--check", is_flag=True, help="Dry run: show what would change, change nothing.")
@click.option("--limit", metavar="PATTERN", help="Ansible host pattern to restrict the run.")
@click.option("--replace", is_flag=True,
              help="NETCONF TEPs: replace the whole binding table instead of sending changes.")
@HOSTKEY
@common
def apply(ctx: Context, check: bool, limit: str | None, replace: bool,
          no_host_key_check: bool) -> None:
    """Push the current leases to every node and TEP (Ansible and NETCONF, over IPv6)."""
    _run(ctx, check=check, limit=limit, replace=replace, hostkey_verify=not no_host_key_check)


@cli.command()
@click.option("--limit", metavar="PATTERN", help="Ansible host pattern to restrict the run.")
@HOSTKEY
@common
def plan(ctx: Context, limit: str | None, no_host_key_check: bool) -> None:
    """Show per device what apply would change, and drift, from the devices' real state."""
    _run(ctx, check=True, limit=limit, replace=False, hostkey_verify=not no_host_key_check)


def _run(ctx: Context, **options) -> None:
    from dstm_orch.push.intent import render_intent
    from dstm_orch.push.orchestrate import run

    if not options["hostkey_verify"]:
        click.echo("dstm-orch: warning: NETCONF host key verification is OFF", err=True)
    now = utcnow()
    inv = ctx.inventory
    intent = render_intent(inv.domain, ctx.allocator.active_leases(now), now)
    report = run(inv, ctx.store, intent, now, **options)
    linux = list(report.linux.hosts.values()) if report.linux else []
    if ctx.as_json:
        click.echo(json.dumps({
            "check": report.check, "ok": report.ok, "changed": report.changed,
            "hosts": [h.as_dict() for h in linux],
            "netconf": [{k: v for k, v in d.items() if k != "text"} for d in report.netconf],
            "errors": report.errors,
            "orphans": [orphan.as_dict() for orphan in intent.orphans],
        }, indent=2))
    else:
        console = Console(width=200, soft_wrap=True)
        for host in linux:
            state = ("FAILED" if host.failed else "UNREACHABLE" if host.unreachable
                     else f"changed={host.changed}")
            console.print(f"{host.host:<16} {state}", highlight=False)
            for line in host.messages:
                console.print(f"  {line}", highlight=False, markup=False)
            if report.check:
                for diff in host.diffs:
                    console.print(diff, highlight=False, markup=False)
        for device in report.netconf:
            console.print(f"{device['device']:<16} netconf "
                          f"{'changed' if device['changed'] else 'changed=0'}", highlight=False)
            if report.check or device["changed"]:
                console.print(device["text"], highlight=False, markup=False)
        for orphan in intent.orphans:
            console.print(f"warning: {orphan.text()}", highlight=False, markup=False)
    if not report.ok:
        failed = sorted(h.host for h in linux if h.failed or h.unreachable)
        reasons = [*([f"ansible failed on {', '.join(failed)}"] if failed else []),
                   *report.errors]
        raise DstmError("; ".join(reasons) or f"ansible status {report.linux.status}")


@cli.group()
def lab() -> None:
    """Build the inventory's domain in network namespaces (needs root)."""


def _lab_inventory(path: str):
    from dstm_orch.config.ansible_inventory import AnsibleInventory

    return AnsibleInventory.load(path)


LAB_INVENTORY = click.option("-i", "--inventory", envvar="DSTM_ORCH_INVENTORY", required=True,
                             type=click.Path(file_okay=False), help="Inventory directory.")


LAB_JSON = click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")


def _print_lab(status, as_json: bool) -> None:
    click.echo(json.dumps(status.as_dict(), indent=2) if as_json else status.render())


@lab.command("up")
@LAB_INVENTORY
@LAB_JSON
def lab_up_cmd(inventory: str, as_json: bool) -> None:
    """Create namespaces, links, routes and one sshd per node and TEP."""
    from dstm_orch import lab as labmod

    _print_lab(labmod.lab_up(_lab_inventory(inventory)), as_json)


@lab.command("down")
@LAB_INVENTORY
def lab_down_cmd(inventory: str) -> None:
    """Remove everything the lab created."""
    from dstm_orch import lab as labmod

    labmod.lab_down(_lab_inventory(inventory))


@lab.command("status")
@LAB_INVENTORY
@LAB_JSON
def lab_status_cmd(inventory: str, as_json: bool) -> None:
    """Show each lab host's namespace, sshd and addresses."""
    from dstm_orch import lab as labmod

    _print_lab(labmod.lab_status(_lab_inventory(inventory)), as_json)


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@LAB_INVENTORY
@click.argument("host")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec_cmd(inventory: str, host: str, argv: tuple[str, ...]) -> None:
    """Run a command inside lab HOST's namespace: lab exec HOST -- CMD..."""
    from dstm_orch import lab as labmod

    proc = labmod.lab_exec(_lab_inventory(inventory), host, list(argv))
    raise SystemExit(proc.returncode)


cli.add_command(serve)
cli.add_command(client)


def _print_leases(ctx: Context, found: list[Lease], single: bool = False) -> None:
    if ctx.as_json:
        data = [lease.as_dict() for lease in found]
        click.echo(json.dumps(data[0] if single else data, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for col in ("id", "node", "node_ipv6", "ipv4", "ports", "tep_ipv6", "start", "end",
                "lifetime", "state", "ended"):
        table.add_column(col, no_wrap=True)
    for lease in found:
        d = lease.as_dict()
        table.add_row(str(d["id"]), d["node"], d["node_ipv6"], d["ipv4"], _ports(lease),
                      d["tep_ipv6"], d["start"], d["end"] or "never",
                      "static" if d["lifetime"] is None else f"{d['lifetime']} s", d["state"],
                      d["ended"] or "")
    Console(width=300).print(table)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` and return the exit code (testable entry point)."""
    logging.basicConfig(filename=LOG_FILE, level=logging.INFO,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    try:
        cli.main(args=argv, prog_name="dstm-orch", standalone_mode=False)
    except DstmError as exc:
        click.echo(f"dstm-orch: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("dstm-orch: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    except (KeyboardInterrupt, InterruptedError):
        click.echo("dstm-orch: interrupted", err=True)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except Exception:
        log.exception("unexpected error")
        click.echo(f"dstm-orch: unexpected error; details in {LOG_FILE}", err=True)
        return 3
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
