"""The package as its users install it (issue 8 section 2): the wheel, built from this
checkout, installed with its declared dependencies into a fresh venv outside the checkout
(no system site packages), runs from a directory outside the checkout and finds its data
in its own site-packages, not in the checkout.

Dependencies come from pip's index and cache as configured on the machine; libyang is
built against the system's libyang2-dev (scripts/setup installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import needs_root
from tests.netconf_server import NetconfServer
from tests.test_cli_netconf import device_entries

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "inventories" / "example"

pytestmark = [pytest.mark.wheel, pytest.mark.slow]

BUILD_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                      "__pycache__", ".pytest_cache", ".ruff_cache")


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything pointing into the checkout or its venv
    (and without the test suite's hermetic XDG_CACHE_HOME, so pip reuses its cache)."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "XDG_CACHE_HOME", "DSTM_ORCH_HOME",
            "DSTM_ORCH_STATE", "DSTM_ORCH_INVENTORY", "PYTHONHOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not p.startswith(str(ROOT)) and ".venv" not in p)
    return env | extra


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, workdir): the wheel installed in a fresh venv; workdir is outside the checkout."""
    base = tmp_path_factory.mktemp("wheel")
    assert not base.is_relative_to(ROOT)
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=BUILD_IGNORE)
    env = _clean_env()
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                  str(base / "dist"), str(source)], base, env)
    assert build.returncode == 0, build.stderr
    (wheel,) = (base / "dist").glob("dstm_orch-*.whl")
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], base, env)
    assert made.returncode == 0, made.stderr
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    install = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                   base, env)
    assert install.returncode == 0, install.stderr
    workdir = base / "work"
    workdir.mkdir()
    shutil.rmtree(source)
    return venv, workdir


def _dstm_orch(installed, *args: str) -> subprocess.CompletedProcess:
    venv, workdir = installed
    env = _clean_env(PATH=f"{venv / 'bin'}{os.pathsep}/usr/sbin:/usr/bin:/sbin:/bin")
    return _run([str(venv / "bin" / "dstm-orch"), *args], workdir, env)


def test_help_runs_from_the_installed_script(installed):
    proc = _dstm_orch(installed, "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("allocate", "apply", "plan", "leases", "who", "serve", "client", "lab"):
        assert f"\n  {command} " in proc.stdout


def test_offline_commands_on_a_copy_of_the_example_inventory(installed, tmp_path):
    inventory = tmp_path / "example"
    shutil.copytree(EXAMPLE, inventory)
    state = tmp_path / "leases.sqlite"
    common = ["-i", str(inventory), "--state", str(state), "--json"]
    proc = _dstm_orch(installed, "leases", *common)
    assert proc.returncode == 1 and not state.exists(), proc.stderr   # no store yet
    proc = _dstm_orch(installed, "store", "init", *common)
    assert proc.returncode == 0, proc.stderr
    proc = _dstm_orch(installed, "leases", *common)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    # The campus pool is 203.0.113.0/25 without .0 and .127: ws-01 gets .1 for the
    # domain's default lifetime; legacy-app its reservation 203.0.113.10, without end.
    proc = _dstm_orch(installed, "allocate", "ws-01", *common)
    assert proc.returncode == 0, proc.stderr
    lease = json.loads(proc.stdout)
    assert (lease["ipv4"], lease["lifetime"], lease["tep_ipv6"]) == (
        "203.0.113.1", 3600, "2001:db8:e0:ff::a")
    proc = _dstm_orch(installed, "allocate", "legacy-app", *common)
    assert json.loads(proc.stdout)["ipv4"] == "203.0.113.10"
    assert json.loads(proc.stdout)["end"] is None
    proc = _dstm_orch(installed, "who", "203.0.113.1", *common)
    assert proc.returncode == 0 and json.loads(proc.stdout)["holders"][0]["node"] == "ws-01"


def test_package_code_and_data_come_from_the_venv(installed):
    venv, workdir = installed
    probe = (
        "import json, sys, importlib.resources as r, dstm_orch\n"
        "root = r.files('dstm_orch')\n"
        "data = [root / 'config' / 'schemas' / 'domain.schema.json',\n"
        "        root / 'config' / 'schemas' / 'host-vars.schema.json',\n"
        "        *(root / 'push' / 'netconf' / 'templates').iterdir()]\n"
        "print(json.dumps({'package': dstm_orch.__file__, 'path': sys.path,\n"
        "                  'data': [str(p) for p in data]}))\n"
    )
    proc = _run([str(venv / "bin" / "python"), "-c", probe], workdir, _clean_env())
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    assert Path(found["package"]).is_relative_to(site)
    assert len(found["data"]) >= 3
    for path in found["data"]:
        assert Path(path).is_relative_to(site / "dstm_orch") and Path(path).exists()
    assert not [p for p in found["path"] if p and Path(p).resolve().is_relative_to(ROOT)]


def test_the_collection_ships_in_the_wheel_and_ansible_finds_it(installed):
    # The CLI's Ansible runs need dstm.orch: the wheel carries it, and Ansible finds it in
    # site-packages without any ANSIBLE_COLLECTIONS_PATH.
    venv, workdir = installed
    env = _clean_env()
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    proc = _run([str(venv / "bin" / "ansible-doc"), "dstm.orch.routes"], workdir, env)
    assert proc.returncode == 0, proc.stderr
    assert "dstm.orch.routes" in proc.stdout.replace("DSTM.ORCH.ROUTES", "dstm.orch.routes")
    probe = ("from dstm_orch.push.ansible import collection_root\n"
             "print(collection_root())")
    proc = _run([str(venv / "bin" / "python"), "-c", probe], workdir, env)
    assert proc.returncode == 0, proc.stderr
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    root = Path(proc.stdout.strip())
    assert root.is_relative_to(site) and (root / "playbooks" / "apply.yml").is_file()


def test_every_module_imports_with_the_declared_dependencies_only(installed):
    # libyang, lxml, paramiko and ncclient are imported by the NETCONF pusher: the venv
    # holds only what pyproject.toml declares, so a missing dependency fails here.
    venv, workdir = installed
    probe = ("import importlib, pkgutil, dstm_orch\n"
             "for m in pkgutil.walk_packages(dstm_orch.__path__, 'dstm_orch.'):\n"
             "    if not m.name.endswith('__main__'):\n"
             "        importlib.import_module(m.name)\n")
    proc = _run([str(venv / "bin" / "python"), "-c", probe], workdir, _clean_env())
    assert proc.returncode == 0, proc.stderr
    check = _run([str(venv / "bin" / "python"), "-m", "pip", "check"], workdir, _clean_env())
    assert check.returncode == 0, check.stdout


@pytest.fixture
def router(tmp_path):
    server = NetconfServer(tmp_path / "nc", f"dstm-nc-whl-{os.getpid()}",
                           "2001:db8:c2e:1::2/64", target="candidate")
    with server:
        yield server


@pytest.mark.lab
@needs_root()
def test_netconf_push_from_the_installed_package(installed, router, tmp_path):
    conn = router.connection()
    inventory = tmp_path / "inv"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "dstm_teps": {"hosts": {"rtr1": {
            "ansible_host": str(conn["host"]), "ansible_port": conn["port"],
            "ansible_user": conn["username"],
            "ansible_ssh_private_key_file": str(conn["key_filename"]),
            "dstm_tep_kind": "netconf", "dstm_tep_ipv6": "2001:db8:c2f:1::a",
            "dstm_tep_netconf_known_hosts": str(conn["known_hosts"]),
        }}},
        "dstm_nodes": {"hosts": {"n1": {"ansible_host": "2001:db8:c2f:2::11"}}},
    }}}))
    (inventory / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
        "name": "whl", "pools": [{"name": "p1", "tep": "rtr1",
                                  "ranges": ["203.0.113.1-203.0.113.6"]}],
    }}))
    venv, workdir = installed
    # The operator names the YANG modules' directory; nothing is looked up in the checkout.
    env = _clean_env(PATH=f"{venv / 'bin'}{os.pathsep}/usr/sbin:/usr/bin:/sbin:/bin",
                     DSTM_ORCH_YANG_DIR=str(router.yang_dir))
    common = ["-i", str(inventory), "--state", str(tmp_path / "leases.sqlite"), "--json"]
    dstm_orch = str(venv / "bin" / "dstm-orch")
    proc = _run([dstm_orch, "allocate", "n1", *common], workdir, env)
    assert proc.returncode == 0, proc.stderr
    # Only the router: node n1 is an address in the inventory, no host this test runs.
    proc = _run([dstm_orch, "apply", "--limit", "rtr1", *common], workdir, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    # RFC 8676 binding entry keyed by the node's IPv6 address, with its leased IPv4.
    assert device_entries(router) == {"2001:db8:c2f:2::11": "203.0.113.1"}
