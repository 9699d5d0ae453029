"""Discovery documents, OpenAPI stubs and ``kubectl get`` tables.

The official client needs none of this for its typed calls, but kubectl does:
``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>``, ``/apis/<group>/<version>``
describe what is served (built-in resources and every registered CRD), and
``/version`` names the server.

``/openapi/v3`` lists one document per group/version whose PATCH operations
declare the ``fieldValidation`` query parameter: that is how kubectl learns it
may leave validation to the server (``?fieldValidation=Strict``) instead of
downloading full schemas, so ``kubectl apply`` works without
``--validate=false``. The documents carry no schemas.

``kubectl get`` asks for ``as=Table``; a :func:`table` answer has Name, a few
per-type columns (a CRD's additionalPrinterColumns for custom resources) and Age.

# Limitation: tools that need full OpenAPI schemas (kubectl explain) do not
# work against the lab.
"""

from __future__ import annotations

import time
from calendar import timegm
from typing import Any

from e2e.apiserver.resources import Registry, ResourceType
from e2e.apiserver.store import meta

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-vmoverlay-lab",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "none (Python lab API server)",
    "compiler": "python",
    "platform": "linux/amd64",
}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    resources: list[dict[str, Any]] = []
    for rtype in sorted(types, key=lambda t: t.plural):
        entry: dict[str, Any] = {
            "name": rtype.plural,
            "singularName": rtype.singular,
            "namespaced": rtype.namespaced,
            "kind": rtype.kind,
            "verbs": list(rtype.verbs),
        }
        if rtype.short_names:
            entry["shortNames"] = list(rtype.short_names)
        if rtype.custom:
            entry["categories"] = ["all"]
        resources.append(entry)
        if rtype.has_status:
            resources.append(
                {
                    "name": f"{rtype.plural}/status",
                    "singularName": "",
                    "namespaced": rtype.namespaced,
                    "kind": rtype.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def group_list(registry: Registry) -> dict[str, Any]:
    groups = registry.group_versions()
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(name, versions) for name, versions in sorted(groups.items())],
    }


def group(registry: Registry, name: str) -> dict[str, Any] | None:
    versions = registry.group_versions().get(name)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


# Tables for kubectl get.


def _age(stamp: Any) -> str:
    if not stamp:
        return "<unknown>"
    try:
        then = timegm(time.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "<invalid>"
    secs = max(0, int(time.time() - then))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 2 * 86400:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _path(obj: Any, json_path: str) -> Any:
    cur = obj
    for key in json_path.strip(".").split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(key)
    return cur


def _node_status(obj: dict[str, Any]) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return "Ready" if cond.get("status") == "True" else "NotReady"
    return "Unknown"


BUILTIN_COLUMNS: dict[str, list[tuple[str, Any]]] = {
    "/nodes": [("Status", _node_status)],
    "/pods": [
        ("Status", lambda o: _path(o, ".status.phase") or ""),
        ("IP", lambda o: _path(o, ".status.podIP") or "<none>"),
        ("Node", lambda o: _path(o, ".spec.nodeName") or "<none>"),
    ],
    "/namespaces": [("Status", lambda o: _path(o, ".status.phase") or "")],
    "coordination.k8s.io/leases": [
        ("Holder", lambda o: _path(o, ".spec.holderIdentity") or ""),
    ],
}


def table(
    rtype: ResourceType, items: list[dict[str, Any]], list_meta: dict[str, Any]
) -> dict[str, Any]:
    columns: list[dict[str, Any]] = [
        {"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}
    ]
    getters: list[Any] = [lambda o: meta(o).get("name", "")]
    if rtype.custom and rtype.printer_columns:
        for col in rtype.printer_columns:
            columns.append(
                {
                    "name": col.name,
                    "type": col.type,
                    "format": "",
                    "description": "",
                    "priority": col.priority,
                }
            )
            if col.type == "date":
                getters.append(lambda o, p=col.json_path: _age(_path(o, p)))
            else:
                getters.append(lambda o, p=col.json_path: _cell(_path(o, p)))
    else:
        for name, getter in BUILTIN_COLUMNS.get(rtype.key, []):
            columns.append(
                {"name": name, "type": "string", "format": "", "description": "", "priority": 0}
            )
            getters.append(getter)
        columns.append(
            {"name": "Age", "type": "string", "format": "", "description": "", "priority": 0}
        )
        getters.append(lambda o: _age(meta(o).get("creationTimestamp")))
    rows = [
        {
            "cells": [get(obj) for get in getters],
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta(obj),
            },
        }
        for obj in items
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    }


def _cell(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict | list):
        return str(value)
    return value


# OpenAPI v3, just enough for kubectl's server-side field validation check.


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_root(registry: Registry) -> dict[str, Any]:
    stamp = f"{registry.generation:08x}"
    return {
        "paths": {
            _gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}?hash={stamp}"}
            for g, v in registry.all_group_versions()
        }
    }


def openapi_group_version(registry: Registry, gv_path: str) -> dict[str, Any] | None:
    parts = gv_path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "api":
        group, version = "", parts[1]
    elif len(parts) == 3 and parts[0] == "apis":
        group, version = parts[1], parts[2]
    else:
        return None
    types = registry.in_group_version(group, version)
    if not types:
        return None
    paths: dict[str, Any] = {}
    for rtype in types:
        gvk = {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}
        params = [
            {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for name in ("dryRun", "fieldManager", "fieldValidation")
        ]
        operation = {
            "operationId": f"patch{rtype.kind}",
            "parameters": params,
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        }
        paths[rtype.base_path("{namespace}") + "/{name}"] = {"patch": operation}
    return {
        "openapi": "3.0.0",
        "info": {"title": "vmoverlay lab API server", "version": SERVER_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }
