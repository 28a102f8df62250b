"""GitOps commands: ``validate`` (offline, for pre-commit hooks and merge requests).

``plan`` and ``apply`` (``dstm_orch.cli.push``) take the GitOps options
(``--detailed-exitcode``, ``--out``, ``--format``, ``--drain-now``, ``apply FILE``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from dstm_orch.cli.context import Context, common
from dstm_orch.domain.model import utcnow


@click.command()
@click.option("--drain-now", is_flag=True,
              help="With a lease store: list the leases of removed pools as revoked by "
              "apply instead of refusing.")
@common
def validate(ctx: Context, drain_now: bool) -> None:
    """Check the inventory offline: schema, domain rules, and what would be pushed from
    its static reservations (invariants, YANG shape); no device. When --state (or
    DSTM_ORCH_STATE) names an existing lease store, also refuse a removed pool that
    still has active leases."""
    from dstm_orch.push.offline import check_leases, validate_offline

    started = time.monotonic()
    report = validate_offline(ctx.inventory)
    revoke = []
    if ctx.state_path and Path(ctx.state_path).is_file():
        revoke = check_leases(ctx.inventory, ctx.store, utcnow(), drain_now=drain_now)
    seconds = round(time.monotonic() - started, 3)
    if ctx.as_json:
        click.echo(json.dumps({**report.as_dict(), "revoke": [r.as_dict() for r in revoke],
                               "seconds": seconds}, indent=2))
    else:
        click.echo(report.text())
        for item in revoke:
            click.echo(f"  apply will {item.text()}")


COMMANDS = (validate,)
