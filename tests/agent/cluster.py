"""A small lab cluster for agent integration tests: fabric, nodes, lab API, agents.

The lab API server runs inside the fabric namespace on 198.18.0.1, so agents in
the node namespaces reach it over the underlay. The test process talks to it
(and to the agents' /status and /metrics on their underlay addresses) from one
worker thread that has entered the fabric namespace with setns(2), which
affects that thread only.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client as k8s

from e2e.netns import RunNamespaces
from vmoverlay import api
from vmoverlay.kube import CustomObjects, NotFound, load_client

from .topo import Fabric, NodeNs, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
CLONE_NEWNET = 0x40000000
API_ADDRESS = "198.18.0.1"
T = TypeVar("T")


def _enter_netns(ns: str) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
    finally:
        os.close(fd)


class Cluster:
    def __init__(
        self, run: RunNamespaces, tmp: Path, node_names: tuple[str, ...] = ("na", "nb", "nc")
    ) -> None:
        self.run = run
        self.tmp = tmp
        self.fab = Fabric(run)
        run.check(self.fab.fabric, ["ip", "addr", "add", f"{API_ADDRESS}/24", "dev", "sw0"])
        self.nodes = {
            name: self.fab.add_node(name, i) for i, name in enumerate(node_names, start=1)
        }
        self.pool = ThreadPoolExecutor(
            max_workers=1, initializer=_enter_netns, initargs=(self.fab.fabric,)
        )
        self.kubeconfig = tmp / "kubeconfig"
        self.api_log = (tmp / "apiserver.log").open("wb")
        self.api_proc = self._start_api("0")
        self.url = self._read_url()
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.client: k8s.ApiClient = self.call(load_client, str(self.kubeconfig))
        self.call(self._apply_crds)
        self.call(lambda: k8s.CoreV1Api(self.client).create_namespace({"metadata": {"name": "db"}}))

    def _start_api(self, port: str) -> subprocess.Popen[bytes]:
        argv = [
            str(BIN / "vmoverlay-lab"),
            "apiserver",
            "--address",
            API_ADDRESS,
            "--port",
            port,
            "--data-dir",
            str(self.tmp / "api-data"),
            "--kubeconfig-out",
            str(self.kubeconfig),
            "--log-format",
            "text",
        ]
        return self.run.popen(
            self.fab.fabric,
            argv,
            stdout=subprocess.PIPE,
            stderr=self.api_log,
            start_new_session=True,
        )

    def restart_api(self, down: float) -> None:
        """Kill the API server (a crash), keep it away ``down`` s, start it on the same URL."""
        os.killpg(self.api_proc.pid, signal.SIGKILL)
        self.api_proc.wait(timeout=10)
        self._stop_api()
        time.sleep(down)
        self.api_proc = self._start_api(self.url.rsplit(":", 1)[1])
        assert self._read_url() == self.url

    def _stop_api(self) -> None:
        if self.api_proc.poll() is None:
            os.killpg(self.api_proc.pid, signal.SIGTERM)
            try:
                self.api_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.api_proc.pid, signal.SIGKILL)
                self.api_proc.wait(timeout=10)
        if self.api_proc.stdout is not None:
            self.api_proc.stdout.close()

    def _read_url(self) -> str:
        assert self.api_proc.stdout is not None
        deadline, buf = time.monotonic() + 20, b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.api_proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.api_proc.stdout.fileno(), 4096)
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    if line.startswith("serving "):
                        return line.split(" ", 1)[1].strip()
                if not chunk:
                    break
        raise RuntimeError(
            "lab API server did not start: " + (self.tmp / "apiserver.log").read_text()[-2000:]
        )

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in the fabric namespace (API and agent endpoints are reachable there)."""
        return self.pool.submit(fn, *args, **kwargs).result(timeout=60)

    def _apply_crds(self) -> None:
        ext = k8s.ApiextensionsV1Api(self.client)
        for path in sorted((ROOT / "manifests" / "crds").glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    ext.create_custom_resource_definition(doc)

    # ---------------------------------------------------------------- objects

    def put_node(self, name: str, ip: str, *, ready: bool = True) -> None:
        def go() -> None:
            core = k8s.CoreV1Api(self.client)
            try:
                core.read_node(name)
            except k8s.exceptions.ApiException as exc:
                if exc.status != 404:
                    raise
                core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
            node = core.read_node(name)
            body = self.client.sanitize_for_serialization(node)
            body["status"] = {
                "addresses": [{"type": "InternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            }
            core.replace_node_status(name, body)

        self.call(go)

    def delete_node(self, name: str) -> None:
        self.call(lambda: k8s.CoreV1Api(self.client).delete_node(name))

    def put_vm(self, name: str, node: str, *, ip: str, mac: str) -> None:
        def go() -> None:
            objs = CustomObjects(self.client)
            try:
                obj = objs.get(api.VM_PLURAL, name, "db")
            except NotFound:
                obj = objs.create(
                    api.VM_PLURAL,
                    {
                        "apiVersion": api.API_VERSION,
                        "kind": api.VM_KIND,
                        "metadata": {"name": name, "namespace": "db"},
                        "spec": {},
                    },
                    "db",
                )
            obj["status"] = {
                "node": node,
                "phase": "Running",
                "network": {"ip": ip, "prefix": 16, "mac": mac, "mtu": 1450, "pool": "default"},
            }
            objs.replace_status(api.VM_PLURAL, name, obj, "db")

        self.call(go)

    # ---------------------------------------------------------------- agents

    def start_agent(
        self, node: str, *extra: str, log_name: str | None = None
    ) -> subprocess.Popen[bytes]:
        n = self.nodes[node]
        log = (self.tmp / (log_name or f"agent-{node}.log")).open("ab")
        argv = [
            str(BIN / "vxlan-manager"),
            "run",
            "--node",
            node,
            "--kubeconfig",
            str(self.kubeconfig),
            "--metrics-addr",
            f"{n.ip}:9464",
            "--state-dir",
            str(self.tmp / "state"),
            "--log-format",
            "json",
            *extra,
        ]
        proc = self.run.popen(n.ns, argv, stdout=log, stderr=log)
        log.close()
        self.agents[node] = proc
        return proc

    def stop_agent(self, node: str, sig: int = signal.SIGTERM) -> None:
        proc = self.agents.pop(node)
        proc.send_signal(sig)
        proc.wait(timeout=15)

    def log(self, node: str) -> list[dict[str, Any]]:
        path = self.tmp / f"agent-{node}.log"
        out = []
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def http(self, node: str, path: str) -> tuple[int, str]:
        def go() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(
                    f"http://{self.nodes[node].ip}:9464{path}", timeout=5
                ) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
            except OSError as exc:
                return 0, str(exc)

        return self.call(go)

    def status(self, node: str) -> dict[str, Any]:
        code, body = self.http(node, "/status")
        assert code == 200, body
        data: dict[str, Any] = json.loads(body)
        return data

    def wait_ready(self, *nodes: str, timeout: float = 20) -> None:
        for node in nodes:
            proc = self.agents[node]

            def ready(node: str = node, proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"agent on {node} exited {proc.returncode}: "
                        + (self.tmp / f"agent-{node}.log").read_text()[-3000:]
                    )
                return self.http(node, "/readyz")[0] == 200

            wait_for(ready, timeout=timeout, interval=0.1, what=f"agent on {node} ready")

    def metric(self, node: str, name: str) -> float:
        code, body = self.http(node, "/metrics")
        assert code == 200
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def close(self) -> None:
        for node in list(self.agents):
            proc = self.agents.pop(node)
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self._stop_api()
        self.api_log.close()
        self.pool.shutdown(wait=False)


def node_ns(cluster: Cluster, name: str) -> NodeNs:
    return cluster.nodes[name]
