"""Benchmark: where the time of one mapping push to a Linux TEP goes, on the lab.

Issue 9: ``dstm-orch serve`` withdraws an ended lease from a Linux TEP with one Ansible
run of the playbook ``dstm.orch.tep_mappings``. Builds the lab (a copy of inventories/lab
on its own management /64, connections kept by the lab's ``ControlPersist``), converges
tep1 once with two leases, then in each of ``--rounds`` rounds times, one after the other
on the same TEP and table:

- the anchors: one raw kernel write of the mapping table over the same SSH connection
  (``ssh tep1 ip -4 route replace <n1's /32 route>``, the master connection warm), and
  ``ansible-playbook`` with an empty play on tep1 (Python, Ansible, the inventory and
  the collection loaded; no connection);
- for each collection given (``--collection LABEL=DIR``, DIR holding
  ``ansible_collections/``; default: this checkout's, labelled ``this``): the mapping
  push (``tep_mappings``), the same with the SSH master closed first (a push after more
  than ``ControlPersist`` idle), its check mode (the drift check) and the whole role
  (``apply.yml --limit tep1``);
- the mapping push as ``dstm-orch serve`` runs it (``AnsiblePusher``, ansible-runner).

Every Ansible run is ``ansible-playbook --diff -e @intent.json --limit tep1`` with the
checkout's ``ansible.cfg``. Prints medians, each against the empty play and the raw write.
Needs root. Run:

    .venv/bin/python benchmarks/bench_tep_push.py [--rounds 5] [--collection before=DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dstm_orch import lab
from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.config.inventory import load_inventory
from dstm_orch.domain.model import utcnow
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.push.intent import render_intent
from dstm_orch.service.pushers import AnsiblePusher
from dstm_orch.store import LeaseStore
from tests.conftest import ROOT, copy_lab_inventory

MANAGEMENT = "2001:db8:e9d::"
"""The lab's management /64 here, so the benchmark runs beside a lab that is up."""
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--collection", action="append", default=[], metavar="LABEL=DIR",
                        help="a checkout (or collections path) whose dstm.orch to time")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, sshd)")
    collections = {"this": ROOT}
    for item in args.collection:
        label, _, path = item.partition("=")
        collections[label] = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="bench-tep-push-") as tmp:
        base = Path(tmp)
        state_dir = Path(f"/tmp/dstm-t9push-{os.getpid()}")  # short: ssh ControlPath
        inventory = copy_lab_inventory(base / "inventory", "t9push", state_dir, MANAGEMENT)
        raw = AnsibleInventory.load(inventory)
        try:
            lab.lab_up(raw)
            run(inventory, base, state_dir, collections, args.rounds)
        finally:
            close_master(state_dir)
            lab.lab_down(raw)


def close_master(state_dir: Path) -> None:
    """Close the lab's SSH master connections (as ``ControlPersist`` does when idle)."""
    for socket in state_dir.glob("cp-*"):
        subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "tep1"],
                       capture_output=True, check=False)


def run(inventory: Path, base: Path, state_dir: Path, collections: dict[str, Path],
        rounds: int) -> None:
    state = base / "leases.sqlite"
    domain = load_inventory(inventory).domain
    with LeaseStore(state) as store:
        allocator = Allocator(domain, store)
        allocator.allocate("n1", lifetime=3600)
        allocator.allocate("n2", lifetime=3600)
        extravars = render_intent(domain, store.active_leases(utcnow()), utcnow()).as_extravars()
    intent = base / "intent.json"
    intent.write_text(json.dumps(extravars))
    empty = base / "empty.yml"
    empty.write_text("- hosts: tep1\n  gather_facts: false\n  tasks: []\n")
    serve = AnsiblePusher(inventory, domain, state, roaming=())
    serve.push("tep1")  # the whole role once: the TEP converged, as after `apply`

    def playbook(collection: Path, path: Path, *extra: str) -> float:
        env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
               "ANSIBLE_COLLECTIONS_PATH": str(collection), "ANSIBLE_NOCOLOR": "1"}
        started = time.perf_counter()
        proc = subprocess.run([str(PLAYBOOK), "-i", str(inventory), str(path), "--diff",
                               "--limit", "tep1", "-e", f"@{intent}", *extra],
                              env=env, capture_output=True, text=True, check=False)
        took = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{path.name} with {collection} failed:\n{proc.stdout[-3000:]}")
        return took

    binding = extravars["dstm_intent"]["teps"]["tep1"]["bindings"][0]
    route = (f"ip -4 route replace {binding['ipv4']}/32 encap seg6 mode encap.red segs "
             f"{binding['node_decap_ipv6']} dev eth0 proto 211")
    ssh = ["ssh", "-i", f"{state_dir}/id_ed25519", "-o",
           f"UserKnownHostsFile={state_dir}/known_hosts", "-o", "StrictHostKeyChecking=yes",
           "-o", "ControlMaster=auto", "-o", "ControlPersist=30s", "-o",
           f"ControlPath={state_dir}/cp-%C", f"root@{MANAGEMENT}a", route]

    def raw_write() -> float:
        started = time.perf_counter()
        subprocess.run(ssh, check=True, capture_output=True)
        return time.perf_counter() - started

    def cold(collection: Path) -> float:
        close_master(state_dir)
        return playbook(collection, collection / "ansible_collections/dstm/orch/playbooks"
                        / "tep_mappings.yml")

    def timed(action) -> float:
        started = time.perf_counter()
        action()
        return time.perf_counter() - started

    times: dict[str, list[float]] = {}
    steps: list[tuple[str, object]] = [
        ("anchor: raw ip route replace over SSH", raw_write),
        ("anchor: ansible-playbook, empty play", lambda: playbook(ROOT, empty))]
    for label, collection in collections.items():
        books = collection / "ansible_collections/dstm/orch/playbooks"
        steps += [
            (f"{label}: mapping push (tep_mappings)",
             lambda c=collection, b=books: playbook(c, b / "tep_mappings.yml")),
            (f"{label}: mapping push, SSH master closed", lambda c=collection: cold(c)),
            (f"{label}: drift check (tep_mappings --check)",
             lambda c=collection, b=books: playbook(c, b / "tep_mappings.yml", "--check")),
            (f"{label}: whole role (apply.yml)",
             lambda c=collection, b=books: playbook(c, b / "apply.yml"))]
    steps.append(("this: mapping push as serve runs it (runner)",
                  lambda: timed(lambda: serve.push("tep1"))))
    raw_write()  # open the master connection
    for index in range(rounds):
        for name, action in steps:
            times.setdefault(name, []).append(action())
        print(f"  round {index + 1}/{rounds} done, load {os.getloadavg()[0]:.1f}", flush=True)

    raw = statistics.median(times["anchor: raw ip route replace over SSH"])
    empty_play = statistics.median(times["anchor: ansible-playbook, empty play"])
    print()
    print(f"{'seconds, medians of ' + str(rounds) + ' rounds':<50} {'median':>7} "
          f"{'min':>6} {'x empty play':>12} {'x raw write':>11}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<50} {median:>7.2f} {min(values):>6.2f} {median / empty_play:>11.2f}x "
              f"{median / raw:>10.1f}x")
    for label in collections:
        if label == "this":
            continue
        for kind in ("mapping push (tep_mappings)", "whole role (apply.yml)"):
            ratio = (statistics.median(times[f"this: {kind}"])
                     / statistics.median(times[f"{label}: {kind}"]))
            print(f"this / {label}, {kind}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
