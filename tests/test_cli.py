"""The CLI's contract without devices: exit codes, one-line reasons, JSON lease shape."""

from __future__ import annotations

import contextlib
import io
import json

from dstm_orch.cli.main import main
from tests.conftest import LAB_INVENTORY


def run(tmp_path, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*args, "-i", str(LAB_INVENTORY), "--state", str(tmp_path / "s.sqlite")])
    return rc, out.getvalue(), err.getvalue()


def test_lease_json_carries_lifetime_end_and_tep(tmp_path):
    rc, out, _ = run(tmp_path, "allocate", "n1", "--lifetime", "600", "--json")
    assert rc == 0
    lease = json.loads(out)
    # Invariant 2: lifetime (seconds), absolute end and the TEP's IPv6 address.
    assert lease["lifetime"] == 600 and lease["tep_ipv6"] == "2001:db8:200::a"
    assert lease["ipv4"] == "198.51.100.1" and lease["port_set"] is None
    assert lease["end"].endswith("Z") and lease["state"] == "active"


def test_unknown_node_is_a_known_error(tmp_path):
    rc, out, err = run(tmp_path, "allocate", "n9")
    assert rc == 1 and out == ""
    assert err.startswith("dstm-orch: error: ") and "n9" in err and err.count("\n") == 1


def test_usage_error_exits_2(tmp_path):
    rc, _, err = run(tmp_path, "allocate", "n1", "--lifetime", "0")
    assert rc == 2 and "--lifetime" in err


def test_limit_that_matches_nothing_is_refused(tmp_path):
    rc, _, err = run(tmp_path, "apply", "--limit", "nosuch")
    assert rc == 1
    assert "--limit 'nosuch' matches no node or TEP" in err
