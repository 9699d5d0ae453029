"""Find the VM a runner pod runs and its network record (Kubernetes API).

The pod names its VM with the annotation ``vmoverlay.io/vm`` (a VM in the
pod's namespace); without it, an owner reference of kind VirtualMachine in the
vmoverlay.io group does. The VM's ``status.network`` (IP, prefix, gateway,
MAC, MTU), written once by the IPAM controller, is what the pod's interface
gets. A runner pod may start before IPAM has written it: ADD waits, polling
with a short per-request timeout, until the configured deadline, then fails
with code 11 naming the VM so the runtime retries.

A pod annotated ``vmoverlay.io/migration-target`` is the target of a live
migration; in ``vm-l2`` mode its port is gated until switch-over (see
:mod:`cni.antispoof`).

Only ADD reads the API. DEL and GC are purely local, so they succeed while
the API server is unreachable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from cni import errors
from cni.errors import CNIError
from vmoverlay import api, kube
from vmoverlay.logs import get_logger

log = get_logger("cni")

MIGRATION_TARGET_ANNOTATION = api.MIGRATION_TARGET_ANNOTATION
REQUEST_TIMEOUT = 5.0
POLL_FIRST, POLL_MAX = 0.2, 1.0

T = TypeVar("T")


@dataclass(frozen=True)
class RunnerPod:
    namespace: str
    name: str
    uid: str
    vm_name: str
    migration_target: bool


@dataclass(frozen=True)
class Target:
    """What ADD plugs in: the VM with its network record, and the pod that runs it."""

    pod: RunnerPod
    vm: api.VirtualMachine
    network: api.VMNetwork


def vm_name_of(pod: dict[str, Any]) -> str | None:
    """The VM a pod runs: its annotation, else an owner of kind VirtualMachine.

    >>> vm_name_of({"metadata": {"annotations": {"vmoverlay.io/vm": "pg-0"}}})
    'pg-0'
    >>> vm_name_of({"metadata": {"ownerReferences": [
    ...     {"apiVersion": "vmoverlay.io/v1alpha1", "kind": "VirtualMachine", "name": "pg-1"}]}})
    'pg-1'
    >>> vm_name_of({"metadata": {}}) is None
    True
    """
    meta = pod.get("metadata") or {}
    named = (meta.get("annotations") or {}).get(api.VM_ANNOTATION)
    if named:
        return str(named)
    for owner in meta.get("ownerReferences") or []:
        group = str(owner.get("apiVersion") or "").split("/")[0]
        if owner.get("kind") == api.VM_KIND and group == api.GROUP and owner.get("name"):
            return str(owner["name"])
    return None


def runner_pod(pod: dict[str, Any]) -> RunnerPod:
    meta = pod.get("metadata") or {}
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    vm_name = vm_name_of(pod)
    if not vm_name:
        raise CNIError(
            errors.NOT_A_VM_POD,
            f"pod {key} runs no VirtualMachine",
            f"annotate it with {api.VM_ANNOTATION}=<vm name> or give it a VirtualMachine owner",
        )
    annotations = meta.get("annotations") or {}
    return RunnerPod(
        namespace=str(meta.get("namespace")),
        name=str(meta.get("name")),
        uid=str(meta.get("uid") or ""),
        vm_name=vm_name,
        migration_target=bool(annotations.get(MIGRATION_TARGET_ANNOTATION)),
    )


def find_target(*, kubeconfig: str | None, namespace: str, pod_name: str, timeout: float) -> Target:
    """The pod's VM with its network record, waiting up to ``timeout`` for IPAM."""
    try:
        client = kube.load_client(kubeconfig)
    except kube.KubeError as exc:
        raise CNIError(
            errors.INVALID_CONFIG, "failed to load the Kubernetes client", str(exc)
        ) from exc
    deadline = time.monotonic() + timeout
    pod = runner_pod(
        _until(deadline, lambda: _read_pod(client, namespace, pod_name, deadline), pod_name)
    )
    vm_key = f"{namespace}/{pod.vm_name}"
    vm_path = (
        f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.VM_PLURAL}/{pod.vm_name}"
    )
    state: dict[str, Any] = {"vm": None, "error": None}

    def vm_with_network() -> api.VirtualMachine | None:
        try:
            obj = get_json(client, vm_path, timeout=_request_timeout(deadline))
        except kube.NotFound as exc:
            state["error"] = exc
            return None
        state["vm"] = vm = api.VirtualMachine.from_obj(obj)
        return vm if vm.network is not None else None

    vm = _poll(deadline, vm_with_network, vm_key)
    if vm is None or vm.network is None:
        if state["vm"] is None and state["error"] is not None:
            raise CNIError(
                errors.VM_NOT_FOUND,
                f"VirtualMachine {vm_key} (named by pod {namespace}/{pod_name}) does not exist",
                f"waited {timeout:g}s; create the VM or fix the pod's {api.VM_ANNOTATION}",
            )
        raise CNIError(
            errors.TRY_AGAIN_LATER,
            f"VirtualMachine {vm_key} has no network record (status.network) yet",
            f"waited {timeout:g}s for the IPAM controller to allocate its address; "
            "is ipam-controller running?",
        )
    log.info("VM found", vm=vm_key, pod=f"{namespace}/{pod_name}", ip=vm.network.ip)
    return Target(pod=pod, vm=vm, network=vm.network)


def _read_pod(client: k8s.ApiClient, namespace: str, name: str, deadline: float) -> dict[str, Any]:
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    try:
        return get_json(client, path, timeout=_request_timeout(deadline))
    except kube.NotFound as exc:
        raise CNIError(
            errors.NOT_A_VM_POD,
            f"pod {namespace}/{name} does not exist",
            "K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS name a pod the API does not know",
        ) from exc


def get_json(
    client: k8s.ApiClient, path: str, *, timeout: float = REQUEST_TIMEOUT
) -> dict[str, Any]:
    """GET ``path`` as a plain dict, errors translated by :mod:`vmoverlay.kube`.

    Through the client's REST layer (its configuration, TLS and token), but without
    its typed API classes: importing ``CoreV1Api`` and the pod model costs a second
    or more per plugin run, which every pod start would pay.
    """
    conf = client.configuration
    headers = {"Accept": "application/json", **client.default_headers}
    for auth in conf.auth_settings().values():
        if auth.get("in") == "header" and auth.get("value"):
            headers[auth["key"]] = auth["value"]
    with kube.api_errors():
        resp = client.rest_client.request(
            "GET", conf.host + path, headers=headers, _request_timeout=timeout
        )
        data = resp.read() if resp.data is None else resp.data
        if not 200 <= resp.status < 300:
            exc = ApiException(status=resp.status, reason=resp.reason)
            exc.body = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
            raise exc
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise kube.KubeError(f"GET {path}: the API answered no JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise kube.KubeError(f"GET {path}: the API answered {type(obj).__name__}, not an object")
    return obj


def _request_timeout(deadline: float) -> float:
    return max(0.5, min(REQUEST_TIMEOUT, deadline - time.monotonic()))


def _until(deadline: float, fn: Callable[[], T], what: str) -> T:
    """``fn()``, retried while the API is unreachable until the deadline (then error 11)."""
    result = _poll(deadline, fn, what)
    if result is None:
        raise CNIError(errors.TRY_AGAIN_LATER, f"failed to read {what} before the deadline")
    return result


def _poll(deadline: float, fn: Callable[[], T | None], what: str) -> T | None:
    """Call ``fn`` until it returns a value; None once the deadline passes.

    An unreachable API server is retried like a missing value; at the deadline it
    becomes error 11. Other API errors (forbidden, invalid) fail at once: waiting
    will not fix them.
    """
    delay = POLL_FIRST
    attempt = 0
    while True:
        attempt += 1
        value: T | None = None
        try:
            value = fn()
        except kube.Unavailable as exc:
            if time.monotonic() >= deadline:
                raise CNIError(
                    errors.TRY_AGAIN_LATER,
                    f"failed to read {what}: the Kubernetes API is unreachable",
                    str(exc),
                ) from exc
            log.warning("API unreachable, will retry", target=what, attempt=attempt, error=exc)
        except kube.KubeError as exc:
            raise CNIError(errors.KUBE_API, f"failed to read {what}", str(exc)) from exc
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(POLL_MAX, delay * 2)
