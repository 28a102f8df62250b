"""``python -m dstm_orch.roaming serve|client ...``: the roaming commands on their own.

The same click objects as ``dstm-orch serve`` and ``dstm-orch client``; handy on a
roaming node that runs only the client. Exit codes as ``dstm-orch``: 0 success, 1 a
known error, 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import sys

import click

from dstm_orch.errors import DstmError
from dstm_orch.roaming.cli import client, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def roaming() -> None:
    """DSTM roaming nodes (draft-ietf-ngtrans-dstm-08 section 6, VPN scenario)."""


roaming.add_command(serve)
roaming.add_command(client)


def main(argv: list[str] | None = None) -> int:
    """Run the commands with ``argv``; return the exit code."""
    try:
        roaming.main(args=argv, prog_name="python -m dstm_orch.roaming", standalone_mode=False)
    except DstmError as exc:
        click.echo(f"dstm-orch: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("dstm-orch: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
