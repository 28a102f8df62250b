"""Lease commands (draft-ietf-ngtrans-dstm-08 section 5): ``allocate``, ``renew``,
``revoke``, ``leases``, ``expire`` and ``who``.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from dstm_orch.cli.context import LIFETIME, Context, common
from dstm_orch.domain.errors import LeaseNotFoundError
from dstm_orch.domain.model import Lease, utcnow


@click.command()
@click.argument("node")
@LIFETIME
@common
def allocate(ctx: Context, node: str, lifetime: int | None) -> None:
    """Lease an IPv4 address to NODE (draft section 5); a static node gets its reservation.

    A node that already has a current lease gets it back unchanged, or renewed to now +
    --lifetime when --lifetime is given."""
    ctx.creates_store = True
    _print_leases(ctx, [ctx.allocator.allocate(node, lifetime)], single=True)


@click.command()
@click.argument("node")
@LIFETIME
@common
def renew(ctx: Context, node: str, lifetime: int | None) -> None:
    """Extend NODE's lease by a new lifetime from now (draft section 5)."""
    _print_leases(ctx, [ctx.allocator.renew(node, lifetime)], single=True)


@click.command()
@click.argument("node")
@common
def revoke(ctx: Context, node: str) -> None:
    """End NODE's lease now; run "apply" to remove it from the devices."""
    _print_leases(ctx, [ctx.allocator.revoke(node)], single=True)


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Include ended leases (the history).")
@common
def leases(ctx: Context, show_all: bool) -> None:
    """List the active leases, those past their end not yet reclaimed as expired (with
    --all, every lease ever granted)."""
    _print_leases(ctx, ctx.allocator.leases(include_history=show_all),
                  none="no lease" if show_all else "no active lease")


@click.command()
@click.option("--max-leases", type=click.IntRange(min=1), help="Reclaim at most this many.")
@common
def expire(ctx: Context, max_leases: int | None) -> None:
    """Reclaim leases whose lifetime has run out; run "apply" to clear the devices."""
    _print_leases(ctx, ctx.allocator.expire(max_leases=max_leases),
                  none="nothing to reclaim: no lease has ended unreclaimed")


@click.command()
@click.argument("ipv4")
@click.option("--port", type=click.IntRange(0, 65535), help="A TCP or UDP port of IPV4.")
@click.option("--at", "at_text", metavar="TIME",
              help="ISO 8601 time, UTC unless it names a zone (default: now).")
@common
def who(ctx: Context, ipv4: str, port: int | None, at_text: str | None) -> None:
    """Tell which node (name, IPv6 address) held IPV4, and --port of it, at --at.

    Answers from the lease history, past expired and revoked leases included
    (draft section 5); without --port, every node that shared the address.
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
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError as exc:
        raise click.BadParameter(f"{text!r} is outside the range of UTC times",
                                 param_hint="--at") from exc


def _ports(lease: Lease) -> str:
    return str(lease.port_set) if lease.port_set else "all"


def _print_leases(ctx: Context, found: list[Lease], single: bool = False,
                  none: str = "no lease") -> None:
    if ctx.as_json:
        data = [lease.as_dict() for lease in found]
        click.echo(json.dumps(data[0] if single else data, indent=2))
        return
    if not found:
        click.echo(none)
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
                      d["ended"] or ("not reclaimed" if d["state"] == "expired" else ""))
    Console(width=300).print(table)


COMMANDS = (allocate, renew, revoke, leases, expire, who)
