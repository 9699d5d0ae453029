"""Kubernetes I/O of the IPAM controller: allocations, VM status, pool status, Events.

Every call goes through :class:`vmoverlay.kube.CustomObjects` (errors already
translated to NotFound / Conflict / AlreadyExists / Unavailable...). Nothing
here decides anything; the controller does.

- ``create_allocation`` is create-if-absent: AlreadyExists reaches the caller,
  who takes the next candidate (or adopts the object if it is the VM's own).
- ``write_vm_status`` and ``write_pool_status`` PUT the status subresource with
  the object's resourceVersion, so a concurrent writer gets Conflict instead
  of silently losing the other's change.
- ``delete_allocation`` deletes with a UID precondition: it removes that very
  object, never a newer one that took the same name for another VM.
- Events go out on a background thread (:class:`EventRecorder`) so they never
  add latency to an allocation; an Event that cannot be sent is logged and
  counted, not retried forever.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s

from vmoverlay import api, kube
from vmoverlay.logs import StructLogger

Obj = dict[str, Any]
COMPONENT = "vmoverlay-ipam"
CONDITION_NETWORK = "NetworkReady"
CONDITION_POOL_READY = "Ready"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def allocation_body(pool: str, ip: str, vm: api.ObjectRef) -> Obj:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.ALLOCATION_KIND,
        "metadata": {
            "name": api.allocation_name(pool, ip),
            "labels": {api.ALLOCATION_POOL_LABEL: pool},
        },
        "spec": {
            "pool": pool,
            "ip": ip,
            "vm": {"namespace": vm.namespace, "name": vm.name, "uid": vm.uid},
        },
    }


def condition(kind: str, ok: bool, reason: str, message: str) -> Obj:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def with_condition(conditions: list[Obj] | None, new: Obj) -> tuple[list[Obj], bool]:
    """``conditions`` with ``new`` set, and whether anything changed.

    lastTransitionTime moves only when the status flips, as Kubernetes expects.
    """
    out: list[Obj] = []
    changed, found = True, False
    for cond in conditions or []:
        if cond.get("type") != new["type"]:
            out.append(cond)
            continue
        found = True
        same = all(cond.get(k) == new[k] for k in ("status", "reason", "message"))
        changed = not same
        stamp = cond.get("lastTransitionTime") if cond.get("status") == new["status"] else None
        out.append({**new, "lastTransitionTime": stamp or now_rfc3339()})
    if not found:
        out.append({**new, "lastTransitionTime": now_rfc3339()})
    return out, changed


def get_condition(obj: Obj, kind: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


class IPAMStore:
    def __init__(self, client: k8s.ApiClient, log: StructLogger) -> None:
        self.objects = kube.CustomObjects(client)
        self.client = client
        self._log = log

    def create_allocation(self, pool: str, ip: str, vm: api.ObjectRef) -> Obj:
        return self.objects.create(api.ALLOCATION_PLURAL, allocation_body(pool, ip, vm))

    def get_allocation(self, name: str) -> Obj:
        return self.objects.get(api.ALLOCATION_PLURAL, name)

    def delete_allocation(self, name: str, object_uid: str) -> bool:
        """Delete allocation ``name`` if it is still object ``object_uid``.

        True when it is gone (also when it was already gone); False when the
        name now belongs to another object, which is left alone.
        """
        try:
            self.objects.delete(api.ALLOCATION_PLURAL, name, uid=object_uid or None)
        except kube.NotFound:
            return True
        except kube.Conflict:
            return False
        return True

    def list_allocations(self) -> Obj:
        return self.objects.list(api.ALLOCATION_PLURAL)

    def list_vms(self) -> Obj:
        return self.objects.list(api.VM_PLURAL)

    def get_vm(self, namespace: str, name: str) -> Obj:
        return self.objects.get(api.VM_PLURAL, name, namespace)

    def write_vm_status(self, obj: Obj, status: Obj) -> Obj:
        """PUT ``status`` as the VM's status, guarded by ``obj``'s resourceVersion."""
        body = copy.deepcopy(obj)
        body["status"] = status
        meta = body["metadata"]
        return self.objects.replace_status(api.VM_PLURAL, meta["name"], body, meta["namespace"])

    def write_pool_status(self, obj: Obj, status: Obj) -> Obj:
        body = copy.deepcopy(obj)
        body["status"] = status
        return self.objects.replace_status(api.POOL_PLURAL, body["metadata"]["name"], body)


class EventRecorder:
    """Sends core/v1 Events on a background thread, best effort."""

    def __init__(
        self,
        client: k8s.ApiClient,
        log: StructLogger,
        *,
        on_error: Callable[[str], None],
        pool_namespace: str = "default",
        capacity: int = 1000,
    ) -> None:
        self._core = k8s.CoreV1Api(client)
        self._log = log
        self._on_error = on_error
        self._pool_namespace = pool_namespace
        self._queue: queue.Queue[Obj | None] = queue.Queue(capacity)
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._missing: set[str] = set()

    def start(self) -> EventRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            self._log.warning("event queue full at shutdown; pending events dropped")

    def emit(
        self, obj: Obj, *, kind: str, reason: str, message: str, warning: bool = False
    ) -> None:
        """Queue an Event about ``obj`` (a VM or a pool)."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or self._pool_namespace
        stamp = now_rfc3339()
        event = {
            "metadata": {
                "name": f"{meta.get('name')}.{time.time_ns():x}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": kind,
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._on_error("event_dropped")

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            namespace = event["metadata"]["namespace"]
            if namespace in self._missing:
                continue
            try:
                kube.call(
                    self._core.create_namespaced_event,
                    namespace,
                    event,
                    _request_timeout=10,
                )
            except kube.NotFound as exc:
                # No Event API or no such namespace: say so once, keep running.
                self._log.warning(
                    "cannot record events in namespace; skipping it from now on",
                    namespace=namespace,
                    error=str(exc),
                )
                self._missing.add(namespace)
                self._on_error("event")
            except kube.KubeError as exc:
                self._log.warning("failed to record event", reason=event["reason"], error=str(exc))
                self._on_error("event")
