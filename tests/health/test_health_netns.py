"""The node check against a real kernel: devices built by hand with `ip` in a test namespace.

Scenarios (one node namespace, "a", VTEP 198.18.0.1; peers b and c; a VM on b):
- a healthy node: no finding, exit code 0;
- the device recreated with VNI 4243: broken, vxlan.vni, expected 4242 observed 4243;
- the all-zero entry toward c deleted: broken, fdb.peer, peer c;
- an extra entry toward 198.18.0.99 (no node): degraded, fdb.stale, exit code 1 (a learned
  entry is not mistaken for a stale one);
- the underlay link's MTU lowered to 1400 under a 1450 overlay: broken, underlay.mtu;
- the VM's entry pointing at c instead of b: broken, vm.fdb, peer db/x;
- a VM port on the bridge with MTU 1500 under a 1450 overlay: degraded, bridge.port_mtu;
- the device missing: broken, vxlan.device (and the portless bridge falls back to MTU 1500).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.netns import RunNamespaces
from tests.health.handbuilt import MAC_X, B, C, HandBuiltNode
from vxlan_manager.desired import ZERO_MAC
from vxlan_manager.health.findings import Finding, Report, Severity


@pytest.fixture
def node(netns: RunNamespaces) -> Iterator[HandBuiltNode]:
    n = HandBuiltNode(netns)
    n.build()
    yield n


def only(report: Report) -> Finding:
    assert len(report.findings) == 1, report.findings
    return report.findings[0]


def test_healthy_node(node: HandBuiltNode) -> None:
    report = node.check()
    assert report.findings == []
    assert report.exit_code == 0


def test_wrong_vni(node: HandBuiltNode) -> None:
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


def test_missing_peer_entry(node: HandBuiltNode) -> None:
    node.fdb("del", ZERO_MAC, "dev", "vmo-vx0", "dst", C)
    report = node.check()
    f = only(report)
    assert (f.severity, f.node, f.peer, f.property) == (Severity.BROKEN, "a", "c", "fdb.peer")
    assert report.exit_code == 2


def test_stale_entry(node: HandBuiltNode) -> None:
    # A learned (dynamic) entry ages out by itself: not a finding.
    node.fdb("add", "0a:00:00:00:00:77", "dev", "vmo-vx0", "dst", "198.18.0.98", "dynamic")
    assert node.check().findings == []
    node.fdb("append", ZERO_MAC, "dev", "vmo-vx0", "dst", "198.18.0.99")
    report = node.check()
    f = only(report)
    assert (f.severity, f.peer, f.property) == (Severity.DEGRADED, "198.18.0.99", "fdb.stale")
    assert report.exit_code == 1


def test_low_underlay_mtu(node: HandBuiltNode) -> None:
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


def test_vm_entry_toward_wrong_node(node: HandBuiltNode) -> None:
    node.fdb("replace", MAC_X, "dev", "vmo-vx0", "dst", C)
    f = only(node.check())
    assert (f.severity, f.peer, f.property, f.expected, f.observed) == (
        Severity.BROKEN,
        "db/x",
        "vm.fdb",
        B,
        C,
    )


def test_missing_device(node: HandBuiltNode) -> None:
    node.ip("link", "del", "vmo-vx0")
    report = node.check()
    # The bridge, left without ports, falls back to MTU 1500: more than the underlay carries.
    by_property = {f.property: f for f in report.findings}
    assert sorted(by_property) == ["underlay.mtu", "vxlan.device"]
    assert by_property["vxlan.device"].severity == Severity.BROKEN
    assert "vmo-br0 mtu is 1500" in by_property["underlay.mtu"].message


def test_vm_port_with_wrong_mtu(node: HandBuiltNode) -> None:
    node.ip("link", "add", "vm-port", "mtu", "1500", "type", "veth", "peer", "name", "vm-eth")
    node.ip("link", "set", "vm-port", "master", "vmo-br0", "up")
    f = only(node.check())
    assert (f.property, f.peer, f.observed) == ("bridge.port_mtu", "vm-port", "1500")
    node.ip("link", "set", "vm-port", "mtu", "1450")
    assert node.check().findings == []
