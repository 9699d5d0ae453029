"""``start_lab_api(netns=..., address=...)``: a lab API server inside a network namespace.

Scenarios (root only; each test makes its own ``vmo-<run id>-`` namespace):
- in process mode (under ``ip netns exec``) and in thread mode, a server listening
  on a lab address (198.18.0.1 on a veth inside the namespace) gets its
  CRDs applied, serves clients that ``lab.call`` runs inside the namespace, and
  answers the admin endpoints (audit); it is not listening in the root namespace;
- the same on the namespace's own loopback 127.0.0.1;
- restart() keeps the URL and the objects (process mode, with a data dir);
- the server process is gone from the namespace after the context ends.
"""

from __future__ import annotations

import errno
import socket
import subprocess
from pathlib import Path

import pytest
from kubernetes import client as k8s

from e2e.netns import RunNamespaces
from tests.fixtures.apiserver import start_lab_api
from vmoverlay import api
from vmoverlay.kube import CustomObjects

LAB_ADDRESS = "198.18.0.1"


def pool(name: str) -> dict[str, object]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.POOL_KIND,
        "metadata": {"name": name},
        "spec": {"cidr": "198.19.0.0/16"},
    }


def listening_in_root(port: int) -> bool:
    """Whether anything answers on 127.0.0.1:port of this (the root) namespace."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != errno.ECONNREFUSED


@pytest.mark.parametrize("mode", ["process", "thread"])
@pytest.mark.parametrize("address", [LAB_ADDRESS, "127.0.0.1"])
def test_server_in_a_namespace(
    netns: RunNamespaces, tmp_path: Path, mode: str, address: str
) -> None:
    ns = netns.add("api")
    # Both ends of the veth pair stay inside the namespace.
    netns.check(ns, ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
    netns.check(ns, ["ip", "addr", "add", f"{LAB_ADDRESS}/24", "dev", "v0"])
    netns.check(ns, ["ip", "link", "set", "v0", "up"])
    netns.check(ns, ["ip", "link", "set", "v1", "up"])
    with start_lab_api(tmp_path, mode=mode, netns=ns, address=address) as lab:
        assert lab.url.startswith(f"http://{address}:")
        objs = lab.call(lambda: CustomObjects(lab.client(user_agent="in-ns")))
        lab.call(objs.create, api.POOL_PLURAL, pool("in-ns"))
        names = [p["metadata"]["name"] for p in lab.call(objs.list, api.POOL_PLURAL)["items"]]
        assert names == ["in-ns"]
        assert [r["name"] for r in lab.audit(user_agent="in-ns", verb="create")] == ["in-ns"]
        if address == "127.0.0.1":
            assert not listening_in_root(lab.port)
        if mode == "process":
            url = lab.url
            lab.restart()
            assert lab.url == url
            core = lab.call(lambda: k8s.CoreV1Api(lab.client()))
            assert lab.call(core.read_namespace, "default").metadata.name == "default"
            kept = lab.call(CustomObjects(lab.client()).list, api.POOL_PLURAL)
            assert [p["metadata"]["name"] for p in kept["items"]] == ["in-ns"]
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=True)
    assert pids.stdout.strip() == ""
