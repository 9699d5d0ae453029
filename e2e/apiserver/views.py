"""Views: one stored type served under another API, converted on the way in and out.

events.k8s.io/v1 Events are stored as core/v1 Events, as on a real server, so a
component writing one API and a test reading the other see the same objects.
Field names map as the real conversion maps them (``regarding`` is
``involvedObject``, ``note`` is ``message``, ``reportingController`` is
``reportingComponent``, ``deprecatedX`` are the old core fields...).

:class:`ViewApi` wraps :class:`~e2e.apiserver.objects.ObjectApi` for a view:
each call converts its input to the stored form, runs on the stored type, and
converts the answer back. A patch is applied to the view's form of the current
object and stored as a replace with that object's resourceVersion; both happen
in one step of the event loop, so nothing can come between them.
"""

from __future__ import annotations

from typing import Any

from e2e.apiserver import errors
from e2e.apiserver.objects import ObjectApi
from e2e.apiserver.resources import ResourceType
from e2e.apiserver.rules import apply_patch
from e2e.apiserver.store import meta

# events.k8s.io/v1 field -> core/v1 field; the fields not listed keep their names.
EVENT_FIELDS = {
    "regarding": "involvedObject",
    "note": "message",
    "reportingController": "reportingComponent",
    "deprecatedSource": "source",
    "deprecatedFirstTimestamp": "firstTimestamp",
    "deprecatedLastTimestamp": "lastTimestamp",
    "deprecatedCount": "count",
}
CORE_FIELDS = {core: view for view, core in EVENT_FIELDS.items()}


def to_storage(view: ResourceType, stored: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    out = {EVENT_FIELDS.get(k, k): v for k, v in obj.items()}
    out["apiVersion"], out["kind"] = stored.api_version, stored.kind
    return out


def from_storage(view: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("kind") == "Status":
        return obj
    out = {CORE_FIELDS.get(k, k): v for k, v in obj.items()}
    out["apiVersion"], out["kind"] = view.api_version, view.kind
    return out


def storage_field_path(path: str) -> str:
    head, _, rest = path.partition(".")
    mapped = EVENT_FIELDS.get(head, head)
    return f"{mapped}.{rest}" if rest else mapped


def storage_selector(selector: str | None) -> str | None:
    """A field selector on the view's fields, rewritten onto the stored fields."""
    if not selector:
        return selector
    parts = []
    for part in selector.split(","):
        for op in ("!=", "==", "="):
            if op in part:
                path, value = part.split(op, 1)
                parts.append(f"{storage_field_path(path.strip())}{op}{value}")
                break
        else:
            parts.append(part)
    return ",".join(parts)


class TypeApi:
    """The resource operations of one stored type: :class:`ObjectApi` with the type bound."""

    def __init__(self, api: ObjectApi, rtype: ResourceType) -> None:
        self.api = api
        self.rtype = rtype

    def out(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj

    def get(self, namespace: str | None, name: str) -> dict[str, Any]:
        return self.api.get(self.rtype, namespace, name)

    def list(self, namespace: str | None, **kwargs: Any) -> dict[str, Any]:
        return self.api.list(self.rtype, namespace, **kwargs)

    def create(self, namespace: str | None, body: Any, *, strict: bool) -> dict[str, Any]:
        return self.api.create(self.rtype, namespace, body, strict=strict)

    def replace(
        self,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        strict: bool,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return self.api.replace(
            self.rtype, namespace, name, body, subresource=subresource, strict=strict
        )

    def patch(
        self,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        strict: bool,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return self.api.patch(
            self.rtype, namespace, name, content_type, patch, subresource=subresource, strict=strict
        )

    def delete(self, namespace: str | None, name: str, options: dict[str, Any]) -> dict[str, Any]:
        return self.api.delete(self.rtype, namespace, name, options)

    def delete_collection(self, namespace: str | None, **kwargs: Any) -> dict[str, Any]:
        return self.api.delete_collection(self.rtype, namespace, **kwargs)


def resource_api(api: ObjectApi, rtype: ResourceType) -> TypeApi | ViewApi:
    return ViewApi(api, rtype) if rtype.is_view else TypeApi(api, rtype)


class ViewApi:
    """The resource operations of a view type, delegated to its stored type."""

    def __init__(self, api: ObjectApi, view: ResourceType) -> None:
        stored = api.registry.by_key(view.key)
        if stored is None:
            raise errors.internal(f"{view.plural}.{view.group} views {view.key}, not served")
        self.api = api
        self.view = view
        self.stored = stored

    def _in(self, body: Any) -> Any:
        if not isinstance(body, dict):
            return body
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version and api_version != self.view.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({self.view.api_version})"
            )
        if kind and kind != self.view.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({self.view.kind})"
            )
        return to_storage(self.view, self.stored, body)

    def out(self, obj: dict[str, Any]) -> dict[str, Any]:
        return from_storage(self.view, obj)

    def get(self, namespace: str | None, name: str) -> dict[str, Any]:
        return self.out(self.api.get(self.stored, namespace, name))

    def list(self, namespace: str | None, **kwargs: Any) -> dict[str, Any]:
        kwargs["field_selector"] = storage_selector(kwargs.get("field_selector"))
        listed = self.api.list(self.stored, namespace, **kwargs)
        return {
            **listed,
            "apiVersion": self.view.api_version,
            "kind": self.view.list_kind,
            "items": [self.out(o) for o in listed["items"]],
        }

    def create(self, namespace: str | None, body: Any, *, strict: bool) -> dict[str, Any]:
        return self.out(self.api.create(self.stored, namespace, self._in(body), strict=strict))

    def replace(
        self,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        strict: bool,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        stored = self.api.replace(self.stored, namespace, name, self._in(body), strict=strict)
        return self.out(stored)

    def patch(
        self,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        strict: bool,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        current = self.out(self.api.get(self.stored, namespace, name))
        doc = apply_patch(self.view, current, content_type, patch)
        if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
            raise errors.bad_request("the patch produced something that is not an object")
        if not doc["metadata"].get("resourceVersion"):
            doc["metadata"]["resourceVersion"] = meta(current).get("resourceVersion")
        stored = self.api.replace(self.stored, namespace, name, self._in(doc), strict=strict)
        return self.out(stored)

    def delete(self, namespace: str | None, name: str, options: dict[str, Any]) -> dict[str, Any]:
        return self.out(self.api.delete(self.stored, namespace, name, options))

    def delete_collection(self, namespace: str | None, **kwargs: Any) -> dict[str, Any]:
        kwargs["field_selector"] = storage_selector(kwargs.get("field_selector"))
        listed = self.api.delete_collection(self.stored, namespace, **kwargs)
        return {**listed, "items": [self.out(o) for o in listed["items"]]}
