"""Benchmark: ``dstm-orch serve`` against ISC Kea (memfile) on one machine, in one run.

The anchor (issue 10 section 1; the method the project measured Kea by): Kea's
``kea-dhcp4`` from Debian's packages with its memfile lease database (persisted, never
fsynced), multi-threading off, logging at WARN, in a network namespace joined by a veth
pair to a second one where ``perfdhcp`` relays from 198.18.0.2; Kea pinned to CPU 0,
perfdhcp to CPU 1. perfdhcp's offered DORA rate is raised until Kea stops answering
every exchange (more than 0.01 % lost, or it answers less than 97 % of the offered
rate): the last clean rate is Kea's knee, in REQUEST-ACK exchanges per second.

dstm-orch: the node API of ``serve`` (:class:`RoamingService` and the aiohttp app
``serve`` runs, TEP pushes off, logging off as Kea's INFO is off) over a durable SQLite
store (WAL, ``synchronous=FULL``) in a fresh temporary directory, pinned to CPU 0; a
closed-loop load generator of 1 or 8 clients (kept-alive HTTP/1.1 connections on
``[::1]``, each request signed with its node's HMAC secret, one request in flight per
client) pinned to CPU 1. ``new`` asks a lease for a node without one each time (40,000
nodes in the domain, a /16 pool), ``renew`` renews the clients' leases. Both request
paths are run: ``single`` (one durable transaction per request, on a thread: the path
before group commit, and PostgreSQL's) and ``group`` (group commit). Latency is the
client's, send to last byte; the server's CPU is read from ``/proc`` (user + system,
all threads, fsync included).

Needs root (namespaces) and ``apt-get install kea-dhcp4-server kea-admin`` (perfdhcp);
without them the Kea column says why and dstm-orch is still measured. The load
averages at the start and the end are printed. Run:

    sudo .venv/bin/python benchmarks/bench_vs_kea.py [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import ipaddress
import json
import multiprocessing
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import netaddr

from dstm_orch.config.secrets import RoamingNode
from dstm_orch.domain import model
from dstm_orch.domain.protocol import SIGNATURE_HEADER, canonical, path_of
from dstm_orch.service.guard import Guard, Limits
from dstm_orch.service.httpd import RoamingHTTPServer
from dstm_orch.service.server import NoPusher, RoamingService

NODES = 40_000
SERVER_CPU, CLIENT_CPU = 0, 1
KEA_RATES = (250, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 10000, 12000)


def secret(index: int) -> bytes:
    return f"kea-bench-node-{index:05d}-secret".encode()


def node_ipv6(index: int) -> str:
    return str(ipaddress.IPv6Address("2001:db8:e40::1") + index)


def make_domain() -> model.Domain:
    pool = model.Pool(
        name="bench", tep="t",
        addresses=netaddr.IPSet(["198.18.0.0/16"]) - netaddr.IPSet(["198.18.0.0"]),
        prefixes=(ipaddress.IPv4Network("198.18.0.0/16"),),
        policy=model.LeasePolicy(default_lifetime=3600, max_lifetime=86400, hold_time=60),
    )
    tep = model.Tep("t", ipaddress.IPv6Address("2001:db8:e41::a"),
                    ipaddress.IPv6Address("2001:db8:e40::a"))
    nodes = {f"k{i}": model.Node(f"k{i}", ipaddress.IPv6Address(node_ipv6(i)), "bench")
             for i in range(NODES)}
    return model.Domain("bench", {"bench": pool}, {"t": tep}, nodes)


# -- dstm-orch ---------------------------------------------------------------------


def run_server(state: str, group_commit: bool, ready, stop) -> None:
    os.sched_setaffinity(0, {SERVER_CPU})  # before any thread starts: all of them
    nodes = {f"k{i}": RoamingNode(f"k{i}", secret(i)) for i in range(NODES)}
    limits = Limits(node_requests=10**9, global_requests=10**9)
    service = RoamingService(make_domain(), state, Guard(nodes, limits), NoPusher(),
                             source_check=False, group_commit=group_commit)
    server = RoamingHTTPServer(("::1", 0), service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ready.send(server.server_address[1])
    stop.wait()
    server.shutdown()
    server.server_close()
    service.close()


class Client:
    """One kept-alive connection with one request in flight."""

    def __init__(self, port: int, nodes: list[int], action: str):
        self.sock = socket.create_connection(("::1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.port, self.nodes, self.action = port, nodes, action
        self.next = 0
        self.buffer = b""
        self.sent_at = 0.0

    def send(self, nonce: int) -> None:
        index = self.nodes[self.next % len(self.nodes)]
        self.next += 1
        body = (f'{{"ipv6":"{node_ipv6(index)}","node":"k{index}","nonce":"{nonce:032x}",'
                f'"timestamp":{int(time.time())}}}').encode()
        path = path_of(self.action)
        signature = hmac.new(secret(index), canonical("POST", path, body),
                             hashlib.sha256).hexdigest()
        head = (f"POST {path} HTTP/1.1\r\nHost: [::1]:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"{SIGNATURE_HEADER}: {signature}\r\n\r\n").encode()
        self.sent_at = time.perf_counter()
        self.sock.sendall(head + body)

    def answer(self) -> int | None:
        """Read what arrived; return the status once a whole answer is in."""
        self.buffer += self.sock.recv(65536)
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        length = int(re.search(rb"(?i)content-length: *(\d+)", self.buffer[:end]).group(1))
        if len(self.buffer) < end + 4 + length:
            return None
        status = int(self.buffer[9:12])
        self.buffer = self.buffer[end + 4 + length:]
        return status


def run_load(port: int, clients: int, action: str, first: int, seconds: float,
             results) -> None:
    """Closed loop: each client sends its next request when its answer is in."""
    os.sched_setaffinity(0, {CLIENT_CPU})
    if action == "request":  # a node without a lease each time: first, first + 1, ...
        plan = [list(range(first + i, NODES, clients)) for i in range(clients)]
    else:  # renew the leases of nodes first .. first + clients - 1
        plan = [[first + i] for i in range(clients)]
    selector = selectors.DefaultSelector()
    conns = [Client(port, nodes, action) for nodes in plan]
    nonce = int.from_bytes(os.urandom(8), "big") << 64
    latencies: list[float] = []
    failed = 0
    deadline = time.perf_counter() + seconds
    for conn in conns:
        nonce += 1
        conn.send(nonce)
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    began = time.perf_counter()
    open_ = len(conns)
    while open_:
        for key, _ in selector.select():
            conn = key.data
            status = conn.answer()
            if status is None:
                continue
            now = time.perf_counter()
            latencies.append(now - conn.sent_at)
            failed += status != 200
            if now < deadline and (action != "request" or conn.next < len(conn.nodes)):
                nonce += 1
                conn.send(nonce)
            else:
                selector.unregister(conn.sock)
                conn.sock.close()
                open_ -= 1
    elapsed = time.perf_counter() - began
    results.send((len(latencies) - failed, failed, elapsed, latencies))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_dstm(group_commit: bool, seconds: float, counts: list[int],
                 state: str | None = None) -> dict:
    """Run a server on a fresh store (an SQLite file in a temporary directory, or the
    empty ``postgresql://`` store ``state``); measure new leases then renews for each
    count."""
    context = multiprocessing.get_context("fork")
    found: dict = {}
    with tempfile.TemporaryDirectory(prefix="dstm-bench-kea-") as tmp:
        ready, ready_child = context.Pipe()
        stop = context.Event()
        server = context.Process(target=run_server, args=(
            state or str(Path(tmp) / "leases.sqlite"), group_commit, ready_child, stop))
        server.start()
        try:
            port = ready.recv()
            first = 0
            for action in ("request", "renew"):
                for count in counts:
                    start = 0 if action == "renew" else first
                    got = load(port, count, action, start, seconds, server.pid)
                    if action == "request":
                        first += got["ok"] + got["failed"] + count
                    found["new" if action == "request" else "renew", count] = got
        finally:
            stop.set()
            server.join(timeout=30)
    return found


def load(port: int, clients: int, action: str, first: int, seconds: float,
         server_pid: int) -> dict:
    context = multiprocessing.get_context("fork")
    mine, theirs = context.Pipe()
    cpu = cpu_seconds(server_pid)
    proc = context.Process(target=run_load, args=(port, clients, action, first, seconds,
                                                  theirs))
    proc.start()
    ok, failed, elapsed, latencies = mine.recv()
    proc.join()
    cpu = cpu_seconds(server_pid) - cpu
    latencies.sort()
    return {"rate": ok / elapsed, "ok": ok, "failed": failed,
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1e3 if latencies else 0,
            "cpu_us": cpu / max(1, ok + failed) * 1e6}


# -- Kea ------------------------------------------------------------------------------


MEMFILE = ('{"type": "memfile", "persist": true, "name": "%(dir)s/leases4.csv", '
           '"lfc-interval": 0}')
KEA_CONFIG = """{"Dhcp4": {
  "interfaces-config": {"interfaces": ["%(veth)s/198.18.0.1"], "dhcp-socket-type": "udp"},
  "lease-database": %(lease_db)s,
  "multi-threading": %(threads)s,
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "198.18.0.0/15",
               "pools": [{"pool": "198.18.1.0 - 198.19.255.254"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
               "output_options": [{"output": "%(dir)s/kea.log"}]}]
}}"""


class Kea:
    """kea-dhcp4 in namespace ``<tag>-s``, perfdhcp in ``<tag>-c``, a veth between."""

    def __init__(self, tmp: Path):
        tag = f"dbk{os.getpid() % 100000}"
        self.server, self.client = f"{tag}-s", f"{tag}-c"
        self.veth = (f"{tag}s", f"{tag}c")
        self.tmp = tmp
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Kea:
        s, c = self.server, self.client
        try:
            for cmd in (["netns", "add", s], ["netns", "add", c],
                        ["link", "add", self.veth[0], "type", "veth", "peer", "name",
                         self.veth[1]],
                        ["link", "set", self.veth[0], "netns", s],
                        ["link", "set", self.veth[1], "netns", c],
                        ["-n", s, "addr", "add", "198.18.0.1/24", "dev", self.veth[0]],
                        ["-n", c, "addr", "add", "198.18.0.2/24", "dev", self.veth[1]],
                        ["-n", s, "link", "set", self.veth[0], "up"],
                        ["-n", c, "link", "set", self.veth[1], "up"],
                        ["-n", s, "link", "set", "lo", "up"],
                        ["-n", c, "link", "set", "lo", "up"]):
                subprocess.run(["ip", *cmd], check=True, capture_output=True)
            return self
        except BaseException:
            self.__exit__()
            raise

    def start(self, lease_db: str = MEMFILE, threads: int = 0) -> None:
        """Start kea-dhcp4 (pinned to ``SERVER_CPU``) on a fresh memfile, or on
        ``lease_db`` (the JSON of a ``lease-database`` map: its leases are the caller's to
        clear); ``threads`` > 0 turns multi-threading on with that many threads."""
        self.stop()
        for name in ("leases4.csv", "leases4.csv.2", "kea.log"):
            with contextlib.suppress(FileNotFoundError):
                (self.tmp / name).unlink()
        config = self.tmp / "kea.json"
        mt = (json.dumps({"enable-multi-threading": True, "thread-pool-size": threads,
                          "packet-queue-size": 64 * threads}) if threads
              else '{"enable-multi-threading": false}')
        config.write_text(KEA_CONFIG % {"veth": self.veth[0], "dir": self.tmp,
                                        "lease_db": lease_db % {"dir": self.tmp},
                                        "threads": mt})
        env = {**os.environ, "KEA_PIDFILE_DIR": str(self.tmp),
               "KEA_LOCKFILE_DIR": str(self.tmp)}
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.server, "taskset", "-c",
                                      str(SERVER_CPU), "kea-dhcp4", "-c", str(config)],
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        end = time.monotonic() + 30
        while time.monotonic() < end:  # ready once it answers an exchange
            if self.perfdhcp(50, 1)["acks"] > 0:
                return
        raise RuntimeError(f"kea-dhcp4 did not answer; see {self.tmp / 'kea.log'}")

    def pid(self) -> int:
        out = subprocess.run(["ip", "netns", "pids", self.server], capture_output=True,
                             text=True).stdout.split()
        for pid in out:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "kea-dhcp4":
                return int(pid)
        raise RuntimeError("kea-dhcp4 is not running")

    def perfdhcp(self, rate: int, seconds: int) -> dict:
        out = subprocess.run(["ip", "netns", "exec", self.client, "taskset", "-c",
                              str(CLIENT_CPU), "perfdhcp", "-4", "-g", "single", "-l",
                              "198.18.0.2", "-r", str(rate), "-R", "1000000", "-p",
                              str(seconds), "198.18.0.1"], capture_output=True,
                             text=True).stdout
        sections = re.split(r"\*\*\*Statistics for: ", out)
        stats: dict = {"discovers": 0, "acks": 0, "avg_ms": 0.0, "max_ms": 0.0}
        for section in sections[1:]:
            name = section.split("***", 1)[0]
            if name == "DISCOVER-OFFER":
                stats["discovers"] = int(_number(r"sent packets: (\d+)", section))
            elif name == "REQUEST-ACK":
                stats["acks"] = int(_number(r"received packets: (\d+)", section))
                stats["avg_ms"] = _number(r"avg delay: ([\d.]+)", section)
                stats["max_ms"] = _number(r"max delay: ([\d.]+)", section)
        return stats

    def knee(self, seconds: int, lease_db: str = MEMFILE,
             threads: int = 0) -> tuple[dict, list[dict]]:
        """Raise the offered rate until Kea drops; return the last clean run and all.
        ``lease_db`` and ``threads`` as for :meth:`start`."""
        self.start(lease_db, threads)
        runs, best = [], None
        for rate in KEA_RATES:
            pid = self.pid()
            cpu = cpu_seconds(pid)
            got = self.perfdhcp(rate, seconds)
            got["cpu_us"] = (cpu_seconds(pid) - cpu) / max(1, got["acks"]) * 1e6
            got["offered"] = rate
            got["rate"] = got["acks"] / seconds
            lost = got["discovers"] - got["acks"]
            got["clean"] = (lost <= max(2, 0.0001 * got["discovers"])
                            and got["rate"] >= 0.97 * rate)
            runs.append(got)
            if not got["clean"]:
                break
            best = got
        if best is None:  # not even the lowest rate was clean: say so, keep its figure
            best = {**runs[0], "unclean": True}
        return best, runs

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(RuntimeError, OSError):
                os.kill(self.pid(), 15)
            self.proc.wait(timeout=30)
            self.proc = None

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for ns in (self.server, self.client):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _number(pattern: str, text: str) -> float:
    """The first group of ``pattern`` in perfdhcp's report, 0 when absent (no packet)."""
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def kea_missing() -> str | None:
    if os.geteuid() != 0:
        return "not root (namespaces)"
    for tool in ("kea-dhcp4", "perfdhcp", "taskset"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install kea-dhcp4-server kea-admin)"
    return None


# -- the table ------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per dstm-orch run")
    parser.add_argument("--kea-seconds", type=int, default=4, help="per perfdhcp rate")
    parser.add_argument("--repeat", type=int, default=1, help="runs of everything; medians")
    parser.add_argument("--json", help="also write every run's figures to this file")
    args = parser.parse_args()
    if os.cpu_count() < 2:
        parser.error("needs 2 CPUs (server on CPU 0, load on CPU 1)")
    counts = [1, 8]
    load_before = os.getloadavg()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in load_before)}"
          f" ({os.cpu_count()} CPUs; server on CPU {SERVER_CPU}, load on CPU {CLIENT_CPU})")
    why_not = kea_missing()
    kea_runs: list[tuple[dict, list]] = []
    dstm_runs: dict[str, list[dict]] = {"single": [], "group": []}
    with tempfile.TemporaryDirectory(prefix="dstm-bench-kea-anchor-") as tmp:
        kea = Kea(Path(tmp)) if why_not is None else None
        with kea if kea is not None else contextlib.nullcontext():
            for _ in range(args.repeat):
                if kea is not None:
                    kea_runs.append(kea.knee(args.kea_seconds))
                    kea.stop()
                for path in ("single", "group"):
                    dstm_runs[path].append(measure_dstm(path == "group", args.seconds,
                                                        counts))
    load_after = os.getloadavg()

    def med(path: str, key: tuple, field: str) -> float:
        return statistics.median(run[key][field] for run in dstm_runs[path])

    knee = statistics.median(best["rate"] for best, _ in kea_runs) if kea_runs else None
    kea_cpu = statistics.median(best["cpu_us"] for best, _ in kea_runs) if kea_runs else None
    if kea_runs:
        for best, runs in kea_runs:
            offered = ", ".join(f"{r['offered']}:{r['rate']:.0f}{'' if r['clean'] else '!'}"
                                for r in runs)
            knee_text = (f"no clean rate, {best['rate']:.0f}/s answered at the lowest"
                         if best.get("unclean") else f"knee {best['rate']:.0f}/s")
            print(f"Kea memfile DORA, offered:answered per s (! = dropped): {offered}; "
                  f"{knee_text}, avg {best['avg_ms']:.2f} ms, max "
                  f"{best['max_ms']:.2f} ms, {best['cpu_us']:.0f} us CPU per lease")
    else:
        print(f"Kea: not measured: {why_not}")
    print()
    head = (f"{'measure':<22}{'Kea knee':>10}{'single':>10}{'group':>10}"
            f"{'group/Kea':>11}{'group/single':>14}{'p99 ms s/g':>16}"
            f"{'CPU us s/g':>14}  target")
    print(head)
    print("-" * len(head))
    for kind, label in (("new", "new leases/s"), ("renew", "renews/s")):
        for count in counts:
            key = (kind, count)
            single, group = med("single", key, "rate"), med("group", key, "rate")
            ratio = f"{group / knee:.2f}x" if knee else "-"
            target = ">= 1.0x Kea" if count == 8 else "report"
            print(f"{label + f', {count} cl.':<22}"
                  f"{(f'{knee:,.0f}' if knee else '-'):>10}{single:>10,.0f}{group:>10,.0f}"
                  f"{ratio:>11}{group / single:>13.2f}x"
                  f"{med('single', key, 'p99_ms'):>8.1f}/{med('group', key, 'p99_ms'):<7.1f}"
                  f"{med('single', key, 'cpu_us'):>7.0f}/{med('group', key, 'cpu_us'):<6.0f}"
                  f"  {target}")
    if kea_cpu is not None:
        print(f"Kea CPU per lease at its knee: {kea_cpu:.0f} us")
    failed = sum(run[key]["failed"] for runs in dstm_runs.values() for run in runs
                 for key in run)
    print(f"refused or failed dstm-orch requests: {failed}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in load_after)}; "
          f"median of {args.repeat} run(s), {args.seconds:g} s per dstm-orch measure, "
          f"{args.kea_seconds} s per perfdhcp rate")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"kea": kea_runs, "dstm": {p: [{f"{k[0]}-{k[1]}": v for k, v in run.items()}
                                          for run in runs] for p, runs in dstm_runs.items()},
             "load": [load_before, load_after]}, indent=1))


if __name__ == "__main__":
    main()
