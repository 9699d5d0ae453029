"""A runtime-like harness for the CNI plugin: what kubelet does, in namespaces.

- Two "nodes" (network namespaces ``vmo-<run>-n1`` / ``-n2``), each with the
  overlay bridge ``vmo-br0`` (MTU 1450, no IPv6 autoconf so it sends nothing),
  linked by one veth pair with 198.18.0.1/24 and 198.18.0.2/24 so both reach
  the lab API server.
- The lab API server runs in a thread of the test process, inside node 1's
  namespace, bound to 198.18.0.1: a thread moved into that namespace (setns is
  per thread) starts it, and the test's own API calls go through that thread
  too. (The shared ``lab_api`` fixture listens on the root namespace's
  loopback, which a plugin running inside a node namespace cannot reach.)
- ``CniNode.invoke`` runs the installed executable ``vmoverlay-cni`` with
  ``ip netns exec <node>``, the ``CNI_*`` environment and the config on stdin,
  and checks the output discipline on every call: stdout is empty or exactly
  one JSON object; an error object always comes with a non-zero exit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client as k8s
from pyroute2 import netns as pyr_netns

from e2e.netns import RunNamespaces
from vmoverlay import api, kube

PLUGIN = Path(sys.executable).parent / "vmoverlay-cni"
ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "manifests" / "crds"
BRIDGE = "vmo-br0"
BRIDGE_MTU = 1450
HOST_PORT = re.compile(r"^vmo[0-9a-f]{12}$")
T = TypeVar("T")


@dataclass
class Call:
    """One plugin run: exit status and the two streams."""

    rc: int
    stdout: str
    stderr: str
    obj: dict[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        text = self.stdout.strip()
        if text:
            # Exactly one JSON object, nothing else: json.loads refuses trailing data.
            parsed = json.loads(text)
            assert isinstance(parsed, dict), f"stdout is not one JSON object: {text!r}"
            self.obj = parsed
            is_error = "code" in parsed and "msg" in parsed
            assert is_error == (self.rc != 0), f"exit {self.rc} with stdout {text!r}"
            assert not (is_error and "interfaces" in parsed), "result and error both printed"
        else:
            assert self.rc == 0, f"failed with exit {self.rc} and nothing on stdout: {self.stderr}"

    @property
    def code(self) -> int | None:
        return None if self.obj is None else self.obj.get("code")

    def ok(self) -> Call:
        assert self.rc == 0, f"plugin failed: {self.stdout} {self.stderr[-2000:]}"
        return self


class NodeApi:
    """The lab API server in node 1's namespace, and the test's client to it."""

    def __init__(self, node_ns: str, address: str, workdir: Path) -> None:
        from e2e.apiserver.server import ThreadedLabApiServer, kubeconfig_text

        # One worker thread that lives in node 1's namespace; the server's own
        # thread, started from it, inherits the namespace.
        self._ex = ThreadPoolExecutor(
            max_workers=1, initializer=lambda: pyr_netns.setns(node_ns, flags=0)
        )
        self._server = ThreadedLabApiServer(address=address, port=0)
        self.url = self.call(self._server.start)
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(kubeconfig_text(self.url))
        self.client = self.call(lambda: kube.load_client(str(self.kubeconfig)))
        self.objects = kube.CustomObjects(self.client)
        self.call(self._apply_crds)

    def call(self, fn: Callable[[], T]) -> T:
        return self._ex.submit(fn).result(timeout=30)

    def stop(self) -> None:
        try:
            self.call(self._server.stop)
        finally:
            self._ex.shutdown(wait=True)

    def _apply_crds(self) -> None:
        ext = k8s.ApiextensionsV1Api(self.client)
        for path in sorted(CRD_DIR.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    ext.create_custom_resource_definition(doc)

    def ensure_namespace(self, name: str) -> None:
        core = k8s.CoreV1Api(self.client)
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        try:
            self.call(lambda: kube.call(core.create_namespace, body))
        except kube.AlreadyExists:
            pass

    def create_vm(self, namespace: str, name: str) -> dict[str, Any]:
        self.ensure_namespace(namespace)
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.VM_KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"pool": "default"},
        }
        return self.call(lambda: self.objects.create(api.VM_PLURAL, body, namespace))

    def set_network(self, namespace: str, name: str, network: api.VMNetwork) -> None:
        def write() -> None:
            vm = self.objects.get(api.VM_PLURAL, name, namespace)
            vm["status"] = {**(vm.get("status") or {}), "network": network.to_dict()}
            self.objects.replace_status(api.VM_PLURAL, name, vm, namespace)

        self.call(write)

    def create_pod(
        self,
        namespace: str,
        name: str,
        *,
        annotations: dict[str, str] | None = None,
        owner: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.ensure_namespace(namespace)
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if annotations:
            meta["annotations"] = annotations
        if owner:
            meta["ownerReferences"] = [
                {
                    "apiVersion": api.API_VERSION,
                    "kind": api.VM_KIND,
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                }
            ]
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {"containers": [{"name": "runner", "image": "vmoverlay/runner"}]},
        }
        core = k8s.CoreV1Api(self.client)
        pod = self.call(lambda: kube.call(core.create_namespaced_pod, namespace, body))
        return kube.to_dict(self.client, pod)


class CniNode:
    """One node namespace with its bridge, and the way kubelet runs the plugin there."""

    def __init__(self, run: RunNamespaces, ns: str, workdir: Path) -> None:
        self.run = run
        self.ns = ns
        self.workdir = workdir
        self.log_file = workdir / "vmoverlay-cni.log"
        self.kubeconfig: Path | None = None
        run.check(ns, ["ip", "link", "add", BRIDGE, "type", "bridge"])
        run.check(ns, ["ip", "link", "set", BRIDGE, "addrgenmode", "none"])
        run.check(ns, ["ip", "link", "set", BRIDGE, "mtu", str(BRIDGE_MTU), "up"])

    def add_pod(self, role: str) -> str:
        """A pod sandbox namespace; returns its path (what CNI_NETNS holds)."""
        name = self.run.add(role)
        return f"/var/run/netns/{name}"

    def conf(self, **overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "cniVersion": "1.1.0",
            "name": "vmoverlay",
            "type": "vmoverlay",
            "bridge": BRIDGE,
            "timeout": 3,
            "logFile": str(self.log_file),
        }
        if self.kubeconfig is not None:
            base["kubeconfig"] = str(self.kubeconfig)
        return {k: v for k, v in {**base, **overrides}.items() if v is not None}

    def invoke(
        self,
        command: str | None,
        conf: dict[str, Any] | bytes | None = None,
        *,
        container_id: str = "c0ffee",
        ifname: str = "eth1",
        netns: str = "",
        pod: tuple[str, str] | None = None,
        env: dict[str, str | None] | None = None,
    ) -> Call:
        environ = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_CONTAINERID": container_id,
            "CNI_IFNAME": ifname,
            "CNI_NETNS": netns,
            "CNI_PATH": "/opt/cni/bin",
            "VMOVERLAY_CNI_LOG_FILE": str(self.log_file),
        }
        if command is not None:
            environ["CNI_COMMAND"] = command
        if pod is not None:
            environ["CNI_ARGS"] = (
                f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]}"
            )
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        if conf is None:
            conf = self.conf()
        data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns, str(PLUGIN)],
            input=data,
            capture_output=True,
            env=environ,
            check=False,
            timeout=60,
        )
        return Call(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    # What is left on the node.

    def host_ports(self) -> list[str]:
        links = json.loads(self.run.check(self.ns, ["ip", "-j", "link", "show"]))
        return sorted(link["ifname"] for link in links if HOST_PORT.match(link["ifname"]))

    def link(self, name: str) -> dict[str, Any]:
        out = self.run.check(self.ns, ["ip", "-d", "-j", "link", "show", name])
        return dict(json.loads(out)[0])

    def nft_table(self) -> list[dict[str, Any]]:
        proc = self.run.run(self.ns, ["nft", "-j", "list", "table", "bridge", "vmoverlay_cni"])
        if proc.returncode != 0:
            return []
        return [item for item in json.loads(proc.stdout)["nftables"] if "metainfo" not in item]

    def port_chains(self) -> list[str]:
        return sorted(
            item["chain"]["name"]
            for item in self.nft_table()
            if "chain" in item and item["chain"]["name"].startswith("port-")
        )

    def port_drops(self, port: str) -> int:
        """Packets counted by the drop rules of ``port``'s chain."""
        total = 0
        for item in self.nft_table():
            rule = item.get("rule")
            if not rule or rule["chain"] != f"port-{port}":
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    total += int(expr["counter"]["packets"])
        return total

    def leftovers(self) -> tuple[list[str], list[str]]:
        return self.host_ports(), self.port_chains()


def pod_link(run: RunNamespaces, netns_path: str, ifname: str) -> dict[str, Any] | None:
    ns = Path(netns_path).name
    proc = run.run(ns, ["ip", "-d", "-j", "addr", "show", "dev", ifname])
    if proc.returncode != 0:
        return None
    return dict(json.loads(proc.stdout)[0])


def rx_packets(run: RunNamespaces, netns_path: str, ifname: str) -> int:
    out = run.check(Path(netns_path).name, ["ip", "-s", "-j", "link", "show", ifname])
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])
