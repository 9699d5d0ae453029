"""Apply a desired state to the kernel: the reconcile step without Kubernetes.

:class:`Dataplane` holds what it last saw in the kernel (a mirror of our VXLAN
device's FDB and the bridge's permanent neighbours) and what it owns (the
state file). Two kinds of sync:

- ``full``: dump the kernel, diff, apply. Repairs drift made by anyone. Runs
  at start, at every periodic resync and after any failure.
- incremental: diff against the mirror, apply. What a single API event costs:
  a few netlink requests, no dump, so it stays fast with thousands of entries.

Devices are ensured (created or repaired) when the wanted device spec changes
and on every full sync. The mirror is dropped whenever an apply fails or a
device is recreated, so the next sync dumps the kernel again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vmoverlay.logs import StructLogger, get_logger
from vxlan_manager import state as state_store
from vxlan_manager.desired import (
    BridgeSpec,
    DesiredState,
    Difference,
    FdbEntry,
    FdbPlan,
    NeighEntry,
    SetPlan,
    VxlanSpec,
    diff_fdb,
    diff_neighbours,
)
from vxlan_manager.netlink import Kernel, NetlinkFailure


@dataclass
class SyncResult:
    device_repairs: list[Difference] = field(default_factory=list)
    fdb: FdbPlan = field(default_factory=FdbPlan)
    neighbours: SetPlan = field(default_factory=SetPlan)
    ports: list[str] = field(default_factory=list)
    full: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.device_repairs or self.fdb or self.neighbours or self.ports)


class Dataplane:
    def __init__(
        self, kernel: Kernel, *, state_file: Path, logger: StructLogger | None = None
    ) -> None:
        self.kernel = kernel
        self.state_file = state_file
        self.log = logger or get_logger("vxlan-manager")
        self.journal = state_store.OwnershipFile(state_file)
        self.owned = self.journal.load()
        self._devices: tuple[VxlanSpec, BridgeSpec] | None = None
        self.vxlan_index = 0
        self.bridge_index = 0
        self.bridge_networks: list[str] = []
        self._fdb: set[FdbEntry] | None = None
        self._neigh: set[NeighEntry] | None = None

    @property
    def ready(self) -> bool:
        return self._devices is not None

    @property
    def fdb(self) -> frozenset[FdbEntry]:
        """What the kernel holds on our VXLAN device, as last read or written."""
        return frozenset(self._fdb or ())

    def ensure_devices(self, vxlan: VxlanSpec, bridge: BridgeSpec) -> list[Difference]:
        """Check coexistence, then create/repair the bridge and the VXLAN device."""
        self.kernel.check_coexistence(vxlan, bridge)
        br = self.kernel.ensure_bridge(bridge)
        link, repairs = self.kernel.ensure_vxlan(vxlan)
        if link.index != self.vxlan_index or repairs:
            self._fdb = None  # a new or recreated device: dump it again
        if br.index != self.bridge_index:
            self._neigh = None
        self.vxlan_index, self.bridge_index = link.index, br.index
        self.bridge_networks = self.kernel.networks(br.index)
        self._devices = (vxlan, bridge)
        if self.owned.device != vxlan.name or self.owned.bridge != bridge.name:
            self.owned.device, self.owned.bridge = vxlan.name, bridge.name
            self.journal.compact(self.owned, force=True)
        return repairs

    def sync(self, desired: DesiredState, *, full: bool) -> SyncResult:
        """Make the kernel match ``desired``; on failure drop the mirror and re-raise."""
        result = SyncResult(full=full)
        try:
            if full or self._devices != (desired.device, desired.bridge):
                result.device_repairs = self.ensure_devices(desired.device, desired.bridge)
            if full:
                bridge = self.kernel.link(desired.bridge.name)
                if bridge is not None:
                    result.ports = self.kernel.ensure_port_mtus(bridge, desired.bridge.mtu)
            if full or self._fdb is None:
                self._fdb = self.kernel.fdb_entries(self.vxlan_index)
            if full or self._neigh is None:
                self._neigh = self.kernel.neighbours(self.bridge_index)
            result.fdb = diff_fdb(desired.fdb, self._fdb, self.owned.fdb)
            result.neighbours = diff_neighbours(
                desired.neighbours, self._neigh, self.owned.neighbours
            )
            self._apply(result.fdb, result.neighbours)
            if full:
                self.journal.compact(self.owned)
        except (NetlinkFailure, state_store.StateError, OSError):
            self._fdb = self._neigh = None
            raise
        return result

    def _apply(self, fdb: FdbPlan, neigh: SetPlan) -> None:
        assert self._fdb is not None and self._neigh is not None
        if not fdb and not neigh:
            return
        added = set(fdb.add) | {new for _, new in fdb.replace}
        gone = set(fdb.remove) | {old for old, _ in fdb.replace}
        # Record ownership before creating and forget it after removing, so a crash
        # in between never leaves an entry we made but do not know we own.
        new_fdb, new_neigh = added - self.owned.fdb, set(neigh.add) - self.owned.neighbours
        self.journal.append(add_fdb=new_fdb, add_neigh=new_neigh)
        self.owned.fdb |= new_fdb
        self.owned.neighbours |= new_neigh

        self.kernel.apply_fdb(self.vxlan_index, fdb)
        self.kernel.apply_neighbours(self.bridge_index, neigh)
        self._fdb -= gone
        self._fdb |= added
        changed_ips = {a.ip for a in neigh.add}
        self._neigh = {n for n in self._neigh if n.ip not in changed_ips} - set(neigh.remove)
        self._neigh |= set(neigh.add)

        old_fdb = gone & self.owned.fdb
        old_neigh = (
            set(neigh.remove) | {n for n in self.owned.neighbours if n.ip in changed_ips}
        ) - set(neigh.add)
        old_neigh &= self.owned.neighbours
        self.journal.append(del_fdb=old_fdb, del_neigh=old_neigh)
        self.owned.fdb -= old_fdb
        self.owned.neighbours -= old_neigh

    def teardown(self, vxlan_name: str, bridge_name: str) -> list[str]:
        """Remove what we own: our neighbours, our devices (with their entries), the state file."""
        removed = []
        bridge = self.kernel.link(bridge_name)
        if bridge is not None and self.owned.neighbours:
            self.kernel.apply_neighbours(bridge.index, SetPlan(remove=tuple(self.owned.neighbours)))
        recorded = self.owned.device == vxlan_name
        if self.kernel.delete_owned_link(vxlan_name, recorded=recorded):
            removed.append(vxlan_name)
        recorded = self.owned.bridge == bridge_name
        if self.kernel.delete_owned_link(bridge_name, recorded=recorded):
            removed.append(bridge_name)
        self.state_file.unlink(missing_ok=True)
        return removed
