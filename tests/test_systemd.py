"""The systemd unit in contrib/systemd passes ``systemd-analyze verify``.

The unit's ``ExecStart`` names /usr/local/bin/dstm-orch (where ``pip install`` puts it
on a server); the copy checked here names this environment's ``dstm-orch``, since
``verify`` requires the program to exist.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNITS = sorted((ROOT / "contrib" / "systemd").glob("*.service"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_passes_systemd_analyze_verify(unit, tmp_path):
    program = Path(sys.executable).with_name("dstm-orch")
    assert program.exists(), program
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/usr/local/bin/dstm-orch", str(program)))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)],
                          capture_output=True, text=True)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if unit.name in line or "Failed" in line or "error" in line.lower()]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_units_exist():
    assert [u.name for u in UNITS] == ["dstm-orch-client.service", "dstm-orch.service"]
