"""Pure health checks: observed data plane + intent + Nodes + VMs -> findings.

Scenarios:
- a healthy node yields no finding and exit code 0, and lists every check it ran;
- a missing device, a wrong VNI / port / local address / master, a device down: broken,
  naming the property, expected and observed values;
- a wrong MTU or learning setting, a VM port whose MTU differs from the overlay's: degraded; a derived MTU larger than a shrunk underlay
  allows is the underlay's finding, not the device's;
- the underlay MTU too small for the overlay MTU (+50 IPv4, +70 IPv6): broken;
- a missing all-zero entry for a peer: broken, naming the peer;
- a permanent entry toward an address that is no node, or for a MAC no VM has: degraded (stale);
- no interface holds the node's VTEP address: broken (underlay.link);
- two nodes sharing one VTEP address: broken on each of them;
- VM entries: missing (degraded), pointing at the wrong node (broken; degraded mid-migration),
  present for a VM running here (broken), a stopped VM ignored, a VM on an unknown node
  reported (degraded); a wrong neighbour MAC: broken;
- probes: unreachable (broken), full-size lost (broken), missing or stale (degraded); a
  result older than two probe periods plus the timeout (21 s by default) is stale;
- the exit code is the worst severity.
"""

from __future__ import annotations

from dataclasses import replace

from vmoverlay import api
from vxlan_manager.config import AgentConfig, InterfaceInfo
from vxlan_manager.desired import ZERO_MAC, FdbEntry, NeighEntry, VxlanSpec
from vxlan_manager.health import checks
from vxlan_manager.health.findings import Finding, ProbeResult, Severity, exit_code
from vxlan_manager.health.observed import ObservedNode
from vxlan_manager.health.probe import stale_after
from vxlan_manager.netlink import Link

A, B, C = "198.18.0.1", "198.18.0.2", "198.18.0.3"
MAC_X = "0a:00:00:00:00:01"


def node(name: str, ip: str | None) -> api.Node:
    return api.Node(name=name, vtep_ip=ip, ready=True, internal_ip=ip)


NODES = [node("a", A), node("b", B), node("c", C)]


def vm(
    name: str, on: str | None, *, phase: str = "Running", mac: str = MAC_X
) -> api.VirtualMachine:
    net = api.VMNetwork(ip="198.19.0.10", prefix=16, mac=mac, mtu=1450, pool="default")
    return api.VirtualMachine("db", name, "u-" + name, "1", "default", on, phase, net)


CFG = AgentConfig(node="a")


def vxlan_link(mtu: int = 1450, *, up: bool = True, **spec: object) -> Link:
    base = VxlanSpec("vmo-vx0", 4242, 4789, A, mtu, False, "vmo-br0")
    return Link(5, "vmo-vx0", "vxlan", mtu, 4, up, None, replace(base, **spec))  # type: ignore[arg-type]


def bridge_link(mtu: int = 1450, *, up: bool = True) -> Link:
    return Link(4, "vmo-br0", "bridge", mtu, None, up, None, None)


def eth0(mtu: int = 1500, ip: str = A) -> tuple[InterfaceInfo, ...]:
    return (InterfaceInfo("eth0", 3, mtu, (ip,)),)


def healthy(**changes: object) -> ObservedNode:
    base = ObservedNode(
        node="a",
        vxlan=vxlan_link(),
        bridge=bridge_link(),
        interfaces=eth0(),
        fdb=frozenset({FdbEntry(ZERO_MAC, B), FdbEntry(ZERO_MAC, C)}),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def with_fdb(*extra: FdbEntry) -> ObservedNode:
    return healthy(fdb=healthy().fdb | set(extra))


def run(observed: ObservedNode, **kw: object) -> list[Finding]:
    cfg = kw.pop("cfg", CFG)
    nodes = kw.pop("nodes", NODES)
    return checks.check_node(cfg, observed, nodes, **kw).findings  # type: ignore[arg-type]


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, findings
    return findings[0]


def test_healthy_node_has_no_findings() -> None:
    obs = with_fdb(FdbEntry(MAC_X, B))
    report = checks.check_node(CFG, obs, NODES, [vm("x", "b")], [probe("b"), probe("c")])
    assert report.findings == []
    assert report.exit_code == 0
    assert report.checks == [
        "underlay",
        "vxlan.device",
        "bridge",
        "bridge.ports",
        "nodes.vtep",
        "api.records",
        "fdb.peers",
        "fdb.vms",
        "probes",
    ]


def test_missing_device_is_broken() -> None:
    f = only(run(healthy(vxlan=None), vms=[]))
    assert (f.severity, f.node, f.property) == (Severity.BROKEN, "a", "vxlan.device")
    assert "vmo-vx0" in f.message and "agent" in f.action


def test_wrong_vni_port_local_master_each_named() -> None:
    cases = {
        "vxlan.vni": (vxlan_link(vni=4243), "4242", "4243"),
        "vxlan.port": (vxlan_link(port=8472), "4789", "8472"),
        "vxlan.local": (vxlan_link(local=B), A, B),
        "vxlan.master": (vxlan_link(master=None), "vmo-br0", "unset"),
    }
    for prop, (bad, want, have) in cases.items():
        f = only(run(healthy(vxlan=bad), vms=[]))
        assert (f.severity, f.property, f.expected, f.observed) == (
            Severity.BROKEN,
            prop,
            want,
            have,
        )


def test_mtu_and_learning_drift_are_degraded() -> None:
    f = only(run(healthy(vxlan=vxlan_link(1400)), vms=[]))
    assert (f.severity, f.property, f.expected, f.observed) == (
        Severity.DEGRADED,
        "vxlan.mtu",
        "1450",
        "1400",
    )
    f = only(run(healthy(vxlan=vxlan_link(learning=True)), vms=[]))
    assert (f.severity, f.property, f.observed) == (Severity.DEGRADED, "vxlan.learning", "on")


def test_device_or_bridge_down_or_missing_is_broken() -> None:
    assert only(run(healthy(vxlan=vxlan_link(up=False)), vms=[])).property == "vxlan.up"
    f = only(run(healthy(bridge=bridge_link(up=False)), vms=[]))
    assert (f.severity, f.property) == (Severity.BROKEN, "bridge.up")
    assert only(run(healthy(bridge=None), vms=[])).property == "bridge.device"


def test_underlay_too_small_for_configured_mtu() -> None:
    # Configured overlay MTU 1450 needs 1500 on an IPv4 underlay; 1499 is one short.
    cfg = replace(CFG, mtu=1450)
    f = only(run(healthy(interfaces=eth0(1499)), vms=[], cfg=cfg))
    assert (f.severity, f.property, f.expected, f.observed) == (
        Severity.BROKEN,
        "underlay.mtu",
        ">= 1500",
        "1499",
    )
    assert "1449" in f.action
    assert run(healthy(), vms=[], cfg=cfg) == []


def test_derived_mtu_underlay_shrunk_after_start() -> None:
    # No configured MTU: the device keeps 1450 while the underlay shrank to 1400.
    f = only(run(healthy(interfaces=eth0(1400)), vms=[]))
    assert (f.property, f.expected, f.observed) == ("underlay.mtu", ">= 1500", "1400")
    assert "vmo-vx0 mtu is 1450" in f.message
    # A device smaller than the underlay allows is a drift (degraded), named on the device.
    f = only(run(healthy(vxlan=vxlan_link(1400)), vms=[]))
    assert (f.severity, f.property, f.expected) == (Severity.DEGRADED, "vxlan.mtu", "1450")


def test_ipv6_underlay_needs_70_bytes() -> None:
    v6a, v6b = "2001:db8::1", "2001:db8::2"
    nodes = [node("a", v6a), node("b", v6b)]
    obs = ObservedNode(
        "a",
        vxlan_link(1430, local=v6a),
        bridge_link(1430),
        eth0(1499, v6a),
        fdb=frozenset({FdbEntry(ZERO_MAC, v6b)}),
    )
    cfg = replace(CFG, mtu=1430)
    f = only(run(obs, vms=[], cfg=cfg, nodes=nodes))
    assert (f.property, f.expected) == ("underlay.mtu", ">= 1500")
    # Derived MTU: underlay 1500 on IPv6 means overlay 1430, so the device is right.
    assert run(replace(obs, interfaces=eth0(1500, v6a)), vms=[], nodes=nodes) == []


def test_no_underlay_is_broken() -> None:
    f = only(run(healthy(interfaces=eth0(ip="198.18.0.77")), vms=[]))
    assert (f.severity, f.property) == (Severity.BROKEN, "underlay.link")
    assert A in f.message


def test_missing_peer_entry_names_the_peer() -> None:
    f = only(run(healthy(fdb=frozenset({FdbEntry(ZERO_MAC, B)})), vms=[]))
    assert (f.severity, f.property, f.peer, f.expected) == (Severity.BROKEN, "fdb.peer", "c", C)


def test_stale_entries_are_degraded() -> None:
    f = only(run(with_fdb(FdbEntry(ZERO_MAC, "198.18.0.99")), vms=[]))
    assert (f.severity, f.property, f.peer) == (Severity.DEGRADED, "fdb.stale", "198.18.0.99")
    # A VM MAC toward a real node, but no VM has that MAC any more.
    f = only(run(with_fdb(FdbEntry("0a:11:22:33:44:55", B)), vms=[]))
    assert (f.severity, f.property, f.peer) == (Severity.DEGRADED, "fdb.stale", B)


def test_entry_toward_own_vtep_is_flagged() -> None:
    f = only(run(with_fdb(FdbEntry(ZERO_MAC, A)), vms=[]))
    assert (f.property, f.peer) == ("fdb.self", A)


def test_duplicate_vtep_is_broken_on_each_node() -> None:
    nodes = [node("a", A), node("b", B), node("c", B)]
    found = checks.check_duplicate_vteps(nodes)
    assert [(f.node, f.peer, f.severity) for f in found] == [
        ("b", "c", Severity.BROKEN),
        ("c", "b", Severity.BROKEN),
    ]
    assert checks.check_duplicate_vteps(nodes, only="a") == []


def test_vm_entries_follow_vm_status() -> None:
    right, wrong = FdbEntry(MAC_X, B), FdbEntry(MAC_X, C)
    assert run(with_fdb(right), vms=[vm("x", "b")]) == []

    f = only(run(healthy(), vms=[vm("x", "b")]))
    assert (f.severity, f.property, f.peer) == (Severity.DEGRADED, "vm.fdb", "db/x")

    f = only(run(with_fdb(wrong), vms=[vm("x", "b")]))
    assert (f.severity, f.property, f.peer, f.expected, f.observed) == (
        Severity.BROKEN,
        "vm.fdb",
        "db/x",
        B,
        C,
    )

    f = only(run(with_fdb(wrong), vms=[vm("x", "b", phase="Migrating")]))
    assert f.severity == Severity.DEGRADED

    f = only(run(with_fdb(right), vms=[vm("x", "a")]))
    assert (f.severity, f.property, f.observed) == (Severity.BROKEN, "vm.fdb", B)

    assert run(healthy(), vms=[vm("x", "b", phase="Stopped")]) == []

    f = only(run(healthy(), vms=[vm("x", "gone")]))
    assert (f.severity, f.property) == (Severity.DEGRADED, "api.record")
    assert "gone" in f.message


def test_vm_neighbour_with_wrong_mac_is_broken() -> None:
    good = NeighEntry("198.19.0.10", MAC_X)
    bad = NeighEntry("198.19.0.10", "0a:00:00:00:00:99")
    obs = with_fdb(FdbEntry(MAC_X, B))
    assert run(replace(obs, neighbours=frozenset({good})), vms=[vm("x", "b")]) == []
    f = only(run(replace(obs, neighbours=frozenset({bad})), vms=[vm("x", "b")]))
    assert (f.severity, f.property, f.peer, f.expected) == (
        Severity.BROKEN,
        "vm.neighbour",
        "db/x",
        MAC_X,
    )


def probe(peer: str, **kw: object) -> ProbeResult:
    base = ProbeResult("a", peer, "198.18.255.2", True, 0.0004, True, 1450, 1.0)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_probe_findings() -> None:
    good = [probe("b"), probe("c")]
    assert run(healthy(), vms=[], probes=good) == []

    f = only(run(healthy(), vms=[], probes=[probe("b"), probe("c", reachable=False)]))
    assert (f.severity, f.property, f.peer) == (Severity.BROKEN, "probe.reachable", "c")

    f = only(run(healthy(), vms=[], probes=[probe("b", mtu_ok=False), probe("c")]))
    assert (f.severity, f.property, f.peer) == (Severity.BROKEN, "probe.mtu", "b")

    f = only(run(healthy(), vms=[], probes=[probe("b")]))
    assert (f.severity, f.property, f.peer) == (Severity.DEGRADED, "probe.missing", "c")

    f = only(run(healthy(), vms=[], probes=[probe("b"), probe("c", age_seconds=300.0)]))
    assert (f.severity, f.property) == (Severity.DEGRADED, "probe.stale")


def test_probe_older_than_two_periods_is_stale() -> None:
    # Default period 10 s, timeout 1 s: stale after 21 s (it used to take 30 s).
    assert stale_after() == 21.0 and stale_after(2.0, 1.0) == 5.0
    assert run(healthy(), vms=[], probes=[probe("b", age_seconds=20.0), probe("c")]) == []
    f = only(run(healthy(), vms=[], probes=[probe("b", age_seconds=25.0), probe("c")]))
    assert (f.severity, f.property, f.peer) == (Severity.DEGRADED, "probe.stale", "b")
    assert (f.expected, f.observed) == ("<= 21s", "25s")
    assert "two probe periods" in f.message and "--fresh" in f.action


def test_exit_code_is_worst_severity() -> None:
    deg = Finding(Severity.DEGRADED, "a", "x", "m", "do")
    brk = replace(deg, severity=Severity.BROKEN)
    assert exit_code([]) == 0
    assert exit_code([deg]) == 1
    assert exit_code([deg, brk, deg]) == 2


def pair(src: str, dst: str, *, up: bool = True, mtu: bool | None = True) -> ProbeResult:
    return ProbeResult(src, dst, "x", up, 0.001 if up else None, mtu if up else None, 1450)


def mesh(**faults: str) -> list[ProbeResult]:
    """Full mesh of a..d; faults: node -> 'down' | 'mtu' (every pair through it)."""
    out = []
    for s in "abcd":
        for d in "abcd":
            if s != d:
                kind = faults.get(s) or faults.get(d)
                out.append(pair(s, d, up=kind != "down", mtu=kind != "mtu"))
    return out


def test_cluster_diagnosis_points_at_the_common_node() -> None:
    assert checks.diagnose_cluster(mesh()) == []
    f = only(checks.diagnose_cluster(mesh(c="down")))
    assert (f.severity, f.node, f.property) == (Severity.BROKEN, "c", "cluster.isolated")
    f = only(checks.diagnose_cluster(mesh(b="mtu")))
    assert (f.node, f.property) == ("b", "cluster.mtu")
    # One broken pair localises nothing; everything down localises nothing either.
    one = [p if (p.node, p.peer) != ("a", "b") else pair("a", "b", up=False) for p in mesh()]
    assert checks.diagnose_cluster(one) == []
    assert checks.diagnose_cluster(mesh(a="down", b="down", c="down", d="down")) == []


def test_vm_port_mtu_must_match_the_overlay() -> None:
    good = Link(7, "veth-a", "veth", 1450, 4, True, None, None)
    big = Link(8, "veth-b", "veth", 1500, 4, True, None, None)
    assert run(healthy(ports=(good,)), vms=[]) == []
    f = only(run(healthy(ports=(good, big)), vms=[]))
    assert (f.severity, f.property, f.peer, f.expected, f.observed) == (
        Severity.DEGRADED,
        "bridge.port_mtu",
        "veth-b",
        "1450",
        "1500",
    )
