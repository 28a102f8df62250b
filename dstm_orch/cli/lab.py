"""The ``lab`` command group: the inventory's domain in network namespaces (needs root)."""

from __future__ import annotations

import json

import click


@click.group()
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
    from dstm_orch.lab.plan import lab_settings

    raw = _lab_inventory(inventory)
    labmod.lab_down(raw)
    click.echo(f"lab {lab_settings(raw).name}: down (namespaces, sshd, links and "
               "state removed)")


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
    """Run a command inside lab HOST's namespace: lab exec HOST -- CMD... (the command
    replaces this process: a signal sent to it reaches the command, and its exit status
    is the command's)."""
    import os
    import sys

    from dstm_orch import lab as labmod
    from dstm_orch.domain.errors import LabError

    command = labmod.lab_exec_argv(_lab_inventory(inventory), host, list(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        raise LabError(f"lab exec on {host}: cannot run {command[0]}: "
                              f"{exc.strerror}") from None
