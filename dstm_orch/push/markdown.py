"""A plan as Markdown, for a merge-request comment (``plan --format markdown``).

Per device: the binding entries added, changed and removed (router TEPs, RFC 8676
binding table) or the Ansible changes and diff (Linux nodes and TEPs), the leases they
belong to, pending confirmed commits; then the nodes changing phase (draft section 6),
the leases apply revokes, the orphans and the leases still on an old port-set layout
(RFC 7597 section 5.1). GitHub and GitLab render it (CommonMark tables, ``<details>``).
"""

from __future__ import annotations


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _ports(entry: dict) -> str:
    if not entry.get("psid_len"):
        return "all"
    return f"psid {entry['psid']}/{entry['psid_len']} a={entry['psid_offset']}"


_TRAFFIC = {"uninterrupted": "no interruption (same address)",
            "ports-narrowed": "sessions on ports outside the new port set end",
            "sessions-end": "sessions over the old address end"}


def _side(side: dict) -> str:
    ports = side["port_set"]
    where = side["ipv4"] if not ports else f"{side['ipv4']} psid {ports['psid']}"
    return f"{where}, static" if side["static"] else f"{where}, until {side['end']}"


def render(plan: dict, nodes_by_ipv6: dict[str, str]) -> str:
    """Render ``Outcome.as_dict()`` of a plan.

    Args:
        plan: the plan document (``plan --json``).
        nodes_by_ipv6: node IPv6 address -> node name, from the intent and the
            revoked leases (so that an entry names its lease's node).
    """
    changes = plan["changes"]
    lines = ["## dstm-orch plan", "",
             "**Changes:** " + ("yes, `apply` would change the items below" if changes
                                else "none, the devices and leases match the inventory"), ""]
    for device in plan["netconf"]:
        counts = device["counts"]
        lines += [f"### {device['device']} (NETCONF, bind-instance {device['instance']})", "",
                  f"Table version {device['device_version']}, {device['device_entries']} "
                  f"entries on the device, {device['desired_entries']} desired: "
                  f"**{counts['added']} to add, {counts['changed']} to change, "
                  f"{counts['removed']} to remove**.", ""]
        rows = []
        for entry in device["changes"]["added"]:
            rows.append(("add", entry, None))
        for pair in device["changes"]["changed"]:
            rows.append(("change", pair["after"], pair["before"]))
        for entry in device["changes"]["removed"]:
            rows.append(("remove", entry, None))
        if rows:
            lines += ["| change | node | node IPv6 | IPv4 | ports | before |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for action, entry, before in rows:
                node = nodes_by_ipv6.get(entry["node_ipv6"], "no lease (drift)")
                was = f"{before['ipv4']} ({_ports(before)})" if before else ""
                lines.append(f"| {action} | {_cell(node)} | {entry['node_ipv6']} | "
                             f"{entry['ipv4']} | {_ports(entry)} | {_cell(was)} |")
            lines.append("")
        for pending in device.get("pending_commits", []):
            lines += [f"- pending confirmed commit: version {pending['version']} sent at "
                      f"{pending['at']}, the device reverts by {pending['deadline']}", ""]
    for host in plan["hosts"]:
        state = ("FAILED" if host["failed"] else "UNREACHABLE" if host["unreachable"]
                 else f"{host['changed']} change(s)")
        lines += [f"### {host['host']} (Ansible): {state}", ""]
        if host["diff"].strip():
            lines += ["<details><summary>diff</summary>", "", "```diff",
                      host["diff"].rstrip("\n").replace("```", "'''"), "```", "",
                      "</details>", ""]
    if plan.get("moves"):
        lines += ["### Leases moving to another TEP", "",
                  "Apply pushes the new TEP (both TEPs then map the lease), then the node's "
                  "route, then removes the old mapping.", "",
                  "| node | IPv4 | pool | from TEP | to TEP |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {m['node']} | {m['ipv4']} | {m['pool']} | {m['from']} | {m['to']} |"
                  for m in plan["moves"]]
        lines.append("")
    moving = [p for p in plan.get("phases", []) if p["after"]]
    if moving:
        lines += ["### Nodes changing phase (draft section 6)", "",
                  "Phase 1 is a static reservation, phase 2 a dynamic lease. Apply ends "
                  "each node's lease and starts the new one at the same instant.", "",
                  "| node | from | to | address before | address after | traffic |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {p['node']} | phase {p['from_phase']} | phase {p['to_phase']} | "
                  f"{_side(p['before'])} | {_side(p['after'])} | {_TRAFFIC[p['traffic']]} |"
                  for p in moving]
        lines.append("")
    blocked = [p for p in plan.get("phases", []) if not p["after"]]
    if blocked:
        lines += ["### Phase moves not possible now (the node keeps its lease)", ""]
        lines += [f"- {p['node']} ({p['before']['ipv4']}): {_cell(p['problem'])}"
                  for p in blocked]
        lines.append("")
    if plan["revoke"]:
        lines += ["### Leases apply revokes", "", "| node | IPv4 | pool | TEP | why |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['node']} | {r['ipv4']} | {r['pool']} | {r['tep']} | "
                  f"{_cell(r['reason'])} |" for r in plan["revoke"]]
        lines.append("")
    if plan["orphans"]:
        lines += ["### Orphans (left out of every device, not revoked)", ""]
        lines += [f"- {o['node']} {o['ipv4']}: {_cell(o['reason'])}; run `{o['action']}`"
                  for o in plan["orphans"]]
        lines.append("")
    if plan["old_layout"]:
        lines += ["### Leases on an old port-set layout (kept until they end)", ""]
        lines += [f"- pool {pool}: {count} lease(s)"
                  for pool, count in sorted(plan["old_layout"].items())]
        lines.append("")
    if plan["errors"]:
        lines += ["### Errors", ""] + [f"- {_cell(e)}" for e in plan["errors"]] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"
