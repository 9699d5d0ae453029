"""The node check against a real kernel: devices built by hand with `ip` in a test namespace.

Scenarios (one node namespace, "a", VTEP 198.18.0.1; peers b and c; a VM on b):
- a healthy node: no finding, exit code 0;
- the device recreated with VNI 4243: broken, vxlan.vni, expected 4242 observed 4243;
- the all-zero entry toward c deleted: broken, fdb.peer, peer c;
- an extra entry toward 198.18.0.99 (no node): degraded, fdb.stale, exit code 1 (a learned
  entry is not mistaken for a stale one);
- the underlay link's MTU lowered to 1400 under a 1450 overlay: broken, underlay.mtu;
- the VM's entry pointing at c instead of b: broken, vm.fdb, peer db/x;
- the device missing: broken, vxlan.device (and the portless bridge falls back to MTU 1500).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from e2e.netns import RunNamespaces
from vmoverlay import api
from vxlan_manager.config import AgentConfig
from vxlan_manager.desired import ZERO_MAC
from vxlan_manager.health.checks import check_node
from vxlan_manager.health.findings import Finding, Report, Severity
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


class Node:
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


@pytest.fixture
def node(netns: RunNamespaces) -> Iterator[Node]:
    n = Node(netns)
    n.build()
    yield n


def only(report: Report) -> Finding:
    assert len(report.findings) == 1, report.findings
    return report.findings[0]


def test_healthy_node(node: Node) -> None:
    report = node.check()
    assert report.findings == []
    assert report.exit_code == 0


def test_wrong_vni(node: Node) -> None:
    node.ip("link", "del", "vmo-vx0")
    node.vxlan(4243)
    f = only(node.check())
    assert (f.severity, f.node, f.property, f.expected, f.observed) == (
        Severity.BROKEN,
        "a",
        "vxlan.vni",
        "4242",
        "4243",
    )
    assert node.check().exit_code == 2


def test_missing_peer_entry(node: Node) -> None:
    node.fdb("del", ZERO_MAC, "dev", "vmo-vx0", "dst", C)
    report = node.check()
    f = only(report)
    assert (f.severity, f.node, f.peer, f.property) == (Severity.BROKEN, "a", "c", "fdb.peer")
    assert report.exit_code == 2


def test_stale_entry(node: Node) -> None:
    # A learned (dynamic) entry ages out by itself: not a finding.
    node.fdb("add", "0a:00:00:00:00:77", "dev", "vmo-vx0", "dst", "198.18.0.98", "dynamic")
    assert node.check().findings == []
    node.fdb("append", ZERO_MAC, "dev", "vmo-vx0", "dst", "198.18.0.99")
    report = node.check()
    f = only(report)
    assert (f.severity, f.peer, f.property) == (Severity.DEGRADED, "198.18.0.99", "fdb.stale")
    assert report.exit_code == 1


def test_low_underlay_mtu(node: Node) -> None:
    node.ip("link", "set", "eth0", "mtu", "1400")
    report = node.check()
    f = only(report)
    assert (f.severity, f.property, f.expected, f.observed) == (
        Severity.BROKEN,
        "underlay.mtu",
        ">= 1500",
        "1400",
    )
    assert "eth0" in f.message
    assert report.exit_code == 2


def test_vm_entry_toward_wrong_node(node: Node) -> None:
    node.fdb("replace", MAC_X, "dev", "vmo-vx0", "dst", C)
    f = only(node.check())
    assert (f.severity, f.peer, f.property, f.expected, f.observed) == (
        Severity.BROKEN,
        "db/x",
        "vm.fdb",
        B,
        C,
    )


def test_missing_device(node: Node) -> None:
    node.ip("link", "del", "vmo-vx0")
    report = node.check()
    # The bridge, left without ports, falls back to MTU 1500: more than the underlay carries.
    by_property = {f.property: f for f in report.findings}
    assert sorted(by_property) == ["underlay.mtu", "vxlan.device"]
    assert by_property["vxlan.device"].severity == Severity.BROKEN
    assert "vmo-br0 mtu is 1500" in by_property["underlay.mtu"].message
