"""GitOps commands: ``validate`` (offline, for pre-commit hooks and merge requests).

``plan`` and ``apply`` (``dstm_orch.cli.push``) take the GitOps options
(``--detailed-exitcode``, ``--out``, ``--format``, ``apply FILE``).
"""

from __future__ import annotations

import json
import time

import click

from dstm_orch.cli.context import Context, common


@click.command()
@common
def validate(ctx: Context) -> None:
    """Check the inventory offline: schema, domain rules, and what would be pushed from
    its static reservations (invariants, YANG shape); no device, no lease store."""
    from dstm_orch.push.offline import validate_offline

    started = time.monotonic()
    report = validate_offline(ctx.inventory)
    seconds = round(time.monotonic() - started, 3)
    if ctx.as_json:
        click.echo(json.dumps({**report.as_dict(), "seconds": seconds}, indent=2))
    else:
        click.echo(report.text())


COMMANDS = (validate,)
