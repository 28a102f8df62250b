"""The ``dstm-orch`` command line: the command group, logging and the error handler.

The commands live one group per module (``leases``, ``push``, ``store``, ``lab``,
``serve``); this
module only assembles them and turns every outcome into an exit code. Exit codes: 0
success, 1 a known error (one line saying why), 2 a usage error, 3 an unexpected error
(traceback on stderr, or in the ``--log-file``), 130 interrupted. Under ``--json`` an
error is also printed on stdout as ``{"error": CODE, "message": TEXT}``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys

import click

from dstm_orch import __version__
from dstm_orch.cli import gitops, leases, push, store
from dstm_orch.cli.lab import lab
from dstm_orch.cli.logs import ProcessLogs
from dstm_orch.cli.serve import client, serve
from dstm_orch.domain.errors import DstmError, InventoryError

log = logging.getLogger("dstm_orch")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dstm-orch")
@click.option("--log-file", envvar="DSTM_ORCH_LOG_FILE", type=click.Path(dir_okay=False),
              help="Also log to this file (created with mode 0600, never through a symbolic "
              "link; env DSTM_ORCH_LOG_FILE). Default: stderr only (journald under systemd).")
@click.pass_context
def cli(ctx: click.Context, log_file: str | None) -> None:
    """DSTM server as a configuration orchestrator (draft-ietf-ngtrans-dstm-08)."""
    if log_file:
        ctx.ensure_object(ProcessLogs).add_file(log_file)


for _command in (*leases.COMMANDS, *push.COMMANDS, *gitops.COMMANDS, *store.COMMANDS,
                 lab, serve, client):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` and return the exit code (testable entry point)."""
    args = sys.argv[1:] if argv is None else list(argv)
    logs = ProcessLogs()
    try:
        return _invoke(args, logs)
    finally:
        logs.close()


def _invoke(args: list[str], logs: ProcessLogs) -> int:
    as_json = "--json" in args[:args.index("--")] if "--" in args else "--json" in args
    try:
        cli.main(args=args, prog_name="dstm-orch", standalone_mode=False, obj=logs)
    except DstmError as exc:
        click.echo(f"dstm-orch: error: {exc}", err=True)
        return _json_error(as_json, _error_code(exc), str(exc), exc.exit_code, exc)
    except click.exceptions.Abort:
        click.echo("dstm-orch: interrupted", err=True)
        return _json_error(as_json, "interrupted", "interrupted", 130)
    except click.ClickException as exc:
        exc.show()
        return _json_error(as_json, "usage", exc.format_message(), 2)
    except (KeyboardInterrupt, InterruptedError):
        click.echo("dstm-orch: interrupted", err=True)
        return _json_error(as_json, "interrupted", "interrupted", 130)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:
        log.exception("unexpected error")
        where = f"traceback in {logs.file}" if logs.file else "traceback above"
        message = f"unexpected error: {type(exc).__name__}: {exc}"
        click.echo(f"dstm-orch: {message} ({where}; please report it)", err=True)
        return _json_error(as_json, "unexpected", message, 3)
    return 0


def _error_code(exc: DstmError) -> str:
    """``PoolExhaustedError`` -> ``pool_exhausted``; a plain ``DstmError`` -> ``error``."""
    name = type(exc).__name__.removesuffix("Error") or "Dstm"
    code = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return "error" if code == "dstm" else code


def _json_error(as_json: bool, code: str, message: str, exit_code: int,
                exc: DstmError | None = None) -> int:
    if as_json:
        document: dict = {"error": code, "message": message}
        if isinstance(exc, InventoryError):
            document["problems"] = [dataclasses.asdict(p) for p in exc.problems]
        click.echo(json.dumps(document, indent=2))
    return exit_code


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
