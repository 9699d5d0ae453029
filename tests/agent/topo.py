"""Test topology: node namespaces on a fabric bridge, VM namespaces on node bridges.

Every link is created inside a test namespace (veth pairs are made in the
fabric or node namespace with their peer placed straight into the other
namespace); nothing touches the root namespace. Underlay 198.18.0.0/24 (IPv6:
the benchmarking prefix 2001:2::/64), overlay 198.19.0.0/16.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2e.netns import RunNamespaces

VENV_BIN = ".venv/bin"


@dataclass
class NodeNs:
    name: str  # Kubernetes node name
    ns: str  # network namespace
    ip: str  # underlay address
    ip6: str | None = None


class Fabric:
    def __init__(self, run: RunNamespaces) -> None:
        self.run = run
        self.fabric = run.add("fab")
        run.check(self.fabric, ["ip", "link", "add", "sw0", "type", "bridge"])
        run.check(self.fabric, ["ip", "link", "set", "sw0", "up"])
        self.nodes: list[NodeNs] = []

    def add_node(self, name: str, index: int, *, mtu: int = 1500, ipv6: bool = False) -> NodeNs:
        ns = self.run.add(name)
        port = f"u-{name}"
        self._plug(self.fabric, "sw0", port, ns, mtu)
        ip = f"198.18.0.{10 + index}"
        self.run.check(ns, ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
        ip6 = None
        if ipv6:
            ip6 = f"2001:2::{10 + index}"
            self.run.check(ns, ["ip", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad"])
        self.run.check(ns, ["ip", "link", "set", "eth0", "up"])
        node = NodeNs(name, ns, ip, ip6)
        self.nodes.append(node)
        return node

    def _plug(self, where: str, bridge: str, port: str, ns: str, mtu: int) -> None:
        """A veth made in ``where``: ``port`` on ``bridge`` there, its peer ``eth0`` in ``ns``."""
        veth = ["ip", "link", "add", port, "mtu", str(mtu), "type", "veth", "peer", "name"]
        self.run.check(where, [*veth, "eth0", "netns", ns, "mtu", str(mtu)])
        self.run.check(where, ["ip", "link", "set", port, "master", bridge, "up"])

    def add_vm(self, node: NodeNs, role: str, ip: str, *, mac: str, mtu: int) -> str:
        """A VM namespace with eth0 (``mac``, ``ip``/16) plugged into the node's bridge."""
        ns = self.run.add(role)
        port = f"p-{role}"[:15]
        self._plug(node.ns, "vmo-br0", port, ns, mtu)
        self.run.check(ns, ["ip", "link", "set", "eth0", "address", mac])
        self.run.check(ns, ["ip", "addr", "add", f"{ip}/16", "dev", "eth0"])
        self.run.check(ns, ["ip", "link", "set", "eth0", "up"])
        return ns


def link_json(run: RunNamespaces, ns: str, name: str) -> dict[str, Any] | None:
    proc = run.run(ns, ["ip", "-d", "-j", "link", "show", "dev", name])
    if proc.returncode != 0:
        return None
    data: list[dict[str, Any]] = json.loads(proc.stdout)
    return data[0]


def vxlan_info(run: RunNamespaces, ns: str, name: str) -> dict[str, Any]:
    link = link_json(run, ns, name)
    assert link is not None, f"{name} missing in {ns}"
    data: dict[str, Any] = link["linkinfo"]["info_data"]
    return {
        "ifindex": link["ifindex"],
        "mtu": link["mtu"],
        "master": link.get("master"),
        "up": "UP" in link["flags"],
        "vni": data.get("id"),
        "port": data.get("port"),
        "local": data.get("local") or data.get("local6"),
        "learning": data.get("learning"),
    }


def fdb(run: RunNamespaces, ns: str, dev: str = "vmo-vx0") -> set[tuple[str, str]]:
    """(mac, dst) of the static ``self`` entries on ``dev``."""
    proc = run.run(ns, ["bridge", "-j", "fdb", "show", "dev", dev])
    if proc.returncode != 0:
        return set()
    return {
        (e["mac"], e["dst"])
        for e in json.loads(proc.stdout or "[]")
        if "dst" in e and "self" in e.get("flags", [])
    }


def ping(
    run: RunNamespaces,
    ns: str,
    ip: str,
    *,
    count: int = 1,
    size: int | None = None,
    df: bool = False,
    timeout: float = 2,
) -> subprocess.CompletedProcess[str]:
    argv = ["ping", "-n", "-c", str(count), "-W", str(int(timeout)), "-i", "0.2"]
    if size is not None:
        argv += ["-s", str(size)]
    if df:
        argv += ["-M", "do"]
    return run.run(ns, [*argv, ip])


def wait_for(
    cond: Callable[[], Any], *, timeout: float, interval: float = 0.02, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); s.settimeout(20)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(20); n = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    n += len(b)
print(n, flush=True)
"""

CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5001), timeout=20)
c.sendall(b"x" * int(sys.argv[2])); c.close()
"""


def tcp_transfer(run: RunNamespaces, server_ns: str, client_ns: str, ip: str, nbytes: int) -> int:
    """Send ``nbytes`` over TCP from ``client_ns`` to ``ip`` in ``server_ns``; bytes received."""
    py = f"{VENV_BIN}/python"
    server = run.popen(server_ns, [py, "-c", SERVER, ip], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"
        run.check(client_ns, [py, "-c", CLIENT, ip, str(nbytes)], timeout=30)
        out, _ = server.communicate(timeout=30)
        return int(out.strip())
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def add_flannel_like(run: RunNamespaces, ns: str, local: str, *extra: str) -> None:
    """A ``flannel.1``-like VXLAN device (VNI 1, UDP 8472) in ``ns``, as Flannel makes it."""
    argv = ["ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dstport", "8472"]
    run.check(ns, [*argv, "local", local, *extra])
