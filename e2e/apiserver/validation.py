"""Validation, pruning and defaulting of objects, as the real API server does them.

- :func:`validate_name` checks ``metadata.name`` (RFC 1123 subdomain, or label
  for namespaces); :func:`validate_metadata` label and annotation keys/values.
- :func:`prune_and_default` removes fields a structural CRD schema does not
  declare (unless ``x-kubernetes-preserve-unknown-fields``), drops nulls from
  non-nullable fields, and fills ``default`` values.
- :func:`validate_schema` checks types, ``required``, ``enum``, ``pattern``,
  ``minimum``/``maximum`` (and exclusive forms), ``minLength``/``maxLength``,
  ``minItems``/``maxItems``; it returns causes in the server's words, for example
  ``spec.cidr: Invalid value: "x": spec.cidr in body should match '^...$'``.

All pure functions over plain dicts; the caller turns causes into 422 Invalid.
"""

from __future__ import annotations

import json
import re
from typing import Any

Cause = tuple[str, str, str]  # (field, reason type, message)

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ROOT_FIELDS = ("apiVersion", "kind", "metadata")


def validate_name(name: str, *, label: bool = False) -> list[Cause]:
    if label:
        if len(name) > 63 or not _LABEL.match(name):
            return [
                (
                    "metadata.name",
                    "FieldValueInvalid",
                    f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 label must '
                    "consist of lower case alphanumeric characters or '-', and must start and "
                    "end with an alphanumeric character",
                )
            ]
        return []
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        return [
            (
                "metadata.name",
                "FieldValueInvalid",
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                "consist of lower case alphanumeric characters, '-' or '.', and must start and "
                "end with an alphanumeric character",
            )
        ]
    return []


_META_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "generateName": (str,),
    "namespace": (str,),
    "resourceVersion": (str,),
    "uid": (str,),
    "labels": (dict,),
    "annotations": (dict,),
    "finalizers": (list,),
    "ownerReferences": (list,),
    "creationTimestamp": (str,),
    "deletionTimestamp": (str,),
    "generation": (int,),
}


def decode_problem(obj: dict[str, Any], *, builtin: bool) -> str | None:
    """What the real server's JSON decoder would refuse (answered 400), or None.

    Metadata fields have fixed types for every kind; a built-in kind's ``spec`` and
    ``status`` are objects (a custom resource's are left to its schema).
    """
    m = obj.get("metadata")
    if m is not None and not isinstance(m, dict):
        return f"metadata: cannot decode {type(m).__name__} into ObjectMeta"
    for key, types in _META_TYPES.items():
        value = (m or {}).get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return f"metadata.{key}: cannot decode {type(value).__name__} into {types[0].__name__}"
        if types == (int,) and value is not None and not _is_int64(value):
            return f"metadata.{key}: cannot decode number {value} into int64"
    for key in ("finalizers",):
        if any(not isinstance(v, str) for v in (m or {}).get(key) or []):
            return f"metadata.{key}: every item must be a string"
    if any(not isinstance(r, dict) for r in (m or {}).get("ownerReferences") or []):
        return "metadata.ownerReferences: every item must be an object"
    if builtin:
        for key in ("spec", "status"):
            if obj.get(key) is not None and not isinstance(obj[key], dict):
                return f"{key}: cannot decode {type(obj[key]).__name__} into an object"
    return None


_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
MAX_ANNOTATIONS = 256 * 1024


def validate_metadata(meta: dict[str, Any]) -> list[Cause]:
    """Label keys and values, annotation keys and total size, as the real server checks them."""
    causes: list[Cause] = []
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    for where, mapping in (("metadata.labels", labels), ("metadata.annotations", annotations)):
        if not isinstance(mapping, dict):
            causes.append(
                (where, "FieldValueTypeInvalid", f"{where}: Invalid value: must be a map")
            )
            continue
        for key, value in mapping.items():
            problem = _qualified_name_problem(str(key))
            if problem:
                causes.append(
                    (where, "FieldValueInvalid", f'{where}: Invalid value: "{key}": {problem}')
                )
            if not isinstance(value, str):
                causes.append(
                    (f"{where}.{key}", "FieldValueTypeInvalid", f"{where}.{key}: must be a string")
                )
            elif where == "metadata.labels" and (len(value) > 63 or not _LABEL_NAME.match(value)):
                causes.append(
                    (
                        where,
                        "FieldValueInvalid",
                        f'{where}: Invalid value: "{value}": a valid label must be an empty '
                        "string or consist of alphanumeric characters, '-', '_' or '.', and must "
                        "start and end with an alphanumeric character (at most 63 characters)",
                    )
                )
    if isinstance(annotations, dict):
        size = sum(len(str(k)) + len(str(v)) for k, v in annotations.items())
        if size > MAX_ANNOTATIONS:
            causes.append(
                (
                    "metadata.annotations",
                    "FieldValueTooLong",
                    f"metadata.annotations: Too long: must have at most {MAX_ANNOTATIONS} bytes",
                )
            )
    return causes


def _qualified_name_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character (at most 63 characters)"
        )
    return None


def prune_and_default(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Prune unknown fields and apply defaults in place (root metadata is left alone).

    Returns the paths of the unknown fields it removed, for strict field validation.
    """
    pruned: list[str] = []
    props = schema.get("properties") or {}
    for key in list(obj):
        if key in ROOT_FIELDS:
            continue
        if key in props:
            obj[key] = _prune(props[key], obj[key], key, pruned)
            if obj[key] is None and not props[key].get("nullable"):
                del obj[key]
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            del obj[key]
            pruned.append(key)
    _defaults(props, obj, skip=ROOT_FIELDS)
    return pruned


def _prune(schema: dict[str, Any], value: Any, path: str, pruned: list[str]) -> Any:
    if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and isinstance(extra, dict):
            return {k: _prune(extra, v, f"{path}.{k}", pruned) for k, v in value.items()}
        if props is None:
            if extra or schema.get("type") != "object":
                return value
            pruned.extend(f"{path}.{k}" for k in value)
            return {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in props:
                kept = _prune(props[key], item, f"{path}.{key}", pruned)
                if kept is None and not props[key].get("nullable"):
                    continue
                out[key] = kept
            elif schema.get("x-kubernetes-preserve-unknown-fields"):
                out[key] = item
            else:
                pruned.append(f"{path}.{key}")
        _defaults(props, out)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            _prune(schema["items"], item, f"{path}[{i}]", pruned) for i, item in enumerate(value)
        ]
    return value


def _defaults(props: dict[str, Any], obj: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    for key, sub in props.items():
        if key not in obj and key not in skip and "default" in sub:
            obj[key] = json.loads(json.dumps(sub["default"]))


def validate_schema(schema: dict[str, Any], obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    props = schema.get("properties") or {}
    for req in schema.get("required") or []:
        if req not in obj:
            causes.append((req, "FieldValueRequired", f"{req}: Required value"))
    for key, value in obj.items():
        if key in ROOT_FIELDS or key not in props:
            continue
        _check(props[key], value, key, causes)
    return causes


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict | list):
        return '"' + type(value).__name__ + '"'
    return json.dumps(value)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _is_int64(value: Any) -> bool:
    """An integer the real server's JSON decoder keeps as an int64.

    It decodes a JSON integer outside int64 as a float64, which is then not of
    type ``integer`` (nor int-or-string): such a value is refused with 422 as a
    "number", naming the field.
    """
    return (
        isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX
    )


def _type_ok(wanted: str, value: Any) -> bool:
    if wanted in ("integer", "number") and isinstance(value, bool):
        return False
    if wanted == "integer" and isinstance(value, int):
        return _is_int64(value)
    if wanted == "integer" and isinstance(value, float):
        # A float64 counts as an integer only while it is exact (|x| <= 2^53).
        return value.is_integer() and abs(value) <= 2**53
    return isinstance(value, _TYPES.get(wanted, (object,)))


def _check(schema: dict[str, Any], value: Any, path: str, causes: list[Cause]) -> None:
    if value is None:
        if not schema.get("nullable"):
            causes.append(
                (
                    path,
                    "FieldValueTypeInvalid",
                    f'{path}: Invalid value: "null": {path} in body must be of type {schema.get("type", "object")}: "null"',
                )
            )
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _is_int64(value)):
            causes.append(
                (
                    path,
                    "FieldValueTypeInvalid",
                    f"{path}: Invalid value: {_shown(value)}: {path} in body must be of type int-or-string",
                )
            )
        return
    wanted = schema.get("type")
    if wanted and not _type_ok(wanted, value):
        causes.append(
            (
                path,
                "FieldValueTypeInvalid",
                f'{path}: Invalid value: "{_json_type(value)}": {path} in body must be of type '
                f'{wanted}: "{_json_type(value)}"',
            )
        )
        return
    _check_value(schema, value, path, causes)
    if isinstance(value, dict):
        _check_object(schema, value, path, causes)
    elif isinstance(value, list):
        _check_array(schema, value, path, causes)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer" if _is_int64(value) else "number"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_value(schema: dict[str, Any], value: Any, path: str, causes: list[Cause]) -> None:
    enum = schema.get("enum")
    if enum is not None and value not in enum:
        supported = ", ".join(json.dumps(v) for v in enum)
        causes.append(
            (
                path,
                "FieldValueNotSupported",
                f"{path}: Unsupported value: {_shown(value)}: supported values: {supported}",
            )
        )
    if isinstance(value, str):
        _check_string(schema, value, path, causes)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(schema, value, path, causes)


def _invalid(path: str, value: Any, text: str) -> Cause:
    return (
        path,
        "FieldValueInvalid",
        f"{path}: Invalid value: {_shown(value)}: {path} in body {text}",
    )


def _check_string(schema: dict[str, Any], value: str, path: str, causes: list[Cause]) -> None:
    pattern = schema.get("pattern")
    if pattern is not None and not re.search(pattern, value):
        causes.append(_invalid(path, value, f"should match '{pattern}'"))
    if "minLength" in schema and len(value) < int(schema["minLength"]):
        causes.append(_invalid(path, value, f"should be at least {schema['minLength']} chars long"))
    if "maxLength" in schema and len(value) > int(schema["maxLength"]):
        causes.append(_invalid(path, value, f"may not be longer than {schema['maxLength']}"))


def _check_number(schema: dict[str, Any], value: float, path: str, causes: list[Cause]) -> None:
    if "minimum" in schema:
        low = schema["minimum"]
        if schema.get("exclusiveMinimum") and value <= low:
            causes.append(_invalid(path, value, f"should be greater than {low}"))
        elif value < low:
            causes.append(_invalid(path, value, f"should be greater than or equal to {low}"))
    if "maximum" in schema:
        high = schema["maximum"]
        if schema.get("exclusiveMaximum") and value >= high:
            causes.append(_invalid(path, value, f"should be less than {high}"))
        elif value > high:
            causes.append(_invalid(path, value, f"should be less than or equal to {high}"))


def _check_object(
    schema: dict[str, Any], value: dict[str, Any], path: str, causes: list[Cause]
) -> None:
    for req in schema.get("required") or []:
        if req not in value:
            causes.append((f"{path}.{req}", "FieldValueRequired", f"{path}.{req}: Required value"))
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        sub = props.get(key)
        if sub is None and isinstance(extra, dict):
            sub = extra
        if sub is not None:
            _check(sub, item, f"{path}.{key}", causes)


def _check_array(schema: dict[str, Any], value: list[Any], path: str, causes: list[Cause]) -> None:
    if "minItems" in schema and len(value) < int(schema["minItems"]):
        causes.append(_invalid(path, value, f"should have at least {schema['minItems']} items"))
    if "maxItems" in schema and len(value) > int(schema["maxItems"]):
        causes.append(
            (
                path,
                "FieldValueTooMany",
                f"{path}: Too many: {len(value)}: must have at most {schema['maxItems']} items",
            )
        )
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _check(items, item, f"{path}[{i}]", causes)


# Built-in types: the few checks a real server makes that product code could trip on.

_POD_MUTABLE = ("activeDeadlineSeconds", "tolerations")


def validate_pod(pod: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    """Containers with names and images; on update, a spec that only changes mutable fields.

    # Limitation: the real server checks much more (and fills defaults such as
    # restartPolicy); this catches what a VM controller stand-in could get wrong.
    """
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return [("spec", "FieldValueRequired", "spec: Required value")]
    causes: list[Cause] = []
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        causes.append(("spec.containers", "FieldValueRequired", "spec.containers: Required value"))
    else:
        for i, container in enumerate(containers):
            for key in ("name", "image"):
                if not isinstance(container, dict) or not container.get(key):
                    field = f"spec.containers[{i}].{key}"
                    causes.append((field, "FieldValueRequired", f"{field}: Required value"))
    if old is not None and _pod_spec_frozen(spec) != _pod_spec_frozen(old.get("spec") or {}):
        causes.append(
            (
                "spec",
                "FieldValueForbidden",
                "spec: Forbidden: pod updates may not change fields other than "
                "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                "`spec.activeDeadlineSeconds` or `spec.tolerations` (only additions)",
            )
        )
    return causes


def _pod_spec_frozen(spec: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in spec.items() if k not in _POD_MUTABLE}
    for key in ("containers", "initContainers"):
        if isinstance(out.get(key), list):
            out[key] = [
                {k: v for k, v in c.items() if k != "image"} if isinstance(c, dict) else c
                for c in out[key]
            ]
    return out


def validate_crd(crd: dict[str, Any]) -> list[Cause]:
    """The CustomResourceDefinition checks that keep the registry sane."""
    spec = _mapping(crd.get("spec"))
    names = _mapping(spec.get("names"))
    group, plural = spec.get("group"), names.get("plural")
    causes: list[Cause] = []
    if not group:
        causes.append(("spec.group", "FieldValueRequired", "spec.group: Required value"))
    if not plural:
        causes.append(
            ("spec.names.plural", "FieldValueRequired", "spec.names.plural: Required value")
        )
    if not names.get("kind"):
        causes.append(("spec.names.kind", "FieldValueRequired", "spec.names.kind: Required value"))
    name = (crd.get("metadata") or {}).get("name")
    if group and plural and name != f"{plural}.{group}":
        causes.append(
            (
                "metadata.name",
                "FieldValueInvalid",
                f'metadata.name: Invalid value: "{name}": must be spec.names.plural+"."+spec.group',
            )
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            (
                "spec.scope",
                "FieldValueNotSupported",
                f'spec.scope: Unsupported value: "{spec.get("scope")}": supported values: '
                '"Cluster", "Namespaced"',
            )
        )
    versions = spec.get("versions")
    storage = [v for v in versions or [] if isinstance(v, dict) and v.get("storage")]
    if not isinstance(versions, list) or len(storage) != 1:
        causes.append(
            (
                "spec.versions",
                "FieldValueInvalid",
                "spec.versions: Invalid value: must have exactly one version marked as storage version",
            )
        )
    return causes


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
