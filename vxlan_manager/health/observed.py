"""A snapshot of one node's data plane as the kernel holds it.

The health checks compare an :class:`ObservedNode` with the agent's own
desired state (:func:`vxlan_manager.desired.desired_state`, computed from the
same configuration, Nodes and VMs the agent uses), so the check and the agent
can never disagree on what "right" means. The snapshot reuses the agent's
kernel types (:class:`~vxlan_manager.netlink.Link`, the desired-state
``FdbEntry`` and ``NeighEntry``): it is read by the agent's netlink edge
(:mod:`.observe`) or built by hand in unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from vxlan_manager.config import OVERHEAD, InterfaceInfo
from vxlan_manager.desired import FdbEntry, NeighEntry
from vxlan_manager.netlink import Link


def encap_overhead(family: int) -> int:
    """Bytes the underlay carries beyond the overlay MTU: 50 (IPv4) or 70 (IPv6)."""
    return OVERHEAD[family]


@dataclass(frozen=True)
class ObservedNode:
    node: str
    vxlan: Link | None  # our VXLAN device (``vxlan`` holds its parsed attributes)
    bridge: Link | None
    interfaces: tuple[InterfaceInfo, ...]  # every link with its addresses (the underlay)
    fdb: frozenset[FdbEntry] = frozenset()  # static entries with a remote, on our device
    neighbours: frozenset[NeighEntry] = frozenset()  # permanent entries on the bridge
    bridge_networks: tuple[str, ...] = ()  # networks of the bridge's addresses
    ports: tuple[Link, ...] = ()  # the bridge's other ports (VM ports), not the VXLAN device
