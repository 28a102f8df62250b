"""Benchmark: lease end -> TEP withdrawal latency of ``dstm-orch serve`` on a Linux TEP.

Issue 9's target: when a lease ends, the server withdraws it from the TEP's mapping table
(draft-ietf-ngtrans-dstm-08 section 5) within 5 s at p99.

Builds the lab (a copy of inventories/lab on its own management /64: three nodes and one
Linux TEP reached by Ansible over IPv6 SSH), applies once so the TEP is converged, then
starts ``dstm-orch serve`` with its default settings (reclamation every 5 s, store
followed every 0.5 s, pushes with the playbook ``dstm.orch.tep_mappings``). In one run:

- ``--leases N`` short leases of node n1, one after the other (``--lifetime`` seconds
  each, allocated through the store as ``dstm-orch allocate`` does): for each, the time
  from its allocation until its /32 is on the TEP (the allocation push), and from its
  end until the /32 is gone (reclamation + push), by polling the TEP's routes every
  20 ms, split at the server's "reclaimed lease" log line; p50, p99 and max.
- The anchor, with the server stopped: ``--rounds R`` pushes of the same mapping table to
  the TEP, alternating the mapping-only playbook (``tep_mappings``, what the server runs
  now) and the whole role (``apply --limit <tep>``, what it ran before); medians and
  their ratio. And the drift check (``tep_mappings`` in check mode).

Needs root. Run:

    .venv/bin/python benchmarks/bench_withdrawal.py [--leases 20] [--lifetime 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import math
import os
import socket
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
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.service.pushers import AnsiblePusher
from dstm_orch.store import LeaseStore
from tests.conftest import ROOT, copy_lab_inventory

MANAGEMENT = "2001:db8:e9b::"
"""The lab's management /64 here, instead of inventories/lab's 2001:db8:100::, so the
benchmark runs beside a lab that is up (the root namespace routes each lab's /64)."""
CONTROLLER = f"{MANAGEMENT}1"
POLL = 0.02


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    ranked = sorted(values)
    return ranked[max(0, min(len(ranked) - 1, math.ceil(len(ranked) * p / 100) - 1))]


def tep_has(namespace: str, ipv4: str) -> bool:
    out = subprocess.run(["ip", "-n", namespace, "-4", "route", "show", f"{ipv4}/32",
                          "proto", "211"], capture_output=True, text=True, check=True).stdout
    return bool(out.strip())


def wait(condition, deadline: float, what: str, server: subprocess.Popen, log: Path) -> float:
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"serve exited {server.returncode}:\n{log.read_text()[-3000:]}")
        if condition():
            return time.time()
        time.sleep(POLL)
    raise SystemExit(f"gave up waiting until {what}:\n{log.read_text()[-3000:]}")


def reclaimed_at(log: Path, lease_id: int) -> float | None:
    """Epoch seconds of the server's "reclaimed lease <id>" log line (its local time)."""
    for line in log.read_text().splitlines():
        if f" reclaimed lease {lease_id} of node " in line:
            stamp, millis = line[:23].split(",")
            return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    return None


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=20)
    parser.add_argument("--lifetime", type=int, default=8, help="seconds per lease")
    parser.add_argument("--rounds", type=int, default=5, help="anchor pushes per playbook")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, sshd)")
    with tempfile.TemporaryDirectory(prefix="bench-withdrawal-") as tmp:
        base = Path(tmp)
        # A short state dir: ssh's ControlPath sockets in it must fit in 107 bytes.
        inventory = copy_lab_inventory(base / "inventory", "t9bench",
                                       Path(f"/tmp/dstm-t9bench-{os.getpid()}"), MANAGEMENT)
        raw = AnsibleInventory.load(inventory)
        try:
            lab.lab_up(raw)
            run(inventory, base, raw, args)
        finally:
            lab.lab_down(raw)


def run(inventory: Path, base: Path, raw: AnsibleInventory, args) -> None:
    state = base / "leases.sqlite"
    domain = load_inventory(inventory).domain
    namespace = lab.namespace_of(raw, "tep1")
    mappings = AnsiblePusher(inventory, domain, state, roaming=())
    whole = AnsiblePusher(inventory, domain, state, roaming=(), playbook="apply.yml")
    whole.push("tep1")  # converge the TEP once, as `apply` does before the server runs

    log = base / "serve.log"
    port = free_port(CONTROLLER)
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "dstm_orch", "serve", "-i", str(inventory), "--state",
             str(state), "--listen", f"[{CONTROLLER}]:{port}", "--api-listen", "off"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    added: list[float] = []
    withdrawn: list[float] = []
    reclaimed: list[float] = []
    try:
        wait(lambda: "pushed TEP tep1" in log.read_text(), time.time() + 120,
             "the start push", server, log)
        for index in range(args.leases):
            with LeaseStore(state) as store:
                lease = Allocator(domain, store).allocate("n1", lifetime=args.lifetime)
            asked = time.time()
            ipv4, end = str(lease.ipv4), lease.end.timestamp()
            seen = wait(lambda ipv4=ipv4: tep_has(namespace, ipv4), end + 60, "the lease is pushed",
                        server, log)
            added.append(seen - asked)
            if seen >= end:
                print(f"  lease {index + 1}: its push came after its end (lengthen --lifetime)")
            gone = wait(lambda ipv4=ipv4: not tep_has(namespace, ipv4), end + 120,
                        "the ended lease is withdrawn", server, log)
            withdrawn.append(gone - end)
            at = reclaimed_at(log, lease.id)
            if at is not None:
                reclaimed.append(at - end)
            print(f"  lease {index + 1}/{args.leases}: on the TEP after {added[-1]:.2f} s, "
                  f"withdrawn {withdrawn[-1]:.2f} s after its end", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=90)

    # The anchor: the same table pushed by each playbook, alternating, server stopped.
    with LeaseStore(state) as store:
        allocator = Allocator(domain, store)
        allocator.allocate("n1", lifetime=3600)
        allocator.allocate("n2", lifetime=3600)
    times: dict[str, list[float]] = {"mappings": [], "whole": [], "check": []}
    for _ in range(args.rounds):
        for name, action in (("mappings", lambda: mappings.push("tep1")),
                             ("whole", lambda: whole.push("tep1")),
                             ("check", lambda: mappings.drifted("tep1"))):
            started = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - started)

    def row(what: str, values: list[float], note: str = "") -> None:
        print(f"{what:<44} {statistics.median(values):>6.2f} {percentile(values, 99):>6.2f} "
              f"{max(values):>6.2f}  {note}")

    print()
    print(f"{'seconds (' + str(args.leases) + ' leases of ' + str(args.lifetime) + ' s)':<44} "
          f"{'p50':>6} {'p99':>6} {'max':>6}")
    row("lease end -> withdrawn from the TEP", withdrawn, "target p99 <= 5 s")
    if reclaimed:
        row("  of which lease end -> reclaimed", reclaimed, "reclamation every 5 s")
        pushes = [w - r for w, r in zip(withdrawn, reclaimed, strict=False)]
        row("  of which reclaimed -> withdrawn", pushes, "follow 0.5 s + the push")
    row("allocation -> on the TEP", added)
    print()
    print(f"{'push to tep1, 2 leases (' + str(args.rounds) + ' rounds)':<44} {'median':>6}")
    full = statistics.median(times["whole"])
    for name, label in (("whole", "anchor: whole role (apply.yml --limit tep1)"),
                        ("mappings", "mapping entries only (tep_mappings)"),
                        ("check", "drift check (tep_mappings --check)")):
        median = statistics.median(times[name])
        print(f"{label:<44} {median:>6.2f}  {median / full:.2f}x the anchor")


if __name__ == "__main__":
    main()
