"""What the lab writes to its Kubernetes API, as the rest of a cluster would.

A real cluster has a kubelet that registers Nodes and reports Pods, and a VM
controller that records VirtualMachines, their status (``node``, ``phase``)
and VirtualMachineMigrations with their phases and timestamps. The lab has
neither, so :class:`ClusterAPI` writes those objects itself, through the
official client, exactly where those components would: Node and Pod status and
the VM status through the status subresource, guarded by resourceVersion.

The API server listens on the lab underlay inside the control-plane
namespace; every call runs on a worker thread that lives in that namespace
(:class:`e2e.netns.NetnsExecutor`), so the host's root namespace needs no
address or route into the lab.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client as k8s

from e2e.netns import NetnsExecutor
from vmoverlay import api, kube
from vmoverlay.api import VMNetwork
from vmoverlay.logs import get_logger

LAB_NAMESPACE = "lab"
CRD_DIR = Path(__file__).resolve().parents[2] / "manifests" / "crds"
log = get_logger("lab")
T = TypeVar("T")


class ClusterError(RuntimeError):
    pass


def now_rfc3339() -> str:
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class ClusterAPI:
    """The lab's writes to its API server; every call runs inside the control-plane namespace."""

    def __init__(self, kubeconfig: str, cp_ns: str) -> None:
        # Several workers: a status write at switch-over never queues behind clean-up calls.
        self.executor = NetnsExecutor(cp_ns, workers=4)
        self.client = self.executor.call(kube.load_client, kubeconfig)
        self.client.user_agent = "vmoverlay-lab"
        self.core = k8s.CoreV1Api(self.client)
        self.objs = kube.CustomObjects(self.client)

    def close(self) -> None:
        self.executor.close()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call in the control-plane namespace, errors translated."""
        result: T = self.executor.call(kube.call, fn, *args, **kwargs)
        return result

    # --- cluster set-up ---------------------------------------------------------------

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call(self.core.list_namespace)
                return
            except kube.Unavailable as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"the lab API server did not answer: {exc}") from exc
                time.sleep(0.2)

    def apply_crds(self, directory: Path = CRD_DIR) -> None:
        ext = k8s.ApiextensionsV1Api(self.client)
        for path in sorted(directory.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    self._create_if_absent(ext.create_custom_resource_definition, doc)

    def ensure_namespace(self, name: str = LAB_NAMESPACE) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        self._create_if_absent(self.core.create_namespace, body)

    def create_pool(self, name: str, cidr: str, *, mtu: int) -> None:
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.POOL_KIND,
            "metadata": {"name": name},
            "spec": {"cidr": cidr, "mtu": mtu, "default": True},
        }
        self._create_if_absent(lambda b: self.objs.create(api.POOL_PLURAL, b), body)

    def record_node(self, name: str, internal_ip: str) -> None:
        """Register a Node and report it Ready with its InternalIP, as its kubelet would."""
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        }
        self._create_if_absent(self.core.create_node, body)
        node = kube.to_dict(self.client, self.call(self.core.read_node, name))
        node["status"] = {
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "lastHeartbeatTime": now_rfc3339(),
                    "lastTransitionTime": now_rfc3339(),
                }
            ],
        }
        self.call(self.core.replace_node_status, name, node)

    # --- VMs ------------------------------------------------------------------------------

    def create_vm(self, name: str) -> None:
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.VM_KIND,
            "metadata": {"name": name, "namespace": LAB_NAMESPACE},
            "spec": {"cpus": 1, "memoryMiB": 256},
        }
        self._create_if_absent(lambda b: self.objs.create(api.VM_PLURAL, b, LAB_NAMESPACE), body)

    def get_vm(self, name: str) -> api.VirtualMachine:
        obj = self.executor.call(self.objs.get, api.VM_PLURAL, name, LAB_NAMESPACE)
        return api.VirtualMachine.from_obj(obj)

    def wait_vm_network(self, name: str, timeout: float = 30.0) -> VMNetwork:
        """Wait until the IPAM controller wrote the VM's ``status.network``."""
        deadline = time.monotonic() + timeout
        while True:
            vm = self.get_vm(name)
            if vm.network is not None:
                return vm.network
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the IPAM controller gave VM {name} no address within {timeout:.0f}s: "
                    "see its log (ipam.log in the lab's log directory)"
                )
            time.sleep(0.1)

    def set_vm_status(self, name: str, *, node: str, phase: str) -> None:
        """``status.node``/``status.phase`` through /status; keeps ``status.network``."""
        self.set_vm_status_async(name, node=node, phase=phase).result()

    def set_vm_status_async(self, name: str, *, node: str, phase: str) -> Future[None]:
        """Start the status write and return at once (the migration does not wait on it)."""

        def attempt() -> None:
            obj = self.objs.get(api.VM_PLURAL, name, LAB_NAMESPACE)
            status = dict(obj.get("status") or {})
            status.update({"node": node, "phase": phase})
            obj["status"] = status
            self.objs.replace_status(api.VM_PLURAL, name, obj, LAB_NAMESPACE)

        return self.executor.submit(self._retry_conflict, attempt)

    def delete_vm(self, name: str) -> None:
        try:
            self.executor.call(self.objs.delete, api.VM_PLURAL, name, LAB_NAMESPACE)
        except kube.NotFound:
            return

    # --- runner pods ----------------------------------------------------------------------

    def create_runner_pod(self, name: str, *, vm: str, node: str) -> str:
        """A runner pod for ``vm`` bound to ``node``, reported Running; returns its UID."""
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": LAB_NAMESPACE,
                "annotations": {api.VM_ANNOTATION: vm},
                "labels": {"vmoverlay.io/role": "runner", "vmoverlay.io/vm-name": vm},
            },
            "spec": {
                "nodeName": node,
                "containers": [{"name": "runner", "image": "vmoverlay-lab/runner"}],
            },
        }
        created = self.call(self.core.create_namespaced_pod, LAB_NAMESPACE, body)
        pod = kube.to_dict(self.client, created)
        pod["status"] = {"phase": "Running", "startTime": now_rfc3339()}
        self.call(self.core.replace_namespaced_pod_status, name, LAB_NAMESPACE, pod)
        return str(pod["metadata"].get("uid") or "")

    def delete_pod(self, name: str) -> None:
        try:
            self.call(self.core.delete_namespaced_pod, name, LAB_NAMESPACE)
        except kube.NotFound:
            return

    # --- migrations -----------------------------------------------------------------------

    def create_migration(self, name: str, *, vm: str, target: str, source: str) -> None:
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.MIGRATION_KIND,
            "metadata": {"name": name, "namespace": LAB_NAMESPACE},
            "spec": {"vm": vm, "targetNode": target},
        }
        self.executor.call(self.objs.create, api.MIGRATION_PLURAL, body, LAB_NAMESPACE)
        self.set_migration_status(
            name, phase="Scheduling", sourceNode=source, startTime=now_rfc3339()
        )

    def set_migration_status(self, name: str, **fields: str) -> None:
        def attempt() -> None:
            obj = self.objs.get(api.MIGRATION_PLURAL, name, LAB_NAMESPACE)
            obj["status"] = {**(obj.get("status") or {}), **fields}
            self.objs.replace_status(api.MIGRATION_PLURAL, name, obj, LAB_NAMESPACE)

        self.executor.call(self._retry_conflict, attempt)

    # --- helpers --------------------------------------------------------------------------

    def _create_if_absent(self, create: Callable[[Any], Any], body: Any) -> None:
        try:
            self.executor.call(kube.call, create, body)
        except kube.AlreadyExists:
            return

    @staticmethod
    def _retry_conflict(attempt: Callable[[], None], tries: int = 10) -> None:
        for n in range(1, tries + 1):
            try:
                attempt()
                return
            except kube.Conflict:
                if n == tries:
                    raise
                time.sleep(0.01 * n)
