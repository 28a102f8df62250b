"""Push commands: ``apply [FILE]`` and ``plan`` (Ansible for Linux nodes and TEPs,
NETCONF for router TEPs, RFC 6241 and RFC 8676), with the GitOps options of
:mod:`dstm_orch.push.gitops`: ``plan --detailed-exitcode``, ``--out FILE``,
``--format text|markdown|json``, ``--drain-now``; ``apply FILE`` applies a saved plan.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import click
from rich.console import Console

from dstm_orch.cli.context import HOSTKEY, Context, common
from dstm_orch.cli.progress import shown
from dstm_orch.domain.errors import DstmError
from dstm_orch.domain.model import utcnow

DRAIN_NOW = click.option("--drain-now", is_flag=True,
                         help="Revoke the active leases of pools removed from the inventory "
                         "(refused otherwise).")


@click.command()
@click.argument("plan_file", metavar="[FILE]", required=False,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--check", is_flag=True, help="Dry run: show what would change, change nothing.")
@click.option("--limit", metavar="PATTERN", help="Ansible host pattern to restrict the run.")
@click.option("--replace", is_flag=True,
              help="NETCONF TEPs: replace the whole binding table instead of sending changes.")
@click.option("--refresh", is_flag=True,
              help="Contact every device, also those whose last push matches the intent.")
@DRAIN_NOW
@HOSTKEY
@common
def apply(ctx: Context, plan_file: Path | None, check: bool, limit: str | None, replace: bool,
          refresh: bool, drain_now: bool, no_host_key_check: bool) -> None:
    """Push the current leases to every node and TEP (Ansible and NETCONF, over IPv6).

    A device whose last recorded push brought it the intent it should hold now is left
    out (it is "in step"); --refresh contacts it anyway, and plan always reads it.

    With FILE (from `plan --out FILE`), apply exactly that plan, or refuse without
    changing anything when the inventory, the leases or a device changed since."""
    from dstm_orch.push.gitops import SavedPlan, apply_live, apply_saved
    from dstm_orch.push.orchestrate import held_teps

    verify = _hostkey(no_host_key_check)
    inv = ctx.inventory
    if plan_file is not None:
        used = [name for name, on in (("--check", check), ("--limit", limit),
                                      ("--replace", replace), ("--refresh", refresh),
                                      ("--drain-now", drain_now)) if on]
        if used:
            raise click.UsageError(f"apply FILE takes the plan's options; {', '.join(used)} "
                                   "cannot be given with FILE")
        saved = SavedPlan.load(plan_file)
        # The TEPs' push locks first (issue 13), then the time and the leases.
        with held_teps(inv, ctx.store, hosts=list(saved.document["devices"])), \
                shown(ctx.as_json):
            outcome = apply_saved(inv, ctx.store, saved, utcnow(), hostkey_verify=verify)
    else:
        with nullcontext() if check else held_teps(inv, ctx.store, limit=limit), \
                shown(ctx.as_json):
            now = utcnow()
            outcome = apply_live(inv, ctx.store, now, check=check, limit=limit,
                                 replace=replace, drain_now=drain_now, hostkey_verify=verify,
                                 refresh=refresh)
    _print(ctx, outcome, "json" if ctx.as_json else "text")
    _raise_errors(outcome)


@click.command()
@click.option("--limit", metavar="PATTERN", help="Ansible host pattern to restrict the run.")
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 0 when nothing would change, 2 when something would, 1 on error.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the plan to FILE, for `apply FILE`.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]),
              default=None, help="Output format (default text; --json is --format json).")
@DRAIN_NOW
@HOSTKEY
@common
def plan(ctx: Context, limit: str | None, detailed_exitcode: bool, out: Path | None,
         fmt: str | None, drain_now: bool, no_host_key_check: bool) -> None:
    """Show per device what apply would change, and drift, from the devices' real state."""
    from dstm_orch.push.gitops import SavedPlan, make_plan

    verify = _hostkey(no_host_key_check)
    inv = ctx.inventory
    with shown(ctx.as_json or fmt == "json"):
        outcome = make_plan(inv, ctx.store, utcnow(), limit=limit, drain_now=drain_now,
                            hostkey_verify=verify)
    _print(ctx, outcome, fmt or ("json" if ctx.as_json else "text"))
    _raise_errors(outcome)
    if out is not None:
        SavedPlan.of(outcome, inv, ctx.store, limit=limit, drain_now=drain_now).write(out)
        click.echo(f"dstm-orch: plan saved to {out}; apply it with `dstm-orch apply {out}`",
                   err=True)
    if detailed_exitcode and outcome.changed:
        raise SystemExit(2)


def _hostkey(no_host_key_check: bool) -> bool:
    if no_host_key_check:
        click.echo("dstm-orch: warning: NETCONF host key verification is OFF", err=True)
    return not no_host_key_check


def _print(ctx: Context, outcome, fmt: str) -> None:
    document = outcome.as_dict()
    if fmt == "json":
        click.echo(json.dumps(document, indent=2))
        return
    if fmt == "markdown":
        from dstm_orch.push.markdown import render

        names = {b["node_ipv6"]: b["node"] for tep in outcome.intent.teps.values()
                 for b in tep["bindings"]}
        names.update({str(r.lease.node_ipv6): f"{r.lease.node} (revoked)"
                      for r in outcome.effects.revoke})
        click.echo(render(document, names), nl=False)
        return
    report = outcome.report
    console = Console(width=200, soft_wrap=True)
    for host in (report.linux.hosts.values() if report.linux else []):
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
    effects = outcome.effects
    for move in outcome.intent.moves:
        console.print(move.text() + ("" if report.check else " (done: new TEP, node, old TEP)"),
                      highlight=False, markup=False)
    for phase in outcome.phases:
        line = phase.text() if report.check or phase.after is None else f"done: {phase.text()}"
        console.print(line if phase.after else f"warning: {line}", highlight=False,
                      markup=False)
    if report.check:
        for item in effects.revoke:
            console.print(f"apply will {item.text()}", highlight=False, markup=False)
    for lease in outcome.revoked:
        console.print(f"revoked: lease {lease.id} of {lease.node} ({lease.ipv4})",
                      highlight=False, markup=False)
    for orphan in effects.orphans:
        console.print(f"warning: {orphan.text()}", highlight=False, markup=False)
    for pool, count in sorted(effects.old_layout.items()):
        console.print(f"pool {pool}: {count} active lease(s) on an old port-set layout, "
                      "kept until they end", highlight=False, markup=False)


def _raise_errors(outcome) -> None:
    report = outcome.report
    if report.ok:
        return
    linux = list(report.linux.hosts.values()) if report.linux else []
    failed = sorted(h.host for h in linux if h.failed or h.unreachable)
    reasons = [*([f"ansible failed on {', '.join(failed)}"] if failed else []), *report.errors]
    raise DstmError("; ".join(reasons) or f"ansible status {report.linux.status}")


COMMANDS = (apply, plan)
