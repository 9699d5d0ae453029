"""What the overlay on this node should look like, and how that differs from what is.

Everything here is pure: no kernel, no API, no clock. The agent feeds it the
configuration, the resolved underlay, the Node list and the VirtualMachine
list, and gets back:

- the VXLAN device spec (``vmo-vx0``: VNI, UDP port, local address, MTU,
  learning, bridge master) and the bridge spec (``vmo-br0``, MTU);
- the FDB entries on the VXLAN device: one all-zero MAC entry toward every
  other node's VTEP (head-end replication of broadcast and unknown unicast),
  and one entry per VM running on another node, its MAC toward that node's
  VTEP, so traffic follows a migrated VM as soon as its status says where it is;
- permanent neighbour entries (VM IP -> MAC) on the bridge for remote VMs,
  only where useful: when the bridge holds an address in the VM's subnet, so
  the node itself talks to VMs (health probes) without an ARP round trip;
- the problems worth reporting (a node without an address, a duplicate MAC).

The diff functions compare wanted with actual and return plans and readable
differences (``"vni 1 vs 4242"``: actual first, wanted second), which the
kernel edge (``netlink``) applies and the agent logs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field

from vmoverlay import api
from vxlan_manager.config import AgentConfig, Underlay

ZERO_MAC = "00:00:00:00:00:00"
KIND_FLOOD = "flood"
KIND_VM = "vm"


@dataclass(frozen=True, order=True)
class FdbEntry:
    """A static entry on the VXLAN device: frames for ``mac`` go to VTEP ``dst``."""

    mac: str
    dst: str

    @property
    def kind(self) -> str:
        return KIND_FLOOD if self.mac == ZERO_MAC else KIND_VM

    def __str__(self) -> str:
        return f"{self.mac} -> {self.dst}"


@dataclass(frozen=True, order=True)
class NeighEntry:
    """A permanent neighbour entry on the bridge: ``ip`` is at ``mac``."""

    ip: str
    mac: str


@dataclass(frozen=True)
class VxlanSpec:
    name: str
    vni: int
    port: int
    local: str
    mtu: int
    learning: bool
    master: str | None
    external: bool = False  # collect-metadata mode; ours never is, others may be


@dataclass(frozen=True)
class BridgeSpec:
    name: str
    mtu: int


@dataclass(frozen=True)
class Peer:
    node: str
    vtep: str
    ready: bool


@dataclass(frozen=True)
class VMPlacement:
    vm: str  # namespace/name
    mac: str
    ip: str
    node: str
    vtep: str


@dataclass(frozen=True)
class DesiredState:
    device: VxlanSpec
    bridge: BridgeSpec
    peers: tuple[Peer, ...]
    remote_vms: tuple[VMPlacement, ...]
    local_vms: tuple[VMPlacement, ...]  # vtep is this node's own address
    fdb: frozenset[FdbEntry]
    neighbours: frozenset[NeighEntry]
    problems: tuple[str, ...] = field(default=())

    def fdb_counts(self) -> dict[str, int]:
        counts = {KIND_FLOOD: 0, KIND_VM: 0}
        for entry in self.fdb:
            counts[entry.kind] += 1
        return counts


def device_specs(cfg: AgentConfig, underlay: Underlay) -> tuple[VxlanSpec, BridgeSpec]:
    vxlan = VxlanSpec(
        name=cfg.device,
        vni=cfg.vni,
        port=cfg.port,
        local=underlay.address,
        mtu=underlay.mtu,
        learning=cfg.learning,
        master=cfg.bridge,
    )
    return vxlan, BridgeSpec(name=cfg.bridge, mtu=underlay.mtu)


def desired_state(
    cfg: AgentConfig,
    underlay: Underlay,
    nodes: Iterable[api.Node],
    vms: Iterable[api.VirtualMachine],
    *,
    bridge_networks: Iterable[str] = (),
) -> DesiredState:
    """The whole wanted state of this node's overlay."""
    device, bridge = device_specs(cfg, underlay)
    problems: list[str] = []
    peers = _peers(cfg.node, underlay, nodes, problems)
    vtep_of = {p.node: p.vtep for p in peers}
    remote, local = _placements(cfg.node, underlay.address, vtep_of, vms, problems)

    fdb = {FdbEntry(ZERO_MAC, vtep) for vtep in vtep_of.values()}
    fdb.update(FdbEntry(r.mac, r.vtep) for r in remote)
    networks = [ipaddress.ip_network(n, strict=False) for n in bridge_networks]
    neighbours = {
        NeighEntry(r.ip, r.mac)
        for r in remote
        if any(ipaddress.ip_address(r.ip) in net for net in networks)
    }
    return DesiredState(
        device=device,
        bridge=bridge,
        peers=tuple(peers),
        remote_vms=tuple(remote),
        local_vms=tuple(local),
        fdb=frozenset(fdb),
        neighbours=frozenset(neighbours),
        problems=tuple(problems),
    )


def _peers(
    local_node: str, underlay: Underlay, nodes: Iterable[api.Node], problems: list[str]
) -> list[Peer]:
    peers = []
    for node in sorted(nodes, key=lambda n: n.name):
        if node.name == local_node:
            continue
        if not node.vtep_ip:
            problems.append(f"node {node.name} has no InternalIP nor VTEP annotation")
            continue
        try:
            vtep = ipaddress.ip_address(node.vtep_ip)
        except ValueError:
            problems.append(f"node {node.name} has an invalid VTEP address {node.vtep_ip!r}")
            continue
        if vtep.version != underlay.family:
            problems.append(
                f"node {node.name} VTEP {vtep} is IPv{vtep.version}; "
                f"this node's underlay is IPv{underlay.family}"
            )
            continue
        if str(vtep) == underlay.address:
            problems.append(f"node {node.name} claims this node's VTEP {vtep}")
            continue
        peers.append(Peer(node=node.name, vtep=str(vtep), ready=node.ready))
    return peers


def _placements(
    local_node: str,
    local_vtep: str,
    vtep_of: Mapping[str, str],
    vms: Iterable[api.VirtualMachine],
    problems: list[str],
) -> tuple[list[VMPlacement], list[VMPlacement]]:
    remote: list[VMPlacement] = []
    local: list[VMPlacement] = []
    owner_of_mac: dict[str, str] = {}
    for vm in sorted(vms, key=lambda v: v.key):
        if vm.network is None or vm.node is None or vm.phase == api.PHASE_STOPPED:
            continue
        mac = vm.network.mac.lower()
        if mac in owner_of_mac:
            problems.append(f"VM {vm.key} has MAC {mac} already used by VM {owner_of_mac[mac]}")
            continue
        owner_of_mac[mac] = vm.key
        if vm.node == local_node:
            local.append(VMPlacement(vm.key, mac, vm.network.ip, local_node, local_vtep))
            continue
        vtep = vtep_of.get(vm.node)
        if vtep is None:
            problems.append(f"VM {vm.key} runs on node {vm.node}, which has no known VTEP")
            continue
        remote.append(VMPlacement(vm=vm.key, mac=mac, ip=vm.network.ip, node=vm.node, vtep=vtep))
    return remote, local


# ---------------------------------------------------------------- diffs


@dataclass(frozen=True)
class Difference:
    """One attribute of a device that is not as wanted."""

    attribute: str
    actual: object
    wanted: object
    in_place: bool  # the kernel can change it on the live device

    def __str__(self) -> str:
        return f"{self.attribute} {_show(self.actual)} vs {_show(self.wanted)}"


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def diff_device(wanted: VxlanSpec, actual: VxlanSpec) -> list[Difference]:
    """What differs between the wanted VXLAN device and the kernel's.

    VNI, UDP port, collect-metadata mode and the local address family cannot
    be changed on a live VXLAN device (the kernel answers EOPNOTSUPP); the
    rest can.
    """
    out: list[Difference] = []
    if actual.vni != wanted.vni:
        out.append(Difference("vni", actual.vni, wanted.vni, False))
    if actual.port != wanted.port:
        out.append(Difference("port", actual.port, wanted.port, False))
    if actual.external != wanted.external:
        out.append(Difference("external", actual.external, wanted.external, False))
    if actual.local != wanted.local:
        same_family = _family(actual.local) == _family(wanted.local)
        out.append(Difference("local", actual.local, wanted.local, same_family))
    if actual.mtu != wanted.mtu:
        out.append(Difference("mtu", actual.mtu, wanted.mtu, True))
    if actual.learning != wanted.learning:
        out.append(Difference("learning", actual.learning, wanted.learning, True))
    if actual.master != wanted.master:
        out.append(Difference("master", actual.master, wanted.master, True))
    return out


def _family(address: str | None) -> int:
    if not address:
        return 0
    return ipaddress.ip_address(address).version


@dataclass(frozen=True)
class FdbPlan:
    add: tuple[FdbEntry, ...] = ()
    replace: tuple[tuple[FdbEntry, FdbEntry], ...] = ()  # (old, new): a VM MAC moved
    remove: tuple[FdbEntry, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.replace or self.remove)


def diff_fdb(wanted: Set[FdbEntry], actual: Set[FdbEntry], owned: Set[FdbEntry]) -> FdbPlan:
    """Turn ``actual`` into ``wanted`` touching only what is ours.

    ``actual`` is every static entry on our VXLAN device. We remove an entry
    only if we own it: recorded as created by us (``owned``) or an all-zero
    entry (the flood list of our own device is ours alone). A VM MAC we want
    is ours to claim: its other entries are replaced or removed.
    """
    add: list[FdbEntry] = []
    replace: list[tuple[FdbEntry, FdbEntry]] = []
    remove: set[FdbEntry] = set()
    by_mac: dict[str, list[FdbEntry]] = {}
    for entry in actual:
        by_mac.setdefault(entry.mac, []).append(entry)
    wanted_vm_macs = {e.mac for e in wanted if e.kind == KIND_VM}

    for entry in sorted(wanted - actual):
        present = sorted(by_mac.get(entry.mac, ()))
        stale = [e for e in present if e not in wanted]
        if entry.kind == KIND_VM and stale:
            replace.append((stale[0], entry))
            remove.update(stale[1:])
        else:
            add.append(entry)
    moved = {old for old, _ in replace}
    for entry in actual - wanted - moved:
        if entry in owned or entry.kind == KIND_FLOOD or entry.mac in wanted_vm_macs:
            remove.add(entry)
    return FdbPlan(tuple(add), tuple(replace), tuple(sorted(remove)))


@dataclass(frozen=True)
class SetPlan:
    """Add/remove plan for plain sets of entries (neighbours)."""

    add: tuple[NeighEntry, ...] = ()
    remove: tuple[NeighEntry, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)


def diff_neighbours(
    wanted: Set[NeighEntry], actual: Set[NeighEntry], owned: Set[NeighEntry]
) -> SetPlan:
    """Neighbours to add (or correct) and owned ones to remove."""
    add = sorted(wanted - actual)
    wanted_ips = {n.ip for n in wanted}
    remove = sorted(n for n in actual - wanted if n in owned and n.ip not in wanted_ips)
    return SetPlan(tuple(add), tuple(remove))


@dataclass(frozen=True)
class PlacementChange:
    """A VM whose VTEP changed between two desired states (for the change log)."""

    vm: str
    mac: str
    old_vtep: str | None
    new_vtep: str | None
    old_node: str | None
    new_node: str | None


def placement_changes(old: DesiredState | None, new: DesiredState) -> list[PlacementChange]:
    """VMs that appeared, moved or left between two states, for one log line each."""
    before = _where(old) if old else {}
    after = _where(new)
    changes = []
    for vm in sorted(set(before) | set(after)):
        b, a = before.get(vm), after.get(vm)
        if b != a:
            mac = (a or b or ("", "", ""))[0]
            changes.append(
                PlacementChange(
                    vm=vm,
                    mac=mac,
                    old_vtep=b[1] if b else None,
                    new_vtep=a[1] if a else None,
                    old_node=b[2] if b else None,
                    new_node=a[2] if a else None,
                )
            )
    return changes


def _where(state: DesiredState) -> dict[str, tuple[str, str, str]]:
    return {r.vm: (r.mac, r.vtep, r.node) for r in (*state.remote_vms, *state.local_vms)}


def peer_changes(
    old: DesiredState | None, new: DesiredState
) -> list[tuple[str, Peer | None, Peer | None]]:
    """(node, old peer, new peer) for every peer that appeared, moved, left or changed readiness."""
    before = {p.node: p for p in old.peers} if old else {}
    after = {p.node: p for p in new.peers}
    return [
        (n, before.get(n), after.get(n))
        for n in sorted(set(before) | set(after))
        if before.get(n) != after.get(n)
    ]
