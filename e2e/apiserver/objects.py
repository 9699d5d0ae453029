"""The API semantics over the store: create, read, list, update, patch and delete.

This is where the server behaves like the real one; HTTP parsing lives in the
handlers, storage in :mod:`e2e.apiserver.store`. The rules implemented here:

- create: ``generateName``, ``uid``, ``creationTimestamp``, ``generation`` 1 (for
  the types that track it: custom resources, CRDs, apps, PodDisruptionBudgets);
  409 AlreadyExists on a taken name; 404 when the namespace does not exist;
  a custom resource's status is dropped when it has a status subresource
  (set it through ``/status``), a Pod's status starts as ``Pending``.
- update and patch: 409 Conflict when the body's ``resourceVersion`` is not the
  current one (an empty one is an unconditional update); the main resource
  ignores ``status`` when a status subresource exists, ``/status`` ignores all
  but ``status``; system metadata (uid, creationTimestamp, deletionTimestamp,
  generation) cannot be changed; ``generation`` increments when anything but
  metadata (and status, with a status subresource) changes; a write that
  changes nothing is not stored and does not bump the resourceVersion.
- custom resources are pruned, defaulted and validated against their CRD's
  openAPIV3Schema (422 Invalid naming the field).
- delete: preconditions (uid, resourceVersion) answer 409; an object with
  finalizers gets ``deletionTimestamp`` and stays until an update removes its
  last finalizer; removal hands the uid to the garbage collector (background
  propagation; ``Orphan`` strips the owner reference instead; ``Foreground``
  holds the owner with the ``foregroundDeletion`` finalizer until its
  dependents with ``blockOwnerDeletion`` are gone). A removed Pod or
  ServiceAccount is answered as the object, anything else as a Success Status.
- CRDs register and unregister their resource types; deleting a CRD deletes
  its objects. Deleting a Namespace marks it Terminating, deletes its contents
  and removes it once they are gone.
- After a restart, dependents of owners that vanished while the server was
  down are collected and terminating namespaces are emptied.

# Limitation: Pods are deleted at once (there is no kubelet to confirm a
# graceful deletion).
"""

from __future__ import annotations

import copy
import functools
import random
import uuid
from collections.abc import Callable
from typing import Any

from e2e.apiserver import errors
from e2e.apiserver.errors import ApiError
from e2e.apiserver.gc import GarbageCollector
from e2e.apiserver.resources import CRD_KEY, NAMESPACE_KEY, Registry, ResourceType
from e2e.apiserver.rules import (
    SYSTEM_META,
    apply_patch,
    check_new_finalizers,
    check_preconditions,
    crd_status,
    decode_continue,
    delete_answer,
    encode_continue,
    field_allowed,
    merge_for_update,
    now,
    sort_key,
    spec_part,
    tracks_generation,
)
from e2e.apiserver.selectors import (
    SelectorError,
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from e2e.apiserver.store import Store, meta
from e2e.apiserver.validation import (
    decode_problem,
    prune_and_default,
    validate_crd,
    validate_metadata,
    validate_name,
    validate_pod,
    validate_schema,
)
from vmoverlay.logs import get_logger

log = get_logger("lab-apiserver")

Scheduler = Callable[[Callable[[], None]], None]

FOREGROUND_FINALIZER = "foregroundDeletion"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def run_now(fn: Callable[[], None]) -> None:
    """The scheduler without an event loop (unit tests): run the work at once."""
    fn()


class ObjectApi:
    """The resource operations; every method raises :class:`ApiError` for an error answer."""

    def __init__(self, store: Store, registry: Registry, *, schedule: Scheduler = run_now) -> None:
        self.store = store
        self.registry = registry
        self.schedule = schedule
        self.gc = GarbageCollector(self, schedule)
        for crd in store.list_objects(CRD_KEY):
            registry.register_crd(crd)
        ns_type = self.builtin("", "namespaces")
        for name in INITIAL_NAMESPACES:
            if store.get(NAMESPACE_KEY, "", name) is None:
                self.create(ns_type, None, {"metadata": {"name": name}})
        self._resume_cleanup()

    def _resume_cleanup(self) -> None:
        """After a restart, finish what a crash may have cut short: collection, namespaces."""
        for rtype in self.registry.stored_types():
            for obj in self.store.list_objects(rtype.key):
                if meta(obj).get("ownerReferences"):
                    self.gc.check_owners(rtype, obj)
        for ns in self.store.list_objects(NAMESPACE_KEY):
            if meta(ns).get("deletionTimestamp"):
                name = str(meta(ns)["name"])
                self.schedule(functools.partial(self._empty_namespace, name))

    def builtin(self, group: str, plural: str) -> ResourceType:
        for rtype in self.registry.all():
            if rtype.group == group and rtype.plural == plural:
                return rtype
        raise errors.internal(f"resource {plural}.{group} is not registered")

    def resource(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.registry.lookup(group, version, plural)
        if rtype is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return rtype

    # Reads.

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get(rtype.key, namespace or "", name)
        if obj is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return obj

    def list(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> dict[str, Any]:
        match = self.matcher(rtype, label_selector, field_selector)
        items = [o for o in self.store.list_objects(rtype.key, namespace) if match(o)]
        list_meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if continue_token:
            start = decode_continue(continue_token)
            items = [o for o in items if sort_key(o) > start]
        if limit and len(items) > limit:
            rest = len(items) - limit
            items = items[:limit]
            list_meta["continue"] = encode_continue(self.store.rv, sort_key(items[-1]))
            if not label_selector and not field_selector:
                # As on a real server: not counted when a selector filters the list.
                list_meta["remainingItemCount"] = rest
        return {
            "kind": rtype.list_kind,
            "apiVersion": rtype.api_version,
            "metadata": list_meta,
            "items": items,
        }

    def matcher(
        self, rtype: ResourceType, label_selector: str | None, field_selector: str | None
    ) -> Callable[[dict[str, Any]], bool]:
        try:
            labels = parse_label_selector(label_selector)
            fields = parse_field_selector(field_selector, allowed=field_allowed(rtype))
        except SelectorError as exc:
            raise errors.bad_request(str(exc)) from exc
        if not labels and not fields:
            return lambda obj: True
        return lambda obj: labels_match(labels, obj) and fields_match(fields, obj)

    # Create.

    def create(
        self, rtype: ResourceType, namespace: str | None, body: Any, *, strict: bool = False
    ) -> dict[str, Any]:
        obj = self._checked_body(rtype, body)
        m = obj["metadata"]
        self._place(rtype, namespace, m)
        if not m.get("name"):
            m["name"] = self._generate_name(rtype, m)
        name = str(m["name"])
        self._check_name(rtype, name)
        if rtype.namespaced and self.store.get(NAMESPACE_KEY, "", m["namespace"]) is None:
            raise errors.not_found("namespaces", "", m["namespace"])
        if self.store.get(rtype.key, m.get("namespace") or "", name) is not None:
            raise errors.already_exists(rtype.plural, rtype.group, name)
        for field in SYSTEM_META:
            m.pop(field, None)
        m["uid"] = str(uuid.uuid4())
        m["creationTimestamp"] = now()
        if tracks_generation(rtype):
            m["generation"] = 1
        self._initial_status(rtype, obj)
        self._admit(rtype, obj, strict=strict)
        stored = self.store.put(rtype.key, obj)
        if rtype.key == CRD_KEY:
            self.registry.register_crd(stored)
        self.gc.check_owners(rtype, stored)
        return stored

    def _generate_name(self, rtype: ResourceType, m: dict[str, Any]) -> str:
        prefix = m.get("generateName")
        if not prefix:
            raise errors.invalid(
                rtype.kind,
                rtype.group,
                "",
                [
                    (
                        "metadata.name",
                        "FieldValueRequired",
                        "metadata.name: Required value: name or generateName is required",
                    )
                ],
            )
        return str(prefix) + "".join(random.choice(_NAME_CHARS) for _ in range(5))

    def _check_name(self, rtype: ResourceType, name: str) -> None:
        causes = validate_name(name, label=rtype.plural == "namespaces")
        if causes:
            raise errors.invalid(rtype.kind, rtype.group, name, causes)

    def _initial_status(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        if rtype.custom and rtype.has_status:
            obj.pop("status", None)
        elif rtype.key == "/pods":
            obj["status"] = {"phase": "Pending"}
        elif rtype.key == NAMESPACE_KEY:
            obj["status"] = {"phase": "Active"}
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        elif rtype.key == CRD_KEY:
            obj["status"] = crd_status(obj)

    # Update and patch.

    def replace(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        strict: bool = False,
    ) -> dict[str, Any]:
        old = self.get(rtype, namespace, name)
        obj = self._checked_body(rtype, body)
        m = obj["metadata"]
        if m.get("name") and m["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({m['name']}) does not match the name on the URL ({name})"
            )
        self._place(rtype, namespace, m)
        rv = m.get("resourceVersion")
        if rv and str(rv) != meta(old).get("resourceVersion"):
            raise errors.conflict(rtype.plural, rtype.group, name)
        return self._update(rtype, old, obj, subresource, strict=strict)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        strict: bool = False,
    ) -> dict[str, Any]:
        old = self.get(rtype, namespace, name)
        doc = apply_patch(rtype, old, content_type, patch)
        if not isinstance(doc, dict):
            raise errors.bad_request("the patch produced something that is not an object")
        problem = decode_problem(doc, builtin=not rtype.custom)
        if problem:
            raise errors.bad_request(f"the patched object could not be decoded: {problem}")
        m = doc.get("metadata")
        if not isinstance(m, dict):
            raise errors.bad_request("the patch removed metadata")
        if m.get("name") != name or (m.get("namespace") or "") != (namespace or ""):
            raise errors.invalid(
                rtype.kind,
                rtype.group,
                name,
                [
                    (
                        "metadata.name",
                        "FieldValueInvalid",
                        "metadata.name: Invalid value: field is immutable",
                    )
                ],
            )
        if str(m.get("resourceVersion") or "") != meta(old).get("resourceVersion"):
            if m.get("resourceVersion"):
                raise errors.conflict(rtype.plural, rtype.group, name)
        return self._update(rtype, old, doc, subresource, strict=strict)

    def _update(
        self,
        rtype: ResourceType,
        old: dict[str, Any],
        new: dict[str, Any],
        subresource: str | None,
        *,
        strict: bool = False,
    ) -> dict[str, Any]:
        candidate = merge_for_update(rtype, old, new, subresource)
        candidate["apiVersion"], candidate["kind"] = rtype.api_version, rtype.kind
        check_new_finalizers(rtype, old, candidate)
        self._admit(rtype, candidate, strict=strict, old=old)
        if tracks_generation(rtype) and spec_part(rtype, old) != spec_part(rtype, candidate):
            candidate["metadata"]["generation"] = int(meta(old).get("generation") or 1) + 1
        if rtype.key == CRD_KEY:
            candidate["status"] = crd_status(candidate, old.get("status"))
        if candidate == old:
            return old
        m = candidate["metadata"]
        if m.get("deletionTimestamp") and not m.get("finalizers"):
            return self._remove(rtype, candidate, orphan=False, store_first=True)
        stored = self.store.put(rtype.key, candidate)
        if rtype.key == CRD_KEY:
            self.registry.register_crd(stored)
        return stored

    # Delete.

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Delete; the answer is what a real server sends (see :func:`delete_answer`)."""
        obj, removed = self._delete(rtype, namespace, name, options)
        return delete_answer(rtype, obj) if removed else obj

    def _delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        options: dict[str, Any] | None,
    ) -> tuple[dict[str, Any], bool]:
        """The object after the delete, and whether it is gone (not held by finalizers)."""
        old = self.get(rtype, namespace, name)
        options = options or {}
        check_preconditions(rtype, old, options.get("preconditions") or {})
        policy = options.get("propagationPolicy")
        orphan = policy == "Orphan" or (policy is None and options.get("orphanDependents") is True)
        m = meta(old)
        if policy == "Foreground" and not m.get("deletionTimestamp"):
            if self.gc.dependents_in_scope(rtype, old):
                return self._delete_foreground(rtype, old), False
        if m.get("finalizers") or rtype.key == NAMESPACE_KEY:
            if m.get("deletionTimestamp"):
                return old, False
            marked = copy.deepcopy(old)
            marked["metadata"]["deletionTimestamp"] = now()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            if rtype.key == NAMESPACE_KEY:
                marked["status"] = {**(old.get("status") or {}), "phase": "Terminating"}
            stored = self.store.put(rtype.key, marked)
            if rtype.key == NAMESPACE_KEY:
                self.schedule(lambda: self._empty_namespace(name))
            return stored, False
        return self._remove(rtype, old, orphan=orphan), True

    def _delete_foreground(self, rtype: ResourceType, old: dict[str, Any]) -> dict[str, Any]:
        """Hold the owner with the foregroundDeletion finalizer while its dependents go."""
        marked = copy.deepcopy(old)
        m = marked["metadata"]
        m["deletionTimestamp"] = now()
        m["deletionGracePeriodSeconds"] = 0
        m["finalizers"] = [*(m.get("finalizers") or []), FOREGROUND_FINALIZER]
        stored = self.store.put(rtype.key, marked)
        self.gc.delete_dependents(rtype, stored)
        return stored

    def delete_collection(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        listed = self.list(
            rtype, namespace, label_selector=label_selector, field_selector=field_selector
        )
        items = []
        for obj in listed["items"]:
            m = meta(obj)
            try:
                items.append(self._delete(rtype, m.get("namespace"), m["name"], options)[0])
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return {**listed, "items": items, "metadata": {"resourceVersion": str(self.store.rv)}}

    def _remove(
        self,
        rtype: ResourceType,
        obj: dict[str, Any],
        *,
        orphan: bool,
        store_first: bool = False,
    ) -> dict[str, Any]:
        m = meta(obj)
        namespace, name = str(m.get("namespace") or ""), str(m["name"])
        if store_first:
            self.store.put(rtype.key, obj)
        removed = self.store.remove(rtype.key, namespace, name) or obj
        self.gc.owner_gone(str(m.get("uid")), namespace if rtype.namespaced else None, orphan)
        self.gc.dependent_gone(removed)
        if rtype.key == CRD_KEY:
            for served in self.registry.unregister_crd(name):
                self.store.drop_resource(served.key)
        if rtype.namespaced:
            ns = self.store.get(NAMESPACE_KEY, "", namespace)
            if ns is not None and meta(ns).get("deletionTimestamp"):
                self.schedule(lambda: self._empty_namespace(namespace))
        return removed

    def _empty_namespace(self, namespace: str) -> None:
        """Delete what a terminating namespace holds; remove it once nothing is left."""
        ns = self.store.get(NAMESPACE_KEY, "", namespace)
        if ns is None or not meta(ns).get("deletionTimestamp"):
            return
        left = 0
        for rtype in [t for t in self.registry.stored_types() if t.namespaced]:
            for obj in self.store.list_objects(rtype.key, namespace):
                if not meta(obj).get("deletionTimestamp"):
                    self._delete_quietly(rtype, namespace, meta(obj)["name"])
                if self.store.get(rtype.key, namespace, meta(obj)["name"]) is not None:
                    left += 1
        if left == 0 and self.store.get(NAMESPACE_KEY, "", namespace) is not None:
            self.store.remove(NAMESPACE_KEY, "", namespace)

    def _delete_quietly(self, rtype: ResourceType, namespace: str, name: str) -> None:
        """Delete as a controller would: an error is logged, not raised into the event loop."""
        try:
            self.delete(rtype, namespace, name)
        except ApiError as exc:
            if exc.code != 404:
                log.warning(
                    "failed to delete object of a terminating namespace",
                    resource=rtype.key,
                    namespace=namespace,
                    name=name,
                    error=exc.message,
                )

    # Helpers.

    def _checked_body(self, rtype: ResourceType, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request(
                f"the body of the request must be a JSON object, not {type(body).__name__}"
            )
        obj = copy.deepcopy(body)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != rtype.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({rtype.api_version})"
            )
        if kind and kind != rtype.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})"
            )
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        problem = decode_problem(obj, builtin=not rtype.custom)
        if problem:
            raise errors.bad_request(f"the body of the request could not be decoded: {problem}")
        if obj.get("metadata") is None:
            obj["metadata"] = {}
        return obj

    def _place(self, rtype: ResourceType, namespace: str | None, m: dict[str, Any]) -> None:
        if not rtype.namespaced:
            m.pop("namespace", None)
            return
        if m.get("namespace") and namespace and m["namespace"] != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        m["namespace"] = namespace or m.get("namespace") or "default"

    def _admit(
        self,
        rtype: ResourceType,
        obj: dict[str, Any],
        *,
        strict: bool = False,
        old: dict[str, Any] | None = None,
    ) -> None:
        """Validate metadata; prune, default and validate a custom resource against its schema.

        ``strict`` is ``fieldValidation=Strict``: unknown fields are refused (400) instead of
        silently pruned.
        """
        name = str(meta(obj).get("name", ""))
        causes = validate_metadata(meta(obj))
        if rtype.key == "/pods":
            causes += validate_pod(obj, old)
        elif rtype.key == CRD_KEY:
            causes += validate_crd(obj)
        if rtype.schema is not None:
            pruned = prune_and_default(rtype.schema, obj)
            if strict and pruned:
                unknown = ", ".join(f'unknown field "{path}"' for path in pruned)
                raise errors.bad_request(f"strict decoding error: {unknown}")
            causes += validate_schema(rtype.schema, obj)
        if causes:
            raise errors.invalid(rtype.kind, rtype.group, name, causes)
