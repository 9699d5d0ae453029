"""Pure health checks: observed data plane + intent + Nodes + VMs -> findings.

The intent is the agent's own desired state (:mod:`vxlan_manager.desired`) for
the same configuration, Nodes and VMs, and device drift is the agent's own
``diff_device``: the check reports exactly what the agent would repair, plus
what it cannot (underlay MTU, duplicate VTEPs, probe results).

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
from collections.abc import Mapping, Sequence, Set

from vmoverlay import api
from vxlan_manager.config import AgentConfig, ConfigError, Underlay, resolve_underlay
from vxlan_manager.desired import (
    KIND_FLOOD,
    ZERO_MAC,
    BridgeSpec,
    DesiredState,
    FdbEntry,
    VMPlacement,
    VxlanSpec,
    desired_state,
    diff_device,
)
from vxlan_manager.health.findings import Finding, ProbeResult, Report, Severity
from vxlan_manager.health.observed import ObservedNode, encap_overhead
from vxlan_manager.health.probe import stale_after
from vxlan_manager.netlink import Link

BROKEN, DEGRADED = Severity.BROKEN, Severity.DEGRADED

CHECK_UNDERLAY = "underlay"
CHECK_DEVICE = "vxlan.device"
CHECK_BRIDGE = "bridge"
CHECK_PORTS = "bridge.ports"
CHECK_VTEPS = "nodes.vtep"
CHECK_RECORDS = "api.records"
CHECK_FDB = "fdb.peers"
CHECK_VMS = "fdb.vms"
CHECK_PROBES = "probes"

# Attributes the kernel cannot be without for traffic to flow; the rest only degrade.
_BREAKING = {"vni", "port", "external", "local", "master"}


def check_node(
    cfg: AgentConfig,
    observed: ObservedNode,
    nodes: Sequence[api.Node],
    vms: Sequence[api.VirtualMachine],
    probes: Sequence[ProbeResult] | None = None,
    *,
    probe_max_age: float = stale_after(),
) -> Report:
    """Every check for node ``cfg.node``; ``probes=None``: probe results unavailable.

    The intent is the agent's own desired state for this configuration, these
    Nodes and VMs; the underlay is resolved from the observed interfaces the way
    the agent resolves it at start.
    """
    node = cfg.node
    report = Report(scope="node", nodes=[node])
    steps: list[tuple[str, list[Finding]]] = []
    me = next((n for n in nodes if n.name == node), None)
    try:
        underlay = resolve_underlay(
            cfg, node_vtep=me.vtep_ip if me else None, interfaces=observed.interfaces
        )
    except ConfigError as exc:
        steps.append((CHECK_UNDERLAY, [_no_underlay(node, str(exc))]))
        steps.append((CHECK_DEVICE, _exists(node, cfg.device, observed.vxlan, "vxlan.device")))
        steps.append((CHECK_BRIDGE, _exists(node, cfg.bridge, observed.bridge, "bridge.device")))
        return _finish(report, steps)

    desired = desired_state(cfg, underlay, nodes, vms, bridge_networks=observed.bridge_networks)
    derived = cfg.mtu is None
    steps += [
        (CHECK_UNDERLAY, check_underlay_mtu(cfg, underlay, observed)),
        (CHECK_DEVICE, check_vxlan_device(node, desired.device, observed.vxlan, derived)),
        (CHECK_BRIDGE, check_bridge(node, desired.bridge, observed.bridge, derived)),
        (CHECK_PORTS, check_port_mtus(node, desired.bridge, observed.ports)),
        (CHECK_VTEPS, check_duplicate_vteps(nodes, only=node)),
        (CHECK_RECORDS, check_records(node, desired)),
    ]
    if observed.vxlan is not None:
        steps.append((CHECK_FDB, check_peer_fdb(node, cfg.device, desired, observed)))
        migrating = {vm.key for vm in vms if vm.phase == api.PHASE_MIGRATING}
        steps.append((CHECK_VMS, check_vm_entries(node, cfg.device, desired, observed, migrating)))
    if probes is not None:
        peers = [p.node for p in desired.peers]
        steps.append((CHECK_PROBES, check_probes(node, peers, probes, probe_max_age)))
        report.probes.extend(probes)
        report.probe_max_age = probe_max_age
    return _finish(report, steps)


def _finish(report: Report, steps: list[tuple[str, list[Finding]]]) -> Report:
    for name, found in steps:
        report.checks.append(name)
        report.findings.extend(found)
    return report


def _restart_agent(node: str) -> str:
    return (
        f"check the vxlan-manager agent on {node} (its logs name the failing step); "
        "restarting it rebuilds the device without touching correct state"
    )


def _no_underlay(node: str, why: str) -> Finding:
    return Finding(
        BROKEN,
        node,
        "underlay.link",
        f"cannot resolve the underlay of {node}: {why}",
        f"check the underlay address of {node} (InternalIP or {api.VTEP_ANNOTATION}) "
        "and the agent's --underlay-address / --underlay-interface",
    )


def _exists(node: str, name: str, link: Link | None, prop: str) -> list[Finding]:
    if link is not None:
        return []
    what = "VXLAN device" if prop.startswith("vxlan") else "bridge"
    cut = "no overlay traffic in or out" if what != "bridge" else "local VMs are cut off"
    return [
        Finding(
            BROKEN,
            node,
            prop,
            f"{what} {name} does not exist: {cut}",
            _restart_agent(node),
            expected=name,
        )
    ]


# ---- device, bridge, underlay --------------------------------------------------------


def check_vxlan_device(
    node: str, wanted: VxlanSpec, link: Link | None, derived_mtu: bool
) -> list[Finding]:
    """The device matches the wanted spec (the agent's own diff), is up, and is a port."""
    missing = _exists(node, wanted.name, link, "vxlan.device")
    if missing or link is None or link.vxlan is None:
        return missing
    out = []
    for diff in diff_device(wanted, link.vxlan):
        # A derived MTU larger than the underlay allows is the underlay's finding.
        if diff.attribute == "mtu" and derived_mtu and link.mtu > wanted.mtu:
            continue
        severity = BROKEN if diff.attribute in _BREAKING else DEGRADED
        fix = "in place" if diff.in_place else f"by recreating {wanted.name}"
        out.append(
            Finding(
                severity,
                node,
                f"vxlan.{diff.attribute}",
                f"{wanted.name} {diff.attribute} is {_show(diff.actual)}, "
                f"intended {_show(diff.wanted)}",
                _restart_agent(node) + f" (it repairs {diff.attribute} {fix})",
                expected=_show(diff.wanted),
                observed=_show(diff.actual),
            )
        )
    if not link.up:
        out.append(_down(node, "vxlan.up", wanted.name))
    return out


def check_bridge(
    node: str, wanted: BridgeSpec, link: Link | None, derived_mtu: bool
) -> list[Finding]:
    missing = _exists(node, wanted.name, link, "bridge.device")
    if missing or link is None:
        return missing
    out = []
    too_big_is_underlays = derived_mtu and link.mtu > wanted.mtu
    if link.mtu != wanted.mtu and not too_big_is_underlays:
        out.append(
            Finding(
                DEGRADED,
                node,
                "bridge.mtu",
                f"{wanted.name} mtu is {link.mtu}, intended {wanted.mtu}",
                _restart_agent(node) + f" (it sets the MTU of {wanted.name} and its ports)",
                expected=str(wanted.mtu),
                observed=str(link.mtu),
            )
        )
    if not link.up:
        out.append(_down(node, "bridge.up", wanted.name))
    return out


def check_port_mtus(node: str, bridge: BridgeSpec, ports: Sequence[Link]) -> list[Finding]:
    """Every VM port on the bridge has the overlay MTU (CNI sets it; drift breaks big frames)."""
    return [
        Finding(
            DEGRADED,
            node,
            "bridge.port_mtu",
            f"port {port.name} on {bridge.name} has mtu {port.mtu}, the overlay's is "
            f"{bridge.mtu}: "
            + (
                "frames larger than the overlay carries are dropped without an error"
                if port.mtu > bridge.mtu
                else "the VM behind it cannot use full-size frames"
            ),
            f"`ip link set {port.name} mtu {bridge.mtu}` and check the VM's own MTU "
            "(status.network.mtu); the CNI plugin sets both when it plugs the VM",
            peer=port.name,
            expected=str(bridge.mtu),
            observed=str(port.mtu),
        )
        for port in sorted(ports, key=lambda p: p.name)
        if port.mtu != bridge.mtu
    ]


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


def check_underlay_mtu(
    cfg: AgentConfig, underlay: Underlay, observed: ObservedNode
) -> list[Finding]:
    """The underlay link must carry a full overlay frame plus the VXLAN headers.

    The overlay MTU that must fit is the largest of the configured one and what
    the device and bridge actually use: a node whose underlay shrank after the
    agent derived its MTU still sends frames of the old size.
    """
    sizes = [(cfg.mtu, "configured overlay mtu")] if cfg.mtu is not None else []
    sizes += [(d.mtu, f"{d.name} mtu") for d in (observed.vxlan, observed.bridge) if d]
    if not sizes:
        return []
    mtu, source = max(sizes, key=lambda s: s[0] or 0)
    assert mtu is not None
    overhead = encap_overhead(underlay.family)
    link_mtu, name = underlay.interface_mtu, underlay.interface
    if link_mtu >= mtu + overhead:
        return []
    return [
        Finding(
            BROKEN,
            cfg.node,
            "underlay.mtu",
            f"underlay link {name} mtu {link_mtu} carries overlay frames of at most "
            f"{link_mtu - overhead} bytes, {source} is {mtu}: full-size frames are "
            "dropped or fragmented",
            f"raise the MTU of {name} to at least {mtu + overhead}, "
            f"or configure the overlay MTU to {link_mtu - overhead} or less",
            expected=f">= {mtu + overhead}",
            observed=str(link_mtu),
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
    node: str, dev: str, desired: DesiredState, observed: ObservedNode
) -> list[Finding]:
    """An all-zero entry toward every peer's VTEP; none toward anything that is no node."""
    out = []
    for peer in desired.peers:
        if FdbEntry(ZERO_MAC, peer.vtep) not in observed.fdb:
            out.append(
                Finding(
                    BROKEN,
                    node,
                    "fdb.peer",
                    f"no all-zero FDB entry on {dev} toward {peer.node} ({peer.vtep}): "
                    f"broadcast and ARP do not reach {peer.node}",
                    _restart_agent(node) + f"; or `bridge fdb append 00:00:00:00:00:00 dev "
                    f"{dev} dst {peer.vtep}`",
                    peer=peer.node,
                    expected=peer.vtep,
                )
            )
    own = desired.device.local
    known = {p.vtep for p in desired.peers}
    # MACs of VMs (remote or here) are the VM check's to report.
    vm_macs = {v.mac for v in (*desired.remote_vms, *desired.local_vms)}
    for entry in sorted(observed.fdb - desired.fdb):
        if entry.dst == own:
            out.append(_stale(node, dev, entry, "fdb.self", "this node's own VTEP"))
        elif entry.dst not in known:
            out.append(_stale(node, dev, entry, "fdb.stale", "no node's VTEP"))
        elif entry.kind != KIND_FLOOD and entry.mac not in vm_macs:
            out.append(_stale(node, dev, entry, "fdb.stale", "a node where no VM has that MAC"))
    return out


def _stale(node: str, dev: str, entry: FdbEntry, prop: str, what: str) -> Finding:
    return Finding(
        DEGRADED,
        node,
        prop,
        f"FDB entry {entry.mac} on {dev} points at {entry.dst}, {what}: frames sent "
        "there are lost or looped",
        "the agent removes entries it owns at its next resync; otherwise "
        f"`bridge fdb del {entry.mac} dev {dev} dst {entry.dst}`",
        peer=entry.dst,
        observed=entry.dst,
    )


def check_vm_entries(
    node: str,
    dev: str,
    desired: DesiredState,
    observed: ObservedNode,
    migrating: Set[str] = frozenset(),
) -> list[Finding]:
    """VM FDB and neighbour entries agree with where each VM's status says it runs.

    An entry toward the wrong node is broken, except for a VM in ``migrating``
    (keys): mid-migration an entry may lag status.node for a moment.
    """
    have: dict[str, list[str]] = defaultdict(list)
    for e in observed.fdb:
        if e.kind != KIND_FLOOD:
            have[e.mac].append(e.dst)
    out: list[Finding] = []
    for vm in desired.remote_vms:
        dsts = sorted(have.get(vm.mac, []))
        if dsts != [vm.vtep]:
            out.append(_remote_vm_entry(node, dev, vm, dsts, vm.vm in migrating))
    for vm in desired.local_vms:
        dsts = sorted(have.get(vm.mac, []))
        if dsts:
            out.append(_local_vm_entry(node, dev, vm, dsts))
    out.extend(_neighbours(node, desired, observed))
    return out


def _remote_vm_entry(
    node: str, dev: str, vm: VMPlacement, dsts: list[str], migrating: bool
) -> Finding:
    if not dsts:
        return Finding(
            DEGRADED,
            node,
            "vm.fdb",
            f"no FDB entry for VM {vm.vm} ({vm.mac}) toward {vm.node} ({vm.vtep}): "
            "its frames are flooded to every node until learned",
            _restart_agent(node) + " (it programs an entry per remote VM)",
            peer=vm.vm,
            expected=vm.vtep,
        )
    return Finding(
        DEGRADED if migrating else BROKEN,
        node,
        "vm.fdb",
        f"FDB entry for VM {vm.vm} ({vm.mac}) points at {', '.join(dsts)}, but the VM "
        f"runs on {vm.node} ({vm.vtep})",
        _restart_agent(node) + f"; or `bridge fdb replace {vm.mac} dev {dev} dst {vm.vtep}`",
        peer=vm.vm,
        expected=vm.vtep,
        observed=", ".join(dsts),
    )


def _local_vm_entry(node: str, dev: str, vm: VMPlacement, dsts: list[str]) -> Finding:
    return Finding(
        BROKEN,
        node,
        "vm.fdb",
        f"VM {vm.vm} ({vm.mac}) runs on this node but {dev} has an entry sending "
        f"its frames to {', '.join(dsts)}",
        _restart_agent(node) + f"; or `bridge fdb del {vm.mac} dev {dev}`",
        peer=vm.vm,
        expected=f"no entry on {dev}",
        observed=", ".join(dsts),
    )


def check_records(node: str, desired: DesiredState) -> list[Finding]:
    """Node and VM records the agent cannot place, as its desired state reports them."""
    return [
        Finding(DEGRADED, node, "api.record", problem, "fix the named Node or VirtualMachine")
        for problem in desired.problems
    ]


def _neighbours(node: str, desired: DesiredState, observed: ObservedNode) -> list[Finding]:
    """A permanent neighbour entry for a VM's IP must carry the VM's MAC."""
    vms: Mapping[str, tuple[str, str]] = {
        _norm_ip(p.ip): (p.vm, p.mac) for p in (*desired.remote_vms, *desired.local_vms)
    }
    bridge = desired.bridge.name
    out = []
    for neigh in sorted(observed.neighbours):
        known = vms.get(_norm_ip(neigh.ip))
        if known is None or neigh.mac == known[1]:
            continue
        vm, mac = known
        out.append(
            Finding(
                BROKEN,
                node,
                "vm.neighbour",
                f"neighbour entry for VM {vm} ({neigh.ip}) on {bridge} has MAC {neigh.mac}, "
                f"the VM's MAC is {mac}",
                f"`ip neigh replace {neigh.ip} lladdr {mac} dev {bridge} nud permanent`; "
                + _restart_agent(node),
                peer=vm,
                expected=mac,
                observed=neigh.mac,
            )
        )
    return out


# ---- probes --------------------------------------------------------------------------


def check_probes(
    node: str,
    peers: Sequence[str],
    probes: Sequence[ProbeResult],
    max_age: float,
) -> list[Finding]:
    """Every peer answers across the overlay, with full-size frames, recently measured."""
    by_peer = {p.peer: p for p in probes if p.node == node}
    out = []
    for peer in sorted(peers):
        result = by_peer.get(peer)
        if result is None:
            out.append(
                Finding(
                    DEGRADED,
                    node,
                    "probe.missing",
                    f"no probe result toward {peer} yet",
                    "wait one probe period; if it stays, check the prober in the agent's logs",
                    peer=peer,
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
                f"last probe toward {p.peer} is {p.age_seconds:.0f}s old (stale after "
                f"{max_age:.0f}s, two probe periods): its result says nothing about now",
                "the prober has stalled: check the agent's logs on "
                + node
                + "; `check --fresh` measures the peers now",
                peer=p.peer,
                expected=f"<= {max_age:.0f}s",
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


# ---- cluster-wide localisation -------------------------------------------------------


def diagnose_cluster(probes: Sequence[ProbeResult]) -> list[Finding]:
    """Point at the node a pattern of probe failures has in common.

    A node that nothing reaches and that reaches nothing, while other pairs do
    reach each other, is cut off (its underlay link, device or firewall). A node
    on every pair whose full-size probes are lost, while full-size probes pass
    elsewhere, has the small MTU on its path. Needs results from both ends, so
    it runs on the cluster report.
    """
    nodes = sorted({p.node for p in probes} | {p.peer for p in probes})
    out = []
    for node in nodes:
        mine = [p for p in probes if node in (p.node, p.peer)]
        others = [p for p in probes if node not in (p.node, p.peer)]
        if len(mine) < 2 or not others:
            continue
        if not any(p.reachable for p in mine) and any(p.reachable for p in others):
            out.append(
                Finding(
                    BROKEN,
                    node,
                    "cluster.isolated",
                    f"{node} is cut off: no probe to or from it passes across the overlay, "
                    "while the other nodes reach each other",
                    f"look at {node} itself: its underlay link, its VXLAN device (VNI, port, "
                    "up) and any firewall on the VXLAN UDP port",
                )
            )
            continue
        mine_up = [p for p in mine if p.reachable]
        if mine_up and all(p.mtu_ok is False for p in mine_up) and any(p.mtu_ok for p in others):
            out.append(
                Finding(
                    BROKEN,
                    node,
                    "cluster.mtu",
                    f"full-size probes fail on every path through {node} and pass elsewhere: "
                    f"the small MTU is on {node}'s side",
                    f"check the MTU of {node}'s underlay link (overlay MTU + 50 for IPv4, "
                    "+ 70 for IPv6)",
                )
            )
    return out
