"""Helpers of the lab tests that run ``dstm-orch serve`` on the controller and the
node agent or ``ping`` inside the lab's namespaces (tests/test_roaming_lab.py,
tests/test_serve_lab.py, tests/test_tep_move_lab.py).

Every wait polls with a deadline and fails with the server's log; nothing asserts on
time.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT


def free_port(host: str) -> int:
    """A TCP port nothing listens on at IPv6 address ``host`` now."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_listening(address: str, port: int, process: subprocess.Popen, log: Path,
                   deadline: float = 30.0) -> None:
    """Wait until ``[address]:port`` accepts a connection; fail if ``process`` exits."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            pytest.fail(f"dstm-orch serve exited {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"dstm-orch serve did not listen on [{address}]:{port}:\n{log.read_text()}")


@contextlib.contextmanager
def serving(inventory: Path, state: Path, address: str, log: Path,
            *extra: str) -> Iterator[int]:
    """Run ``dstm-orch serve`` in the root namespace (the lab's controller) on
    ``[address]:<free port>`` with no operator API; yield the port. SIGTERM on exit
    (SIGKILL after 15 s)."""
    port = free_port(address)
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "dstm_orch", "serve", "-i", str(inventory),
             "--state", str(state), "--listen", f"[{address}]:{port}", "--api-listen", "off",
             *extra], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(address, port, server, log)
        yield port
    finally:
        stop(server, timeout=15)


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 60) -> None:
    """Send ``signum`` to a process still running, wait; SIGKILL it after ``timeout`` s."""
    if process.poll() is None:
        process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(condition, what: str, deadline: float, log: Path | None = None,
               every: float = 0.2):
    """Poll ``condition()`` until it returns something true and return that; fail
    naming ``what`` (and the server's log tail) after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        seen = condition()
        if seen:
            return seen
        if time.monotonic() > end:
            tail = log.read_text()[-3000:] if log is not None else ""
            pytest.fail(f"gave up after {deadline:.0f} s waiting until {what}\n{tail}")
        time.sleep(every)


def echoes(output: str) -> dict:
    """Echoes ``sent`` and ``lost``, from ping's summary, and the sequence numbers never
    answered (``missing``)."""
    summary = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert summary, output
    sent, received = int(summary[1]), int(summary[2])
    seen = {int(n) for n in re.findall(r"icmp_seq=(\d+) ", output)}
    return {"sent": sent, "lost": sent - received,
            "missing": sorted(set(range(1, sent + 1)) - seen)}
