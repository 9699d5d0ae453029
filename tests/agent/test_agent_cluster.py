"""Root integration tests: one real agent process per node namespace against the lab API.

Scenarios:
- three nodes: every agent becomes ready; devices with VNI/port/MTU; every node has a
  flood entry for every other; VM records on other nodes become MAC entries; traffic
  between VM namespaces on different nodes flows; /status and /metrics report peers;
- C09: delete node C: entries toward C's VTEP vanish on A and B within one second;
  re-add C with a new address: exactly one set of entries for C, at the new address;
  a stray flood entry toward a non-node goes at the next resync; flannel.1's entries and
  settings are never touched; one log line per change with old and new VTEP;
- migration: a VM record moving B -> C moves A's entry at once; its port moving to A with
  the record: A unlearns the VM's old location behind VXLAN, announces it (5 GARP rounds
  counted) and B's bridge learns it via VXLAN;
- C10 (process level): VNI 1 / port 8472 beside flannel.1 exits with code 3 naming
  flannel.1 and creates nothing;
- C11 restarts: kill -9 / SIGTERM the agent five times while a VM pings across nodes:
  same ifindex, no FDB change seen by a netlink monitor, no lost probe; two agent
  processes started at once on one node both run without an "already exists" failure;
- API away: the lab API hangs (SIGSTOP), then goes down for 3 s and comes back: entries
  stay, the watches retry and relist, a change made after it returns is applied;
- teardown (CLI, in a node namespace) removes only the agent's devices and state.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.netns import RunNamespaces
from vxlan_manager.desired import ZERO_MAC

from .cluster import BIN, Cluster
from .topo import add_flannel_like, fdb, link_json, ping, vxlan_info, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

MAC1, MAC2 = "0a:00:00:00:10:01", "0a:00:00:00:10:02"


@pytest.fixture
def cluster(netns: RunNamespaces, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(netns, tmp_path)
    try:
        for name, n in c.nodes.items():
            c.put_node(name, n.ip)
        yield c
    finally:
        c.close()


def start_all(c: Cluster, *extra: str) -> None:
    for name in c.nodes:
        c.start_agent(name, *extra)
    c.wait_ready(*c.nodes)


def test_three_nodes_entries_traffic_and_node_departure(cluster: Cluster) -> None:
    c = cluster
    run = c.run
    na, nb, nc = c.nodes["na"], c.nodes["nb"], c.nodes["nc"]
    add_flannel_like(run, na.ns, na.ip, "nolearning")
    run.check(na.ns, ["bridge", "fdb", "append", ZERO_MAC, "dev", "flannel.1", "dst", nc.ip])
    flannel = (link_json(run, na.ns, "flannel.1"), fdb(run, na.ns, "flannel.1"))
    c.put_vm("pg-1", "na", ip="198.19.0.1", mac=MAC1)
    c.put_vm("pg-2", "nb", ip="198.19.0.2", mac=MAC2)
    start_all(c, "--resync-period", "1")

    for n in (na, nb, nc):
        info = vxlan_info(run, n.ns, "vmo-vx0")
        assert (info["vni"], info["port"], info["mtu"], info["local"], info["up"]) == (
            4242,
            4789,
            1450,
            n.ip,
            True,
        )
        others = {m.ip for m in (na, nb, nc) if m is not n}
        assert {d for m, d in fdb(run, n.ns) if m == ZERO_MAC} == others
    assert (MAC2, nb.ip) in fdb(run, na.ns) and (MAC1, na.ip) in fdb(run, nc.ns)
    assert not any(m == MAC1 for m, _ in fdb(run, na.ns))

    vm1 = c.fab.add_vm(na, "v1", "198.19.0.1", mac=MAC1, mtu=1450)
    c.fab.add_vm(nb, "v2", "198.19.0.2", mac=MAC2, mtu=1450)
    assert ping(run, vm1, "198.19.0.2", count=3).returncode == 0

    status = c.status("na")
    assert [p["node"] for p in status["peers"]] == ["nb", "nc"] and status["device"]["vni"] == 4242
    assert c.metric("na", "vmoverlay_agent_peers") == 2
    assert c.metric("na", 'vmoverlay_agent_fdb_entries{kind="vm"}') == 1

    # A VM record moves B -> C: A's entry follows at once.
    c.put_vm("pg-2", "nc", ip="198.19.0.2", mac=MAC2)
    wait_for(lambda: (MAC2, nc.ip) in fdb(run, na.ns), timeout=1.0, what="MAC entry moved to nc")
    assert {e for e in fdb(run, na.ns) if e[0] == MAC2} == {(MAC2, nc.ip)}

    # C09: node C deleted -> gone everywhere within a second of the API event.
    t0 = time.monotonic()
    c.delete_node("nc")
    for n in (na, nb):
        wait_for(
            lambda n=n: not any(d == nc.ip for _, d in fdb(run, n.ns)),
            timeout=1.0,
            what=f"nc entries gone on {n.name}",
        )
    assert time.monotonic() - t0 < 1.5
    # Re-added with a new address: exactly one set, at the new address.
    c.put_node("nc", "198.18.0.33")
    wait_for(lambda: (ZERO_MAC, "198.18.0.33") in fdb(run, na.ns), timeout=1.0, what="nc back")
    wait_for(
        lambda: (MAC2, "198.18.0.33") in fdb(run, na.ns),
        timeout=1.0,
        what="VM entry at nc's new address",
    )
    entries = fdb(run, na.ns)
    assert sum(1 for _, d in entries if d == "198.18.0.33") == 2
    assert not any(d == nc.ip for _, d in entries)

    # A stray flood entry toward a non-node is removed at the next resync (1 s here).
    run.check(na.ns, ["bridge", "fdb", "append", ZERO_MAC, "dev", "vmo-vx0", "dst", "198.18.0.250"])
    wait_for(
        lambda: (ZERO_MAC, "198.18.0.250") not in fdb(run, na.ns),
        timeout=3.0,
        what="stray entry removed",
    )
    assert (link_json(run, na.ns, "flannel.1"), fdb(run, na.ns, "flannel.1")) == flannel

    log = c.log("na")
    removed = [r for r in log if r["msg"] == "peer removed"]
    assert [(r["peer"], r["old_vtep"]) for r in removed] == [("nc", nc.ip)]
    moved = [r for r in log if r["msg"] == "VM placement changed" and r["vm"] == "db/pg-2"]
    assert (moved[0]["old_vtep"], moved[0]["new_vtep"]) == (nb.ip, nc.ip)


def test_migration_announces_arrival(cluster: Cluster) -> None:
    c = cluster
    run = c.run
    na, nb = c.nodes["na"], c.nodes["nb"]
    c.put_vm("pg-1", "nc", ip="198.19.0.1", mac=MAC1)
    c.put_vm("pg-2", "nb", ip="198.19.0.2", mac=MAC2)
    start_all(c)
    vm1 = c.fab.add_vm(c.nodes["nc"], "v1", "198.19.0.1", mac=MAC1, mtu=1450)
    vm2 = c.fab.add_vm(nb, "v2", "198.19.0.2", mac=MAC2, mtu=1450)
    assert ping(run, vm1, "198.19.0.2").returncode == 0

    def behind_vxlan(ns: str) -> bool:
        out = run.check(ns, ["bridge", "fdb", "show", "br", "vmo-br0"])
        return any(line.startswith(MAC2) and "dev vmo-vx0" in line for line in out.splitlines())

    assert behind_vxlan(na.ns)  # na's bridge learnt pg-2 behind VXLAN from its broadcasts
    # A migrating guest stays silent until it announces itself; no IPv6 chatter here.
    for key in ("all", "eth0"):
        run.check(vm2, ["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"])
    # Move pg-2's port from nb to na (the stop-and-copy switch-over), then its record.
    run.check(nb.ns, ["ip", "link", "set", "p-v2", "netns", na.ns])
    run.check(na.ns, ["ip", "link", "set", "p-v2", "master", "vmo-br0", "up"])
    c.put_vm("pg-2", "na", ip="198.19.0.2", mac=MAC2)

    wait_for(lambda: behind_vxlan(nb.ns), timeout=1.5, what="nb's bridge learns pg-2 behind VXLAN")
    wait_for(lambda: not behind_vxlan(na.ns), timeout=1.0, what="na unlearns pg-2's old location")
    wait_for(
        lambda: c.metric("na", "vmoverlay_agent_garp_sent_total") == 5,
        timeout=3,
        what="5 GARP rounds",
    )
    assert (MAC2, na.ip) in fdb(run, nb.ns)
    assert ping(run, vm1, "198.19.0.2").returncode == 0
    assert ping(run, vm2, "198.19.0.1").returncode == 0


def test_collision_refused_by_the_process(cluster: Cluster) -> None:
    c = cluster
    na = c.nodes["na"]
    add_flannel_like(c.run, na.ns, na.ip)
    before = link_json(c.run, na.ns, "flannel.1")
    proc = c.start_agent("na", "--vni", "1", "--port", "8472")
    assert proc.wait(timeout=20) == 3
    text = (c.tmp / "agent-na.log").read_text()
    assert "flannel.1" in text and "VNI 1 on UDP port 8472" in text
    assert link_json(c.run, na.ns, "vmo-vx0") is None and link_json(c.run, na.ns, "vmo-br0") is None
    assert link_json(c.run, na.ns, "flannel.1") == before
    c.agents.pop("na")


def test_restarts_keep_data_plane_untouched(cluster: Cluster) -> None:
    c = cluster
    run = c.run
    na, nb = c.nodes["na"], c.nodes["nb"]
    c.put_vm("pg-1", "na", ip="198.19.0.1", mac=MAC1)
    c.put_vm("pg-2", "nb", ip="198.19.0.2", mac=MAC2)
    start_all(c)
    vm1 = c.fab.add_vm(na, "v1", "198.19.0.1", mac=MAC1, mtu=1450)
    c.fab.add_vm(nb, "v2", "198.19.0.2", mac=MAC2, mtu=1450)
    assert ping(run, vm1, "198.19.0.2").returncode == 0
    ifindex = vxlan_info(run, na.ns, "vmo-vx0")["ifindex"]
    entries = fdb(run, na.ns)

    monitor = run.popen(na.ns, ["bridge", "monitor", "fdb"], stdout=subprocess.PIPE, text=True)
    pinger = run.popen(
        vm1,
        ["ping", "-n", "-i", "0.01", "-w", "60", "198.19.0.2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for i in range(5):
            c.stop_agent("na", signal.SIGKILL if i % 2 == 0 else signal.SIGTERM)
            c.start_agent("na")
            c.wait_ready("na")
            assert vxlan_info(run, na.ns, "vmo-vx0")["ifindex"] == ifindex
    finally:
        pinger.send_signal(signal.SIGINT)
        out, _ = pinger.communicate(timeout=10)
        monitor.terminate()
        changes, _ = monitor.communicate(timeout=10)
    assert fdb(run, na.ns) == entries
    assert [line for line in changes.splitlines() if "dev vmo-vx0 dst" in line] == []
    summary = next(line for line in out.splitlines() if "packets transmitted" in line)
    sent, received = int(summary.split()[0]), int(summary.split()[3])
    assert sent > 100 and received == sent, summary


def test_two_agent_processes_at_once(cluster: Cluster) -> None:
    c = cluster
    na = c.nodes["na"]
    first = c.start_agent("na", log_name="agent-na.log")
    second = c.run.popen(
        na.ns,
        [
            str(BIN / "vxlan-manager"),
            "run",
            "--node",
            "na",
            "--kubeconfig",
            str(c.kubeconfig),
            "--metrics-addr",
            "127.0.0.1:9465",
            "--state-dir",
            str(c.tmp / "state"),
            "--log-format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(c.tmp / "agent-na-2.log").open("wb"),
    )
    try:
        c.wait_ready("na")
        wait_for(lambda: len(fdb(c.run, na.ns)) == 2, timeout=10, what="flood entries")
        time.sleep(1)
        assert first.poll() is None and second.poll() is None
        assert "already exists" not in (c.tmp / "agent-na-2.log").read_text().lower()
        assert "reconcile failed" not in (c.tmp / "agent-na.log").read_text()
        assert {d for _, d in fdb(c.run, na.ns)} == {c.nodes["nb"].ip, c.nodes["nc"].ip}
    finally:
        second.kill()
        second.wait()


def test_teardown_removes_only_what_we_own(cluster: Cluster) -> None:
    c = cluster
    run = c.run
    na = c.nodes["na"]
    add_flannel_like(run, na.ns, na.ip)
    c.start_agent("na")
    c.wait_ready("na")
    c.stop_agent("na")
    assert link_json(run, na.ns, "vmo-vx0") is not None  # SIGTERM left the data plane up
    argv = [
        str(BIN / "vxlan-manager"),
        "teardown",
        "--node",
        "na",
        "--state-dir",
        str(c.tmp / "state"),
    ]
    out = run.check(na.ns, argv)
    assert "removed: vmo-vx0, vmo-br0" in out
    assert link_json(run, na.ns, "vmo-vx0") is None and link_json(run, na.ns, "vmo-br0") is None
    assert link_json(run, na.ns, "flannel.1") is not None
    assert list((c.tmp / "state").glob("agent-na-*.json")) == []
    # A bridge of that name that we did not make is left alone.
    run.check(na.ns, ["ip", "link", "add", "vmo-br0", "type", "bridge"])
    assert "nothing" in run.check(na.ns, argv)
    assert link_json(run, na.ns, "vmo-br0") is not None


def test_api_away_keeps_entries_and_resyncs(cluster: Cluster) -> None:
    c = cluster
    run = c.run
    na = c.nodes["na"]
    start_all(c)
    before = fdb(run, na.ns)
    assert len(before) == 2
    c.api_proc.send_signal(signal.SIGSTOP)  # the API stops answering
    try:
        time.sleep(2)
        assert fdb(run, na.ns) == before
    finally:
        c.api_proc.send_signal(signal.SIGCONT)
    # The API server goes away for 3 s and comes back (objects kept): entries stay
    # meanwhile, the watches retry with back-off, relist, and a new change lands.
    c.restart_api(down=3)
    assert fdb(run, na.ns) == before
    c.delete_node("nb")
    wait_for(
        lambda: (ZERO_MAC, c.nodes["nb"].ip) not in fdb(run, na.ns),
        timeout=15,
        what="change applied after the API returned",
    )
    assert c.metric("na", "vmoverlay_agent_watch_restarts_total") >= 2
    assert ping(run, c.nodes["na"].ns, c.nodes["nc"].ip).returncode == 0
