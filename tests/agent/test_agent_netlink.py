"""Root tests of the kernel edge (netlink + dataplane) in real namespaces, without the API.

Scenarios:
- the dump wrapper retries interrupted dumps and gives up with a clear error (no root);
- three nodes: devices with VNI/port/local/MTU/learning/master as configured, a flood
  entry toward every other node, traffic between VM namespaces on different nodes;
- C12 MTU: 1500 IPv4 underlay -> 1450 on VXLAN, bridge and bridge ports; a 1422-byte DF
  ping crosses nodes, 1423 fails at once with "message too long"; IPv6 underlay -> 1430;
  9000 -> 8950; a configured 1400 is applied everywhere; an 8 MiB TCP transfer crosses;
- neighbour entries: with an address on the bridge, remote VMs get permanent entries,
  removed when the VM moves here;
- C09 ownership: a stray flood entry toward a non-node is removed at resync, an entry
  someone else made on our device stays, entries on flannel.1 are never touched;
  a node's address change moves its entries (exactly one set);
- C10 collisions: VNI 1 / port 8472 beside a flannel.1-like device refused naming it,
  nothing created; another VNI on 8472 works and both overlays carry traffic; a port
  change recreates our device and it comes up; an external-mode device on our port is
  refused before set-up; flannel.1 keeps ifindex and settings throughout;
- C11 drift: wrong VNI, port, local address, MTU, learning, master are each reported by
  attribute and repaired (in place where the kernel allows, else recreated); a correct
  device keeps its ifindex; two agents ensuring at once both succeed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_DUMP_INTR

from e2e.netns import RunNamespaces
from vmoverlay import api
from vxlan_manager.config import AgentConfig, Underlay
from vxlan_manager.dataplane import Dataplane
from vxlan_manager.desired import ZERO_MAC, DesiredState, desired_state
from vxlan_manager.netlink import Collision, Kernel, NetlinkFailure, dump

from .topo import Fabric, NodeNs, add_flannel_like, fdb, link_json, ping, tcp_transfer, vxlan_info

pytestmark = pytest.mark.root


class Msg(dict[str, Any]):
    pass


def test_dump_retries_interrupted_dumps() -> None:
    calls = {"n": 0}

    def flaky() -> list[Msg]:
        calls["n"] += 1
        flags = NLM_F_DUMP_INTR if calls["n"] < 3 else 0
        return [Msg(header={"flags": flags})]

    assert len(dump(flaky, what="test")) == 1 and calls["n"] == 3
    with pytest.raises(NetlinkFailure, match="failed to dump always: interrupted 5 times"):
        dump(lambda: [Msg(header={"flags": NLM_F_DUMP_INTR})], what="always")


def nodes_of(fab: Fabric, *, v6: bool = False) -> list[api.Node]:
    out = []
    for n in fab.nodes:
        addr = n.ip6 if v6 else n.ip
        out.append(
            api.Node.from_obj(
                {
                    "metadata": {"name": n.name},
                    "status": {"addresses": [{"type": "InternalIP", "address": addr}]},
                }
            )
        )
    return out


class NodeAgent:
    """The dataplane half of an agent, driven in-process through a namespaced IPRoute."""

    def __init__(self, node: NodeNs, tmp: Path, cfg: AgentConfig | None = None) -> None:
        self.node = node
        self.cfg = cfg or AgentConfig(node=node.name, state_dir=str(tmp))
        self.ipr = IPRoute(netns=node.ns)
        self.kernel = Kernel(self.ipr)
        self.dp = Dataplane(self.kernel, state_file=self.cfg.state_file)

    def desired(
        self,
        nodes: list[api.Node],
        vms: Sequence[api.VirtualMachine] = (),
        *,
        mtu: int = 1450,
        v6: bool = False,
    ) -> DesiredState:
        addr = self.node.ip6 if v6 else self.node.ip
        assert addr
        ul = Underlay(addr, "eth0", 6 if v6 else 4, mtu + (70 if v6 else 50), self.cfg.mtu or mtu)
        return desired_state(
            self.cfg, ul, nodes, list(vms), bridge_networks=self.dp.bridge_networks
        )

    def sync(
        self,
        nodes: list[api.Node],
        vms: Sequence[api.VirtualMachine] = (),
        *,
        full: bool = True,
        **kw: Any,
    ) -> Any:
        return self.dp.sync(self.desired(nodes, vms, **kw), full=full)

    def close(self) -> None:
        self.ipr.close()


@pytest.fixture
def fabric3(netns: RunNamespaces, tmp_path: Path) -> Iterator[tuple[Fabric, list[NodeAgent]]]:
    fab = Fabric(netns)
    for i, name in enumerate(("na", "nb", "nc"), start=1):
        fab.add_node(name, i)
    agents = [NodeAgent(n, tmp_path / n.name) for n in fab.nodes]
    try:
        yield fab, agents
    finally:
        for a in agents:
            a.close()


def test_devices_flood_entries_and_traffic(fabric3: tuple[Fabric, list[NodeAgent]]) -> None:
    fab, agents = fabric3
    run = fab.run
    nodes = nodes_of(fab)
    for a in agents:
        a.sync(nodes)
    for a in agents:
        info = vxlan_info(run, a.node.ns, "vmo-vx0")
        assert (info["vni"], info["port"], info["local"], info["mtu"]) == (
            4242,
            4789,
            a.node.ip,
            1450,
        )
        assert info["learning"] is False and info["master"] == "vmo-br0" and info["up"]
        br = link_json(run, a.node.ns, "vmo-br0")
        assert br is not None and br["mtu"] == 1450 and "UP" in br["flags"]
        others = {n.ip for n in fab.nodes if n is not a.node}
        assert fdb(run, a.node.ns) == {(ZERO_MAC, ip) for ip in others}

    vm1 = fab.add_vm(fab.nodes[0], "v1", "198.19.0.1", mac="0a:00:00:00:01:01", mtu=1500)
    vm2 = fab.add_vm(fab.nodes[1], "v2", "198.19.0.2", mac="0a:00:00:00:01:02", mtu=1450)
    agents[0].sync(nodes)  # resync gives the new bridge port the overlay MTU
    assert link_json(run, fab.nodes[0].ns, "p-v1")["mtu"] == 1450  # type: ignore[index]
    run.check(vm1, ["ip", "link", "set", "eth0", "mtu", "1450"])  # the CNI's part, inside the VM
    assert ping(run, vm1, "198.19.0.2", count=2).returncode == 0

    # C12: 1422 + 28 = 1450 crosses with DF; 1423 fails at once, locally.
    assert ping(run, vm1, "198.19.0.2", size=1422, df=True).returncode == 0
    too_big = ping(run, vm2, "198.19.0.1", size=1423, df=True)
    assert too_big.returncode != 0
    assert "message too long" in (too_big.stdout + too_big.stderr).lower()


def test_vm_entries_follow_migration_and_node_address_change(
    fabric3: tuple[Fabric, list[NodeAgent]],
) -> None:
    fab, agents = fabric3
    run = fab.run
    nodes = nodes_of(fab)
    a = agents[0]
    mac = "0a:00:00:00:02:01"

    def vm_on(node: str) -> api.VirtualMachine:
        return api.VirtualMachine.from_obj(
            {
                "metadata": {"namespace": "db", "name": "pg-0", "uid": "u1"},
                "status": {
                    "node": node,
                    "network": {"ip": "198.19.0.9", "prefix": 16, "mac": mac, "pool": "p"},
                },
            }
        )

    a.sync(nodes, [vm_on("nb")])
    assert (mac, fab.nodes[1].ip) in fdb(run, a.node.ns)
    ifindex = vxlan_info(run, a.node.ns, "vmo-vx0")["ifindex"]
    res = a.sync(nodes, [vm_on("nc")], full=False)
    assert [(o.dst, n.dst) for o, n in res.fdb.replace] == [(fab.nodes[1].ip, fab.nodes[2].ip)]
    assert {e for e in fdb(run, a.node.ns) if e[0] == mac} == {(mac, fab.nodes[2].ip)}
    a.sync(nodes, [vm_on("na")], full=False)
    assert not any(e[0] == mac for e in fdb(run, a.node.ns))

    moved = [
        *nodes[:2],
        api.Node.from_obj(
            {
                "metadata": {"name": "nc"},
                "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.99"}]},
            }
        ),
    ]
    a.sync(moved, [vm_on("nc")], full=False)
    assert fdb(run, a.node.ns) == {
        (ZERO_MAC, fab.nodes[1].ip),
        (ZERO_MAC, "198.18.0.99"),
        (mac, "198.18.0.99"),
    }
    assert vxlan_info(run, a.node.ns, "vmo-vx0")["ifindex"] == ifindex


def test_ownership_stray_foreign_and_flannel_entries(
    fabric3: tuple[Fabric, list[NodeAgent]], tmp_path: Path
) -> None:
    fab, agents = fabric3
    run = fab.run
    a = agents[0]
    ns = a.node.ns
    nodes = nodes_of(fab)
    add_flannel_like(run, ns, a.node.ip, "nolearning")
    run.check(ns, ["bridge", "fdb", "append", ZERO_MAC, "dev", "flannel.1", "dst", "198.18.0.77"])
    run.check(
        ns,
        ["bridge", "fdb", "append", "02:00:00:00:00:77", "dev", "flannel.1", "dst", "198.18.0.77"],
    )
    flannel_before = fdb(run, ns, "flannel.1")
    a.sync(nodes)
    run.check(ns, ["bridge", "fdb", "append", ZERO_MAC, "dev", "vmo-vx0", "dst", "198.18.0.250"])
    run.check(
        ns, ["bridge", "fdb", "append", "02:00:00:00:00:55", "dev", "vmo-vx0", "dst", "198.18.0.55"]
    )
    res = a.sync(nodes)
    assert [str(e) for e in res.fdb.remove] == [f"{ZERO_MAC} -> 198.18.0.250"]
    entries = fdb(run, ns)
    assert ("02:00:00:00:00:55", "198.18.0.55") in entries
    assert (ZERO_MAC, "198.18.0.250") not in entries
    assert fdb(run, ns, "flannel.1") == flannel_before
    # Restart: a new dataplane reads the state file and changes nothing.
    again = NodeAgent(a.node, tmp_path / a.node.name)
    try:
        assert not again.sync(nodes).changed
    finally:
        again.close()


def flannel_snapshot(run: RunNamespaces, ns: str) -> dict[str, Any]:
    link = link_json(run, ns, "flannel.1")
    assert link is not None
    return {
        "ifindex": link["ifindex"],
        "mtu": link["mtu"],
        "data": link["linkinfo"]["info_data"],
        "flags": link["flags"],
    }


def add_flannel(run: RunNamespaces, node: NodeNs) -> None:
    add_flannel_like(run, node.ns, node.ip, "dev", "eth0", "nolearning")
    run.check(node.ns, ["ip", "link", "set", "flannel.1", "up"])


def test_collisions_with_flannel(fabric3: tuple[Fabric, list[NodeAgent]], tmp_path: Path) -> None:
    fab, agents = fabric3
    run = fab.run
    nodes = nodes_of(fab)
    n1, n2 = fab.nodes[0], fab.nodes[1]
    for i, n in enumerate((n1, n2), start=1):
        add_flannel(run, n)
        run.check(n.ns, ["ip", "addr", "add", f"198.18.200.{i}/24", "dev", "flannel.1"])
        other = n2 if n is n1 else n1
        run.check(n.ns, ["bridge", "fdb", "append", ZERO_MAC, "dev", "flannel.1", "dst", other.ip])
    before = flannel_snapshot(run, n1.ns)

    clash = NodeAgent(
        n1,
        tmp_path / "clash",
        AgentConfig(node="na", vni=1, port=8472, state_dir=str(tmp_path / "clash")),
    )
    try:
        with pytest.raises(Collision, match="flannel.1"):
            clash.sync(nodes)
    finally:
        clash.close()
    assert link_json(run, n1.ns, "vmo-vx0") is None and link_json(run, n1.ns, "vmo-br0") is None

    same_port = [
        NodeAgent(
            n,
            tmp_path / f"sp-{n.name}",
            AgentConfig(node=n.name, vni=4242, port=8472, state_dir=str(tmp_path / f"sp-{n.name}")),
        )
        for n in (n1, n2)
    ]
    try:
        for a in same_port:
            a.sync(nodes)
        vm1 = fab.add_vm(n1, "c1", "198.19.0.1", mac="0a:00:00:00:03:01", mtu=1450)
        fab.add_vm(n2, "c2", "198.19.0.2", mac="0a:00:00:00:03:02", mtu=1450)
        assert ping(run, vm1, "198.19.0.2").returncode == 0
        assert ping(run, n1.ns, "198.18.200.2").returncode == 0  # flannel's overlay too
        old = vxlan_info(run, n1.ns, "vmo-vx0")
        moved = NodeAgent(
            n1,
            tmp_path / f"sp-{n1.name}",
            AgentConfig(node="na", port=4789, state_dir=str(tmp_path / f"sp-{n1.name}")),
        )
        try:
            res = moved.sync(nodes)
            assert [d.attribute for d in res.device_repairs] == ["port"]
        finally:
            moved.close()
        new = vxlan_info(run, n1.ns, "vmo-vx0")
        assert (
            new["port"] == 4789
            and new["up"]
            and new["ifindex"] != old["ifindex"]
            and new["master"] == "vmo-br0"
        )
        assert (ZERO_MAC, n2.ip) in fdb(run, n1.ns)
    finally:
        for a in same_port:
            a.close()
    assert flannel_snapshot(run, n1.ns) == before

    # An external-mode device on our port: the kernel would only refuse at set-up.
    n3 = fab.nodes[2]
    run.check(n3.ns, ["ip", "link", "add", "ext0", "type", "vxlan", "external", "dstport", "4789"])
    run.check(n3.ns, ["ip", "link", "set", "ext0", "up"])
    ext = NodeAgent(n3, tmp_path / "ext")
    try:
        with pytest.raises(Collision, match="ext0 uses UDP port 4789 in external"):
            ext.sync(nodes)
    finally:
        ext.close()
    assert link_json(run, n3.ns, "vmo-vx0") is None


@pytest.mark.parametrize(
    ("create", "attribute", "in_place"),
    [
        (["id", "7", "dstport", "4789", "local", "LOCAL", "nolearning"], "vni", False),
        (["id", "4242", "dstport", "4790", "local", "LOCAL", "nolearning"], "port", False),
        (["id", "4242", "dstport", "4789", "local", "198.18.0.250", "nolearning"], "local", True),
        (["id", "4242", "dstport", "4789", "local", "LOCAL", "nolearning", "MTU"], "mtu", True),
        (["id", "4242", "dstport", "4789", "local", "LOCAL", "learning"], "learning", True),
        (
            ["id", "4242", "dstport", "4789", "local", "LOCAL", "nolearning", "NOMASTER"],
            "master",
            True,
        ),
    ],
)
def test_drift_repaired(
    netns: RunNamespaces,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    create: list[str],
    attribute: str,
    in_place: bool,
) -> None:
    fab = Fabric(netns)
    n1 = fab.add_node("na", 1)
    fab.add_node("nb", 2)
    args = [a.replace("LOCAL", n1.ip) for a in create if a not in ("MTU", "NOMASTER")]
    netns.check(n1.ns, ["ip", "link", "add", "vmo-br0", "type", "bridge"])
    netns.check(
        n1.ns,
        [
            "ip",
            "link",
            "add",
            "vmo-vx0",
            "mtu",
            "1300" if "MTU" in create else "1450",
            "type",
            "vxlan",
            *args,
        ],
    )
    if "NOMASTER" not in create:
        netns.check(n1.ns, ["ip", "link", "set", "vmo-vx0", "master", "vmo-br0"])
    before = vxlan_info(netns, n1.ns, "vmo-vx0")["ifindex"]
    agent = NodeAgent(n1, tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="vmoverlay.vxlan-manager"):
            res = agent.sync(nodes_of(fab))
        assert [d.attribute for d in res.device_repairs] == [attribute]
        drift = [
            r
            for r in caplog.records
            if r.getMessage() == "device drift, repairing" and r.vmo_fields["device"] == "vmo-vx0"  # type: ignore[attr-defined]
        ]
        assert [r.vmo_fields["attribute"] for r in drift] == [attribute]  # type: ignore[attr-defined]
        info = vxlan_info(netns, n1.ns, "vmo-vx0")
        assert (
            info["vni"],
            info["port"],
            info["local"],
            info["mtu"],
            info["learning"],
            info["master"],
        ) == (4242, 4789, n1.ip, 1450, False, "vmo-br0")
        assert info["up"]
        assert (info["ifindex"] == before) is in_place
        assert fdb(netns, n1.ns) == {(ZERO_MAC, fab.nodes[1].ip)}
        assert not agent.sync(nodes_of(fab)).changed  # correct now: nothing touched
        assert vxlan_info(netns, n1.ns, "vmo-vx0")["ifindex"] == info["ifindex"]
    finally:
        agent.close()


def test_two_agents_at_once(netns: RunNamespaces, tmp_path: Path) -> None:
    fab = Fabric(netns)
    n1 = fab.add_node("na", 1)
    fab.add_node("nb", 2)
    nodes = nodes_of(fab)
    agents = [NodeAgent(n1, tmp_path / str(i)) for i in range(2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def go(a: NodeAgent) -> None:
        try:
            barrier.wait()
            a.sync(nodes)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a in agents:
        a.close()
    assert errors == []
    assert fdb(netns, n1.ns) == {(ZERO_MAC, fab.nodes[1].ip)}


def test_neighbour_entries_where_useful(fabric3: tuple[Fabric, list[NodeAgent]]) -> None:
    fab, agents = fabric3
    run = fab.run
    a = agents[0]
    nodes = nodes_of(fab)
    a.sync(nodes)
    run.check(a.node.ns, ["ip", "addr", "add", "198.19.255.1/16", "dev", "vmo-br0"])
    run.check(
        a.node.ns,
        [
            "ip",
            "neigh",
            "replace",
            "198.19.9.9",
            "lladdr",
            "02:00:00:00:09:09",
            "dev",
            "vmo-br0",
            "nud",
            "permanent",
        ],
    )
    vm = api.VirtualMachine.from_obj(
        {
            "metadata": {"namespace": "db", "name": "pg-0", "uid": "u"},
            "status": {
                "node": "nb",
                "network": {
                    "ip": "198.19.0.9",
                    "prefix": 16,
                    "mac": "0a:00:00:00:05:01",
                    "pool": "p",
                },
            },
        }
    )
    a.sync(nodes, [vm])  # full: learns the bridge's networks
    a.sync(nodes, [vm])

    def neigh() -> str:
        return run.check(a.node.ns, ["ip", "neigh", "show", "dev", "vmo-br0", "nud", "permanent"])

    assert "198.19.0.9 lladdr 0a:00:00:00:05:01" in neigh()
    here = api.VirtualMachine.from_obj(
        {
            "metadata": {"namespace": "db", "name": "pg-0", "uid": "u"},
            "status": {
                "node": "na",
                "network": {
                    "ip": "198.19.0.9",
                    "prefix": 16,
                    "mac": "0a:00:00:00:05:01",
                    "pool": "p",
                },
            },
        }
    )
    a.sync(nodes, [here], full=False)
    assert "198.19.0.9" not in neigh()
    assert "198.19.9.9 lladdr 02:00:00:00:09:09" in neigh()  # someone else's entry stays


@pytest.mark.parametrize(
    ("underlay_mtu", "v6", "configured", "want"),
    [(1500, True, None, 1430), (9000, False, None, 8950), (1500, False, 1400, 1400)],
)
def test_mtu_rules(
    netns: RunNamespaces,
    tmp_path: Path,
    underlay_mtu: int,
    v6: bool,
    configured: int | None,
    want: int,
) -> None:
    fab = Fabric(netns)
    n1 = fab.add_node("na", 1, mtu=underlay_mtu, ipv6=v6)
    n2 = fab.add_node("nb", 2, mtu=underlay_mtu, ipv6=v6)
    cfgs = [
        AgentConfig(node=n.name, mtu=configured, state_dir=str(tmp_path / n.name)) for n in (n1, n2)
    ]
    agents = [NodeAgent(n, tmp_path, c) for n, c in zip((n1, n2), cfgs, strict=True)]
    try:
        overhead = 70 if v6 else 50
        for a in agents:
            a.sync(nodes_of(fab, v6=v6), mtu=underlay_mtu - overhead, v6=v6)
        info = vxlan_info(netns, n1.ns, "vmo-vx0")
        assert info["mtu"] == want and info["local"] == (n1.ip6 if v6 else n1.ip)
        assert link_json(netns, n1.ns, "vmo-br0")["mtu"] == want  # type: ignore[index]
        vm1 = fab.add_vm(n1, "m1", "198.19.0.1", mac="0a:00:00:00:04:01", mtu=want)
        vm2 = fab.add_vm(n2, "m2", "198.19.0.2", mac="0a:00:00:00:04:02", mtu=want)
        payload = want - 28
        assert ping(netns, vm1, "198.19.0.2", size=payload, df=True, count=2).returncode == 0
        err = ping(netns, vm1, "198.19.0.2", size=payload + 1, df=True)
        assert err.returncode != 0 and "message too long" in (err.stdout + err.stderr).lower()
        # A large transfer crosses in full-size segments.
        assert tcp_transfer(netns, vm2, vm1, "198.19.0.2", 8 << 20) == 8 << 20
    finally:
        for a in agents:
            a.close()
