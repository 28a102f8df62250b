"""tests/qemu_kernel.py and scripts/in-kernel: a command under Debian's kernel in QEMU
returns its status and output, runs in the caller's directory, cannot write the host,
and leaves no QEMU process or temporary directory behind, also when killed."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import qemu_kernel
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.kernel, pytest.mark.slow, pytest.mark.lab,
    pytest.mark.skipif(qemu_kernel.missing() is not None,
                       reason=f"needs root, QEMU and Debian's kernel: {qemu_kernel.missing()}"),
]


def work_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("dstm-orch-qemu-*")}


def test_kvm_is_not_used_when_it_is_paravirtual():
    if Path("/sys/module/kvm_pvm").exists():
        assert qemu_kernel.kvm_usable() is False


def test_status_output_directory_and_a_read_only_host(tmp_path):
    before = work_dirs()
    output = bytearray()
    rc = qemu_kernel.run(
        ["sh", "-c", "pwd; uname -r; echo to-stderr >&2; touch written; "
                     "modprobe ip6_tunnel && echo ip6tnl-ok; exit 7"],
        cwd=tmp_path, output=output.extend)
    lines = output.decode().splitlines()
    assert rc == 7
    assert lines == [str(tmp_path), qemu_kernel.kernel_version(), "to-stderr", "ip6tnl-ok"]
    assert not (tmp_path / "written").exists()  # the guest writes to its overlay only
    assert work_dirs() == before


def test_sigterm_stops_qemu_and_removes_the_work_directory():
    before = work_dirs()
    proc = subprocess.Popen([str(ROOT / "scripts" / "in-kernel"), "sh", "-c",
                             "echo booted; sleep 600"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "QEMU_KERNEL_TIMEOUT": "300"})
    try:
        assert proc.stdout.readline() == "booted\n"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1 and "qemu" in Path(f"/proc/{children[0]}/comm").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{children[0]}").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert work_dirs() == before
