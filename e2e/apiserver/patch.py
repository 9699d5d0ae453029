"""The three patch formats of the Kubernetes API, as pure functions over plain dicts.

- JSON patch (RFC 6902, ``application/json-patch+json``): add, remove, replace,
  move, copy, test.
- JSON merge patch (RFC 7386, ``application/merge-patch+json``): maps merge,
  ``null`` deletes, lists are replaced.
- Strategic merge patch (``application/strategic-merge-patch+json``), for core
  types only, as the real server refuses it for custom resources: like merge
  patch, except lists listed in :data:`MERGE_KEYS` merge item by item on their
  merge key (``status.conditions`` by ``type``, ``spec.containers`` by ``name``
  ...), ``metadata.finalizers`` merges as a set, and the directives ``$patch``
  (``delete``/``replace``/``merge``), ``$deleteFromPrimitiveList/<field>``,
  ``$retainKeys`` and ``$setElementOrder/<field>`` are understood.

Every function returns a new document and raises :class:`PatchError` on a
malformed patch; the handler answers it with the right Status.
"""

from __future__ import annotations

import copy
from typing import Any

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Field path (list items leave no segment) -> merge key; "" for a set of primitives.
MERGE_KEYS: dict[str, str] = {
    "metadata.ownerReferences": "uid",
    "metadata.finalizers": "",
    "status.conditions": "type",
    "status.addresses": "type",
    "spec.containers": "name",
    "spec.initContainers": "name",
    "spec.ephemeralContainers": "name",
    "spec.volumes": "name",
    "spec.containers.ports": "containerPort",
    "spec.containers.env": "name",
    "spec.containers.volumeMounts": "mountPath",
    "spec.initContainers.env": "name",
    "spec.initContainers.volumeMounts": "mountPath",
    "spec.imagePullSecrets": "name",
    "spec.hostAliases": "ip",
    "spec.finalizers": "",
}


class PatchError(ValueError):
    """The patch cannot be applied; ``test_failed`` marks a failed JSON patch ``test``."""

    def __init__(self, message: str, *, test_failed: bool = False) -> None:
        super().__init__(message)
        self.test_failed = test_failed


# JSON patch.


def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise PatchError("json patch must be a list of operations")
    out = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid json patch operation: {op!r}")
        out = _apply_op(out, op)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}: must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return cur


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"doc is missing path: {path!r}")


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"index out of range in path {path!r}")
    else:
        raise PatchError(f"doc is missing path: {path!r}")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return doc, parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return doc, parent.pop(int(last))
    raise PatchError(f"unable to remove nonexistent key: {path!r}: missing value")


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    kind, path = op["op"], str(op["path"])
    if kind in ("add", "replace", "test") and "value" not in op:
        raise PatchError(f"{kind} operation does not have a value: {op!r}")
    if kind == "add":
        return _add(doc, path, copy.deepcopy(op["value"]))
    if kind == "remove":
        return _remove(doc, path)[0]
    if kind == "replace":
        _get(doc, path)
        doc, _ = _remove(doc, path) if _pointer(path) else (doc, None)
        return _add(doc, path, copy.deepcopy(op["value"]))
    if kind in ("move", "copy"):
        source = str(op.get("from", ""))
        if kind == "move":
            doc, value = _remove(doc, source)
        else:
            value = copy.deepcopy(_get(doc, source))
        return _add(doc, path, value)
    if kind == "test":
        if _get(doc, path) != op["value"]:
            raise PatchError(f"testing value {path} failed", test_failed=True)
        return doc
    raise PatchError(f"unknown json patch operation {kind!r}")


# JSON merge patch.


def merge_patch(doc: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# Strategic merge patch.


def strategic_merge(doc: dict[str, Any], patch: Any) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object")
    result = _smp_map(copy.deepcopy(doc), patch, "")
    return result if isinstance(result, dict) else {}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _smp_map(doc: dict[str, Any] | None, patch: dict[str, Any], path: str) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: v for k, v in patch.items() if k != "$patch"}
    out: dict[str, Any] = dict(doc) if isinstance(doc, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            drop = set(value) if isinstance(value, list) else set()
            if isinstance(out.get(field), list):
                out[field] = [v for v in out[field] if v not in drop]
            continue
        sub = _join(path, key)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            merged = _smp_map(out.get(key) if isinstance(out.get(key), dict) else None, value, sub)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        elif isinstance(value, list) and sub in MERGE_KEYS:
            out[key] = _smp_list(out.get(key), value, sub, MERGE_KEYS[sub])
        else:
            out[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _smp_list(current: Any, patch: list[Any], path: str, key: str) -> list[Any]:
    items: list[Any] = list(current) if isinstance(current, list) else []
    if not key:
        for value in patch:
            if value not in items:
                items.append(value)
        return items
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [p for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map in list {path} is missing its merge key {key!r}")
        index = next(
            (
                i
                for i, cur in enumerate(items)
                if isinstance(cur, dict) and cur.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                items.pop(index)
            continue
        if index is None:
            items.append({k: v for k, v in item.items() if not k.startswith("$")})
        else:
            merged = _smp_map(items[index], item, path)
            if merged is not None:
                items[index] = merged
    return items
