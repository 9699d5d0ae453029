"""The leak sweeper's decision: which allocations no VM can still be using.

The sweeper lists allocations FIRST and VMs SECOND. A VM always exists before
its allocation is created, so an allocation in the first list whose VM is
missing from the second, later list really has no VM: the opposite order
would miss a VM created between the two lists and free its live address
(the race known from whereabouts' garbage collection).

Ownership is matched by the VM's UID, never by its name: a VM deleted and
created again under the same name is a different VM. On top of the list
order, an allocation younger than the grace period is never swept, so an
allocation that a controller just created (or re-created for a restored VM)
is safe even from a sweeper with a stale view.

An allocation is leaked when it is older than the grace period and either
- no VM with its UID exists, or
- its VM exists and its ``status.network`` records a different address (a
  left-over of a controller that died between creating an allocation and
  finding out that another controller had already addressed the VM).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import netaddr

from ipam.state import Held
from vmoverlay import api


@dataclass(frozen=True)
class Leak:
    held: Held
    reason: str


def recorded_allocation_name(network: api.VMNetwork) -> str | None:
    try:
        return api.allocation_name(network.pool, str(netaddr.IPAddress(network.ip)))
    except (netaddr.AddrFormatError, ValueError):
        return None


def find_leaks(
    allocations: Iterable[Held], vms: Sequence[api.VirtualMachine], *, now: float, grace: float
) -> list[Leak]:
    """The allocations to free; ``allocations`` must have been listed before ``vms``."""
    by_uid = {vm.uid: vm for vm in vms if vm.uid}
    leaks: list[Leak] = []
    for held in allocations:
        if held.created is None or now - held.created < grace:
            continue
        vm = by_uid.get(held.alloc.vm.uid)
        if vm is None:
            leaks.append(Leak(held, f"VM {held.alloc.vm} (uid {held.alloc.vm.uid}) is gone"))
        elif vm.network is not None and recorded_allocation_name(vm.network) != held.name:
            leaks.append(Leak(held, f"VM {vm.key} holds {vm.network.ip}, not {held.alloc.ip}"))
    return leaks
