"""`-m "not lab"` selects only tests that need no root (issue 7 item 29): a test that
needs root carries the `lab` mark, explicitly or through tests/conftest.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _collect(*args: str, cwd: Path = ROOT) -> list[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr  # 5: nothing selected
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_a_test_marked_needs_root_is_deselected_by_not_lab(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "from tests.conftest import needs_root\n\n\n"
        "@needs_root()\ndef test_root():\n    pass\n\n\n"
        "def test_plain():\n    pass\n")
    selected = _collect("-p", "tests.conftest", "-c", os.devnull, "--rootdir", str(tmp_path),
                        "-m", "not lab", str(tmp_path / "test_sample.py"), cwd=tmp_path)
    assert [line.rpartition("::")[2] for line in selected] == ["test_plain"]


def test_modules_that_need_root_throughout_have_no_test_outside_lab():
    whole = re.compile(r"^pytestmark = (\[[^\]]*(needs_root\(\)|geteuid)|LAB_MARKS)", re.M)
    modules = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_*.py")
                     if whole.search(path.read_text()))
    assert "tests/test_modules.py" in modules and "tests/test_netconf.py" in modules
    assert _collect("-m", "not lab", *modules) == []
