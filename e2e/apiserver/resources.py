"""The resource types the lab API server serves, built in and registered by CRDs.

A :class:`ResourceType` is everything the server needs to route, store,
validate and describe one resource: its group/version/plural, kind, scope,
whether it has a ``status`` subresource, its OpenAPI v3 schema (custom
resources only) and its printer columns for ``kubectl get``.

Apps (Deployments, DaemonSets), PodDisruptionBudgets and RBAC objects are stored and served like
any other object so ``kubectl apply -k manifests/`` works, but nothing runs
them: the lab starts the components itself.

Storage is keyed by ``group/plural`` (:attr:`ResourceType.key`), so every served
version of a custom resource shares one set of objects, as on a real server.

events.k8s.io/v1 Events are a *view* of the core/v1 Events (``storage_key``
``/events``): one set of objects, converted on the way in and out by
:mod:`e2e.apiserver.views`, as on a real server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CORE_RESOURCES: tuple[tuple[str, str, bool, bool, tuple[str, ...]], ...] = (
    # (plural, kind, namespaced, has status subresource, short names)
    ("namespaces", "Namespace", False, True, ("ns",)),
    ("nodes", "Node", False, True, ("no",)),
    ("pods", "Pod", True, True, ("po",)),
    ("events", "Event", True, False, ("ev",)),
    ("configmaps", "ConfigMap", True, False, ("cm",)),
    ("secrets", "Secret", True, False, ()),
    ("serviceaccounts", "ServiceAccount", True, False, ("sa",)),
    ("services", "Service", True, True, ("svc",)),
)

GROUP_RESOURCES: tuple[tuple[str, str, str, str, bool, bool, tuple[str, ...]], ...] = (
    ("events.k8s.io", "v1", "events", "Event", True, False, ("ev",)),
    ("apps", "v1", "deployments", "Deployment", True, True, ("deploy",)),
    ("apps", "v1", "daemonsets", "DaemonSet", True, True, ("ds",)),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, True, ("pdb",)),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, False, ()),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        False,
        False,
        (),
    ),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", True, False, ()),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True, False, ()),
    ("coordination.k8s.io", "v1", "leases", "Lease", True, False, ()),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        True,
        ("crd", "crds"),
    ),
)

CRD_KEY = "apiextensions.k8s.io/customresourcedefinitions"
VIEWS = {"events.k8s.io/events": "/events"}  # view -> storage key of the stored type
NAMESPACE_KEY = "/namespaces"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    priority: int = 0


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None
    printer_columns: tuple[PrinterColumn, ...] = ()
    selectable_fields: tuple[str, ...] = ()
    custom: bool = False
    storage_key: str = ""  # set for a view of another type's objects
    verbs: tuple[str, ...] = field(
        default=(
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        )
    )

    @property
    def key(self) -> str:
        """Where its objects are stored (and watched): ``group/plural`` unless a view."""
        return self.storage_key or f"{self.group}/{self.plural}"

    @property
    def is_view(self) -> bool:
        return bool(self.storage_key)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def base_path(self, namespace: str | None) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"


def builtin_types() -> list[ResourceType]:
    types = [
        ResourceType(
            group="",
            version="v1",
            plural=plural,
            kind=kind,
            namespaced=namespaced,
            has_status=status,
            singular=kind.lower(),
            short_names=short,
        )
        for plural, kind, namespaced, status, short in CORE_RESOURCES
    ]
    types += [
        ResourceType(
            group=group,
            version=version,
            plural=plural,
            kind=kind,
            namespaced=namespaced,
            has_status=status,
            singular=kind.lower(),
            short_names=short,
            storage_key=VIEWS.get(f"{group}/{plural}", ""),
        )
        for group, version, plural, kind, namespaced, status, short in GROUP_RESOURCES
    ]
    return types


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """One :class:`ResourceType` per served version of a CustomResourceDefinition."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        columns = tuple(
            PrinterColumn(
                name=str(col.get("name", "")),
                type=str(col.get("type", "string")),
                json_path=str(col.get("jsonPath", "")),
                priority=int(col.get("priority", 0)),
            )
            for col in version.get("additionalPrinterColumns") or []
        )
        out.append(
            ResourceType(
                group=str(spec.get("group", "")),
                version=str(version.get("name", "")),
                plural=str(names.get("plural", "")),
                kind=str(names.get("kind", "")),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                has_status="status" in (version.get("subresources") or {}),
                singular=str(names.get("singular") or str(names.get("kind", "")).lower()),
                short_names=tuple(names.get("shortNames") or ()),
                schema=schema if isinstance(schema, dict) else None,
                printer_columns=columns,
                selectable_fields=tuple(
                    str(f.get("jsonPath", "")).lstrip(".")
                    for f in version.get("selectableFields") or []
                    if isinstance(f, dict)
                ),
                custom=True,
            )
        )
    return out


class Registry:
    """Which resource types are served, looked up by (group, version, plural)."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._by_crd: dict[str, list[ResourceType]] = {}
        self.generation = 0  # bumped on every change, for discovery caches
        for rtype in builtin_types():
            self.add(rtype)

    def add(self, rtype: ResourceType) -> None:
        self._types[(rtype.group, rtype.version, rtype.plural)] = rtype
        self.generation += 1

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def by_key(self, key: str) -> ResourceType | None:
        """A served version of the resource stored under ``key`` (never a view)."""
        for rtype in self._types.values():
            if rtype.key == key and not rtype.is_view:
                return rtype
        return None

    def stored_types(self) -> list[ResourceType]:
        """One type per storage key (no views): what to walk to visit every object."""
        out: dict[str, ResourceType] = {}
        for rtype in self._types.values():
            if not rtype.is_view:
                out.setdefault(rtype.key, rtype)
        return list(out.values())

    def register_crd(self, crd: dict[str, Any]) -> list[ResourceType]:
        name = str((crd.get("metadata") or {}).get("name", ""))
        self.unregister_crd(name)
        types = types_from_crd(crd)
        for rtype in types:
            self.add(rtype)
        self._by_crd[name] = types
        return types

    def unregister_crd(self, name: str) -> list[ResourceType]:
        types = self._by_crd.pop(name, [])
        for rtype in types:
            self._types.pop((rtype.group, rtype.version, rtype.plural), None)
        self.generation += 1
        return types

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def all_group_versions(self) -> list[tuple[str, str]]:
        """Every served (group, version), the core group as ("", "v1")."""
        return sorted({(g, v) for g, v, _ in self._types})

    def group_versions(self) -> dict[str, list[str]]:
        """Served versions of each non-core group, preferred (first registered) first."""
        out: dict[str, list[str]] = {}
        for group, version, _ in self._types:
            if group and version not in out.setdefault(group, []):
                out[group].append(version)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for (g, v, _), t in self._types.items() if g == group and v == version]
