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
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from typing import NamedTuple

from vmoverlay import api
from vxlan_manager.config import AgentConfig, Underlay

ZERO_MAC = "00:00:00:00:00:00"
KIND_FLOOD = "flood"
KIND_VM = "vm"


class FdbEntry(NamedTuple):
    """A static entry on the VXLAN device: frames for ``mac`` go to VTEP ``dst``.

    Named tuples (not dataclasses) for the entries: thousands of them are hashed
    and compared on every event, and a tuple's hash runs in C.
    """

    mac: str
    dst: str

    @property
    def kind(self) -> str:
        return KIND_FLOOD if self.mac == ZERO_MAC else KIND_VM

    def __str__(self) -> str:
        return f"{self.mac} -> {self.dst}"


class NeighEntry(NamedTuple):
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


class VMPlacement(NamedTuple):
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

    def placements(self) -> dict[str, VMPlacement]:
        """VM key -> where it runs; computed once per state."""
        cached = self.__dict__.get("_placements")
        if cached is None:
            cached = {p.vm: p for p in (*self.remote_vms, *self.local_vms)}
            object.__setattr__(self, "_placements", cached)
        return cached

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
    """The whole wanted state of this node's overlay, from scratch."""
    model = DesiredModel(cfg, underlay, bridge_networks=bridge_networks)
    for node in nodes:
        model.set_node(node)
    for vm in vms:
        model.set_vm(vm)
    return model.state()


class DesiredModel:
    """The desired state kept up to date one object at a time.

    Pure (no I/O) but incremental: a VM event re-places that VM (and any VM
    sharing its MAC); a node event re-places the VMs on that node. So a single
    change costs the same with 5,000 VMs as with 5; only :meth:`state` touches
    everything, with set and tuple builds that run in C. ``desired_state`` is
    this model built from scratch, so both always agree.
    """

    def __init__(
        self, cfg: AgentConfig, underlay: Underlay, *, bridge_networks: Iterable[str] = ()
    ) -> None:
        self.cfg = cfg
        self.underlay = underlay
        self.device, self.bridge = device_specs(cfg, underlay)
        self.networks = [ipaddress.ip_network(n, strict=False) for n in bridge_networks]
        self.nodes: dict[str, api.Node] = {}
        self.vms: dict[str, api.VirtualMachine] = {}
        self._peers: dict[str, Peer] = {}
        self._flood: dict[str, FdbEntry] = {}
        self._node_problems: dict[str, str] = {}
        self._vms_on: dict[str, set[str]] = {}
        self._keys_of_mac: dict[str, set[str]] = {}
        self._remote: dict[str, VMPlacement] = {}
        self._local: dict[str, VMPlacement] = {}
        self._vm_fdb: dict[str, FdbEntry] = {}
        self._neigh: dict[str, NeighEntry] = {}
        self._vm_problems: dict[str, str] = {}
        self._peer_tuple: tuple[Peer, ...] | None = None

    # ------------------------------------------------------------ updates

    def set_node(self, node: api.Node) -> None:
        if self.nodes.get(node.name) == node:
            return
        self.nodes[node.name] = node
        self._place_node(node.name)

    def delete_node(self, name: str) -> None:
        if self.nodes.pop(name, None) is not None:
            self._place_node(name)

    def set_vm(self, vm: api.VirtualMachine) -> None:
        old = self.vms.get(vm.key)
        if old == vm:
            return
        self.vms[vm.key] = vm
        self._reindex(old, vm)

    def delete_vm(self, key: str) -> None:
        old = self.vms.pop(key, None)
        if old is not None:
            self._reindex(old, None)

    # ------------------------------------------------------------ result

    def state(self) -> DesiredState:
        if self._peer_tuple is None:
            self._peer_tuple = tuple(sorted(self._peers.values(), key=lambda p: p.node))
        fdb = frozenset(self._flood.values()) | frozenset(self._vm_fdb.values())
        problems = sorted([*self._node_problems.values(), *self._vm_problems.values()])
        return DesiredState(
            device=self.device,
            bridge=self.bridge,
            peers=self._peer_tuple,
            remote_vms=tuple(self._remote.values()),
            local_vms=tuple(self._local.values()),
            fdb=fdb,
            neighbours=frozenset(self._neigh.values()),
            problems=tuple(problems),
        )

    # ------------------------------------------------------------ internals

    def _place_node(self, name: str) -> None:
        self._peer_tuple = None
        self._peers.pop(name, None)
        self._flood.pop(name, None)
        self._node_problems.pop(name, None)
        node = self.nodes.get(name)
        if node is not None and name != self.cfg.node:
            peer = self._peer(node)
            if isinstance(peer, Peer):
                self._peers[name] = peer
                self._flood[name] = FdbEntry(ZERO_MAC, peer.vtep)
            else:
                self._node_problems[name] = peer
        for key in list(self._vms_on.get(name, ())):
            self._place_vm(key)

    def _peer(self, node: api.Node) -> Peer | str:
        """The node as a peer, or the problem that keeps it from being one."""
        if not node.vtep_ip:
            return f"node {node.name} has no InternalIP nor VTEP annotation"
        try:
            vtep = ipaddress.ip_address(node.vtep_ip)
        except ValueError:
            return f"node {node.name} has an invalid VTEP address {node.vtep_ip!r}"
        if vtep.version != self.underlay.family:
            return (
                f"node {node.name} VTEP {vtep} is IPv{vtep.version}; "
                f"this node's underlay is IPv{self.underlay.family}"
            )
        if str(vtep) == self.underlay.address:
            return f"node {node.name} claims this node's VTEP {vtep}"
        return Peer(node=node.name, vtep=str(vtep), ready=node.ready)

    def _reindex(self, old: api.VirtualMachine | None, new: api.VirtualMachine | None) -> None:
        affected: set[str] = set()
        for vm, add in ((old, False), (new, True)):
            if vm is None:
                continue
            affected.add(vm.key)
            if vm.node is not None:
                on = self._vms_on.setdefault(vm.node, set())
                on.add(vm.key) if add else on.discard(vm.key)
            mac = _mac_of(vm)
            if mac is not None:
                keys = self._keys_of_mac.setdefault(mac, set())
                keys.add(vm.key) if add else keys.discard(vm.key)
                affected |= keys
        for key in affected:
            self._place_vm(key)

    def _place_vm(self, key: str) -> None:
        for table in (self._remote, self._local, self._vm_fdb, self._neigh, self._vm_problems):
            table.pop(key, None)
        vm = self.vms.get(key)
        mac = _mac_of(vm) if vm is not None else None
        if vm is None or mac is None or vm.network is None or vm.node is None:
            return
        # One MAC, one VM: on a clash the smaller namespace/name wins, whatever
        # the order the objects came in, so every agent makes the same choice.
        winner = min(self._keys_of_mac[mac])
        if winner != key:
            self._vm_problems[key] = f"VM {key} has MAC {mac} already used by VM {winner}"
            return
        if vm.node == self.cfg.node:
            self._local[key] = VMPlacement(key, mac, vm.network.ip, vm.node, self.underlay.address)
            return
        peer = self._peers.get(vm.node)
        if peer is None:
            self._vm_problems[key] = f"VM {key} runs on node {vm.node}, which has no known VTEP"
            return
        self._remote[key] = VMPlacement(key, mac, vm.network.ip, vm.node, peer.vtep)
        self._vm_fdb[key] = FdbEntry(mac, peer.vtep)
        if self.networks and any(ipaddress.ip_address(vm.network.ip) in n for n in self.networks):
            self._neigh[key] = NeighEntry(vm.network.ip, mac)


def _mac_of(vm: api.VirtualMachine) -> str | None:
    """The MAC a VM's entry uses, or None when it has no place in the overlay."""
    if vm.network is None or vm.node is None or vm.phase == api.PHASE_STOPPED:
        return None
    return vm.network.mac.lower()


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
    missing, extra = wanted - actual, actual - wanted
    if not missing and not extra:
        return FdbPlan()
    add: list[FdbEntry] = []
    replace: list[tuple[FdbEntry, FdbEntry]] = []
    remove: set[FdbEntry] = set()
    stale_by_mac: dict[str, list[FdbEntry]] = {}
    for entry in extra:
        stale_by_mac.setdefault(entry.mac, []).append(entry)

    for entry in sorted(missing):
        stale = sorted(stale_by_mac.get(entry.mac, ())) if entry.kind == KIND_VM else []
        if stale:
            replace.append((stale[0], entry))
            remove.update(stale[1:])
        else:
            add.append(entry)
    moved = {old for old, _ in replace}
    wanted_vm_macs: set[str] | None = None
    for entry in extra - moved:
        if entry in owned or entry.kind == KIND_FLOOD:
            remove.add(entry)
            continue
        if wanted_vm_macs is None:  # rare: someone else's entry; do we claim its MAC?
            wanted_vm_macs = {e.mac for e in wanted if e.kind == KIND_VM}
        if entry.mac in wanted_vm_macs:
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
    before = old.placements() if old else {}
    after = new.placements()
    if before == after:
        return []
    changes = []
    for vm in sorted(
        before.keys() ^ after.keys()
        | {k for k in before.keys() & after.keys() if before[k] != after[k]}
    ):
        b, a = before.get(vm), after.get(vm)
        changes.append(
            PlacementChange(
                vm=vm,
                mac=(a or b or VMPlacement("", "", "", "", "")).mac,
                old_vtep=b.vtep if b else None,
                new_vtep=a.vtep if a else None,
                old_node=b.node if b else None,
                new_node=a.node if a else None,
            )
        )
    return changes


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
