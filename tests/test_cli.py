"""The CLI's contract without devices: exit codes, one-line reasons, JSON lease shape."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from dstm_orch.cli.main import main
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.store.identity import SCHEMA_VERSION
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
    assert run(tmp_path, "store", "init")[0] == 0
    rc, _, err = run(tmp_path, "apply", "--limit", "nosuch")
    assert rc == 1
    assert "--limit 'nosuch' matches no node or TEP" in err


def test_a_store_that_does_not_exist_is_refused_and_not_created(tmp_path):
    # A mistyped --state must not read as an empty domain: its plan would withdraw
    # every lease from the devices.
    store = tmp_path / "s.sqlite"
    for command in (["leases"], ["who", "198.51.100.1"], ["expire"], ["revoke", "n1"],
                    ["renew", "n1"], ["plan"], ["apply"]):
        rc, out, err = run(tmp_path, *command)
        assert rc == 1, command
        assert err == (f"dstm-orch: error: lease store {store}: no such file; check --state "
                       "or DSTM_ORCH_STATE (`dstm-orch store init`, `allocate` and `serve` "
                       "create a new store)\n"), command
        assert not store.exists(), command
    rc, out, _ = run(tmp_path, "store", "init", "--json")
    assert rc == 0 and json.loads(out) == {"store": str(store), "schema_version": SCHEMA_VERSION}
    assert run(tmp_path, "leases", "--json") == (0, "[]\n", "")


# -- errors under --json (issue 7 item 26) ---------------------------------------------------

def test_known_error_under_json_is_also_a_json_document_on_stdout(tmp_path):
    rc, out, err = run(tmp_path, "allocate", "n9", "--json")
    assert rc == 1
    assert json.loads(out) == {
        "error": "unknown_node",
        "message": "unknown node 'n9': domain 'lab' declares no node of that name"}
    assert err == ("dstm-orch: error: unknown node 'n9': domain 'lab' declares no node of "
                   "that name\n")


def test_usage_error_under_json_is_also_a_json_document_on_stdout(tmp_path):
    rc, out, err = run(tmp_path, "allocate", "n1", "--lifetime", "0", "--json")
    assert rc == 2 and "--lifetime" in err
    document = json.loads(out)
    assert document["error"] == "usage" and "'--lifetime': 0" in document["message"]


def test_inventory_error_under_json_lists_the_problems(tmp_path):
    inventory = tmp_path / "inv"
    shutil.copytree(LAB_INVENTORY, inventory)
    hosts = inventory / "hosts.yml"
    hosts.write_text(hosts.read_text().replace('"2001:db8:100::11"', '"fe80::11"', 1))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["leases", "--json", "-i", str(inventory), "--state", str(tmp_path / "s")])
    document = json.loads(out.getvalue())
    assert rc == 1 and document["error"] == "inventory"
    assert {"file": str(hosts), "key": "n1.ansible_host"}.items() <= document["problems"][0].items()


def test_without_json_an_error_prints_nothing_on_stdout(tmp_path):
    rc, out, _ = run(tmp_path, "allocate", "n1", "--lifetime", "0")
    assert rc == 2 and out == ""


# -- where the process logs (issue 7 item 25) ------------------------------------------------

def test_log_file_planted_as_a_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    link = tmp_path / "dstm-orch.log"
    link.symlink_to(victim)
    dangling = tmp_path / "dangling.log"
    dangling.symlink_to(tmp_path / "created-through-link")
    for path in (link, dangling):
        rc, _, err = run(tmp_path, "--log-file", str(path), "leases")
        assert rc == 1
        assert err == (f"dstm-orch: error: log file {path}: is a symbolic link; refusing to "
                       "follow it\n")
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not (tmp_path / "created-through-link").exists()


def test_log_file_is_created_and_kept_at_mode_0600(tmp_path):
    fresh, loose = tmp_path / "fresh.log", tmp_path / "loose.log"
    loose.write_text("")
    loose.chmod(0o666)
    assert run(tmp_path, "store", "init")[0] == 0
    old = os.umask(0)
    try:
        for path in (fresh, loose):
            rc, _, _ = run(tmp_path, "--log-file", str(path), "leases")
            assert rc == 0 and stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_log_file_that_is_not_a_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    rc, _, err = run(tmp_path, "--log-file", str(fifo), "leases")
    assert rc == 1 and err == f"dstm-orch: error: log file {fifo}: not a regular file\n"


def _bug(*args, **kwargs):
    raise RuntimeError("a bug")


def test_unexpected_error_points_to_the_traceback(tmp_path, monkeypatch):
    # A bug cannot be caused for real: a patched allocator method stands in for one.
    assert run(tmp_path, "store", "init")[0] == 0
    monkeypatch.setattr(Allocator, "leases", _bug)
    rc, out, err = run(tmp_path, "leases", "--json")
    assert rc == 3 and json.loads(out)["error"] == "unexpected"
    assert "Traceback" in err and "RuntimeError: a bug" in err
    assert err.endswith("dstm-orch: unexpected error: RuntimeError: a bug "
                        "(traceback above; please report it)\n")
    log = tmp_path / "run.log"
    rc, _, err = run(tmp_path, "--log-file", str(log), "leases")
    assert rc == 3 and err.endswith(f"(traceback in {log}; please report it)\n")
    assert "Traceback" in log.read_text() and "RuntimeError: a bug" in log.read_text()


def test_a_client_server_address_that_is_not_ipv6_is_a_usage_error():
    # Draft section 5: the client/server exchange MUST be over IPv6.
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["client", "request", "--server", "192.0.2.1:3786", "--node", "n1"])
    assert rc == 2
    assert ("Invalid value for --server: server address '192.0.2.1:3786' is not [IPV6]:PORT "
            "(IPv6 only, draft section 5)") in err.getvalue()


def test_a_serve_listen_address_that_is_not_ipv6_is_a_usage_error(tmp_path):
    rc, _, err = run(tmp_path, "serve", "--listen", "127.0.0.1:3786")
    assert rc == 2
    assert ("Invalid value for --listen: listen address '127.0.0.1:3786' is not [IPV6]:PORT "
            "(IPv6 only, draft section 5)") in err


def test_serve_names_the_address_it_cannot_listen_on(tmp_path):
    import socket

    assert run(tmp_path, "store", "init")[0] == 0
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.bind(("::1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        rc, _, err = run(tmp_path, "serve", "--listen", "[::1]:0", "--api-listen",
                         f"[::1]:{port}", "--push", "none")
    assert rc == 1
    assert f"cannot listen on [::1]:{port}: Address already in use" in err


def test_empty_answers_say_so_in_words(tmp_path):
    assert run(tmp_path, "store", "init")[0] == 0
    assert run(tmp_path, "leases") == (0, "no active lease\n", "")
    assert run(tmp_path, "leases", "--all") == (0, "no lease\n", "")
    assert run(tmp_path, "expire") == (
        0, "nothing to reclaim: no lease has ended unreclaimed\n", "")
    assert run(tmp_path, "expire", "--json") == (0, "[]\n", "")


@pytest.mark.lab
def test_a_store_on_a_read_only_file_system_says_so(tmp_path):
    # A real read-only file system: a read-only bind mount in a private mount namespace
    # (unshare -m), gone with the process. SQLite alone says "unable to open database
    # file"; WAL mode cannot even read there (its -shm file).
    assert run(tmp_path, "store", "init")[0] == 0
    argv = ["unshare", "-m", "sh", "-c",
            f'mount --bind -o ro "{tmp_path}" "{tmp_path}" && exec "$@"', "sh",
            sys.executable, "-m", "dstm_orch", "leases", "-i", str(LAB_INVENTORY),
            "--state", str(tmp_path / "s.sqlite")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"lease store {tmp_path / 's.sqlite'}: cannot open" in proc.stderr
    assert f"({tmp_path} is on a read-only file system)" in proc.stderr
