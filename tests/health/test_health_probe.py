"""Peer probes: addresses, packets, and rounds across a real overlay in namespaces.

Scenarios:
- probe addresses: the annotation wins; else pool + VTEP low bits; network/broadcast refused;
  two nodes on one address reported; the local node is not a target;
- echo request checksum and reply parsing;
- the probe address is put on the bridge once, an old pool address replaced;
- three nodes on a fabric bridge, overlay built with `ip`: every peer reachable with full-size
  frames; a probe one byte over the overlay MTU fails at once with "message too long"; lowering one node's underlay MTU makes full-size probes to it fail (reachable, MTU
  lost); dropping VXLAN UDP on one node's underlay makes it unreachable; after both faults are
  removed the very next round is healthy again (no cached path MTU);
- metrics vmoverlay_peer_{reachable,rtt_seconds,mtu_ok}{node,peer} follow the results.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from prometheus_client import CollectorRegistry
from pyroute2 import IPRoute
from pyroute2 import netns as pyr_netns

from e2e.netns import RunNamespaces
from vmoverlay import api
from vxlan_manager.desired import ZERO_MAC
from vxlan_manager.health.findings import ProbeResult
from vxlan_manager.health.probe import (
    IcmpProber,
    Prober,
    Target,
    checksum,
    echo_request,
    ensure_probe_address,
    parse_echo_reply,
    probe_address,
    probe_targets,
)

T = TypeVar("T")
POOL = "198.18.255.0/24"


def node(name: str, ip: str | None, probe_ip: str | None = None) -> api.Node:
    return api.Node(name, ip, True, probe_ip=probe_ip, internal_ip=ip)


def test_probe_address_rules() -> None:
    assert probe_address(node("a", "198.18.0.7")) == "198.18.255.7"
    assert probe_address(node("a", "198.18.0.7", "198.18.254.1")) == "198.18.254.1"
    assert probe_address(node("a", "10.1.2.0")) is None  # the pool's network address
    assert probe_address(node("a", "198.18.0.255")) is None  # its broadcast address
    assert probe_address(node("a", None)) is None
    assert probe_address(node("a", "198.18.1.9"), "198.18.200.0/22") == "198.18.201.9"


def test_probe_targets_skip_self_and_report_clashes() -> None:
    nodes = [node("a", "198.18.0.1"), node("b", "198.18.0.2"), node("c", "198.18.1.2")]
    nodes.append(node("d", None))
    targets, problems = probe_targets("a", nodes, POOL)
    assert targets == [Target("b", "198.18.255.2")]
    assert len(problems) == 2
    assert "b and c share probe address 198.18.255.2" in problems[0]
    assert "node d has no probe address" in problems[1]


def test_echo_request_and_reply() -> None:
    packet = echo_request(0x1234, 7, 1450)
    assert len(packet) == 1450 - 20
    assert checksum(packet) == 0  # a correct checksum sums to zero
    ip_header = bytes([0x45]) + bytes(11) + bytes([198, 18, 255, 2]) + bytes(4)
    reply = ip_header + bytes([0]) + packet[1:]
    assert parse_echo_reply(reply) == ("198.18.255.2", 0x1234, 7)
    assert parse_echo_reply(ip_header + packet) is None  # a request, not a reply


# ---- in namespaces -------------------------------------------------------------------


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has entered ``ns`` (setns is per thread)."""
    out: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            pyr_netns.setns(ns, flags=0)
            out.append(fn())
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


class Fabric:
    """Three nodes n1..n3 (VTEP 198.18.0.1..3) on a fabric bridge, overlay built with `ip`."""

    def __init__(self, run: RunNamespaces) -> None:
        self.run = run
        self.fabric = run.add("pf")
        run.check(self.fabric, ["ip", "link", "add", "sw0", "type", "bridge"])
        run.check(self.fabric, ["ip", "link", "set", "sw0", "up"])
        self.ns = {}
        for i in (1, 2, 3):
            self.ns[f"n{i}"] = self._node(i)
        self.nodes = [node(f"n{i}", f"198.18.0.{i}") for i in (1, 2, 3)]

    def _node(self, i: int) -> str:
        ns = self.run.add(f"pn{i}")
        ip = ["ip", "-n", ns]
        self.run.check(
            self.fabric, ["ip", "link", "add", f"p{i}", "type", "veth", "peer", "eth0", "netns", ns]
        )
        self.run.check(self.fabric, ["ip", "link", "set", f"p{i}", "master", "sw0", "up"])
        cmds = [
            ["addr", "add", f"198.18.0.{i}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "add", "vmo-br0", "mtu", "1450", "type", "bridge"],
            ["link", "set", "vmo-br0", "up"],
            ["link", "add", "vmo-vx0", "mtu", "1450", "type", "vxlan", "id", "4242", "dstport",
             "4789", "local", f"198.18.0.{i}", "nolearning"],
            ["link", "set", "vmo-vx0", "master", "vmo-br0", "up"],
        ]  # fmt: skip
        for cmd in cmds:
            self.run.check(self.fabric, [*ip, *cmd])
        for j in (1, 2, 3):
            if j != i:
                fdb = ["bridge", "-n", ns, "fdb", "append", ZERO_MAC, "dev", "vmo-vx0"]
                self.run.check(self.fabric, [*fdb, "dst", f"198.18.0.{j}"])
        with IPRoute(netns=ns) as ipr:
            assert ensure_probe_address(ipr, "vmo-br0", f"198.18.255.{i}", POOL)
        return ns

    def prober(self, name: str, registry: CollectorRegistry | None = None) -> Prober:
        return Prober(
            name,
            bridge="vmo-br0",
            nodes=lambda: self.nodes,
            mtu=lambda: 1450,
            registry=registry,
            pool=POOL,
            period=1.0,
            timeout=0.5,
        )

    def round(self, name: str, prober: Prober | None = None) -> dict[str, ProbeResult]:
        p = prober or self.prober(name)

        def one() -> list[ProbeResult]:
            icmp = IcmpProber(source=p._prepare())
            try:
                return p.run_round(icmp)
            finally:
                icmp.close()

        return {r.peer: r for r in in_netns(self.ns[name], one)}


@pytest.fixture
def fabric(netns: RunNamespaces) -> Iterator[Fabric]:
    yield Fabric(netns)


def test_probe_address_on_bridge_is_idempotent(fabric: Fabric) -> None:
    with IPRoute(netns=fabric.ns["n1"]) as ipr:
        assert ensure_probe_address(ipr, "vmo-br0", "198.18.255.1", POOL)
        assert ensure_probe_address(ipr, "vmo-br0", "198.18.255.9", POOL)
        index = ipr.link_lookup(ifname="vmo-br0")[0]
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)]
        assert addrs == ["198.18.255.9"]
        assert not ensure_probe_address(ipr, "no-such-br", "198.18.255.1", POOL)


def test_probe_rounds_see_faults_and_recover(fabric: Fabric) -> None:
    registry = CollectorRegistry()
    prober = fabric.prober("n1", registry)
    healthy = fabric.round("n1", prober)
    assert sorted(healthy) == ["n2", "n3"]
    for r in healthy.values():
        assert (r.reachable, r.mtu_ok, r.probe_size, r.error) == (True, True, 1450, None)
        assert r.rtt_seconds is not None and 0 < r.rtt_seconds < 0.5
    assert registry.get_sample_value("vmoverlay_peer_mtu_ok", {"node": "n1", "peer": "n3"}) == 1

    # One byte over the overlay MTU fails at once, locally, with "message too long" (C12).
    def oversize() -> list[ProbeResult]:
        icmp = IcmpProber(source="198.18.255.1")
        try:
            return icmp.round([Target("n2", "198.18.255.2")], mtu=1451, node="n1", timeout=0.5)
        finally:
            icmp.close()

    over = in_netns(fabric.ns["n1"], oversize)[0]
    assert (over.reachable, over.mtu_ok) == (True, False)
    assert "Message too long" in (over.error or "")

    # Lower n3's underlay: full-size frames toward it are dropped, small ones pass.
    fabric.run.check(fabric.ns["n3"], ["ip", "link", "set", "eth0", "mtu", "1400"])
    r = fabric.round("n1", prober)["n3"]
    assert (r.reachable, r.mtu_ok) == (True, False)
    assert "1450-byte" in (r.error or "")
    assert fabric.round("n1", prober)["n2"].mtu_ok is True
    assert registry.get_sample_value("vmoverlay_peer_mtu_ok", {"node": "n1", "peer": "n3"}) == 0

    # Drop VXLAN on n2's underlay: n2 is unreachable.
    nft = "add table inet vmo; add chain inet vmo in { type filter hook input priority 0; }; "
    nft += "add rule inet vmo in udp dport 4789 drop"
    fabric.run.check(fabric.ns["n2"], ["nft", nft])
    r = fabric.round("n1", prober)["n2"]
    assert (r.reachable, r.mtu_ok, r.rtt_seconds) == (False, None, None)
    assert registry.get_sample_value("vmoverlay_peer_reachable", {"node": "n1", "peer": "n2"}) == 0

    # Faults removed: the next round is healthy (no cached path MTU, no lingering state).
    fabric.run.check(fabric.ns["n3"], ["ip", "link", "set", "eth0", "mtu", "1500"])
    fabric.run.check(fabric.ns["n2"], ["nft", "delete table inet vmo"])
    again = fabric.round("n1", prober)
    assert [(r.reachable, r.mtu_ok) for r in again.values()] == [(True, True), (True, True)]
