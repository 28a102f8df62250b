"""Run a command as root under a real Debian kernel booted with QEMU.

The machines that run the tests may have a kernel built without a driver the project
needs (``CONFIG_IPV6_TUNNEL`` for the ip6tnl driver). Debian's ``linux-image-amd64``
has it, so this boots that kernel in QEMU with this host's ``/`` shared read-only over
virtio-9p under a tmpfs overlay (the guest writes anywhere; nothing reaches the host),
runs the command as root in the caller's directory with the caller's ``PATH``, streams
its output (stdout and stderr together) and returns its exit status.

Needs (Debian 12): ``qemu-system-x86 linux-image-amd64 busybox-static`` and ``kmod``.
Accelerator: KVM only when the CPU really offers VT-x/AMD-V and ``/dev/kvm`` is not the
paravirtual ``kvm_pvm`` (a stock kernel hangs on that one with no output); otherwise
software emulation (TCG, about 18x slower than native).

Use from Python: ``run(["cmd", "arg"])`` (returns the exit status; 125: the guest did
not report one), or from a shell: ``scripts/in-kernel CMD [ARG...]``. Everything it
creates (a temporary directory with the decompressed kernel, the initramfs and the job
files, and the QEMU process) is removed on every exit path, QEMU also when this process
is killed (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

GUEST_MODULES = ("virtio_pci", "virtio_console", "virtio_rng", "9pnet_virtio", "9p", "overlay")
"""Kernel modules the initramfs loads to reach the host's root (dependencies added)."""
QBOOT = Path("/usr/share/qemu/qboot.rom")
"""A minimal BIOS: boots a ``-kernel`` faster than SeaBIOS."""
NO_STATUS = 125
"""Exit status when the guest reported none (did not boot, hung, or was killed)."""
TCG = ["-accel", "tcg,thread=multi,tb-size=512", "-cpu", "max"]
KVM = ["-enable-kvm", "-cpu", "host"]

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "insmod $m failed"; done
O=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $O,ro,cache=loose root /lower || { echo "9p root mount failed"; poweroff -f; }
mount -t tmpfs -o mode=755 upper /upper; mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w root /newroot \
  || { echo "overlay mount failed"; poweroff -f; }
N=/newroot
mount -t tmpfs -o mode=755 run $N/run; mkdir -p $N/run/qk/job
mount -t 9p -o $O,rw,cache=none job $N/run/qk/job
umount /proc /sys; mount --move /dev $N/dev
mount -t proc proc $N/proc; mount -t sysfs sys $N/sys
mkdir -p $N/dev/pts $N/dev/shm $N/dev/mqueue $N/run/sshd $N/run/netns $N/run/lock
mount -t devpts -o newinstance,ptmxmode=666 devpts $N/dev/pts; mount -t tmpfs shm $N/dev/shm
mount -t cgroup2 cgroup2 $N/sys/fs/cgroup; mount -t bpf bpf $N/sys/fs/bpf
mount -t mqueue mqueue $N/dev/mqueue
ln -sf /proc/self/fd $N/dev/fd; ln -sf /proc/self/fd/0 $N/dev/stdin
ln -sf /proc/self/fd/1 $N/dev/stdout; ln -sf /proc/self/fd/2 $N/dev/stderr
hostname qemu-kernel; ip link set lo up
exec switch_root $N /bin/busybox sh /run/qk/job/stage2
"""
"""The initramfs's /init: host root over 9p under a tmpfs overlay, then stage2."""

STAGE2 = r"""for OUT in /dev/vport*p1; do break; done
/bin/sh /run/qk/job/cmd </dev/null >"$OUT" 2>&1
echo $? > /run/qk/job/rc
sync; /bin/busybox poweroff -f
"""
"""Runs in the new root: the command, its output to the virtio port, its status."""


class KernelUnavailable(RuntimeError):
    """A package or file this module needs is missing (the message names it)."""


def kernel_version() -> str:
    """Return the newest ``/boot/vmlinuz-<version>`` of linux-image-amd64 that has 9p.

    Raises:
        KernelUnavailable: none is installed (the cloud kernel has no 9p).
    """
    found = []
    for path in Path("/boot").glob("vmlinuz-*-amd64"):
        version = path.name.removeprefix("vmlinuz-")
        if "cloud" not in version and Path("/lib/modules", version, "kernel/fs/9p").is_dir():
            found.append(version)
    if not found:
        raise KernelUnavailable("no /boot/vmlinuz-*-amd64 with 9p modules "
                                "(apt-get install linux-image-amd64)")
    return max(found, key=lambda v: [int(n) for n in re.findall(r"\d+", v)])


def missing() -> str | None:
    """Return why this host cannot run :func:`run` (a sentence), or None if it can."""
    try:
        kernel_version()
    except KernelUnavailable as exc:
        return str(exc)
    if os.geteuid() != 0:
        return "needs root (the host's root is shared with the guest)"
    for what, package in ((shutil.which("qemu-system-x86_64"), "qemu-system-x86"),
                          (QBOOT.exists() or None, "qemu-system-x86"),
                          (shutil.which("modprobe"), "kmod")):
        if not what:
            return f"missing package {package}"
    if not _static_busybox():
        return "missing package busybox-static"
    return None


def kvm_usable() -> bool:
    """True if ``/dev/kvm`` is hardware KVM: writable, the CPU has vmx or svm, and the
    module is not the paravirtual ``kvm_pvm``."""
    if not os.access("/dev/kvm", os.W_OK) or Path("/sys/module/kvm_pvm").exists():
        return False
    cpuinfo = Path("/proc/cpuinfo").read_text()
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", cpuinfo, re.M) is not None


def _static_busybox() -> Path | None:
    path = Path("/bin/busybox")
    if not path.exists():
        return None
    ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    return path if "not a dynamic executable" in ldd.stdout + ldd.stderr else None


def _decompress_kernel(version: str, dest: Path) -> None:
    """Write the uncompressed kernel of ``version`` (booted by PVH: saves ~4 s of
    decompression under emulation)."""
    data = Path(f"/boot/vmlinuz-{version}").read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise KernelUnavailable(f"/boot/vmlinuz-{version} is not xz-compressed")
    dest.write_bytes(lzma.LZMADecompressor().decompress(data[start:]))


def _module_files(version: str) -> list[Path]:
    files: list[Path] = []
    for name in GUEST_MODULES:
        proc = subprocess.run(["modprobe", "-S", version, "--show-depends", name],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise KernelUnavailable(f"kernel {version} has no module {name}: {proc.stderr}")
        for line in proc.stdout.splitlines():
            words = line.split()
            if words[:1] == ["insmod"] and Path(words[1]) not in files:
                files.append(Path(words[1]))
    return files


def _cpio(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """Return a newc cpio archive of ``(path, mode, data)`` entries (directories have
    ``mode`` 0o040755 and no data)."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        out.write(b"\0" * (-(110 + len(raw)) % 4) + data + b"\0" * (-len(data) % 4))
    return out.getvalue()


def _initramfs(version: str, dest: Path) -> None:
    mods = _module_files(version)
    directories = ["bin", "mods", "proc", "sys", "dev", "newroot", "lower", "upper"]
    entries = [(d, 0o040755, b"") for d in directories]
    entries.append(("bin/busybox", 0o100755, Path("/bin/busybox").read_bytes()))
    entries += [(f"mods/{m.name}", 0o100644, m.read_bytes()) for m in mods]
    entries.append(("mods/order", 0o100644, "".join(f"{m.name}\n" for m in mods).encode()))
    entries.append(("init", 0o100755, INIT.encode()))
    dest.write_bytes(_cpio(entries))


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _relay(fd: int, sink: Callable[[bytes], object]) -> None:
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            sink(chunk)


def _write_stdout(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def run(argv: Sequence[str], *, cwd: str | os.PathLike | None = None,
        env: dict[str, str] | None = None, timeout: float = 900.0,
        memory_mib: int = 1024, cpus: int = 2, accel: str = "auto",
        output: Callable[[bytes], object] = _write_stdout) -> int:
    """Boot the kernel, run ``argv`` as root in ``cwd`` (default: the current
    directory) and return its exit status.

    Args:
        argv: the command and its arguments (run by the host's ``/bin/sh``).
        env: extra environment variables; ``PATH`` defaults to the caller's, ``HOME`` is
            ``/root``.
        timeout: seconds of wall time before QEMU is killed (then 125 is returned).
        memory_mib, cpus: the guest's RAM (MiB) and CPUs.
        accel: ``auto`` (KVM if :func:`kvm_usable`, else TCG), ``kvm`` or ``tcg``.
        output: called with each chunk of the command's output (default: our stdout).

    Returns:
        The command's exit status, or 125 when the guest reported none (the tail of the
        guest's console is then given to ``output``).

    Raises:
        KernelUnavailable: a package is missing (see :func:`missing`).
    """
    if not argv:
        raise ValueError("argv: empty command")
    version = kernel_version()
    if not _static_busybox():
        raise KernelUnavailable("missing package busybox-static")
    use_kvm = accel == "kvm" or (accel == "auto" and kvm_usable())
    work = Path(tempfile.mkdtemp(prefix="dstm-orch-qemu-"))
    qemu: subprocess.Popen | None = None
    relay: threading.Thread | None = None
    try:
        job = work / "job"
        job.mkdir()
        _decompress_kernel(version, work / "vmlinux")
        _initramfs(version, work / "initrd.cpio")
        variables = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root",
                     "TERM": "dumb", "LANG": "C.UTF-8", **(env or {})}
        where = shlex.quote(str(Path(cwd or os.getcwd()).resolve()))
        (job / "cmd").write_text(
            f"cd {where} || exit 126\n"
            + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in variables.items())
            + "exec " + shlex.join(argv) + "\n")
        (job / "stage2").write_text(STAGE2)
        read_end, write_end = os.pipe()
        command = [
            "qemu-system-x86_64", *(KVM if use_kvm else TCG), "-machine", "q35",
            "-m", str(memory_mib), "-smp", str(cpus), "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-bios", str(QBOOT),
            "-kernel", str(work / "vmlinux"), "-initrd", str(work / "initrd.cpio"),
            "-append", "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init",
            "-serial", f"file:{work / 'console.log'}",
            "-virtfs", "local,path=/,mount_tag=root,security_model=none,readonly=on,"
                       "multidevs=remap",
            "-virtfs", f"local,path={job},mount_tag=job,security_model=none",
            "-device", "virtio-rng-pci", "-device", "virtio-serial-pci",
            "-chardev", f"file,id=out,path=/proc/self/fd/{write_end}",
            "-device", "virtserialport,chardev=out,name=out",
        ]
        try:
            qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, pass_fds=(write_end,),
                                    preexec_fn=_die_with_parent)
        finally:
            os.close(write_end)
        relay = threading.Thread(target=_relay, args=(read_end, output), daemon=True)
        relay.start()
        try:
            qemu.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            output(f"qemu_kernel: no exit after {timeout:.0f} s; killing QEMU\n".encode())
        rc_file = job / "rc"
        if qemu.poll() is not None and rc_file.exists() and rc_file.read_text().strip():
            relay.join(timeout=10)
            return int(rc_file.read_text())
        console = work / "console.log"
        tail = console.read_text(errors="replace").splitlines()[-40:] if console.exists() else []
        output(("qemu_kernel: the guest reported no exit status; console tail:\n"
                + "\n".join(tail) + "\n").encode())
        return NO_STATUS
    finally:
        if qemu is not None and qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        if relay is not None:
            relay.join(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def run_report(script: Path, plan: dict, workdir: Path, *, prefix: str, label: str,
               timeout: float = 1200.0) -> dict:
    """Run the guest script ``script`` with ``plan`` (written as JSON into ``workdir``)
    under the kernel, streaming its output, and return its report: the JSON after
    ``prefix`` on the last line that starts with it. Prints the wall time under
    ``label``.

    Raises:
        AssertionError: the script failed or printed no report (with its last output).
    """
    import json
    import time

    plan_file = workdir / "plan.json"
    plan_file.write_text(json.dumps(plan))
    output = bytearray()

    def sink(chunk: bytes) -> None:
        output.extend(chunk)
        _write_stdout(chunk)

    started = time.monotonic()
    rc = run([sys.executable, str(script), str(plan_file)], cwd=Path(__file__).parents[1],
             output=sink, timeout=timeout)
    print(f"{label}: guest run took {time.monotonic() - started:.0f} s wall")
    text = output.decode(errors="replace")
    assert rc == 0, f"the guest failed (exit {rc}):\n{text[-4000:]}"
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert lines, f"the guest printed no report:\n{text[-4000:]}"
    return json.loads(lines[-1].removeprefix(prefix))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.qemu_kernel CMD [ARG...]``: run CMD in the guest, exit with its
    status. Environment: QEMU_KERNEL_ACCEL (auto|kvm|tcg), QEMU_KERNEL_MEM (MiB),
    QEMU_KERNEL_CPUS, QEMU_KERNEL_TIMEOUT (seconds)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: scripts/in-kernel CMD [ARG...]   (runs CMD as root under "
              "linux-image-amd64 in QEMU)", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: sys.exit(128 + number))
    try:
        return run(args, accel=os.environ.get("QEMU_KERNEL_ACCEL", "auto"),
                   memory_mib=int(os.environ.get("QEMU_KERNEL_MEM", "1024")),
                   cpus=int(os.environ.get("QEMU_KERNEL_CPUS", "2")),
                   timeout=float(os.environ.get("QEMU_KERNEL_TIMEOUT", "900")))
    except KernelUnavailable as exc:
        print(f"in-kernel: {exc}", file=sys.stderr)
        return NO_STATUS
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
