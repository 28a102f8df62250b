"""Runs INSIDE the guest kernel (tests/qemu_kernel.py): the ports option and tunnel drift
on the ip6tnl driver.

``python tests/kernel_ports_guest.py PLAN.json`` builds the lab as
tests/kernel_lab_guest.py does (its :class:`Guest`), then:

1. round ``apply``: two nodes that share one IPv4 address by port set (draft-ietf-ngtrans-
   dstm-08 section 6, RFC 7597 section 5.1) and their TEP; records the TEP's policy
   rules and port-set tables, each node's ``ip_local_port_range`` and nftables table;
2. every node opens TCP connections and UDP flows to the IPv4 host at once, while
   tcpdump records the TEP's IPv6-only link; the IPv4 host logs each peer and message;
3. ``drift``: the plan's ``ip`` commands change tunnels behind the modules' back; round
   ``drift_check`` (check mode with diff), ``drift_fix`` (a real run), ``drift_recheck``
   (check mode again); then the flows of the first node run again.

It asserts nothing: the last line of its output is ``DSTM-KERNEL-REPORT <json>``.

Plan: that of tests/kernel_lab_guest.py plus ``{"server": source, "client": source,
"flows": n, "drift": [[host, [argv...]], ...]}``; the rounds are named as above.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from kernel_lab_guest import Guest, ip_json, log, run_guest, sh


class PortsGuest(Guest):
    def popen(self, host: str, *argv: str) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns[host], *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def observe_ports(self) -> dict:
        """The TEP's rules and routes of protocol 211 outside the main table, and each
        node's local port range and nftables table ``ip dstm``."""
        tep = self.ns[self.plan["tep"]]
        rules = [r for r in ip_json(tep, "-N", "-4", "rule", "show")
                 if r.get("protocol") == "211"]
        tables = [r for r in ip_json(tep, "-d", "-4", "route", "show", "table", "all",
                                     "proto", "211") if r.get("table", "main") != "main"]
        nodes = {}
        for host in self.plan["nodes"]:
            nodes[host] = {
                "local_port_range": sh("cat", "/proc/sys/net/ipv4/ip_local_port_range",
                                       ns=self.ns[host]).stdout.split(),
                "nft": sh("nft", "list", "table", "ip", "dstm", ns=self.ns[host],
                          check=False).stdout}
        return {"rules": rules, "tables": tables, "nodes": nodes}

    def flows(self, nodes: list[str], capture: bool) -> dict:
        """Run the client on ``nodes`` at once against the server on the IPv4 host
        (optionally under tcpdump on the TEP's IPv6 link)."""
        pcap = "/tmp/ports.pcap"
        dump = None
        if capture:
            spec = self.plan["capture"]
            dump = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[spec["host"]], "tcpdump", "-i", spec["dev"],
                 "-n", "-U", "-w", pcap], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True)
            dump.stderr.readline()  # "listening on eth0, ..." once it captures
        server = self.popen("v4host", sys.executable, "-u", "-c", self.plan["server"])
        result: dict = {"clients": {}, "errors": {}}
        try:
            ready = server.stdout.readline().strip()
            if ready != "ready":
                raise RuntimeError(f"the IPv4 host's server: {server.stderr.read()}")
            clients = {n: self.popen(n, sys.executable, "-c", self.plan["client"], n,
                                     str(self.plan["flows"])) for n in nodes}
            for node, proc in clients.items():
                out, err = proc.communicate(timeout=300)
                if proc.returncode:
                    result["errors"][node] = err[-2000:]
                else:
                    result["clients"][node] = json.loads(out)
        finally:
            server.send_signal(signal.SIGTERM)
            out, _ = server.communicate(timeout=30)
            if dump is not None:
                # tcpdump lags under emulation, and SIGINT drops what it has not yet
                # read: stop it once the capture file stops growing.
                sizes = [-2, -1]
                for _ in range(60):
                    time.sleep(1.0)
                    sizes.append(os.path.getsize(pcap) if os.path.exists(pcap) else 0)
                    if sizes[-1] == sizes[-2] == sizes[-3]:  # unchanged for 2 s
                        break
                dump.send_signal(signal.SIGINT)
                summary = dump.communicate(timeout=30)[1]
        result["server"] = [json.loads(line) for line in out.splitlines() if line.strip()]
        if capture:
            def read(*args: str) -> str:
                return sh("tcpdump", "-r", pcap, "-n", "-t", *args).stdout

            result["wire"] = {
                "tcpdump": summary,
                "not_ip6": read("not ip6"),
                # libpcap's "ip6 proto" reads the first next header only (no chasing)
                "ip6_other": read("ip6 and not ip6 proto 4 and not ip6 proto 58"),
                "ip6_ipv4": read("ip6 proto 4"),
            }
        return result

    def main(self) -> None:
        started = time.monotonic()
        self.build()
        log("network built")
        rounds = {r["name"]: r for r in self.plan["rounds"]}
        report = self.report
        report["uname"] = os.uname().release

        self.converge(rounds["apply"])
        report["after_apply"] = {**self.observe(), **self.observe_ports()}
        report["flows"] = self.flows(self.plan["nodes"], capture=True)
        log("flows done")

        for host, argv in self.plan["drift"]:
            sh(*argv, ns=self.ns[host])
        report["drifted"] = self.observe()["tunnels"]
        for name in ("drift_check", "drift_fix", "drift_recheck"):
            self.converge(rounds[name])
        report["after_fix"] = self.observe()
        report["flows_after_fix"] = self.flows(self.plan["nodes"][:1], capture=False)
        log("drift done")
        self.finish(started)


def main(argv: list[str]) -> int:
    return run_guest(PortsGuest, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
