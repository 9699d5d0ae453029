"""ADD, CHECK, DEL and GC against real namespaces and the lab API server (C14).

Scenarios:
- ADD plugs the pod: result shape, container end with the VM's MAC, IP/prefix, MTU
  and default route, host end on the bridge with the bridge's MTU, a port chain;
  CHECK passes; the 0.4.0 result carries ip versions;
- a configured MTU below the bridge's goes to the container end only (the host end
  keeps the bridge's); one above the bridge's -> 7, nothing left;
- C14: ADD twice -> the same result, one link, one chain; DEL twice -> both succeed,
  nothing left, the VM's address untouched; DEL with an empty CNI_NETNS, with the
  pod's namespace gone and with the API server unreachable -> success, the host link
  and rules are gone;
- CHECK reports drift: a changed MAC or MTU, a missing interface;
- ADD before IPAM wrote status.network -> 11 naming the VM, nothing left; ADD that
  waits while IPAM writes it -> success; API unreachable on ADD -> 11;
- a pod naming its VM by owner reference; a pod naming no VM -> 101; a pod the API
  does not know -> 101; a pod naming a VM that does not exist -> 102;
- the target pod of a migration on another node gets the same MAC and IP; DEL of
  the source leaves the target alone;
- a failure half-way (another default route in the pod) rolls back: nothing left;
  an interface name already taken in the pod -> error, the pod's interface kept;
- concurrent ADDs of several pods on a fresh node all succeed, with one base rule;
- GC removes attachments missing from cni.dev/valid-attachments and orphan rules,
  and keeps the valid ones.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from e2e.apiserver.server import kubeconfig_text
from tests.cni.conftest import Cluster
from tests.cni.harness import BRIDGE_MTU, CniNode, pod_link
from vmoverlay import api
from vmoverlay.identity import mac_from_uid

NS = "db"


def make_vm(cluster: Cluster, name: str, ip: str, *, network: bool = True) -> api.VMNetwork:
    vm = cluster.api.create_vm(NS, name)
    net = api.VMNetwork(
        ip=ip,
        prefix=16,
        mac=mac_from_uid(vm["metadata"]["uid"]),
        mtu=BRIDGE_MTU,
        pool="default",
        gateway="198.19.0.1",
    )
    if network:
        cluster.api.set_network(NS, name, net)
    return net


def vm_pod(cluster: Cluster, pod: str, vm: str, **annotations: str) -> dict[str, Any]:
    return cluster.api.create_pod(NS, pod, annotations={api.VM_ANNOTATION: vm, **annotations})


def test_add_check_del(cluster: Cluster) -> None:
    node = cluster.node1
    net = make_vm(cluster, "pg-0", "198.19.0.10")
    vm_pod(cluster, "pg-0-runner", "pg-0")
    sandbox = node.add_pod("p1")
    first = node.invoke("ADD", netns=sandbox, pod=(NS, "pg-0-runner")).ok().obj
    assert first is not None
    host, container = first["interfaces"]
    assert container == {"name": "eth1", "mac": net.mac, "sandbox": sandbox, "mtu": BRIDGE_MTU}
    assert first["ips"] == [{"address": "198.19.0.10/16", "interface": 1, "gateway": "198.19.0.1"}]
    assert first["routes"] == [{"dst": "0.0.0.0/0", "gw": "198.19.0.1"}]

    eth1 = pod_link(cluster.run, sandbox, "eth1")
    assert eth1 is not None
    assert eth1["address"] == net.mac and eth1["mtu"] == BRIDGE_MTU
    addrs = {(a["local"], a["prefixlen"]) for a in eth1["addr_info"]}
    assert addrs == {("198.19.0.10", 16)}  # no IPv6 link-local: the port stays silent
    routes = json.loads(cluster.run.check(Path(sandbox).name, ["ip", "-j", "route", "show"]))
    assert {"dst": "default", "gateway": "198.19.0.1"}.items() <= routes[0].items()
    hostlink = node.link(host["name"])
    assert hostlink["master"] == "vmo-br0" and hostlink["mtu"] == BRIDGE_MTU
    assert hostlink["address"] == host["mac"]
    stats = json.loads(cluster.run.check(node.ns, ["ip", "-s", "-j", "link", "show", host["name"]]))
    assert stats[0]["stats64"]["rx"]["packets"] == 0, "the pod's interface sent a frame"
    assert node.port_chains() == [f"port-{host['name']}"]

    # CHECK with the previous result passes; ADD again returns the same, makes nothing new.
    node.invoke("CHECK", node.conf(prevResult=first), netns=sandbox, pod=(NS, "pg-0-runner")).ok()
    again = node.invoke("ADD", netns=sandbox, pod=(NS, "pg-0-runner")).ok().obj
    assert again == first
    assert node.host_ports() == [host["name"]]
    assert len(node.port_chains()) == 1

    # DEL twice: both succeed, nothing left, the VM keeps its address.
    for _ in range(2):
        assert node.invoke("DEL", netns=sandbox, pod=(NS, "pg-0-runner")).ok().stdout == ""
        assert node.leftovers() == ([], [])
    assert pod_link(cluster.run, sandbox, "eth1") is None
    vm = cluster.api.call(lambda: cluster.api.objects.get(api.VM_PLURAL, "pg-0", NS))
    assert vm["status"]["network"] == net.to_dict()


def test_result_0_4_0(cluster: Cluster) -> None:
    node = cluster.node1
    make_vm(cluster, "pg-4", "198.19.0.14")
    vm_pod(cluster, "pg-4-runner", "pg-4")
    sandbox = node.add_pod("p1")
    conf = node.conf(cniVersion="0.4.0")
    res = node.invoke("ADD", conf, netns=sandbox, pod=(NS, "pg-4-runner")).ok().obj
    assert res is not None and res["cniVersion"] == "0.4.0"
    assert res["ips"][0]["version"] == "4" and "mtu" not in res["interfaces"][1]


def test_configured_mtu(cluster: Cluster) -> None:
    node = cluster.node1
    make_vm(cluster, "pg-m", "198.19.0.24")
    vm_pod(cluster, "pg-m-runner", "pg-m")
    sandbox = node.add_pod("p1")
    call = node.invoke("ADD", node.conf(mtu=9000), netns=sandbox, pod=(NS, "pg-m-runner"))
    assert call.code == 7 and "9000" in call.obj["msg"]  # type: ignore[index]
    assert node.leftovers() == ([], [])

    res = node.invoke("ADD", node.conf(mtu=1400), netns=sandbox, pod=(NS, "pg-m-runner")).ok()
    assert res.obj is not None and res.obj["interfaces"][1]["mtu"] == 1400
    eth1 = pod_link(cluster.run, sandbox, "eth1")
    assert eth1 is not None and eth1["mtu"] == 1400
    assert node.link(res.obj["interfaces"][0]["name"])["mtu"] == BRIDGE_MTU


def test_del_without_netns_or_api(cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.node1
    make_vm(cluster, "pg-1", "198.19.0.11")
    vm_pod(cluster, "pg-1-runner", "pg-1")
    dead_api = tmp_path / "dead.kubeconfig"
    dead_api.write_text(kubeconfig_text("http://198.18.0.1:1"))

    # Empty CNI_NETNS: the host link (and with it the pod's end) and the rules go.
    sandbox = node.add_pod("p1")
    node.invoke("ADD", netns=sandbox, pod=(NS, "pg-1-runner"), container_id="a").ok()
    node.invoke("DEL", netns="", pod=(NS, "pg-1-runner"), container_id="a").ok()
    assert node.leftovers() == ([], [])
    assert pod_link(cluster.run, sandbox, "eth1") is None

    # The pod's namespace already gone.
    sandbox2 = node.add_pod("p2")
    node.invoke("ADD", netns=sandbox2, pod=(NS, "pg-1-runner"), container_id="b").ok()
    cluster.run.check(node.ns, ["ip", "netns", "delete", Path(sandbox2).name])
    node.invoke("DEL", netns=sandbox2, pod=(NS, "pg-1-runner"), container_id="b").ok()
    assert node.leftovers() == ([], [])

    # The API server unreachable: DEL is local only.
    sandbox3 = node.add_pod("p3")
    node.invoke("ADD", netns=sandbox3, pod=(NS, "pg-1-runner"), container_id="c").ok()
    conf = node.conf(kubeconfig=str(dead_api))
    node.invoke("DEL", conf, netns=sandbox3, pod=(NS, "pg-1-runner"), container_id="c").ok()
    assert node.leftovers() == ([], [])

    # ADD with the API unreachable: try again later.
    call = node.invoke(
        "ADD",
        node.conf(kubeconfig=str(dead_api), timeout=1),
        netns=sandbox3,
        pod=(NS, "pg-1-runner"),
        container_id="c",
    )
    assert call.code == 11
    assert node.leftovers() == ([], [])


def test_check_reports_drift(cluster: Cluster) -> None:
    node = cluster.node1
    make_vm(cluster, "pg-2", "198.19.0.12")
    vm_pod(cluster, "pg-2-runner", "pg-2")
    sandbox = node.add_pod("p1")
    res = node.invoke("ADD", netns=sandbox, pod=(NS, "pg-2-runner")).ok().obj
    conf = node.conf(prevResult=res)
    pod_ns = Path(sandbox).name

    cluster.run.check(pod_ns, ["ip", "link", "set", "eth1", "address", "0a:00:00:00:00:99"])
    call = node.invoke("CHECK", conf, netns=sandbox, pod=(NS, "pg-2-runner"))
    assert call.code == 106 and "MAC 0a:00:00:00:00:99" in call.obj["msg"]  # type: ignore[index]

    cluster.run.check(pod_ns, ["ip", "link", "set", "eth1", "mtu", "1400"])
    call = node.invoke("CHECK", conf, netns=sandbox, pod=(NS, "pg-2-runner"))
    assert "MTU 1400 vs expected 1450" in call.obj["details"]  # type: ignore[index]

    # ADD repairs it (ensure steps), CHECK passes again.
    node.invoke("ADD", netns=sandbox, pod=(NS, "pg-2-runner")).ok()
    node.invoke("CHECK", conf, netns=sandbox, pod=(NS, "pg-2-runner")).ok()

    cluster.run.check(pod_ns, ["ip", "link", "del", "eth1"])
    call = node.invoke("CHECK", conf, netns=sandbox, pod=(NS, "pg-2-runner"))
    assert call.code == 106 and "missing" in call.obj["details"]  # type: ignore[index]


def test_add_waits_for_ipam(cluster: Cluster) -> None:
    node = cluster.node1
    net = make_vm(cluster, "pg-3", "198.19.0.13", network=False)
    vm_pod(cluster, "pg-3-runner", "pg-3")
    sandbox = node.add_pod("p1")

    call = node.invoke("ADD", node.conf(timeout=0.5), netns=sandbox, pod=(NS, "pg-3-runner"))
    assert call.code == 11
    assert f"{NS}/pg-3" in call.obj["msg"]  # type: ignore[index]
    assert node.leftovers() == ([], [])
    assert pod_link(cluster.run, sandbox, "eth1") is None

    # An ADD that starts before IPAM writes the record and waits for it.
    waiting = _start_add(node, sandbox, (NS, "pg-3-runner"), timeout=20)
    time.sleep(0.5)
    cluster.api.set_network(NS, "pg-3", net)
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, (out, err)
    assert json.loads(out)["interfaces"][1]["mac"] == net.mac


def _start_add(
    node: CniNode,
    sandbox: str,
    pod: tuple[str, str],
    *,
    timeout: float,
    container_id: str = "c0ffee",
    conf: dict[str, Any] | None = None,
) -> subprocess.Popen[str]:
    from tests.cni.harness import PLUGIN

    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": container_id,
        "CNI_IFNAME": "eth1",
        "CNI_NETNS": sandbox,
        "CNI_ARGS": f"K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]}",
        "VMOVERLAY_CNI_LOG_FILE": str(node.log_file),
    }
    proc = subprocess.Popen(
        ["ip", "netns", "exec", node.ns, str(PLUGIN)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({**(conf or node.conf()), "timeout": timeout}))
    proc.stdin.close()
    proc.stdin = None
    return proc


def test_vm_by_owner_and_not_a_vm_pod(cluster: Cluster) -> None:
    node = cluster.node1
    vm = cluster.api.create_vm(NS, "pg-5")
    net = api.VMNetwork("198.19.0.15", 16, mac_from_uid(vm["metadata"]["uid"]), 1450, "default")
    cluster.api.set_network(NS, "pg-5", net)
    cluster.api.create_pod(NS, "pg-5-runner", owner=vm)
    cluster.api.create_pod(NS, "web")
    sandbox = node.add_pod("p1")

    res = node.invoke("ADD", netns=sandbox, pod=(NS, "pg-5-runner")).ok().obj
    assert res is not None and res["interfaces"][1]["mac"] == net.mac
    assert res["routes"] == []  # no gateway in the record: no default route

    other = node.add_pod("p2")
    call = node.invoke("ADD", netns=other, pod=(NS, "web"), container_id="web")
    assert call.code == 101
    call = node.invoke("ADD", netns=other, pod=(NS, "no-such-pod"), container_id="web")
    assert call.code == 101 and "does not exist" in call.obj["msg"]  # type: ignore[index]
    vm_pod(cluster, "ghost-runner", "ghost")
    conf = node.conf(timeout=0.3)
    call = node.invoke("ADD", conf, netns=other, pod=(NS, "ghost-runner"), container_id="web")
    assert call.code == 102 and f"{NS}/ghost" in call.obj["msg"]  # type: ignore[index]
    assert node.host_ports() == [res["interfaces"][0]["name"]]


def test_target_pod_on_another_node(cluster: Cluster) -> None:
    net = make_vm(cluster, "pg-6", "198.19.0.16")
    vm_pod(cluster, "pg-6-a", "pg-6")
    vm_pod(cluster, "pg-6-b", "pg-6", **{"vmoverlay.io/migration-target": "mig-1"})
    source = cluster.node1.add_pod("src")
    target = cluster.node2.add_pod("dst")

    src = cluster.node1.invoke("ADD", netns=source, pod=(NS, "pg-6-a"), container_id="a").ok()
    dst = cluster.node2.invoke("ADD", netns=target, pod=(NS, "pg-6-b"), container_id="b").ok()
    assert src.obj is not None and dst.obj is not None
    assert src.obj["interfaces"][1]["mac"] == dst.obj["interfaces"][1]["mac"] == net.mac
    assert src.obj["ips"] == dst.obj["ips"]

    cluster.node1.invoke("DEL", netns=source, pod=(NS, "pg-6-a"), container_id="a").ok()
    assert cluster.node1.leftovers() == ([], [])
    eth1 = pod_link(cluster.run, target, "eth1")
    assert eth1 is not None and eth1["address"] == net.mac
    conf = cluster.node2.conf(prevResult=dst.obj)
    cluster.node2.invoke("CHECK", conf, netns=target, pod=(NS, "pg-6-b"), container_id="b").ok()


def test_failure_half_way_rolls_back(cluster: Cluster) -> None:
    node = cluster.node1
    make_vm(cluster, "pg-7", "198.19.0.17")
    vm_pod(cluster, "pg-7-runner", "pg-7")
    sandbox = node.add_pod("p1")
    pod_ns = Path(sandbox).name
    # The pod already has a default route through another interface (its primary network).
    cluster.run.check(pod_ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "eth0p"])
    cluster.run.check(pod_ns, ["ip", "addr", "add", "198.18.1.2/24", "dev", "eth0"])
    cluster.run.check(pod_ns, ["ip", "link", "set", "eth0", "up"])
    cluster.run.check(pod_ns, ["ip", "link", "set", "eth0p", "up"])
    cluster.run.check(pod_ns, ["ip", "route", "add", "default", "via", "198.18.1.1"])

    call = node.invoke("ADD", netns=sandbox, pod=(NS, "pg-7-runner"))
    assert call.code == 104 and "default route" in call.obj["msg"]  # type: ignore[index]
    assert node.leftovers() == ([], [])
    assert pod_link(cluster.run, sandbox, "eth1") is None

    # As a secondary network without a default route it plugs in.
    node.invoke("ADD", node.conf(defaultRoute=False), netns=sandbox, pod=(NS, "pg-7-runner")).ok()

    # An interface name the pod already uses: refused, the pod's own interface kept.
    call = node.invoke(
        "ADD", netns=sandbox, pod=(NS, "pg-7-runner"), ifname="eth0", container_id="x"
    )
    assert call.code == 104
    assert pod_link(cluster.run, sandbox, "eth0") is not None
    assert len(node.host_ports()) == 1


def test_gc(cluster: Cluster) -> None:
    node = cluster.node1
    make_vm(cluster, "pg-8", "198.19.0.18")
    vm_pod(cluster, "pg-8-runner", "pg-8")
    names = {}
    for cid in ("keep", "drop", "orphan"):
        sandbox = node.add_pod(cid)
        res = node.invoke("ADD", netns=sandbox, pod=(NS, "pg-8-runner"), container_id=cid).ok()
        assert res.obj is not None
        names[cid] = res.obj["interfaces"][0]["name"]
    # An orphan: its link vanished, its rules stayed.
    cluster.run.check(node.ns, ["ip", "link", "del", names["orphan"]])
    assert len(node.port_chains()) == 3

    valid = [{"containerID": "keep", "ifname": "eth1"}]
    node.invoke("GC", node.conf(**{"cni.dev/valid-attachments": valid})).ok()
    assert node.leftovers() == ([names["keep"]], [f"port-{names['keep']}"])


def test_concurrent_adds(cluster: Cluster) -> None:
    node = cluster.node1
    make_vm(cluster, "pg-9", "198.19.0.19")
    vm_pod(cluster, "pg-9-src", "pg-9")
    vm_pod(cluster, "pg-9-dst", "pg-9", **{"vmoverlay.io/migration-target": "mig-9"})
    procs = []
    for i, pod in enumerate(("pg-9-src", "pg-9-dst", "pg-9-src", "pg-9-dst")):
        sandbox = node.add_pod(f"c{i}")
        conf = node.conf(mode="vm-l2" if i % 2 else "pod")
        procs.append(
            _start_add(node, sandbox, (NS, pod), timeout=20, container_id=f"c{i}", conf=conf)
        )
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)
    assert len(node.host_ports()) == 4 and len(node.port_chains()) == 4
    base = [i for i in node.nft_table() if i.get("rule", {}).get("chain") == "prerouting"]
    assert len(base) == 1
