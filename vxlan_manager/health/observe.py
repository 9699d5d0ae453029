"""Read a node's overlay data plane from the kernel into an :class:`ObservedNode`.

This is the netlink edge of the health check: one dump of links, one of the
VXLAN device's own FDB entries, one of the bridge's neighbours, and the
address of the underlay. It reads the network namespace of the given
:class:`pyroute2.IPRoute` (the current one by default; tests pass
``IPRoute(netns=...)``) and never changes anything.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from pyroute2 import IPRoute

from vmoverlay.logs import get_logger
from vxlan_manager.health.observed import (
    BridgeDevice,
    FdbEntry,
    Intent,
    NeighEntry,
    ObservedNode,
    UnderlayLink,
    VxlanDevice,
)

log = get_logger("vxlan-manager")

IFF_UP = 0x1
NTF_SELF = 0x02
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80


def observe_node(intent: Intent, ipr: IPRoute | None = None) -> ObservedNode:
    """Snapshot of the devices, FDB and neighbours ``intent`` names, as the kernel has them."""
    own = ipr is None
    ipr = ipr if ipr is not None else IPRoute()
    try:
        return _observe(intent, ipr)
    finally:
        if own:
            ipr.close()


def _observe(intent: Intent, ipr: IPRoute) -> ObservedNode:
    links = {int(link["index"]): link for link in ipr.get_links()}
    names = {i: str(link.get("ifname")) for i, link in links.items()}
    vxlans = [_vxlan(link, names) for link in links.values() if _kind(link) == "vxlan"]
    device = next((d for d in vxlans if d.name == intent.vxlan_name), None)
    bridge_link = next(
        (ln for ln in links.values() if ln.get("ifname") == intent.bridge_name), None
    )
    bridge = _bridge(ipr, bridge_link) if bridge_link is not None else None
    local_ip = intent.local_ip or (device.local_ip if device else None)
    underlay = _underlay(ipr, local_ip, names, links) if local_ip else None
    fdb = _fdb(ipr, device.ifindex) if device else ()
    neighbours = _neighbours(ipr, bridge) if bridge else ()
    log.debug(
        "observed data plane",
        node=intent.node,
        device=bool(device),
        bridge=bool(bridge),
        fdb=len(fdb),
        neighbours=len(neighbours),
    )
    return ObservedNode(
        node=intent.node,
        vxlan=device,
        bridge=bridge,
        underlay=underlay,
        fdb=fdb,
        neighbours=neighbours,
        other_vxlans=tuple(d for d in vxlans if d.name != intent.vxlan_name),
    )


def _kind(link: Any) -> str | None:
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    return str(kind) if kind else None


def _vxlan(link: Any, names: dict[int, str]) -> VxlanDevice:
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")

    def attr(name: str) -> Any:
        return data.get(name) if data is not None else None

    learning = attr("IFLA_VXLAN_LEARNING")
    master = link.get("master")
    lower = attr("IFLA_VXLAN_LINK")
    return VxlanDevice(
        name=str(link.get("ifname")),
        ifindex=int(link["index"]),
        vni=_opt_int(attr("IFLA_VXLAN_ID")),
        port=_opt_int(attr("IFLA_VXLAN_PORT")),
        local_ip=attr("IFLA_VXLAN_LOCAL") or attr("IFLA_VXLAN_LOCAL6"),
        mtu=int(link.get("mtu") or 0),
        learning=bool(learning) if learning is not None else None,
        up=bool(link["flags"] & IFF_UP),
        master=names.get(int(master)) if master else None,
        underlay_ifname=names.get(int(lower)) if lower else None,
    )


def _bridge(ipr: IPRoute, link: Any) -> BridgeDevice:
    index = int(link["index"])
    addresses = tuple(
        f"{a.get('address')}/{a['prefixlen']}"
        for a in ipr.get_addr(index=index)
        if a.get("address")
    )
    return BridgeDevice(
        name=str(link.get("ifname")),
        ifindex=index,
        mtu=int(link.get("mtu") or 0),
        up=bool(link["flags"] & IFF_UP),
        addresses=addresses,
    )


def _underlay(
    ipr: IPRoute, local_ip: str, names: dict[int, str], links: dict[int, Any]
) -> UnderlayLink | None:
    family = socket.AF_INET6 if ipaddress.ip_address(local_ip).version == 6 else socket.AF_INET
    for addr in ipr.get_addr(family=family):
        if addr.get("address") == local_ip:
            index = int(addr["index"])
            return UnderlayLink(names[index], int(links[index].get("mtu") or 0), local_ip)
    return None


def _fdb(ipr: IPRoute, ifindex: int) -> tuple[FdbEntry, ...]:
    """The VXLAN device's own entries (NTF_SELF); the bridge's entries for the port are not."""
    out = []
    for msg in ipr.fdb("dump", ifindex=ifindex):
        if int(msg["ifindex"]) != ifindex or not int(msg["flags"]) & NTF_SELF:
            continue
        mac = msg.get("NDA_LLADDR")
        if not mac:
            continue
        out.append(
            FdbEntry(
                mac=str(mac).lower(),
                dst=msg.get("NDA_DST"),
                permanent=bool(int(msg["state"]) & (NUD_PERMANENT | NUD_NOARP)),
            )
        )
    return tuple(sorted(out, key=lambda e: (e.mac, e.dst or "")))


def _neighbours(ipr: IPRoute, bridge: BridgeDevice) -> tuple[NeighEntry, ...]:
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_neighbours(family=family, ifindex=bridge.ifindex):
            ip = msg.get("NDA_DST")
            if not ip:
                continue
            out.append(
                NeighEntry(
                    ip=str(ip),
                    mac=msg.get("NDA_LLADDR"),
                    device=bridge.name,
                    permanent=bool(int(msg["state"]) & NUD_PERMANENT),
                )
            )
    return tuple(out)


def _opt_int(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None
