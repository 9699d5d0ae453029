"""Garbage collection of dependents through ``metadata.ownerReferences``.

Background propagation, as the real garbage collector does it, but at once
instead of seconds later: when an owner is removed, each dependent that has no
other existing owner is deleted (through the normal delete path, so its own
finalizers and dependents are honoured); a dependent that still has another
owner only loses the reference to the removed one. With ``Orphan`` the
references are stripped and nothing is deleted.

Which dependents count: a namespaced owner only owns dependents in its own
namespace; a cluster-scoped owner owns cluster-scoped and namespaced ones.
A dependent created with owner references none of which exists (by uid, in
scope) is deleted too, like the real collector does with dangling owners.

Foreground propagation: the owner is held by the ``foregroundDeletion``
finalizer; its dependents are deleted (in the foreground too), and once none
with ``blockOwnerDeletion`` is left the finalizer goes and so does the owner.

Work is handed to the server's ``schedule`` (the event loop's ``call_soon``),
so the DELETE answer goes out first and the dependents' events follow it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from e2e.apiserver.errors import ApiError
from e2e.apiserver.store import Location, meta, owner_uids
from vmoverlay.logs import get_logger

if TYPE_CHECKING:
    from e2e.apiserver.objects import ObjectApi
    from e2e.apiserver.resources import ResourceType

log = get_logger("lab-apiserver")

FOREGROUND = "foregroundDeletion"


class GarbageCollector:
    def __init__(self, api: ObjectApi, schedule: Callable[[Callable[[], None]], None]) -> None:
        self.api = api
        self.schedule = schedule

    def owner_gone(self, uid: str, namespace: str | None, orphan: bool) -> None:
        """``uid`` was removed; ``namespace`` is the owner's, ``None`` for a cluster-scoped one."""
        if self.api.store.dependents_of(uid):
            self.schedule(lambda: self._collect(uid, namespace, orphan))

    def dependents_in_scope(self, rtype: ResourceType, owner: dict[str, Any]) -> list[Location]:
        """Dependents the owner can have: its namespace's, or any for a cluster-scoped owner."""
        uid = str(meta(owner).get("uid"))
        namespace = meta(owner).get("namespace") if rtype.namespaced else None
        return [
            loc
            for loc in self.api.store.dependents_of(uid)
            if namespace is None or loc[1] == namespace
        ]

    def delete_dependents(self, rtype: ResourceType, owner: dict[str, Any]) -> None:
        """Foreground deletion: delete every dependent (in the foreground too), then re-check."""
        uid = str(meta(owner).get("uid"))

        def run() -> None:
            for key, dep_ns, name in self.dependents_in_scope(rtype, owner):
                dep_type = self.api.registry.by_key(key)
                if dep_type is None:
                    continue
                try:
                    self._delete(dep_type, dep_ns or None, name, "Foreground")
                except ApiError as exc:
                    log.warning(
                        "failed to delete dependent", resource=key, name=name, error=exc.message
                    )
            self._release_foreground(uid)

        self.schedule(run)

    def dependent_gone(self, obj: dict[str, Any]) -> None:
        """An object was removed: an owner waiting for it in the foreground may go now."""
        for uid in owner_uids(obj):
            self.schedule(functools.partial(self._release_foreground, uid))

    def _release_foreground(self, uid: str) -> None:
        where = self.api.store.locate(uid)
        if where is None:
            return
        key, namespace, name = where
        owner = self.api.store.get(key, namespace, name)
        rtype = self.api.registry.by_key(key)
        if owner is None or rtype is None:
            return
        finalizers = meta(owner).get("finalizers") or []
        if FOREGROUND not in finalizers or not meta(owner).get("deletionTimestamp"):
            return
        if any(self._blocks(loc, uid) for loc in self.dependents_in_scope(rtype, owner)):
            return
        released = copy.deepcopy(owner)
        released["metadata"]["finalizers"] = [f for f in finalizers if f != FOREGROUND]
        try:
            self.api.replace(rtype, namespace or None, name, released)
        except ApiError as exc:
            log.warning(
                "failed to finish foreground deletion", resource=key, name=name, error=exc.message
            )

    def _blocks(self, loc: Location, uid: str) -> bool:
        obj = self.api.store.get(*loc)
        refs = meta(obj).get("ownerReferences") or [] if obj else []
        return any(
            isinstance(r, dict) and r.get("uid") == uid and r.get("blockOwnerDeletion")
            for r in refs
        )

    def check_owners(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        refs = meta(obj).get("ownerReferences") or []
        if refs and not any(self._owner_exists(r, obj) for r in refs):
            m = meta(obj)
            self.schedule(
                lambda: self._delete_dangling(rtype, m.get("namespace"), m["name"], m["uid"])
            )

    def _owner_exists(self, ref: Any, dependent: dict[str, Any]) -> bool:
        if not isinstance(ref, dict):
            return False
        where = self.api.store.locate(str(ref.get("uid")))
        if where is None:
            return False
        _, owner_ns, _ = where
        return owner_ns == "" or owner_ns == (meta(dependent).get("namespace") or "")

    def _delete_dangling(
        self, rtype: ResourceType, namespace: str | None, name: str, uid: str
    ) -> None:
        obj = self.api.store.get(rtype.key, namespace or "", name)
        if obj is None or meta(obj).get("uid") != uid:
            return
        refs = meta(obj).get("ownerReferences") or []
        if refs and not any(self._owner_exists(r, obj) for r in refs):
            log.info("deleting dependent whose owners are absent", resource=rtype.key, name=name)
            try:
                self._delete(rtype, namespace, name)
            except ApiError as exc:
                log.warning(
                    "failed to delete dependent", resource=rtype.key, name=name, error=exc.message
                )

    def _collect(self, uid: str, namespace: str | None, orphan: bool) -> None:
        for key, dep_ns, name in self.api.store.dependents_of(uid):
            if namespace is not None and dep_ns != namespace:
                continue
            rtype = self.api.registry.by_key(key)
            obj = self.api.store.get(key, dep_ns, name)
            if rtype is None or obj is None:
                continue
            refs = meta(obj).get("ownerReferences") or []
            others = [r for r in refs if isinstance(r, dict) and r.get("uid") != uid]
            try:
                if orphan or any(self._owner_exists(r, obj) for r in others):
                    self._strip(rtype, obj, others)
                else:
                    self._delete(rtype, dep_ns or None, name)
            except ApiError as exc:
                log.warning(
                    "failed to collect dependent", resource=key, name=name, error=exc.message
                )

    def _strip(self, rtype: ResourceType, obj: dict[str, Any], refs: list[Any]) -> None:
        new = copy.deepcopy(obj)
        if refs:
            new["metadata"]["ownerReferences"] = refs
        else:
            new["metadata"].pop("ownerReferences", None)
        m = meta(obj)
        self.api.replace(rtype, m.get("namespace"), m["name"], new)

    def _delete(
        self, rtype: ResourceType, namespace: str | None, name: str, policy: str = "Background"
    ) -> None:
        try:
            self.api.delete(rtype, namespace, name, {"propagationPolicy": policy})
        except ApiError as exc:
            if exc.code != 404:
                raise
