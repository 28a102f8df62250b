"""Runs INSIDE the guest kernel (tests/qemu_kernel.py): the lab on the ip6tnl driver.

``python tests/kernel_lab_guest.py PLAN.json`` builds the lab's network from the plan's
``ip`` batches, runs the plan's rounds of module calls (each host's calls in order, the
TEP before the nodes: one of the orders ``dstm.orch.apply``, whose hosts run at their own
pace, may take), and observes the kernel after each round. It asserts nothing: the last
line of its output is ``DSTM-KERNEL-REPORT <json>`` with what it saw, for the test on the
host to check. Standard library only, but Ansible's module library imported once for all
module calls (every import costs seconds under emulation).

Plan (written by tests/test_kernel_ip6tnl.py)::

    {"root": repo, "python": interpreter, "batches": [[namespace|null, [line, ...]], ...],
     "ns": {host: namespace}, "nodes": [host, ...], "tep": host, "ipv4_host": "192.0.2.10",
     "capture": {"host": tep, "dev": "eth0"},
     "rounds": [{"name": str, "rendered_at": epoch s, "shift": bool,
                 "hosts": {host: [{"task", "module", "args"}, ...]}}, ...]}

With ``shift`` a round's ``valid_until`` values move by the time between rendering and
the module call, so that a short lease keeps its whole lifetime inside the slow guest.
The round ``short_lease`` names ``watch: {host, address}``: the address whose end the
guest waits for.
"""

from __future__ import annotations

import ctypes
import json
import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPORT = "DSTM-KERNEL-REPORT "
LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
LEASE_END_SLACK = 15.0
"""Seconds past a lease's end the kernel gets to drop the address (its address
lifetime work runs on a timer, and the guest is slow)."""


def log(text: str) -> None:
    print(f"[guest {time.monotonic():8.1f}] {text}", flush=True)


def sh(*argv: str, check: bool = True, ns: str | None = None) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def ip_json(ns: str, *args: str) -> list[dict]:
    return json.loads(sh("ip", "-n", ns, "-json", *args).stdout or "[]")


class Guest:
    def __init__(self, plan: dict):
        self.plan = plan
        self.ns = plan["ns"]
        sys.path.insert(0, plan["root"])  # the collection's module_utils
        import ansible.module_utils.basic  # noqa: F401  (once, for every forked module)
        self.modules = Path(plan["root"], "ansible_collections/dstm/orch/plugins/modules")
        self.report: dict = {"rounds": {}}

    # -- building and converging ---------------------------------------------------

    def build(self) -> None:
        for module in ("ip6_tunnel", "veth", "bridge"):
            sh("modprobe", module)
        for ns, lines in self.plan["batches"]:
            argv = ["ip", *(["-n", ns] if ns else []), "-b", "-"]
            proc = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True,
                                  text=True, check=False)
            if proc.returncode:
                raise RuntimeError(f"ip batch in {ns}: {proc.stderr.strip()}")

    def run_module(self, host: str, call: dict, rendered_at: float | None) -> dict:
        """Run one module in ``host``'s namespace with its JSON argument file, in a child
        forked from this process (which imported Ansible's module library once: a fresh
        interpreter spends ~8 s importing it under emulation). The child enters the
        namespace (setns) and runs the module file as ``__main__``, as Ansible runs it."""
        args = call["args"]
        started, started_at = time.monotonic(), time.time()
        if (rendered_at is not None and call["module"] == "node_lease"
                and args.get("valid_until") is not None):
            args = {**args, "valid_until": int(args["valid_until"] + time.time() - rendered_at)}
        stem = f"/tmp/{host}-{call['module']}-{time.monotonic_ns()}"
        Path(f"{stem}.json").write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        module = str(self.modules / f"{call['module']}.py")
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 70
            try:
                with open(f"{stem}.out", "wb") as out:
                    os.dup2(out.fileno(), 1)
                    os.dup2(out.fileno(), 2)
                with open(f"/run/netns/{self.ns[host]}") as netns:
                    if LIBC.setns(netns.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                sys.argv = [module, f"{stem}.json"]
                runpy.run_path(module, run_name="__main__")
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        text = Path(f"{stem}.out").read_text(errors="replace")
        try:
            result = json.loads(text[text.index("{"):])
        except ValueError:
            result = {"failed": True, "msg": text[-2000:]}
        return {"task": call["task"], "module": call["module"], "args": args,
                "changed": result.get("changed"), "failed": bool(result.get("failed")),
                "msg": result.get("msg"), "rc": os.waitstatus_to_exitcode(status),
                "commands": result.get("commands"), "diff": result.get("diff"),
                "seconds": round(time.monotonic() - started, 2), "started_at": started_at}

    def converge(self, round_: dict) -> None:
        """Run one round: each host's calls in order, the TEP first (one order the
        playbook may take), a host stopping at its first failed call."""
        rendered_at = round_["rendered_at"] if round_.get("shift") else None
        results: dict[str, list[dict]] = {}
        started = time.monotonic()
        hosts = sorted(round_["hosts"], key=lambda h: h != self.plan["tep"])
        for host in hosts:
            results[host] = []
            for call in round_["hosts"][host]:
                results[host].append(self.run_module(host, call, rendered_at))
                if results[host][-1]["failed"]:
                    break
        self.report["rounds"][round_["name"]] = {
            "results": results, "seconds": time.monotonic() - started}
        log(f"round {round_['name']}: {sum(map(len, results.values()))} module calls in "
            f"{time.monotonic() - started:.1f} s")

    # -- observing -------------------------------------------------------------------

    def ping(self, host: str) -> bool:
        return sh("ping", "-n", "-c", "2", "-W", "3", self.plan["ipv4_host"],
                  ns=self.ns[host], check=False).returncode == 0

    def observe(self) -> dict:
        """Tunnels, the tunnel's IPv4 addresses (with the clock they were read at), and
        the TEP's routes of protocol 211, per host."""
        seen: dict = {"tunnels": {}, "addresses": {}}
        for host in [self.plan["tep"], *self.plan["nodes"]]:
            seen["tunnels"][host] = [
                {"name": link["ifname"], "mtu": link.get("mtu"),
                 "up": "UP" in link.get("flags", []),
                 **{k: link["linkinfo"]["info_data"].get(k) for k in
                    ("proto", "local", "remote", "link", "ttl", "ip6_tnl_f_ign_encap_limit")}}
                for link in ip_json(self.ns[host], "-d", "link", "show", "type", "ip6tnl")
                if link["ifname"] != "ip6tnl0"]
        for host in self.plan["nodes"]:
            seen["addresses"][host] = {"read_at": time.time(), "addr_info": [
                a for link in ip_json(self.ns[host], "-4", "addr", "show")
                for a in link.get("addr_info", []) if a["local"] != "127.0.0.1"]}
        seen["tep_routes"] = ip_json(self.ns[self.plan["tep"]], "-4", "route", "show",
                                     "proto", "211")
        return seen

    def capture_pings(self) -> dict:
        """Every node pings the IPv4 host while tcpdump records the IPv6-only link."""
        spec = self.plan["capture"]
        pcap = "/tmp/ip6tnl.pcap"
        capture = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[spec["host"]], "tcpdump", "-i", spec["dev"], "-n",
             "-U", "-w", pcap], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ready = capture.stderr.readline()  # "listening on eth0, ..." once it captures
        pings = {host: self.ping(host) for host in self.plan["nodes"]}
        time.sleep(0.5)
        capture.send_signal(signal.SIGINT)
        capture.wait(timeout=30)

        def read(*args: str) -> str:
            return sh("tcpdump", "-r", pcap, "-n", *args).stdout

        return {"ready": ready.strip(), "pings": pings, "not_ip6": read("not ip6"),
                "ip6_not_icmp6": read("-v", "ip6 and not icmp6")}

    def wait_gone(self, host: str, address: str, until: float) -> dict:
        """Poll the node's address until the kernel drops it or ``until`` (epoch s)."""
        while True:
            now = time.time()
            present = [a for link in ip_json(self.ns[host], "-4", "addr", "show")
                       for a in link.get("addr_info", []) if a["local"] == address]
            if not present or now > until:
                return {"present": bool(present), "at": now}
            time.sleep(0.5)

    # -- the scenario ----------------------------------------------------------------

    def main(self) -> None:
        started = time.monotonic()
        self.build()
        log("network built")
        rounds = {r["name"]: r for r in self.plan["rounds"]}
        report = self.report
        report["uname"] = os.uname().release

        self.converge(rounds["apply"])
        report["after_apply"] = self.observe()
        report["capture"] = self.capture_pings()
        log("pings and capture done")

        self.converge(rounds["revoke"])
        report["after_revoke"] = self.observe()
        report["pings_after_revoke"] = {h: self.ping(h) for h in self.plan["nodes"]}
        log("revoke done")

        short = rounds["short_lease"]
        self.converge(short)
        report["after_short_lease"] = self.observe()
        host, address = short["watch"]["host"], short["watch"]["address"]
        (call,) = [c for c in report["rounds"]["short_lease"]["results"][host]
                   if c["module"] == "node_lease"]
        end = call["args"]["valid_until"]
        report["lease_end"] = end
        report["short_lease_gone"] = self.wait_gone(host, address, end + LEASE_END_SLACK)
        self.finish(started)

    def finish(self, started: float) -> None:
        """Delete the lab's namespaces and record the scenario's guest time."""
        for ns in dict.fromkeys(ns for ns, _ in self.plan["batches"] if ns):
            sh("ip", "netns", "del", ns, check=False)
        self.report["guest_seconds"] = time.monotonic() - started
        log(f"scenario done in {self.report['guest_seconds']:.1f} s")


def run_guest(kind: type[Guest], argv: list[str]) -> int:
    """Run scenario ``kind`` with the plan file ``argv[1]``; print its report (an error
    in it is reported too, for the host test to fail with)."""
    guest = kind(json.loads(Path(argv[1]).read_text()))
    try:
        guest.main()
    except Exception as exc:  # reported to the host test, which fails with it
        guest.report["error"] = f"{type(exc).__name__}: {exc}"
    print(REPORT + json.dumps(guest.report), flush=True)
    return 0


def main(argv: list[str]) -> int:
    return run_guest(Guest, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
