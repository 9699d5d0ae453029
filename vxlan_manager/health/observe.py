"""Read a node's overlay data plane from the kernel into an :class:`ObservedNode`.

The netlink edge of the health check, built on the agent's own
:class:`~vxlan_manager.netlink.Kernel` readers (one link dump, one address
dump, one FDB dump of our device, one neighbour dump of the bridge), so the
check reads the kernel exactly as the agent does. It reads the namespace of
the given IPRoute (the current one by default; tests pass
``IPRoute(netns=...)``) and never changes anything.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from vmoverlay.logs import get_logger
from vxlan_manager.config import AgentConfig
from vxlan_manager.health.observed import ObservedNode
from vxlan_manager.netlink import Kernel

log = get_logger("vxlan-manager")


def observe_node(cfg: AgentConfig, ipr: IPRoute | None = None) -> ObservedNode:
    """Snapshot of the devices ``cfg`` names, their FDB and neighbours, and the links."""
    kernel = Kernel(ipr)
    try:
        return _observe(cfg, kernel)
    finally:
        if ipr is None:
            kernel.close()


def _observe(cfg: AgentConfig, kernel: Kernel) -> ObservedNode:
    all_links = kernel.links()
    links = {link.name: link for link in all_links}
    vxlan = links.get(cfg.device)
    if vxlan is not None and vxlan.vxlan is None:
        vxlan = None  # something else holds the name: as good as missing for the overlay
    bridge = links.get(cfg.bridge)
    fdb = frozenset(kernel.fdb_entries(vxlan.index)) if vxlan else frozenset()
    neighbours = frozenset(kernel.neighbours(bridge.index)) if bridge else frozenset()
    networks = tuple(kernel.networks(bridge.index)) if bridge else ()
    ports = tuple(
        link
        for link in all_links
        if bridge and link.master == bridge.index and (vxlan is None or link.index != vxlan.index)
    )
    log.debug(
        "observed data plane",
        node=cfg.node,
        device=bool(vxlan),
        bridge=bool(bridge),
        fdb=len(fdb),
        neighbours=len(neighbours),
    )
    return ObservedNode(
        node=cfg.node,
        vxlan=vxlan,
        bridge=bridge,
        interfaces=tuple(kernel.interfaces()),
        fdb=fdb,
        neighbours=neighbours,
        bridge_networks=networks,
        ports=ports,
    )
