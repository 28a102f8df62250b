"""``dstm-orch store init``: create a domain's lease store (the commands that only read or
push leases refuse a store that does not exist, so a mistyped ``--state`` cannot pass
for an empty domain). ``dstm-orch store migrate``: copy a domain's lease store, whole
history included, from an SQLite file into PostgreSQL (several servers on one domain
share it), verified by row counts and a checksum of the rows on both sides."""

from __future__ import annotations

import json

import click

from dstm_orch.cli.context import Context, common
from dstm_orch.domain.errors import StoreError
from dstm_orch.store import is_postgres, open_store


@click.group("store")
def store() -> None:
    """The lease store itself."""


@store.command("migrate")
@click.option("--from", "source", required=True, metavar="sqlite:FILE",
              help="The store to copy: an SQLite file (sqlite:FILE or FILE).")
@click.option("--to", "target", required=True, metavar="postgresql://...",
              help="An empty PostgreSQL store (a libpq URL; created or migrated to the "
              "current schema).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts and checksum as JSON.")
def migrate(source: str, target: str, as_json: bool) -> None:
    """Copy every lease, event and push record from --from into the empty store --to,
    then verify counts and a SHA-256 of the rows on both sides (one transaction: on any
    difference nothing is written, exit 1)."""
    from dstm_orch.store.pg_copy import copy_store

    if is_postgres(source) or not is_postgres(target):
        raise StoreError("store migrate copies from an SQLite file (--from sqlite:FILE) into"
                         f" PostgreSQL (--to postgresql://...); got --from {source!r}"
                         f" --to {target!r}")
    with open_store(source, create=False) as old, open_store(target) as new:
        done = copy_store(old, new)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps({"counts": done.counts, "sha256": done.sha256}, indent=2))
        return
    counts = ", ".join(f"{count} {table}" for table, count in done.counts.items())
    click.echo(f"copied {counts}; sha256 {done.sha256} equal on both sides")


@store.command("init")
@common
def init(ctx: Context) -> None:
    """Create the domain's lease store at --state (or open it when it exists) and print
    its schema version. allocate and serve create it too; the other commands refuse a
    store that does not exist."""
    ctx.creates_store = True
    lease_store = ctx.store
    if ctx.as_json:
        click.echo(json.dumps({"store": str(lease_store.path),
                               "schema_version": lease_store.schema_version}, indent=2))
    else:
        click.echo(f"lease store {lease_store.path}: schema version "
                   f"{lease_store.schema_version}")


COMMANDS = (store,)
