"""ISC Kea's DHCPv4 rate as an anchor: ``kea-dhcp4`` in a network namespace pair,
perfdhcp offering DORA exchanges, and the knee search (:meth:`Kea.knee`): the highest
offered rate with a clean run, each run's CPU, run-queue wait and socket drops recorded
(benchmarks/README.md, "bench_vs_kea.py"). Shared by bench_vs_kea.py (memfile) and
bench_kea_pg.py (PostgreSQL); root, Debian 12's kea-dhcp4-server and kea-admin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

SERVER_CPU, CLIENT_CPU = 0, 1
"""The reference method's pinning: the server under test (Kea, or ``serve``) on CPU 0,
its load (perfdhcp, or the node clients) on CPU 1."""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

MEMFILE = ('{"type": "memfile", "persist": true, "name": "%(dir)s/leases4.csv", '
           '"lfc-interval": 0}')
# 198.0.0.0/8 holds the relay address 198.18.0.2 (so Kea picks this subnet by giaddr) and
# a pool of 14.7 million addresses: a knee search hands out a few hundred thousand
# leases, and the old /15 pool (130,815 addresses) ran out during the fast steps.
KEA_CONFIG = """{"Dhcp4": {
  "interfaces-config": {"interfaces": ["%(veth)s/198.18.0.1"], "dhcp-socket-type": "udp"},
  "lease-database": %(lease_db)s,
  "multi-threading": %(threads)s,
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "198.0.0.0/8",
               "pools": [{"pool": "198.32.0.0 - 198.255.255.254"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
               "output_options": [{"output": "%(dir)s/kea.log"}]}]
}}"""
DROP_TIME = 1.0  # perfdhcp's -d (its default): an exchange unanswered after it is lost
CLIENTS = 500_000_000  # perfdhcp's -R, as ISC's tests: a client seldom comes twice


@dataclasses.dataclass(frozen=True)
class KneeMethod:
    """How the knee is searched (see :meth:`Kea.knee`)."""

    seconds: float = 3.0     # perfdhcp's -p per run (then -W DROP_TIME for the stragglers)
    tolerance: float = 0.001  # a run is clean when it loses at most this share
    tries: int = 3           # runs per offered rate; the rate is clean if one run is
    start: int = 250         # the ramp: start, 2 start, 4 start, ... up to top
    top: int = 64_000
    precision: float = 0.10  # bisect until first lossy - last clean <= this * last clean
    overload: float = 0.10   # no more tries after a run that lost this share
    busy: float = 0.05       # ... while Kea waited for its CPU less than this share

    @classmethod
    def short(cls) -> KneeMethod:
        return cls(seconds=1.0, tries=1, start=1000, precision=0.25)


def is_clean(run: dict, tolerance: float) -> bool:
    """At most ``tolerance`` of the exchanges begun were not answered (ACK within the
    drop time) and at least one was."""
    return run["acks"] > 0 and run["lost"] <= tolerance * run["discovers"]


def overloaded(run: dict, method: KneeMethod) -> bool:
    """A lossy run that says the rate is beyond Kea without another try: it lost more
    than ``method.overload`` of its exchanges while Kea waited for its CPU less than
    ``method.busy`` of the time (the CPU was Kea's; other jobs did not spoil the run)."""
    return (run["lost"] > method.overload * run["discovers"]
            and run["wait_share"] < method.busy)


def next_rate(low: int | None, high: int | None, method: KneeMethod) -> int | None:
    """The search's next offered rate given the highest clean rate ``low`` and the lowest
    lossy one ``high`` so far (None: none yet); None once the knee is found: doubling
    until the first lossy rate, then bisection (to a multiple of 50/s) until the bracket
    is within ``precision`` of ``low``."""
    if high is None:
        rate = method.start if low is None else 2 * low
        return rate if rate <= method.top else None
    if low is None or high - low <= method.precision * low:
        return None
    middle = (low + high) // 2 // 50 * 50
    return middle if low < middle < high else None


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` 0.99 for p99) of ``values``; 0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def parse_perfdhcp(out: str) -> dict:
    """perfdhcp's final report (with ``-x t``): DISCOVERs sent, OFFERs, REQUEST-ACKs
    received, the two exchanges' delays (ms)."""
    stats: dict = {"discovers": 0, "offers": 0, "acks": 0, "avg_ms": 0.0, "max_ms": 0.0,
                   "do_ms": [], "ra_ms": []}
    for section in re.split(r"\*\*\*Statistics for: ", out)[1:]:
        name = section.split("***", 1)[0]
        if name == "DISCOVER-OFFER":
            stats["discovers"] = int(_number(r"sent packets: (\d+)", section))
            stats["offers"] = int(_number(r"received packets: (\d+)", section))
        elif name == "REQUEST-ACK":
            stats["acks"] = int(_number(r"received packets: (\d+)", section))
            stats["avg_ms"] = _number(r"avg delay: ([\d.]+)", section)
            stats["max_ms"] = _number(r"max delay: ([\d.]+)", section)
    for section in re.split(r"\*\*\*Timestamps for packets: ", out)[1:]:
        name = section.split("***", 1)[0]
        key = {"DISCOVER-OFFER": "do_ms", "REQUEST-ACK": "ra_ms"}.get(name)
        if key:
            stats[key] = [(float(b) - float(a)) * 1e3 for a, b in re.findall(
                r"sent / received: ([\d.]+) / ([\d.]+)", section)]
    stats["lost"] = stats["discovers"] - stats["acks"]
    return stats


def sched(pid: int) -> tuple[float, float]:
    """Seconds on a CPU and seconds runnable but waiting for one, of all ``pid``'s
    threads (``/proc/<pid>/task/*/schedstat``)."""
    ran = waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            fields = (task / "schedstat").read_text().split()
            ran, waited = ran + int(fields[0]), waited + int(fields[1])
    return ran / 1e9, waited / 1e9


def cpu_other(cpu: int) -> float:
    """Seconds CPU ``cpu`` spent in interrupts, softirqs (the veth's packets) and stolen
    by the hypervisor (``/proc/stat``): time no task was charged for."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            fields = line.split()
            return sum(int(x) for x in fields[6:9]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def udp_drops(netns: str) -> int:
    """UDP datagrams dropped for a full receive buffer in ``netns`` (RcvbufErrors)."""
    lines = [line.split() for line in subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"], capture_output=True,
        text=True).stdout.splitlines() if line.startswith("Udp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))["RcvbufErrors"])


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
            if self.perfdhcp(50, 1, wait=0.2)["acks"] > 0:
                return
        raise RuntimeError(f"kea-dhcp4 did not answer; see {self.tmp / 'kea.log'}")

    def pid(self) -> int:
        out = subprocess.run(["ip", "netns", "pids", self.server], capture_output=True,
                             text=True).stdout.split()
        for pid in out:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "kea-dhcp4":
                return int(pid)
        raise RuntimeError("kea-dhcp4 is not running")

    def perfdhcp(self, rate: int, seconds: float, wait: float = DROP_TIME) -> dict:
        """One perfdhcp run: ``rate`` DORA exchanges a second begun for ``seconds``, then
        ``wait`` seconds (-W) for the answers still due, so that an exchange begun just
        before the end is not counted lost (perfdhcp's default -W is 0)."""
        out = subprocess.run(["ip", "netns", "exec", self.client, "taskset", "-c",
                              str(CLIENT_CPU), "perfdhcp", "-4", "-g", "single", "-l",
                              "198.18.0.2", "-r", str(rate), "-R", str(CLIENTS),
                              "-p", f"{seconds:g}", "-d", f"{DROP_TIME:g}",
                              "-W", str(int(wait * 1e6)), "-x", "t", "198.18.0.1"],
                             capture_output=True, text=True).stdout
        return parse_perfdhcp(out)

    def measure(self, rate: int, seconds: float) -> dict:
        """One run at ``rate`` with Kea's CPU per lease, its time on a CPU and waiting
        for one (runnable) per second of sending, its CPU's interrupt, softirq and
        stolen time per second of sending, and its socket's drops."""
        pid = self.pid()
        cpu, (ran, waited), drops = cpu_seconds(pid), sched(pid), udp_drops(self.server)
        other = cpu_other(SERVER_CPU)
        got = self.perfdhcp(rate, seconds)
        ran2, waited2 = sched(pid)
        other = cpu_other(SERVER_CPU) - other
        do_ms, ra_ms = got.pop("do_ms"), got.pop("ra_ms")
        got.update(
            offered=rate, rate=got["acks"] / seconds,
            cpu_us=(cpu_seconds(pid) - cpu) / max(1, got["acks"]) * 1e6,
            share=(ran2 - ran) / seconds, wait_share=(waited2 - waited) / seconds,
            irq_steal_share=other / seconds,
            rcvbuf_drops=udp_drops(self.server) - drops,
            p99_ms=percentile(do_ms, 0.99) + percentile(ra_ms, 0.99))
        return got

    def knee(self, seconds: float | KneeMethod = KneeMethod(), lease_db: str = MEMFILE,
             threads: int = 0) -> tuple[dict, list[dict]]:
        """Kea's knee: the highest offered DORA rate at which one of ``method.tries``
        runs loses at most ``method.tolerance`` of its exchanges (unanswered within the
        drop time, 1 s), found by doubling from ``method.start`` to the first lossy rate
        and bisecting between the last clean and the first lossy one. Returns the knee's
        clean run (its ``rate`` is the ACKs per second) and every run, in order.
        ``seconds`` is a :class:`KneeMethod` (a number: the default one with that
        ``seconds``); ``lease_db`` and ``threads`` as for :meth:`start`."""
        method = (seconds if isinstance(seconds, KneeMethod)
                  else KneeMethod(seconds=float(seconds)))
        self.start(lease_db, threads)
        runs: list[dict] = []
        low = high = None
        best: dict | None = None
        high_contended = False
        rate = next_rate(low, high, method)
        while rate is not None:
            clean = None
            for attempt in range(method.tries):
                got = self.measure(rate, method.seconds)
                got["clean"], got["try"] = is_clean(got, method.tolerance), attempt + 1
                runs.append(got)
                if got["clean"]:
                    clean = got
                    break
                if overloaded(got, method):
                    break  # Kea had its CPU and still lost: more tries cannot help
            if clean is not None:
                low, best = rate, clean
            else:
                high = rate
                # every try lost while Kea waited for CPU 0: another job's, not Kea's limit
                high_contended = all(r["wait_share"] >= method.busy
                                     for r in runs if r["offered"] == rate)
            rate = next_rate(low, high, method)
        if best is None:  # not even the lowest rate was clean: say so, keep its figure
            best = {**runs[0], "unclean": True}
        best = {**best, "bracket": (low, high),
                "contended": high_contended or best["wait_share"] >= method.busy}
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


def spread(values: list[float]) -> str:
    """``median (min-max)``, or the one value."""
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def describe_search(best: dict, runs: list[dict]) -> str:
    steps = ", ".join(
        f"{r['offered']}{'' if r['clean'] else '!'}"
        + ("" if r["clean"] else f"[{100 * r['lost'] / max(1, r['discovers']):.2g}%]")
        for r in runs)
    lossy = [r for r in runs if not r["clean"]]
    why = ""
    if lossy:
        why = (f"; lossy runs: {sum(r['lost'] for r in lossy)} lost, "
               f"{sum(r['rcvbuf_drops'] for r in lossy)} dropped by Kea's full socket "
               f"buffer; Kea on its CPU {min(r['share'] for r in lossy):.0%}-"
               f"{max(r['share'] for r in lossy):.0%} and waiting for it "
               f"{min(r['wait_share'] for r in lossy):.0%}-"
               f"{max(r['wait_share'] for r in lossy):.0%}, its CPU in irq, softirq or "
               f"stolen {min(r['irq_steal_share'] for r in lossy):.0%}-"
               f"{max(r['irq_steal_share'] for r in lossy):.0%} of the sending time")
    knee = (f"no clean rate, {best['rate']:,.0f}/s answered at the lowest"
            if best.get("unclean") else
            f"knee {best['rate']:,.0f}/s (bracket {best['bracket'][0]}-"
            f"{best['bracket'][1] or 'top'}), p99 {best['p99_ms']:.2f} ms, "
            f"{best['cpu_us']:.0f} us CPU per lease, on CPU {best['share']:.0%}, "
            f"waiting {best['wait_share']:.0%}, CPU in irq/softirq/stolen "
            f"{best['irq_steal_share']:.0%}")
    return f"offered (! = lossy [lost]): {steps}; {knee}{why}"
