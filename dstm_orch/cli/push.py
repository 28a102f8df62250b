"""Push commands: ``apply`` and ``plan`` (Ansible for Linux nodes and TEPs, NETCONF for
router TEPs, RFC 6241 and RFC 8676).
"""

from __future__ import annotations

import json

import click
from rich.console import Console

from dstm_orch.cli.context import HOSTKEY, Context, common
from dstm_orch.domain.errors import DstmError
from dstm_orch.domain.model import utcnow


@click.command()
@click.option("--check", is_flag=True, help="Dry run: show what would change, change nothing.")
@click.option("--limit", metavar="PATTERN", help="Ansible host pattern to restrict the run.")
@click.option("--replace", is_flag=True,
              help="NETCONF TEPs: replace the whole binding table instead of sending changes.")
@click.option("--refresh", is_flag=True,
              help="Contact every device, also those whose last push matches the intent.")
@HOSTKEY
@common
def apply(ctx: Context, check: bool, limit: str | None, replace: bool, refresh: bool,
          no_host_key_check: bool) -> None:
    """Push the current leases to every node and TEP (Ansible and NETCONF, over IPv6).

    A device whose last recorded push brought it the intent it should hold now is left
    out (it is "in step"); --refresh contacts it anyway, and plan always reads it.
    """
    _run(ctx, check=check, limit=limit, replace=replace, refresh=refresh,
         hostkey_verify=not no_host_key_check)


@click.command()
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
            "in_step": report.in_step,
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
        for device in report.in_step:
            console.print(f"{device:<16} in step (the last push matches the intent; "
                          "--refresh to contact it)", highlight=False)
        for orphan in intent.orphans:
            console.print(f"warning: {orphan.text()}", highlight=False, markup=False)
    if not report.ok:
        failed = sorted(h.host for h in linux if h.failed or h.unreachable)
        reasons = [*([f"ansible failed on {', '.join(failed)}"] if failed else []),
                   *report.errors]
        raise DstmError("; ".join(reasons) or f"ansible status {report.linux.status}")


COMMANDS = (apply, plan)
