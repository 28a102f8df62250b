"""Bring a lab up, look at it, run commands in it, and tear it down.

``lab_up`` refuses a lab that is already up (its state dir exists) instead of
reusing it: run ``lab_down`` first. It checks the whole inventory before it
changes anything, records what it will create before creating it, and removes
everything again if any step fails (also on Ctrl-C), so a failed ``lab up``
leaves nothing behind. ``lab_down`` works from that record and from the
inventory's names, and is safe to run twice or after a failed ``lab up``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.domain.errors import LabError
from dstm_orch.lab import netns, sshd, state
from dstm_orch.lab.plan import (
    BRIDGE,
    LabPlan,
    build_plan,
    lab_host_names,
    lab_settings,
)
from dstm_orch.lab.status import HostStatus, LabStatus


def namespace_of(inv: AnsibleInventory, host: str) -> str:
    """Return the network namespace of lab host ``host`` (``dstm-<lab>-<host>``).

    Raises:
        LabError: ``host`` is not in dstm_nodes, dstm_teps or dstm_lab_ipv4_hosts.
    """
    settings = lab_settings(inv)
    hosts = lab_host_names(inv)
    if host not in hosts:
        raise LabError(f"lab '{settings.name}' has no host '{host}' (hosts: {', '.join(hosts)})")
    return settings.namespace(host)


def lab_up(inv: AnsibleInventory, *, timeout: float = 10.0,
           sshd_options: Mapping[str, str] | None = None) -> LabStatus:
    """Build the lab of ``inv`` in network namespaces and start one sshd per node and TEP.

    What is built is described in :mod:`dstm_orch.lab.plan`. Keys, sshd files,
    ``known_hosts`` and the record ``lab.json`` go into ``dstm_lab.state_dir``.

    Args:
        inv: the lab inventory (``dstm_lab`` in its group_vars/all).
        timeout: seconds to wait for all sshd to send their banner.
        sshd_options: extra sshd_config keywords for every sshd, after the lab's own
            (sshd keeps the first value of a keyword). A bad one makes sshd exit, and
            ``lab_up`` fail and clean up.

    Returns:
        The status of the lab, which is up.

    Raises:
        LabError: the inventory is unusable, not root, a tool is missing, the lab or
            something in its way exists already, or a step failed (then everything
            created so far has been removed again).
    """
    plan = build_plan(inv)
    _require_root(plan.name)
    _require_tools()
    state.refuse_existing(plan.state_dir, plan.name)
    _preflight(plan)
    state.create_state_dir(plan.state_dir, plan.name)
    record = state.LabRecord(lab=plan.name, namespaces=plan.namespaces,
                             root_links=(plan.controller_if,))
    try:
        state.save(plan.state_dir, record)
        _build_network(plan)
        ssh_hosts = [h for h in plan.hosts if h.ssh_address]
        files = {h.name: sshd.sshd_files(plan.state_dir, h.name) for h in ssh_hosts}
        listen = {h.name: str(ipaddress.IPv6Address(h.ssh_address)) for h in ssh_hosts}
        sshd.generate_keys(plan.state_dir, plan.name, list(files.values()))
        for host in ssh_hosts:
            sshd.write_config(files[host.name], listen[host.name], plan.state_dir, sshd_options)
        sshd.write_known_hosts(plan.state_dir, [(h.ssh_address, files[h.name]) for h in ssh_hosts])
        sshd.start([(h.namespace, files[h.name]) for h in ssh_hosts])
        sshd.wait_ready([(listen[h.name], files[h.name]) for h in ssh_hosts], timeout)
        pids = {name: f.pid() for name, f in files.items()}
        record = replace(record, sshd_pids={n: p for n, p in pids.items() if p}, state="up")
        state.save(plan.state_dir, record)
    except BaseException as exc:
        failed = f"lab '{plan.name}' did not come up: {exc}"
        try:
            _teardown(plan.state_dir, plan.namespaces, (plan.controller_if,))
        except LabError as cleanup:
            if isinstance(exc, LabError):
                raise LabError(f"{failed}; cleaning up failed too: {cleanup}") from exc
            exc.add_note(f"cleaning up after it failed too: {cleanup}")
            raise
        if isinstance(exc, LabError):
            raise LabError(f"{failed}; everything it created was removed") from exc
        raise
    return _status(plan)


def lab_down(inv: AnsibleInventory, *, timeout: float = 5.0) -> None:
    """Tear the lab of ``inv`` down: sshd and every process in its namespaces,
    the namespaces, the controller's veth, and the state dir.

    Works from the record in the state dir and from the names the inventory
    implies, so it also cleans up after a failed ``lab up``. Safe to call twice.

    Args:
        timeout: seconds processes get after SIGTERM before SIGKILL.

    Raises:
        LabError: not root, or something could not be removed (the message says what).
    """
    settings = lab_settings(inv)
    _require_root(settings.name)
    record = state.load(settings.state_dir)
    names = [settings.switch_ns, *(settings.namespace(h) for h in lab_host_names(inv))]
    links = [settings.controller_if]
    if record is not None:
        names += record.namespaces
        links += record.root_links
    _teardown(settings.state_dir, names, links, timeout)


def lab_status(inv: AnsibleInventory) -> LabStatus:
    """Report, per host, whether its namespace exists, its sshd runs, and its addresses.

    Raises:
        LabError: the inventory is unusable or not root.
    """
    plan = build_plan(inv)
    _require_root(plan.name)
    return _status(plan)


def lab_exec(inv: AnsibleInventory, host: str, argv: Sequence[str],
             capture: bool = False) -> subprocess.CompletedProcess:
    """Run ``argv`` inside ``host``'s namespace (``ip netns exec``) and wait for it.

    Args:
        host: a lab host (node, TEP or IPv4 host).
        argv: the command and its arguments.
        capture: capture stdout and stderr as text instead of inheriting them.

    Returns:
        The finished process; a non-zero exit is not an error here.

    Raises:
        LabError: unknown host, empty ``argv``, not root, or the lab is not up.
    """
    return subprocess.run(lab_exec_argv(inv, host, argv), capture_output=capture,
                          text=capture or None, check=False)


def lab_exec_argv(inv: AnsibleInventory, host: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` inside ``host``'s namespace (``ip netns exec
    NS argv...``), for a caller that executes it itself (``lab exec`` replaces its own
    process with it, so that signals and the exit status are the command's).

    Raises:
        LabError: as :func:`lab_exec`.
    """
    ns = namespace_of(inv, host)
    name = lab_settings(inv).name
    if not argv:
        raise LabError(f"lab exec on {host}: no command given")
    _require_root(name)
    if not netns.namespace_exists(ns):
        raise LabError(f"lab '{name}' is not up: namespace {ns} does not exist "
                       "(run `dstm-orch lab up`)")
    return [netns.IP, "netns", "exec", ns, *argv]


# -- building ------------------------------------------------------------------------


def _require_root(name: str) -> None:
    if os.geteuid() != 0:
        raise LabError(f"lab '{name}' needs root (network namespaces, sshd); run it as root")


def _require_tools() -> None:
    missing = [tool for tool in (netns.IP, sshd.SSH_KEYGEN) if shutil.which(tool) is None]
    missing += [p for p in (sshd.SSHD, sshd.SFTP_SERVER) if not os.access(p, os.X_OK)]
    if missing:
        raise LabError(f"the lab needs iproute2 and openssh-server; not found: "
                       f"{', '.join(missing)}")


def _preflight(plan: LabPlan) -> None:
    """Refuse before changing anything if a name or address of the lab is taken."""
    taken = [ns for ns in plan.namespaces if netns.namespace_exists(ns)]
    if taken:
        raise LabError(f"lab '{plan.name}': namespace(s) {', '.join(taken)} exist already "
                       "(a lab that was not torn down? run `dstm-orch lab down`)")
    if netns.root_link_exists(plan.controller_if):
        raise LabError(f"lab '{plan.name}': interface {plan.controller_if} exists already in "
                       "the root namespace (run `dstm-orch lab down`)")
    controller = str(plan.controller.ip)
    for ifname, addresses in netns.global_addresses(None).items():
        if any(a.split("/")[0] == controller for a in addresses):
            raise LabError(f"lab '{plan.name}': dstm_lab.controller_ipv6 {controller} is "
                           f"already on {ifname} in the root namespace")
    routes = netns.ip_json(["-6", "route", "list", "exact", str(plan.link_prefix)])
    if routes:
        raise LabError(f"lab '{plan.name}': the root namespace already routes dstm_lab."
                       f"link_prefix {plan.link_prefix} (dev {routes[0].get('dev')}); "
                       "another lab on the same prefix?")


def _build_network(plan: LabPlan) -> None:
    """Create namespaces, veths, the bridge, addresses and routes: one ``ip`` per namespace."""
    for ns, lines in network_batches(plan):
        netns.ip_batch(lines, ns)


def network_batches(plan: LabPlan) -> list[tuple[str | None, list[str]]]:
    """Return the ``ip -b`` batches that build ``plan``'s network, in order, as
    ``(namespace or None for the root namespace, lines)``: namespaces and veths, the
    switch's bridge, then each host's addresses and routes."""
    root = [f"netns add {ns}" for ns in plan.namespaces]
    for veth in plan.veths:
        where = f" netns {veth.ns}" if veth.ns else ""
        root.append(f"link add name {veth.name}{where} type veth "
                    f"peer name {veth.peer_name} netns {veth.peer_ns}")
    ctl = plan.controller_if
    root += [f"addr add {plan.controller} dev {ctl} nodad", f"link set {ctl} up"]
    batches: list[tuple[str | None, list[str]]] = [(None, root)]

    switch = ["link set lo up", f"link add {BRIDGE} type bridge mcast_snooping 0",
              f"link set {BRIDGE} addrgenmode none", f"link set {BRIDGE} up"]
    for port in plan.switch_ports:
        switch += [f"link set {port} addrgenmode none", f"link set {port} master {BRIDGE}",
                   f"link set {port} up"]
    batches.append((plan.switch_ns, switch))

    for host in plan.hosts:
        lines = ["link set lo up"]
        for ifname, address in host.addresses:
            if address.version == 6:
                lines.append(f"addr add {address} dev {ifname} nodad")
            else:
                # The IPv4 side is IPv4 only: no IPv6 link-local address either.
                lines += [f"addr add {address} dev {ifname}",
                          f"link set {ifname} addrgenmode none"]
        lines += [f"link set {ifname} up" for ifname in dict.fromkeys(i for i, _ in host.addresses)]
        lines += [route.command() for route in host.routes]
        batches.append((host.namespace, lines))
    return batches


# -- tearing down ----------------------------------------------------------------------


def _teardown(state_dir: Path, namespaces: Sequence[str], root_links: Sequence[str],
              timeout: float = 5.0) -> None:
    """Kill the lab's processes, delete its links and namespaces, remove the state dir."""
    namespaces = [ns for ns in dict.fromkeys(namespaces) if netns.namespace_exists(ns)]
    pids: set[int] = set(sshd.stray_sshd_pids(state_dir)) | set(sshd.ssh_mux_pids(state_dir))
    hosts_dir = state_dir / sshd.HOSTS_DIR
    if hosts_dir.is_dir():
        pids |= {p for d in hosts_dir.iterdir() if (p := sshd.SshdFiles(d.name, d).pid())}
    for ns in namespaces:
        pids |= set(netns.namespace_pids(ns))
    survivors = netns.terminate(pids, timeout)
    for ns in namespaces:  # anything started meanwhile (an ssh session being set up)
        survivors += netns.terminate(netns.namespace_pids(ns), 1.0)

    problems = []
    for link in dict.fromkeys(root_links):
        if netns.root_link_exists(link):
            try:
                netns.ip_batch([f"link del {link}"])
            except LabError as exc:
                problems.append(str(exc))
    for ns in namespaces:
        try:
            netns.ip_batch([f"netns del {ns}"])
        except LabError as exc:
            problems.append(str(exc))
    if survivors:
        problems.append(f"processes {sorted(set(survivors))} did not exit after SIGKILL")
    try:
        state.remove_state_dir(state_dir)
    except (LabError, OSError) as exc:
        problems.append(str(exc))
    if problems:
        raise LabError("lab teardown incomplete: " + "; ".join(problems))


def _status(plan: LabPlan) -> LabStatus:
    record = state.load(plan.state_dir)
    hosts = []
    for host in plan.hosts:
        exists = netns.namespace_exists(host.namespace)
        pid = sshd.sshd_files(plan.state_dir, host.name).pid() if host.ssh_address else None
        hosts.append(HostStatus(
            name=host.name,
            role=host.role,
            namespace=host.namespace,
            namespace_exists=exists,
            ssh_address=host.ssh_address,
            sshd_pid=pid,
            addresses=netns.global_addresses(host.namespace) if exists else {},
        ))
    controller = None
    if netns.root_link_exists(plan.controller_if):
        found = netns.global_addresses(None, plan.controller_if)
        controller = found.get(plan.controller_if, ())
    return LabStatus(
        name=plan.name,
        state_dir=plan.state_dir,
        state=record.state if record else None,
        controller_if=plan.controller_if,
        controller_addresses=controller,
        hosts=tuple(hosts),
    )
