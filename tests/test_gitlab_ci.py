"""The example GitLab CI pipeline (examples/gitlab-ci.yml, issue 13), its commands run in
order as the runner would run them (bash -e -o pipefail, before_script then script; not
GitLab itself) against a real netconfd router TEP and an inventory in a git repository.

A branch adds a node, drains a pool and removes a node: the merge-request jobs validate
and comment the Markdown plan (plan exit 2) on a loopback stand-in for the GitLab API;
after the merge the default-branch jobs validate, plan to plan.json (exit 2) and apply
that saved plan; a second plan exits 0. The vault password comes from a File variable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret

from tests.conftest import ROOT, needs_root
from tests.test_cli_netconf import device_entries, inventory, router

pytestmark = [pytest.mark.lab, needs_root()]
__all__ = ["inventory", "router"]   # fixtures

PIPELINE = yaml.safe_load((ROOT / "examples" / "gitlab-ci.yml").read_text())
N1, N2 = "2001:db8:c0f:2::11", "2001:db8:c0f:2::12"


class Notes(BaseHTTPRequestHandler):
    posted: ClassVar[list[tuple[str, str, dict]]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Notes.posted.append((self.path, self.headers["PRIVATE-TOKEN"], body))
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"id": 1}')

    def log_message(self, *args):
        pass


def job_script(name: str) -> str:
    job = PIPELINE[name]
    base = PIPELINE[job["extends"]] if "extends" in job else {}
    lines = [*base.get("before_script", []), *job.get("before_script", []), *job["script"]]
    return "\n".join(lines) + "\n"


def run_job(name: str, checkout, env: dict) -> tuple[int, str]:
    script = checkout.parent / f"job-{name.replace(':', '-')}.sh"
    script.write_text(job_script(name))
    done = subprocess.run(["bash", "-e", "-o", "pipefail", str(script)], cwd=checkout,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    return done.returncode, done.stdout + done.stderr


def git(checkout, *args) -> None:
    subprocess.run(["git", "-C", str(checkout), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"})


def edit(path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_the_pipeline_commands_in_order(router, inventory, tmp_path):
    checkout = tmp_path / "repo"
    inv = checkout / "inventory"
    shutil.copytree(inventory, inv)
    # The inventory's secrets are vaulted; the password is a File variable of the project.
    (tmp_path / "vault-password").write_text("correct horse\n")
    vault = VaultLib([("default", VaultSecret(b"correct horse"))])
    (inv / "host_vars").mkdir()
    (inv / "host_vars" / "rtr1.yml").write_text(
        vault.encrypt("dstm_tep_netconf_confirm_timeout: 30\n").decode())
    edit(inv / "hosts.yml", lambda d: d["all"]["children"]["dstm_teps"]["hosts"]["rtr1"].pop(
        "dstm_tep_netconf_confirm_timeout"))
    edit(inv / "group_vars" / "all" / "dstm.yml", lambda d: d["dstm_domain"]["pools"].append(
        {"name": "p2", "tep": "rtr1", "ranges": ["203.0.113.9-203.0.113.14"]}))

    def base_nodes(d):
        members = d["all"]["children"]["dstm_nodes"]["hosts"]
        members["n1"]["dstm_node_pool"] = "p1"
        members["n2"]["dstm_node_pool"] = "p2"
        members["n4"] = {"ansible_host": "2001:db8:c0f:2::14", "dstm_node_pool": "p1"}

    edit(inv / "hosts.yml", base_nodes)
    git(checkout, "init", "-q", "-b", "main")
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "base")

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dstm-orch").write_text(f"#!/bin/sh\nexec {sys.executable} -m dstm_orch \"$@\"\n")
    (bindir / "dstm-orch").chmod(0o755)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Notes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           **{k: str(v) for k, v in PIPELINE["variables"].items()},
           # project variables override the file's
           "DSTM_ORCH_STATE": str(tmp_path / "leases.sqlite"), "DSTM_ORCH_LIMIT": "rtr1",
           "DSTM_VAULT_PASSWORD": str(tmp_path / "vault-password"),
           "DSTM_GITLAB_TOKEN": "glpat-test", "CI_PROJECT_ID": "7",
           "CI_MERGE_REQUEST_IID": "3",
           "CI_API_V4_URL": f"http://127.0.0.1:{server.server_address[1]}/api/v4"}
    env.pop("ANSIBLE_VAULT_PASSWORD_FILE", None)
    try:
        # The network as it runs: three leases pushed.
        dstm = [str(bindir / "dstm-orch")]
        with_vault = {**env, "ANSIBLE_VAULT_PASSWORD_FILE": env["DSTM_VAULT_PASSWORD"]}
        for command in (["allocate", "n1"], ["allocate", "n2"], ["allocate", "n4"],
                        ["apply", "--limit", "rtr1"]):
            subprocess.run(dstm + command, cwd=checkout, env=with_vault, check=True,
                           capture_output=True)
        assert device_entries(router) == {N1: "203.0.113.1", N2: "203.0.113.9",
                                          "2001:db8:c0f:2::14": "203.0.113.2"}

        # A branch adds n3, drains p2 and removes n4.
        git(checkout, "checkout", "-q", "-b", "drain-p2")

        def branch(d):
            members = d["all"]["children"]["dstm_nodes"]["hosts"]
            members["n3"] = {"ansible_host": "2001:db8:c0f:2::13", "dstm_node_pool": "p1"}
            members.pop("n4")

        edit(inv / "hosts.yml", branch)
        edit(inv / "group_vars" / "all" / "dstm.yml",
             lambda d: d["dstm_domain"]["pools"][1].update(draining=True))
        git(checkout, "commit", "-q", "-am", "add n3, drain p2, remove n4")

        rc, out = run_job("validate", checkout, env)
        assert rc == 0, out
        rc, out = run_job("plan:merge-request", checkout, env)
        assert rc == 0, out
        assert "dstm-orch plan exit code 2" in out
        ((path, token, note),) = Notes.posted
        assert (path, token) == ("/api/v4/projects/7/merge_requests/3/notes", "glpat-test")
        assert "**Changes:** yes" in note["body"]
        assert ("| n4 | 203.0.113.2 | p1 | rtr1 | node n4 was removed from the inventory |"
                in note["body"])
        assert device_entries(router)["2001:db8:c0f:2::14"] == "203.0.113.2"   # unchanged

        # Merged: the default branch's jobs.
        git(checkout, "checkout", "-q", "main")
        git(checkout, "merge", "-q", "--no-ff", "-m", "Merge drain-p2", "drain-p2")
        for name in ("validate", "plan", "apply"):
            rc, out = run_job(name, checkout, env)
            assert rc == 0, (name, out)
            if name == "plan":
                assert "dstm-orch plan exit code 2" in out
                assert json.loads((checkout / "plan.json").read_text())["revoke"][0][
                    "node"] == "n4"
        assert device_entries(router) == {N1: "203.0.113.1", N2: "203.0.113.9"}
        rc, out = run_job("plan", checkout, env)
        assert rc == 0 and "dstm-orch plan exit code 0" in out, out
        # Without the vault password nothing goes through.
        (tmp_path / "wrong").write_text("wrong\n")
        rc, out = run_job("validate", checkout, {**env, "DSTM_VAULT_PASSWORD": str(tmp_path /
                                                                               "wrong")})
        assert rc == 1 and "host_vars/rtr1.yml" in out and "cannot be decrypted" in out, out
    finally:
        server.shutdown()
        server.server_close()
