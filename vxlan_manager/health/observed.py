"""Typed snapshots of a node's data plane as the kernel holds it, and the intent.

The checks compare an :class:`ObservedNode` (read by :mod:`.observe` through
netlink, or built by hand in unit tests) with an :class:`Intent` (what the
agent's configuration says the node should have). Both are plain frozen
dataclasses so the checks stay pure and every rule can be tested without a
kernel.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

ZERO_MAC = "00:00:00:00:00:00"
# VXLAN encapsulation overhead: outer Ethernet 14 + IP (20 or 40) + UDP 8 + VXLAN 8.
OVERHEAD_IPV4 = 50
OVERHEAD_IPV6 = 70


def encap_overhead(vtep_ip: str | None) -> int:
    """Bytes the underlay must carry beyond the overlay MTU for a VTEP of this family."""
    if vtep_ip and ipaddress.ip_address(vtep_ip).version == 6:
        return OVERHEAD_IPV6
    return OVERHEAD_IPV4


@dataclass(frozen=True)
class Intent:
    """What this node's overlay should look like (from the agent's configuration)."""

    node: str
    vxlan_name: str = "vmo-vx0"
    bridge_name: str = "vmo-br0"
    vni: int = 4242
    port: int = 4789
    local_ip: str | None = None
    mtu: int | None = None  # None: derived from the underlay MTU
    learning: bool = False

    def overlay_mtu(self, underlay_mtu: int | None) -> int | None:
        """The intended overlay MTU: configured, else underlay minus encapsulation."""
        if self.mtu is not None:
            return self.mtu
        if underlay_mtu is None:
            return None
        return underlay_mtu - encap_overhead(self.local_ip)


@dataclass(frozen=True)
class VxlanDevice:
    name: str
    ifindex: int
    vni: int | None
    port: int | None
    local_ip: str | None
    mtu: int
    learning: bool | None
    up: bool
    master: str | None  # name of the bridge it is a port of, if any
    underlay_ifname: str | None = None  # the link VXLAN is bound to, if any


@dataclass(frozen=True)
class BridgeDevice:
    name: str
    ifindex: int
    mtu: int
    up: bool
    addresses: tuple[str, ...] = ()  # "ip/prefix" on the bridge (the probe address)


@dataclass(frozen=True)
class UnderlayLink:
    """The link that holds the local VTEP address."""

    name: str
    mtu: int
    address: str


@dataclass(frozen=True)
class FdbEntry:
    """An FDB entry on the VXLAN device. ``dst`` is the remote VTEP (None: none)."""

    mac: str
    dst: str | None
    permanent: bool  # static/permanent (programmed) vs learned (ages out)

    @property
    def is_flood(self) -> bool:
        """An all-zero entry: head-end replication of broadcast/unknown frames."""
        return self.mac == ZERO_MAC


@dataclass(frozen=True)
class NeighEntry:
    ip: str
    mac: str | None
    device: str
    permanent: bool


@dataclass(frozen=True)
class ObservedNode:
    node: str
    vxlan: VxlanDevice | None
    bridge: BridgeDevice | None
    underlay: UnderlayLink | None
    fdb: tuple[FdbEntry, ...] = ()
    neighbours: tuple[NeighEntry, ...] = ()
    other_vxlans: tuple[VxlanDevice, ...] = field(default=())
