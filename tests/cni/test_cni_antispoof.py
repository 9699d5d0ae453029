"""Anti-spoofing and the vm-l2 migration gate, with real frames between pod namespaces.

Frames are crafted with scapy inside a pod's namespace; what reaches the other pod
is read from its interface's receive counter (the harness keeps every interface
silent, so nothing else moves it).

Scenarios:
- two VMs on one bridge ping each other on their real addresses;
- from a VM port, a forged source IP, a forged source MAC, an ARP claiming another
  VM's IP and an IPv6 packet from a foreign address all get nothing through, and the
  port's drop counters count them, while a genuine ARP request passes;
- the same frames do arrive once the port is plugged with antiSpoof false (so the
  test can fail);
- vm-l2: the port has its own stable MAC (from the pod UID) and no address; on a
  migration-target port frames from the VM's MAC are dropped until the guest's RARP
  announce (switch-over), then pass; frames from the port's own MAC never pass.
"""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pyroute2 import netns as pyr_netns

from tests.cni.conftest import Cluster
from tests.cni.harness import pod_link, rx_packets
from tests.cni.test_cni_attach import NS, make_vm, vm_pod
from vmoverlay import identity

BROADCAST = "ff:ff:ff:ff:ff:ff"


def frame(kind: str, src_mac: str, **f: Any) -> bytes:
    """One Ethernet frame, crafted with scapy."""
    from scapy.all import ARP, IP, UDP, Ether, IPv6, Raw

    if kind == "ip":
        pkt = Ether(src=src_mac, dst=f["dst_mac"]) / IP(src=f["src_ip"], dst=f["dst_ip"])
        pkt = pkt / UDP(sport=40000, dport=9) / Raw(b"vmoverlay")
    elif kind == "arp":
        arp = ARP(op=f.get("op", 1), hwsrc=src_mac, psrc=f["src_ip"], pdst=f["dst_ip"])
        pkt = Ether(src=src_mac, dst=BROADCAST) / arp
    elif kind == "ip6":
        pkt = Ether(src=src_mac, dst="33:33:00:00:00:01") / IPv6(src=f["src_ip"], dst="ff02::1")
        pkt = pkt / UDP(sport=40000, dport=9)
    elif kind == "rarp":
        rarp = ARP(op=3, hwsrc=src_mac, hwdst=src_mac, psrc="0.0.0.0", pdst="0.0.0.0")
        pkt = Ether(src=src_mac, dst=BROADCAST, type=0x8035) / rarp
    else:
        raise ValueError(kind)
    return bytes(pkt)


def send(cluster: Cluster, sandbox: str, frames: list[bytes], ifname: str = "eth1") -> None:
    """Send raw frames out of ``ifname`` in the pod: from a thread moved into its namespace."""

    def in_pod() -> None:
        pyr_netns.setns(sandbox, flags=0)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            for data in frames:
                sock.send(data)

    with ThreadPoolExecutor(max_workers=1) as ex:
        ex.submit(in_pod).result(timeout=30)


def plug_pair(cluster: Cluster) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two VMs, each in a pod on node 1; returns their ADD results."""
    node = cluster.node1
    out = []
    for name, ip in (("vm-a", "198.19.0.20"), ("vm-b", "198.19.0.21")):
        make_vm(cluster, name, ip)
        vm_pod(cluster, f"{name}-runner", name)
        sandbox = node.add_pod(name)
        res = node.invoke("ADD", netns=sandbox, pod=(NS, f"{name}-runner"), container_id=name)
        assert res.ok().obj is not None
        out.append(res.obj)
    return out[0], out[1]


def test_forged_frames_get_nothing_through(cluster: Cluster) -> None:
    node = cluster.node1
    a, b = plug_pair(cluster)
    a_ns, b_ns = a["interfaces"][1]["sandbox"], b["interfaces"][1]["sandbox"]
    a_mac, b_mac = a["interfaces"][1]["mac"], b["interfaces"][1]["mac"]
    a_port = a["interfaces"][0]["name"]

    ping = cluster.run.run(Path(a_ns).name, ["ping", "-c", "2", "-W", "2", "198.19.0.21"])
    assert ping.returncode == 0, ping.stdout + ping.stderr

    forged = [
        frame("ip", a_mac, dst_mac=b_mac, src_ip="198.19.0.99", dst_ip="198.19.0.21"),
        frame("ip", "0a:00:00:00:00:99", dst_mac=b_mac, src_ip="198.19.0.20", dst_ip="198.19.0.21"),
        frame("arp", a_mac, op=2, src_ip="198.19.0.21", dst_ip="198.19.0.21"),
        frame("ip6", a_mac, src_ip="2001:2::99"),
    ]
    genuine = frame("arp", a_mac, src_ip="198.19.0.20", dst_ip="198.19.0.21")
    before, drops = rx_packets(cluster.run, b_ns, "eth1"), node.port_drops(a_port)
    send(cluster, a_ns, [*forged, genuine])
    assert rx_packets(cluster.run, b_ns, "eth1") - before == 1
    assert node.port_drops(a_port) - drops == len(forged)

    # Without anti-spoofing the very same frames arrive: the check above can fail. (At
    # least: B may also get A's answer to a neighbour probe its replies cause.)
    conf = node.conf(antiSpoof=False)
    node.invoke("ADD", conf, netns=a_ns, pod=(NS, "vm-a-runner"), container_id="vm-a").ok()
    assert node.port_chains() == [f"port-{b['interfaces'][0]['name']}"]
    before = rx_packets(cluster.run, b_ns, "eth1")
    send(cluster, a_ns, [*forged, genuine])
    assert rx_packets(cluster.run, b_ns, "eth1") - before >= len(forged) + 1


def test_vm_l2_port_and_migration_gate(cluster: Cluster) -> None:
    node = cluster.node1
    _, b = plug_pair(cluster)
    b_ns, b_mac = b["interfaces"][1]["sandbox"], b["interfaces"][1]["mac"]
    net = make_vm(cluster, "qemu-0", "198.19.0.30")
    src_pod = vm_pod(cluster, "qemu-0-src", "qemu-0")
    vm_pod(cluster, "qemu-0-dst", "qemu-0", **{"vmoverlay.io/migration-target": "mig-1"})
    conf = node.conf(mode="vm-l2")

    source = node.add_pod("qsrc")
    res = node.invoke("ADD", conf, netns=source, pod=(NS, "qemu-0-src"), container_id="qs").ok()
    assert res.obj is not None and res.obj["ips"] == [] and res.obj["routes"] == []
    port_mac = identity.mac_from_uid(src_pod["metadata"]["uid"], prefix=identity.PORT_MAC_PREFIX)
    eth1 = pod_link(cluster.run, source, "eth1")
    assert eth1 is not None and eth1["address"] == port_mac != net.mac
    assert eth1["addr_info"] == []
    details = cluster.run.check(Path(source).name, ["ip", "-d", "-j", "link", "show", "eth1"])
    assert json.loads(details)[0]["inet6_addr_gen_mode"] == "none"  # silent: no link-local

    target = node.add_pod("qdst")
    dst = node.invoke("ADD", conf, netns=target, pod=(NS, "qemu-0-dst"), container_id="qd").ok()
    assert dst.obj is not None
    dst_port_mac = dst.obj["interfaces"][1]["mac"]
    assert dst_port_mac not in (port_mac, net.mac)

    from_vm = frame("ip", net.mac, dst_mac=b_mac, src_ip=net.ip, dst_ip="198.19.0.21")
    from_port = frame("ip", dst_port_mac, dst_mac=b_mac, src_ip=net.ip, dst_ip="198.19.0.21")
    before = rx_packets(cluster.run, b_ns, "eth1")
    send(cluster, target, [from_vm, from_port])
    assert rx_packets(cluster.run, b_ns, "eth1") == before, "gated port let a frame through"

    # The guest's announce at switch-over opens the gate: the RARP itself and then traffic.
    send(cluster, target, [frame("rarp", net.mac)])
    assert rx_packets(cluster.run, b_ns, "eth1") == before + 1
    send(cluster, target, [from_vm, from_port])
    assert rx_packets(cluster.run, b_ns, "eth1") == before + 2

    # The source runner (not a migration target) was never gated.
    before = rx_packets(cluster.run, b_ns, "eth1")
    send(cluster, source, [from_vm])
    assert rx_packets(cluster.run, b_ns, "eth1") == before + 1
