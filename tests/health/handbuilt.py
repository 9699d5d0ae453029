"""A node's overlay built by hand with `ip` and `bridge` in a test namespace (no agent).

Node "a" (VTEP 198.18.0.1 on eth0, MTU 1500) with ``vmo-br0`` and ``vmo-vx0``
(VNI 4242, UDP 4789, MTU 1450, no learning), all-zero entries toward the peers
b (198.18.0.2) and c (198.18.0.3), and an entry for VM db/x (on b).
"""

from __future__ import annotations

from pyroute2 import IPRoute

from e2e.netns import RunNamespaces
from vmoverlay import api
from vxlan_manager.config import AgentConfig
from vxlan_manager.desired import ZERO_MAC
from vxlan_manager.health.checks import check_node
from vxlan_manager.health.findings import Report
from vxlan_manager.health.observe import observe_node

A, B, C = "198.18.0.1", "198.18.0.2", "198.18.0.3"
MAC_X = "0a:00:00:00:00:01"
NODES = [api.Node(n, ip, True, internal_ip=ip) for n, ip in (("a", A), ("b", B), ("c", C))]
VMS = [
    api.VirtualMachine(
        "db",
        "x",
        "u-x",
        "1",
        "default",
        "b",
        "Running",
        api.VMNetwork("198.19.0.10", 16, MAC_X, 1450, "default"),
    )
]
CFG = AgentConfig(node="a")


class HandBuiltNode:
    def __init__(self, run: RunNamespaces) -> None:
        self.run = run
        self.ns = run.add("hc-a")

    def ip(self, *argv: str) -> None:
        self.run.check(self.ns, ["ip", *argv])

    def fdb(self, *argv: str) -> None:
        self.run.check(self.ns, ["bridge", "fdb", *argv])

    def build(self, *, vni: int = 4242) -> None:
        self.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        self.ip("addr", "add", f"{A}/24", "dev", "eth0")
        self.ip("link", "set", "eth0", "up")
        self.ip("link", "set", "eth0p", "up")
        self.ip("link", "add", "vmo-br0", "mtu", "1450", "type", "bridge")
        self.ip("link", "set", "vmo-br0", "up")
        self.vxlan(vni)

    def vxlan(self, vni: int) -> None:
        self.ip(
            "link", "add", "vmo-vx0", "mtu", "1450", "type", "vxlan", "id", str(vni),
            "dstport", "4789", "local", A, "nolearning",
        )  # fmt: skip
        self.ip("link", "set", "vmo-vx0", "master", "vmo-br0", "up")
        self.fdb("append", ZERO_MAC, "dev", "vmo-vx0", "dst", B)
        self.fdb("append", ZERO_MAC, "dev", "vmo-vx0", "dst", C)
        self.fdb("add", MAC_X, "dev", "vmo-vx0", "dst", B)

    def check(self, cfg: AgentConfig = CFG) -> Report:
        with IPRoute(netns=self.ns) as ipr:
            observed = observe_node(cfg, ipr)
        return check_node(cfg, observed, NODES, VMS)
