"""Names and typed views of the Kubernetes objects vmoverlay reads and writes.

The views are read-only snapshots parsed from the plain dicts the Kubernetes
client returns (``CustomObjectsApi`` hands out dicts; core objects are turned
into dicts with ``ApiClient.sanitize_for_serialization``). Parsing is strict on
what vmoverlay relies on and lenient on everything else, so a field another
controller adds never breaks us.

Design decisions recorded here because every component depends on them:

- ``IPAllocation`` is cluster-scoped and named ``<pool>-<ip>`` (dots and colons
  as dashes), so the API server's name uniqueness makes it impossible for two
  allocators to take the same address. Kubernetes refuses owner references
  from a cluster-scoped object to a namespaced one, so the VM is recorded in
  ``spec.vm`` (namespace, name, uid) and the IPAM controller releases the
  allocation itself (on the VM's deletion, and by the leak sweeper).
- The node a VM runs on is ``status.node`` of its VirtualMachine.
- A Node's VTEP address is its InternalIP unless the annotation
  ``vmoverlay.io/vtep-ip`` overrides it.
- A runner pod names its VM with the annotation ``vmoverlay.io/vm``
  (same namespace as the pod). The target pod of a live migration also carries
  ``vmoverlay.io/migration-target`` (any non-empty value, for example the
  migration's name): the CNI plugin gates its port in ``vm-l2`` mode until the
  guest announces itself at switch-over.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

GROUP = "vmoverlay.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# (kind, plural) of each custom resource.
VM_KIND, VM_PLURAL = "VirtualMachine", "virtualmachines"
MIGRATION_KIND, MIGRATION_PLURAL = "VirtualMachineMigration", "virtualmachinemigrations"
POOL_KIND, POOL_PLURAL = "IPPool", "ippools"
ALLOCATION_KIND, ALLOCATION_PLURAL = "IPAllocation", "ipallocations"

VTEP_ANNOTATION = f"{GROUP}/vtep-ip"
VM_ANNOTATION = f"{GROUP}/vm"
MIGRATION_TARGET_ANNOTATION = f"{GROUP}/migration-target"
PROBE_IP_ANNOTATION = f"{GROUP}/probe-ip"
ALLOCATION_POOL_LABEL = f"{GROUP}/pool"

# VM phases (status.phase) as vmoverlay understands them. A VM controller owns
# the field; vmoverlay only reads it.
PHASE_PENDING = "Pending"
PHASE_RUNNING = "Running"
PHASE_MIGRATING = "Migrating"
PHASE_STOPPED = "Stopped"

# VirtualMachineMigration phases.
MIGRATION_PHASES = ("Pending", "Scheduling", "Running", "Succeeded", "Failed")

DEFAULT_MTU = 1450


class InvalidObject(ValueError):
    """An object from the API lacks a field vmoverlay needs, or holds a bad value."""


def _get(obj: dict[str, Any], *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(key)
    return cur


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class VMNetwork:
    """``status.network`` of a VirtualMachine: written once, kept for the VM's life."""

    ip: str
    prefix: int
    mac: str
    mtu: int
    pool: str
    gateway: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VMNetwork:
        try:
            return cls(
                ip=str(data["ip"]),
                prefix=int(data["prefix"]),
                mac=str(data["mac"]).lower(),
                mtu=int(data.get("mtu") or DEFAULT_MTU),
                pool=str(data["pool"]),
                gateway=str(data["gateway"]) if data.get("gateway") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidObject(f"status.network is incomplete or malformed: {exc!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ip": self.ip,
            "prefix": self.prefix,
            "mac": self.mac,
            "mtu": self.mtu,
            "pool": self.pool,
        }
        if self.gateway:
            out["gateway"] = self.gateway
        return out


@dataclass(frozen=True)
class VirtualMachine:
    namespace: str
    name: str
    uid: str
    resource_version: str
    pool: str | None
    node: str | None
    phase: str | None
    network: VMNetwork | None
    deleting: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.namespace, self.name, self.uid)

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> VirtualMachine:
        meta = obj.get("metadata") or {}
        if not meta.get("name") or not meta.get("namespace"):
            raise InvalidObject("VirtualMachine without metadata.name/namespace")
        net = _get(obj, "status", "network")
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=str(meta.get("uid") or ""),
            resource_version=str(meta.get("resourceVersion") or ""),
            pool=_get(obj, "spec", "pool") or None,
            node=_get(obj, "status", "node") or None,
            phase=_get(obj, "status", "phase") or None,
            network=VMNetwork.from_dict(net) if isinstance(net, dict) and net.get("ip") else None,
            deleting=bool(meta.get("deletionTimestamp")),
        )


@dataclass(frozen=True)
class IPPool:
    name: str
    cidr: str
    gateway: str | None = None
    exclude: tuple[str, ...] = ()
    vni: int | None = None
    mtu: int = DEFAULT_MTU
    default: bool = False
    resource_version: str = ""

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> IPPool:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        if not meta.get("name"):
            raise InvalidObject("IPPool without metadata.name")
        if not spec.get("cidr"):
            raise InvalidObject(f"IPPool {meta['name']} has no spec.cidr")
        return cls(
            name=meta["name"],
            cidr=str(spec["cidr"]),
            gateway=spec.get("gateway") or None,
            exclude=tuple(str(x) for x in spec.get("exclude") or ()),
            vni=int(spec["vni"]) if spec.get("vni") is not None else None,
            mtu=int(spec.get("mtu") or DEFAULT_MTU),
            default=bool(spec.get("default", False)),
            resource_version=str(meta.get("resourceVersion") or ""),
        )


@dataclass(frozen=True)
class IPAllocation:
    name: str
    pool: str
    ip: str
    vm: ObjectRef
    created: str = ""
    resource_version: str = ""

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> IPAllocation:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        vm = spec.get("vm") or {}
        try:
            return cls(
                name=meta["name"],
                pool=spec["pool"],
                ip=spec["ip"],
                vm=ObjectRef(vm["namespace"], vm["name"], vm["uid"]),
                created=str(meta.get("creationTimestamp") or ""),
                resource_version=str(meta.get("resourceVersion") or ""),
            )
        except KeyError as exc:
            raise InvalidObject(f"IPAllocation {meta.get('name')!r} lacks {exc}") from exc


def allocation_name(pool: str, ip: str) -> str:
    """The allocation object's name for ``ip`` in ``pool``: unique per address.

    The address is written in its canonical form first, so every spelling of one
    address gives one name. An IPv6 address that ends (or starts) with ``::`` gets
    a ``0`` there, because an object name must end and start with a letter or digit.

    >>> allocation_name("default", "198.19.0.7")
    'default-198-19-0-7'
    >>> allocation_name("v6", "fd00::7")
    'v6-fd00--7'
    >>> allocation_name("v6", "fd00:19:0:1::")
    'v6-fd00-19-0-1--0'
    """
    try:
        text = ipaddress.ip_address(ip).compressed
    except ValueError:
        text = ip
    if text.endswith(":"):
        text += "0"
    if text.startswith(":"):
        text = "0" + text
    return f"{pool}-{text.replace('.', '-').replace(':', '-')}"


@dataclass(frozen=True)
class Node:
    name: str
    vtep_ip: str | None
    ready: bool
    probe_ip: str | None = None
    internal_ip: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> Node:
        meta = obj.get("metadata") or {}
        if not meta.get("name"):
            raise InvalidObject("Node without metadata.name")
        annotations = dict(meta.get("annotations") or {})
        internal = None
        for addr in _get(obj, "status", "addresses") or []:
            if addr.get("type") == "InternalIP" and internal is None:
                internal = addr.get("address")
        ready = False
        for cond in _get(obj, "status", "conditions") or []:
            if cond.get("type") == "Ready":
                ready = cond.get("status") == "True"
        return cls(
            name=meta["name"],
            vtep_ip=annotations.get(VTEP_ANNOTATION) or internal,
            ready=ready,
            probe_ip=annotations.get(PROBE_IP_ANNOTATION),
            internal_ip=internal,
            annotations=annotations,
        )
