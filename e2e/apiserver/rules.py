"""The API server's rules as pure functions: what an update keeps, when generation moves,
what a delete answers, which field selectors a type supports, paging tokens, CRD status.

:mod:`e2e.apiserver.objects` applies them to the store; keeping them here, free of
I/O and state, keeps that module about the flow and lets tests check each rule alone.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import time
from collections.abc import Callable
from typing import Any

from e2e.apiserver import errors
from e2e.apiserver.patch import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_PATCH,
    PatchError,
    json_patch,
    merge_patch,
    strategic_merge,
)
from e2e.apiserver.resources import CRD_KEY, ResourceType
from e2e.apiserver.store import meta

SYSTEM_META = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# Types whose immediate deletion answers the deleted object; the others answer a
# Status (Success), as their storage on a real server does.
RETURNS_DELETED_OBJECT = ("/pods", "/serviceaccounts")


def delete_answer(rtype: ResourceType, removed: dict[str, Any]) -> dict[str, Any]:
    if rtype.key in RETURNS_DELETED_OBJECT:
        return removed
    details: dict[str, Any] = {"name": meta(removed).get("name"), "kind": rtype.plural}
    if rtype.group:
        details["group"] = rtype.group
    details["uid"] = meta(removed).get("uid")
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def apply_patch(rtype: ResourceType, old: dict[str, Any], content_type: str, patch: Any) -> Any:
    try:
        if content_type == JSON_PATCH:
            return json_patch(old, patch)
        if content_type == MERGE_PATCH:
            return merge_patch(old, patch)
        if content_type == STRATEGIC_PATCH and not rtype.custom:
            return strategic_merge(old, patch)
    except PatchError as exc:
        if exc.test_failed:
            raise errors.invalid(
                rtype.kind,
                rtype.group,
                str(meta(old).get("name")),
                [("", "FieldValueInvalid", str(exc))],
            ) from exc
        raise errors.bad_request(str(exc)) from exc
    if content_type == APPLY_PATCH:
        raise errors.unsupported_media_type(
            f"{content_type} (server-side apply is not supported by the lab API server)"
        )
    raise errors.unsupported_media_type(content_type)


def merge_for_update(
    rtype: ResourceType, old: dict[str, Any], new: dict[str, Any], subresource: str | None
) -> dict[str, Any]:
    if subresource == "status":
        candidate = copy.deepcopy(old)
        if "status" in new:
            candidate["status"] = copy.deepcopy(new["status"])
        else:
            candidate.pop("status", None)
        return candidate
    candidate = copy.deepcopy(new)
    if rtype.has_status:
        if "status" in old:
            candidate["status"] = copy.deepcopy(old["status"])
        else:
            candidate.pop("status", None)
    m, old_meta = candidate["metadata"], meta(old)
    for field in SYSTEM_META:
        if field in old_meta:
            m[field] = old_meta[field]
        else:
            m.pop(field, None)
    m["name"] = old_meta["name"]
    if "namespace" in old_meta:
        m["namespace"] = old_meta["namespace"]
    return candidate


def check_new_finalizers(rtype: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> None:
    """A real server refuses new finalizers on an object that is being deleted."""
    if not meta(old).get("deletionTimestamp"):
        return
    added = [
        f for f in meta(new).get("finalizers") or [] if f not in (meta(old).get("finalizers") or [])
    ]
    if added:
        raise errors.invalid(
            rtype.kind,
            rtype.group,
            str(meta(old).get("name")),
            [
                (
                    "metadata.finalizers",
                    "FieldValueForbidden",
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the "
                    f"object is being deleted, found new finalizers {added}",
                )
            ],
        )


GENERATION_TYPES = (
    CRD_KEY,
    "apps/deployments",
    "apps/daemonsets",
    "policy/poddisruptionbudgets",
)


def tracks_generation(rtype: ResourceType) -> bool:
    """Whether a real (v1.32) server keeps metadata.generation for this type."""
    return rtype.custom or rtype.key in GENERATION_TYPES


def spec_part(rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if rtype.has_status else set())
    return {k: v for k, v in obj.items() if k not in skip}


def check_preconditions(rtype: ResourceType, obj: dict[str, Any], pre: dict[str, Any]) -> None:
    m = meta(obj)
    name = str(m.get("name"))
    if pre.get("uid") and pre["uid"] != m.get("uid"):
        raise errors.conflict(
            rtype.plural,
            rtype.group,
            name,
            f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {m.get('uid')}",
        )
    if pre.get("resourceVersion") and str(pre["resourceVersion"]) != m.get("resourceVersion"):
        raise errors.conflict(
            rtype.plural,
            rtype.group,
            name,
            "Precondition failed: ResourceVersion in precondition: "
            f"{pre['resourceVersion']}, ResourceVersion in object meta: {m.get('resourceVersion')}",
        )


# Field selectors each built-in type supports on a real server (besides metadata.name
# and metadata.namespace, which every type supports); others are 400 there and here.
FIELD_LABELS: dict[str, tuple[str, ...]] = {
    "/pods": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.podIPs",
        "status.nominatedNodeName",
    ),
    "/nodes": ("spec.unschedulable",),
    "/namespaces": ("status.phase",),
    "/secrets": ("type",),
    "/events": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
}


def field_allowed(rtype: ResourceType) -> Callable[[str], bool]:
    allowed = {"metadata.name", "metadata.namespace"}
    allowed |= set(FIELD_LABELS.get(rtype.key, ()))
    allowed |= set(rtype.selectable_fields)
    return lambda path: path in allowed


def sort_key(obj: dict[str, Any]) -> str:
    m = meta(obj)
    return f"{m.get('namespace') or ''}/{m.get('name')}"


def encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "lab/1", "rv": rv, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_continue(token: str) -> str:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(data["start"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise errors.bad_request(f"continue key is not valid: {exc}") from exc


def crd_status(crd: dict[str, Any], previous: Any = None) -> dict[str, Any]:
    """Established and NamesAccepted, keeping the first transition time across updates."""
    names = (crd.get("spec") or {}).get("names") or {}
    stamp = now()
    if isinstance(previous, dict):
        for cond in previous.get("conditions") or []:
            if cond.get("type") == "Established" and cond.get("lastTransitionTime"):
                stamp = str(cond["lastTransitionTime"])
    return {
        "acceptedNames": names,
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": stamp,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": stamp,
            },
        ],
        "storedVersions": [
            v.get("name") for v in (crd.get("spec") or {}).get("versions") or [] if v.get("storage")
        ],
    }
