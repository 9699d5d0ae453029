"""Pure health checks: observed data plane + intent + Nodes + VMs -> findings.

Each ``check_*`` function looks at one concern and returns the findings it has
(none when all is well). :func:`check_node` runs them all for one node and
returns a :class:`~.findings.Report` listing which checks ran. Nothing here
does I/O; the caller reads the kernel (:mod:`.observe`), the API and the
probe results first.

Severity rules are described in :mod:`.findings`. The "what to do" of each
finding names the concrete next step (the command, flag or object to look at),
because the reader is a network engineer at 3 a.m., not the author.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from vmoverlay import api
from vxlan_manager.health.findings import Finding, ProbeResult, Report, Severity
from vxlan_manager.health.observed import (
    BridgeDevice,
    Intent,
    ObservedNode,
    VxlanDevice,
    encap_overhead,
)

BROKEN, DEGRADED = Severity.BROKEN, Severity.DEGRADED

CHECK_DEVICE = "vxlan.device"
CHECK_BRIDGE = "bridge"
CHECK_UNDERLAY = "underlay.mtu"
CHECK_VTEPS = "nodes.vtep"
CHECK_FDB = "fdb.peers"
CHECK_VMS = "fdb.vms"
CHECK_PROBES = "probes"

# VMs in these phases have no port anywhere; their entries are not checked.
_INACTIVE_PHASES = (api.PHASE_STOPPED, api.PHASE_PENDING)


def check_node(
    intent: Intent,
    observed: ObservedNode,
    nodes: Sequence[api.Node],
    vms: Sequence[api.VirtualMachine],
    probes: Sequence[ProbeResult] | None = None,
    *,
    probe_max_age: float = 30.0,
) -> Report:
    """Every check for one node. ``probes=None``: probe results unavailable, not checked."""
    report = Report(scope="node", nodes=[intent.node])
    vteps = vtep_map(nodes)
    underlay_mtu = observed.underlay.mtu if observed.underlay else None
    mtu = intent.overlay_mtu(underlay_mtu)

    steps: list[tuple[str, list[Finding]]] = [
        (CHECK_DEVICE, check_vxlan_device(intent, observed.vxlan, mtu)),
        (CHECK_BRIDGE, check_bridge(intent, observed.bridge, mtu)),
        (CHECK_UNDERLAY, check_underlay_mtu(intent, observed)),
        (CHECK_VTEPS, check_duplicate_vteps(nodes, only=intent.node)),
        (CHECK_FDB, check_peer_fdb(intent, observed, vteps)),
        (CHECK_VMS, check_vm_fdb(intent, observed, vms, vteps)),
    ]
    if probes is not None:
        peers = [n for n in nodes if n.name != intent.node and n.vtep_ip]
        steps.append((CHECK_PROBES, check_probes(intent.node, peers, probes, probe_max_age)))
        report.probes.extend(probes)
    for name, found in steps:
        report.checks.append(name)
        report.findings.extend(found)
    return report


def vtep_map(nodes: Iterable[api.Node]) -> dict[str, str]:
    """Node name -> VTEP address, for nodes that have one."""
    return {n.name: n.vtep_ip for n in nodes if n.vtep_ip}


def _restart_agent(node: str) -> str:
    return (
        f"check the vxlan-manager agent on {node} (its logs name the failing step); "
        "restarting it rebuilds the device without touching correct state"
    )


# ---- device and bridge ---------------------------------------------------------------


def check_vxlan_device(intent: Intent, dev: VxlanDevice | None, mtu: int | None) -> list[Finding]:
    node, name = intent.node, intent.vxlan_name
    if dev is None:
        return [
            Finding(
                BROKEN,
                node,
                "vxlan.device",
                f"VXLAN device {name} does not exist: no overlay traffic in or out",
                _restart_agent(node),
                expected=name,
            )
        ]
    out = []
    wanted: list[tuple[str, object, object, Severity]] = [
        ("vxlan.vni", intent.vni, dev.vni, BROKEN),
        ("vxlan.port", intent.port, dev.port, BROKEN),
        ("vxlan.learning", intent.learning, dev.learning, DEGRADED),
    ]
    if intent.local_ip is not None:
        wanted.append(("vxlan.local", intent.local_ip, dev.local_ip, BROKEN))
    # A derived MTU (underlay minus overhead) is only wrong here when the device is
    # smaller than the underlay allows; larger is the underlay's finding.
    if mtu is not None and (dev.mtu < mtu or intent.mtu is not None):
        wanted.append(("vxlan.mtu", mtu, dev.mtu, DEGRADED))
    wanted.append(("vxlan.master", intent.bridge_name, dev.master, BROKEN))
    for prop, want, have, severity in wanted:
        if want != have:
            attr = prop.split(".", 1)[1]
            out.append(
                Finding(
                    severity,
                    node,
                    prop,
                    f"{name} {attr} is {_show(have)}, intended {_show(want)}",
                    _restart_agent(node) + f" (it repairs {attr} in place or recreates {name})",
                    expected=_show(want),
                    observed=_show(have),
                )
            )
    if not dev.up:
        out.append(_down(node, "vxlan.up", name))
    return out


def check_bridge(intent: Intent, bridge: BridgeDevice | None, mtu: int | None) -> list[Finding]:
    node, name = intent.node, intent.bridge_name
    if bridge is None:
        return [
            Finding(
                BROKEN,
                node,
                "bridge.device",
                f"bridge {name} does not exist: VMs on {node} are cut off from the overlay",
                _restart_agent(node),
                expected=name,
            )
        ]
    out = []
    if mtu is not None and (bridge.mtu < mtu or (intent.mtu is not None and bridge.mtu != mtu)):
        out.append(
            Finding(
                DEGRADED,
                node,
                "bridge.mtu",
                f"{name} mtu is {bridge.mtu}, intended {mtu}",
                _restart_agent(node) + f" (it sets the MTU of {name} and its ports)",
                expected=str(mtu),
                observed=str(bridge.mtu),
            )
        )
    if not bridge.up:
        out.append(_down(node, "bridge.up", name))
    return out


def _down(node: str, prop: str, name: str) -> Finding:
    return Finding(
        BROKEN,
        node,
        prop,
        f"{name} is down",
        f"`ip link set {name} up` on {node}, then find who set it down; " + _restart_agent(node),
        expected="up",
        observed="down",
    )


def check_underlay_mtu(intent: Intent, observed: ObservedNode) -> list[Finding]:
    """The underlay link must carry a full overlay frame plus the VXLAN headers.

    The overlay MTU that must fit is the largest of the configured one and what
    the device and bridge actually use: a node whose underlay shrank after the
    agent derived its MTU still sends frames of the old size.
    """
    link = observed.underlay
    sizes = [(intent.mtu, "configured overlay mtu")] if intent.mtu is not None else []
    sizes += [(d.mtu, f"{d.name} mtu") for d in (observed.vxlan, observed.bridge) if d]
    mtu, source = max(sizes, default=(None, ""), key=lambda s: s[0] or 0)
    if link is None:
        return [
            Finding(
                BROKEN,
                intent.node,
                "underlay.link",
                f"no link holds the local VTEP address {intent.local_ip or '(unknown)'}",
                f"check the underlay address of {intent.node} and the agent's --local-ip",
                expected=intent.local_ip,
            )
        ]
    overhead = encap_overhead(link.address)
    if mtu is None or link.mtu >= mtu + overhead:
        return []
    return [
        Finding(
            BROKEN,
            intent.node,
            "underlay.mtu",
            f"underlay link {link.name} mtu {link.mtu} carries overlay frames of at most "
            f"{link.mtu - overhead} bytes, {source} is {mtu}: full-size frames are "
            "dropped or fragmented",
            f"raise the MTU of {link.name} to at least {mtu + overhead}, "
            f"or configure the overlay MTU to {link.mtu - overhead} or less",
            expected=f">= {mtu + overhead}",
            observed=str(link.mtu),
        )
    ]


# ---- nodes and FDB -------------------------------------------------------------------


def check_duplicate_vteps(nodes: Sequence[api.Node], *, only: str | None = None) -> list[Finding]:
    """Two nodes with one VTEP address: frames for one of them reach the other.

    ``only``: report only on this node (the per-node check); None: every node.
    """
    by_ip: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        if n.vtep_ip:
            by_ip[_norm_ip(n.vtep_ip)].append(n.name)
    out = []
    for ip, names in sorted(by_ip.items()):
        if len(names) < 2:
            continue
        for name in sorted(names):
            if only is not None and name != only:
                continue
            others = ", ".join(n for n in sorted(names) if n != name)
            out.append(
                Finding(
                    BROKEN,
                    name,
                    "nodes.vtep",
                    f"VTEP address {ip} of {name} is also the VTEP address of {others}",
                    f"give each node its own address: fix InternalIP or the "
                    f"{api.VTEP_ANNOTATION} annotation of {name} or {others}",
                    peer=others,
                    observed=ip,
                )
            )
    return out


def check_peer_fdb(
    intent: Intent, observed: ObservedNode, vteps: Mapping[str, str]
) -> list[Finding]:
    """An all-zero entry toward every other node's VTEP, and none toward anything else."""
    if observed.vxlan is None:
        return []  # already reported as a missing device
    node, dev = intent.node, intent.vxlan_name
    flood_dsts = {_norm_ip(e.dst) for e in observed.fdb if e.is_flood and e.dst}
    own = {_norm_ip(vteps[node])} if node in vteps else set()
    if intent.local_ip:
        own.add(_norm_ip(intent.local_ip))
    out = []
    for peer, vtep in sorted(vteps.items()):
        if peer == node or _norm_ip(vtep) in own:
            continue
        if _norm_ip(vtep) not in flood_dsts:
            out.append(
                Finding(
                    BROKEN,
                    node,
                    "fdb.peer",
                    f"no all-zero FDB entry on {dev} toward {peer} ({vtep}): broadcast and "
                    f"ARP do not reach {peer}",
                    _restart_agent(node) + f"; or `bridge fdb append 00:00:00:00:00:00 dev "
                    f"{dev} dst {vtep}`",
                    peer=peer,
                    expected=vtep,
                )
            )
    known = {_norm_ip(v) for v in vteps.values()}
    for entry in observed.fdb:
        if not entry.permanent or not entry.dst:
            continue
        dst = _norm_ip(entry.dst)
        if dst in own:
            out.append(_self_entry(node, dev, entry.mac, entry.dst))
        elif dst not in known:
            out.append(
                Finding(
                    DEGRADED,
                    node,
                    "fdb.stale",
                    f"FDB entry {entry.mac} on {dev} points at {entry.dst}, which is no "
                    "node's VTEP: frames sent there are lost",
                    "the agent removes entries it owns at its next resync; otherwise "
                    f"`bridge fdb del {entry.mac} dev {dev} dst {entry.dst}`",
                    peer=entry.dst,
                    observed=entry.dst,
                )
            )
    return out


def _self_entry(node: str, dev: str, mac: str, dst: str) -> Finding:
    return Finding(
        DEGRADED,
        node,
        "fdb.self",
        f"FDB entry {mac} on {dev} points at this node's own VTEP {dst}",
        f"`bridge fdb del {mac} dev {dev} dst {dst}`; then check who added it",
        peer=dst,
        observed=dst,
    )


def check_vm_fdb(
    intent: Intent,
    observed: ObservedNode,
    vms: Sequence[api.VirtualMachine],
    vteps: Mapping[str, str],
) -> list[Finding]:
    """FDB (and neighbour) entries for VMs agree with where each VM's status says it runs."""
    if observed.vxlan is None:
        return []
    node, dev = intent.node, intent.vxlan_name
    entries: dict[str, list[str]] = defaultdict(list)
    for e in observed.fdb:
        if not e.is_flood and e.dst:
            entries[e.mac.lower()].append(_norm_ip(e.dst))
    out: list[Finding] = []
    for vm in vms:
        if vm.network is None or not vm.node or vm.phase in _INACTIVE_PHASES or vm.deleting:
            continue
        mac = vm.network.mac.lower()
        have = entries.get(mac, [])
        if vm.node == node:
            if have:
                out.append(_local_vm_sent_away(node, dev, vm, have))
            continue
        if vm.node not in vteps:
            out.append(
                Finding(
                    DEGRADED,
                    node,
                    "vm.node",
                    f"VM {vm.key} runs on {vm.node}, which is no Node with a VTEP address",
                    f"check status.node of VirtualMachine {vm.key} and Node {vm.node}",
                    peer=vm.key,
                    observed=vm.node,
                )
            )
            continue
        out.extend(_remote_vm_entry(node, dev, vm, have, vteps[vm.node]))
    out.extend(_vm_neighbours(node, observed, vms))
    return out


def _remote_vm_entry(
    node: str, dev: str, vm: api.VirtualMachine, have: list[str], vtep: str
) -> list[Finding]:
    assert vm.network is not None and vm.node is not None
    mac = vm.network.mac
    if not have:
        return [
            Finding(
                DEGRADED,
                node,
                "vm.fdb",
                f"no FDB entry for VM {vm.key} ({mac}) toward {vm.node} ({vtep}): its frames "
                "are flooded to every node until learned",
                _restart_agent(node) + " (it programs an entry per remote VM)",
                peer=vm.key,
                expected=vtep,
            )
        ]
    wrong = [d for d in have if d != _norm_ip(vtep)]
    if not wrong:
        return []
    # Mid-migration the entry may lag status.node for a moment: degraded, not broken.
    severity = DEGRADED if vm.phase == api.PHASE_MIGRATING else BROKEN
    return [
        Finding(
            severity,
            node,
            "vm.fdb",
            f"FDB entry for VM {vm.key} ({mac}) points at {', '.join(wrong)}, but the VM runs "
            f"on {vm.node} ({vtep})",
            _restart_agent(node) + f"; or `bridge fdb replace {mac} dev {dev} dst {vtep}`",
            peer=vm.key,
            expected=vtep,
            observed=", ".join(have),
        )
    ]


def _local_vm_sent_away(node: str, dev: str, vm: api.VirtualMachine, have: list[str]) -> Finding:
    assert vm.network is not None
    return Finding(
        BROKEN,
        node,
        "vm.fdb",
        f"VM {vm.key} ({vm.network.mac}) runs on this node but {dev} has an entry sending "
        f"its frames to {', '.join(have)}",
        _restart_agent(node) + f"; or `bridge fdb del {vm.network.mac} dev {dev}`",
        peer=vm.key,
        expected="no entry on " + dev,
        observed=", ".join(have),
    )


def _vm_neighbours(
    node: str, observed: ObservedNode, vms: Sequence[api.VirtualMachine]
) -> list[Finding]:
    """A permanent neighbour entry for a VM's IP must carry the VM's MAC."""
    by_ip = {
        _norm_ip(vm.network.ip): vm
        for vm in vms
        if vm.network is not None and not vm.deleting and vm.phase not in _INACTIVE_PHASES
    }
    out = []
    for neigh in observed.neighbours:
        vm = by_ip.get(_norm_ip(neigh.ip))
        if vm is None or vm.network is None or not neigh.permanent or neigh.mac is None:
            continue
        if neigh.mac.lower() != vm.network.mac.lower():
            out.append(
                Finding(
                    BROKEN,
                    node,
                    "vm.neighbour",
                    f"neighbour entry for VM {vm.key} ({neigh.ip}) on {neigh.device} has MAC "
                    f"{neigh.mac}, the VM's MAC is {vm.network.mac}",
                    f"`ip neigh replace {neigh.ip} lladdr {vm.network.mac} dev {neigh.device} "
                    "nud permanent`; " + _restart_agent(node),
                    peer=vm.key,
                    expected=vm.network.mac,
                    observed=neigh.mac,
                )
            )
    return out


# ---- probes --------------------------------------------------------------------------


def check_probes(
    node: str,
    peers: Sequence[api.Node],
    probes: Sequence[ProbeResult],
    max_age: float,
) -> list[Finding]:
    """Every peer answers across the overlay, with full-size frames, recently measured."""
    by_peer = {p.peer: p for p in probes if p.node == node}
    out = []
    for peer in sorted(peers, key=lambda n: n.name):
        result = by_peer.get(peer.name)
        if result is None:
            out.append(
                Finding(
                    DEGRADED,
                    node,
                    "probe.missing",
                    f"no probe result toward {peer.name} yet",
                    "wait one probe period; if it stays, check the prober in the agent's logs",
                    peer=peer.name,
                )
            )
            continue
        out.extend(_probe_findings(node, result, max_age))
    return out


def _probe_findings(node: str, p: ProbeResult, max_age: float) -> list[Finding]:
    if p.age_seconds is not None and p.age_seconds > max_age:
        return [
            Finding(
                DEGRADED,
                node,
                "probe.stale",
                f"last probe toward {p.peer} is {p.age_seconds:.0f}s old",
                "the prober has stalled: check the agent's logs on " + node,
                peer=p.peer,
                observed=f"{p.age_seconds:.0f}s",
            )
        ]
    if not p.reachable:
        why = f" ({p.error})" if p.error else ""
        return [
            Finding(
                BROKEN,
                node,
                "probe.reachable",
                f"{p.peer} ({p.peer_ip}) does not answer probes across the overlay{why}",
                f"check the underlay between {node} and {p.peer} (UDP port of the VXLAN "
                f"device allowed both ways?), the FDB entry toward {p.peer} and its device",
                peer=p.peer,
                expected="reachable",
                observed="unreachable",
            )
        ]
    if p.mtu_ok is False:
        return [
            Finding(
                BROKEN,
                node,
                "probe.mtu",
                f"full-size ({p.probe_size}-byte) probes to {p.peer} are lost while small ones "
                "pass: the path cannot carry full overlay frames",
                f"check the MTU of every underlay link between {node} and {p.peer}; it must be "
                "the overlay MTU plus 50 (IPv4) or 70 (IPv6)",
                peer=p.peer,
                expected=f"{p.probe_size} bytes pass",
                observed="lost",
            )
        ]
    return []


def _norm_ip(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def _show(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
