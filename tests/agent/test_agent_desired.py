"""Unit tests of the pure desired-state and diff functions (no kernel, no API).

Scenarios:
- three nodes: one all-zero FDB entry per other node, none for the local node;
- a node's address changes (InternalIP, then the VTEP annotation overriding it);
- a node is removed: its flood entry and its VMs' entries go;
- a VM migrates: its MAC entry points at the new node; arriving here removes it;
- IPv6 node addresses on an IPv6 underlay; an IPv4 node on an IPv6 underlay is reported;
- VMs without a network record, without a node, stopped, on an unknown node;
- duplicate MAC reported; NotReady nodes are kept;
- neighbour entries only where the bridge has an address in the VM's subnet;
- device diff: readable differences, which ones the kernel can change in place;
- FDB diff: add, replace for a moved MAC, remove only what we own or the flood list;
- placement/peer change records for the change log.
"""

from __future__ import annotations

from typing import Any

from vmoverlay import api
from vxlan_manager.config import AgentConfig, Underlay
from vxlan_manager.desired import (
    ZERO_MAC,
    FdbEntry,
    NeighEntry,
    VxlanSpec,
    desired_state,
    diff_device,
    diff_fdb,
    diff_neighbours,
    peer_changes,
    placement_changes,
)

CFG = AgentConfig(node="a")
UL4 = Underlay("198.18.0.1", "eth0", 4, 1500, 1450)
UL6 = Underlay("fd00:18::1", "eth0", 6, 1500, 1430)


def node(name: str, ip: str | None, *, ready: bool = True, vtep: str | None = None) -> api.Node:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "annotations": {api.VTEP_ANNOTATION: vtep} if vtep else {}},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}] if ip else [],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }
    return api.Node.from_obj(obj)


def vm(
    name: str,
    node_name: str | None,
    mac: str | None,
    ip: str = "198.19.0.10",
    phase: str = "Running",
) -> api.VirtualMachine:
    status: dict[str, Any] = {"phase": phase}
    if node_name:
        status["node"] = node_name
    if mac:
        status["network"] = {"ip": ip, "prefix": 16, "mac": mac, "mtu": 1450, "pool": "default"}
    return api.VirtualMachine.from_obj(
        {"metadata": {"namespace": "db", "name": name, "uid": name}, "status": status}
    )


NODES = [node("a", "198.18.0.1"), node("b", "198.18.0.2"), node("c", "198.18.0.3")]


def flood(*ips: str) -> set[FdbEntry]:
    return {FdbEntry(ZERO_MAC, ip) for ip in ips}


def test_flood_entry_for_every_other_node() -> None:
    d = desired_state(CFG, UL4, NODES, [])
    assert d.fdb == flood("198.18.0.2", "198.18.0.3")
    assert [p.node for p in d.peers] == ["b", "c"]
    assert d.device.vni == 4242 and d.device.port == 4789 and d.device.local == "198.18.0.1"
    assert d.device.mtu == 1450 and d.bridge.mtu == 1450 and d.device.master == "vmo-br0"
    assert d.device.learning is False
    assert d.fdb_counts() == {"flood": 2, "vm": 0}


def test_node_address_change_moves_entries() -> None:
    vms = [vm("pg-0", "c", "0a:00:00:00:00:01")]
    before = desired_state(CFG, UL4, NODES, vms)
    moved = [NODES[0], NODES[1], node("c", "198.18.0.33")]
    after = desired_state(CFG, UL4, moved, vms)
    assert after.fdb == flood("198.18.0.2", "198.18.0.33") | {
        FdbEntry("0a:00:00:00:00:01", "198.18.0.33")
    }
    plan = diff_fdb(after.fdb, before.fdb, before.fdb)
    assert plan.add == (FdbEntry(ZERO_MAC, "198.18.0.33"),)
    assert plan.replace == (
        (FdbEntry("0a:00:00:00:00:01", "198.18.0.3"), FdbEntry("0a:00:00:00:00:01", "198.18.0.33")),
    )
    assert plan.remove == (FdbEntry(ZERO_MAC, "198.18.0.3"),)
    changes = peer_changes(before, after)
    assert [(n, o.vtep if o else None, w.vtep if w else None) for n, o, w in changes] == [
        ("c", "198.18.0.3", "198.18.0.33")
    ]


def test_vtep_annotation_overrides_internal_ip() -> None:
    nodes = [NODES[0], node("b", "198.18.0.2", vtep="198.18.0.200")]
    assert desired_state(CFG, UL4, nodes, []).fdb == flood("198.18.0.200")


def test_node_removal_drops_its_entries() -> None:
    vms = [
        vm("pg-0", "c", "0a:00:00:00:00:01"),
        vm("pg-1", "b", "0a:00:00:00:00:02", ip="198.19.0.11"),
    ]
    before = desired_state(CFG, UL4, NODES, vms)
    after = desired_state(CFG, UL4, NODES[:2], vms)
    assert after.fdb == flood("198.18.0.2") | {FdbEntry("0a:00:00:00:00:02", "198.18.0.2")}
    plan = diff_fdb(after.fdb, before.fdb, before.fdb)
    assert not plan.add and not plan.replace
    assert set(plan.remove) == {
        FdbEntry(ZERO_MAC, "198.18.0.3"),
        FdbEntry("0a:00:00:00:00:01", "198.18.0.3"),
    }
    assert any("pg-0" in p and "no known VTEP" in p for p in after.problems)


def test_vm_migration_moves_mac_entry_and_arrival_here_removes_it() -> None:
    mac = "0a:00:00:00:00:01"
    on_b = desired_state(CFG, UL4, NODES, [vm("pg-0", "b", mac)])
    on_c = desired_state(CFG, UL4, NODES, [vm("pg-0", "c", mac)])
    here = desired_state(CFG, UL4, NODES, [vm("pg-0", "a", mac)])
    assert FdbEntry(mac, "198.18.0.2") in on_b.fdb and FdbEntry(mac, "198.18.0.3") in on_c.fdb
    plan = diff_fdb(on_c.fdb, on_b.fdb, on_b.fdb)
    assert plan.replace == ((FdbEntry(mac, "198.18.0.2"), FdbEntry(mac, "198.18.0.3")),)
    assert not plan.add and not plan.remove
    assert not any(e.mac == mac for e in here.fdb)
    assert [v.vm for v in here.local_vms] == ["db/pg-0"]
    moves = placement_changes(on_b, on_c)
    assert [(m.vm, m.old_vtep, m.new_vtep, m.old_node, m.new_node) for m in moves] == [
        ("db/pg-0", "198.18.0.2", "198.18.0.3", "b", "c")
    ]
    arrival = placement_changes(on_c, here)
    assert arrival[0].new_node == "a" and arrival[0].new_vtep == "198.18.0.1"


def test_ipv6_underlay_and_family_mismatch() -> None:
    nodes = [node("a", "fd00:18::1"), node("b", "fd00:18:0:0::2"), node("c", "198.18.0.3")]
    d = desired_state(CFG, UL6, nodes, [vm("pg-0", "b", "0a:00:00:00:00:01", ip="fd00:19::5")])
    assert d.fdb == {FdbEntry(ZERO_MAC, "fd00:18::2"), FdbEntry("0a:00:00:00:00:01", "fd00:18::2")}
    assert d.device.local == "fd00:18::1" and d.device.mtu == 1430
    assert any("node c" in p and "IPv4" in p for p in d.problems)


def test_vms_without_network_or_node_or_stopped_are_skipped() -> None:
    vms = [
        vm("no-net", "b", None),
        vm("no-node", None, "0a:00:00:00:00:01"),
        vm("stopped", "b", "0a:00:00:00:00:02", phase="Stopped"),
        vm("ghost-node", "zz", "0a:00:00:00:00:03"),
        vm("ok", "b", "0A:00:00:00:00:04"),
    ]
    d = desired_state(CFG, UL4, NODES, vms)
    assert {e for e in d.fdb if e.kind == "vm"} == {FdbEntry("0a:00:00:00:00:04", "198.18.0.2")}
    assert len(d.problems) == 1 and "ghost-node" in d.problems[0]


def test_duplicate_mac_reported_and_not_ready_nodes_kept() -> None:
    nodes = [NODES[0], node("b", "198.18.0.2", ready=False), NODES[2]]
    vms = [vm("x", "b", "0a:00:00:00:00:01"), vm("y", "c", "0a:00:00:00:00:01")]
    d = desired_state(CFG, UL4, nodes, vms)
    assert FdbEntry(ZERO_MAC, "198.18.0.2") in d.fdb
    assert [p.ready for p in d.peers] == [False, True]
    assert {e for e in d.fdb if e.kind == "vm"} == {FdbEntry("0a:00:00:00:00:01", "198.18.0.2")}
    assert any("db/y" in p and "already used" in p for p in d.problems)


def test_node_without_address_reported() -> None:
    d = desired_state(CFG, UL4, [*NODES, node("d", None)], [])
    assert d.fdb == flood("198.18.0.2", "198.18.0.3")
    assert any("node d" in p for p in d.problems)


def test_neighbours_only_where_bridge_has_the_subnet() -> None:
    vms = [vm("pg-0", "b", "0a:00:00:00:00:01", ip="198.19.0.10")]
    assert desired_state(CFG, UL4, NODES, vms).neighbours == frozenset()
    d = desired_state(CFG, UL4, NODES, vms, bridge_networks=["198.19.0.0/16"])
    assert d.neighbours == {NeighEntry("198.19.0.10", "0a:00:00:00:00:01")}


def spec(**kw: Any) -> VxlanSpec:
    base: dict[str, Any] = dict(
        name="vmo-vx0",
        vni=4242,
        port=4789,
        local="198.18.0.1",
        mtu=1450,
        learning=False,
        master="vmo-br0",
    )
    base.update(kw)
    return VxlanSpec(**base)


def test_device_diff_is_readable_and_knows_what_is_in_place() -> None:
    assert diff_device(spec(), spec()) == []
    diffs = diff_device(
        spec(), spec(vni=1, port=8472, local="198.18.0.9", mtu=1500, learning=True, master=None)
    )
    assert [str(d) for d in diffs] == [
        "vni 1 vs 4242",
        "port 8472 vs 4789",
        "local 198.18.0.9 vs 198.18.0.1",
        "mtu 1500 vs 1450",
        "learning on vs off",
        "master none vs vmo-br0",
    ]
    assert [d.in_place for d in diffs] == [False, False, True, True, True, True]
    (family,) = diff_device(spec(), spec(local="fd00::1"))
    assert not family.in_place


def test_fdb_diff_never_removes_what_is_not_ours() -> None:
    foreign = FdbEntry("02:00:00:00:00:99", "198.18.0.50")
    stray_flood = FdbEntry(ZERO_MAC, "198.18.0.99")
    ours_stale = FdbEntry("0a:00:00:00:00:07", "198.18.0.3")
    wanted = flood("198.18.0.2")
    actual = {foreign, stray_flood, ours_stale, *flood("198.18.0.2")}
    plan = diff_fdb(wanted, actual, owned={ours_stale})
    assert set(plan.remove) == {stray_flood, ours_stale}
    assert not plan.add and not plan.replace
    assert not diff_fdb(wanted, wanted, set())


def test_fdb_diff_claims_a_wanted_mac_with_several_remotes() -> None:
    mac = "0a:00:00:00:00:01"
    actual = {FdbEntry(mac, "198.18.0.7"), FdbEntry(mac, "198.18.0.8")}
    plan = diff_fdb({FdbEntry(mac, "198.18.0.2")}, actual, set())
    assert plan.replace == ((FdbEntry(mac, "198.18.0.7"), FdbEntry(mac, "198.18.0.2")),)
    assert plan.remove == (FdbEntry(mac, "198.18.0.8"),)


def test_neighbour_diff() -> None:
    old = NeighEntry("198.19.0.10", "0a:00:00:00:00:01")
    new = NeighEntry("198.19.0.10", "0a:00:00:00:00:02")
    foreign = NeighEntry("198.19.0.77", "02:00:00:00:00:77")
    plan = diff_neighbours({new}, {old, foreign}, owned={old})
    assert plan.add == (new,) and plan.remove == ()
    plan = diff_neighbours(set(), {old, foreign}, owned={old})
    assert plan.remove == (old,)
