"""The object store: objects in memory, one global resourceVersion, an event log for watches.

Everything runs on the server's single event loop, so each method is atomic
without locks. Objects are stored as plain dicts that are never mutated once
stored: every write stores a fresh dict. That makes it safe to hand the same
dict to list answers and to every watcher.

- ``objects[key][(namespace, name)]``: one dict per resource (``key`` is
  ``group/plural``; cluster-scoped objects have namespace ``""``).
- ``rv``: the global resourceVersion, incremented by every write (create,
  update, delete) and written into the object (``metadata.resourceVersion``).
- ``history``: a bounded log of the latest events; a watch from resourceVersion
  R replays the events after R from it, and fails with 410 Gone (the caller
  raises) when events after R were already dropped (``floor`` > R).
- ``uids`` and ``dependents``: indexes for garbage collection (uid -> where,
  owner uid -> objects that name it in ``ownerReferences``).
- ``persistence``: when given, every write is written through to it (SQLite)
  before the caller acknowledges it, so an acknowledged write survives a crash.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

ObjKey = tuple[str, str]  # (namespace, name)
RESET = "reset"  # queued to a watcher: drop the connection
Location = tuple[str, str, str]  # (resource key, namespace, name)


class Persistence(Protocol):
    def save(self, key: str, namespace: str, name: str, obj: dict[str, Any], rv: int) -> None: ...

    def delete(self, key: str, namespace: str, name: str, rv: int) -> None: ...

    def load(self) -> tuple[int, list[tuple[str, dict[str, Any]]]]: ...

    def close(self) -> None: ...


@dataclass
class Event:
    """One write as watchers see it. ``old`` is the object before the write (None for ADDED)."""

    rv: int
    type: str
    key: str
    namespace: str
    obj: dict[str, Any]
    old: dict[str, Any] | None
    _line: bytes | None = field(default=None, repr=False)

    def line(self) -> bytes:
        """The event as one line of the watch stream (serialized once, shared by watchers)."""
        if self._line is None:
            self._line = (
                json.dumps({"type": self.type, "object": self.obj}, separators=(",", ":")) + "\n"
            ).encode()
        return self._line


@dataclass(eq=False)
class Subscription:
    """A watcher's queue of events for one resource key.

    ``None`` in the queue ends the watch cleanly; :data:`RESET` drops its connection.
    """

    key: str
    queue: asyncio.Queue[Event | str | None] = field(default_factory=asyncio.Queue)


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def owner_uids(obj: dict[str, Any] | None) -> set[str]:
    if not obj:
        return set()
    refs = meta(obj).get("ownerReferences") or []
    return {str(r.get("uid")) for r in refs if isinstance(r, dict) and r.get("uid")}


class Store:
    def __init__(self, *, history: int = 10000, persistence: Persistence | None = None) -> None:
        if history < 1:
            raise ValueError(f"history must keep at least 1 event, not {history}")
        self.objects: dict[str, dict[ObjKey, dict[str, Any]]] = {}
        self.rv = 0
        self.floor = 0
        self.history: deque[Event] = deque()
        self.history_size = history
        self.uids: dict[str, Location] = {}
        self.dependents: dict[str, set[Location]] = {}
        self.subscriptions: dict[str, set[Subscription]] = {}
        # Set on shutdown: every watch ends at once, new ones too.
        self.closing = False
        # Sorted keys per resource, rebuilt on the next list after a create or delete.
        self._sorted: dict[str, list[ObjKey]] = {}
        self.persistence = persistence
        if persistence is not None:
            self._load(persistence)

    def _load(self, persistence: Persistence) -> None:
        rv, rows = persistence.load()
        for key, obj in rows:
            m = meta(obj)
            self._index(key, str(m.get("namespace") or ""), str(m.get("name")), None, obj)
            self.objects.setdefault(key, {})[(str(m.get("namespace") or ""), str(m["name"]))] = obj
        self.rv = rv
        self.floor = rv

    # Reads.

    def get(self, key: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(key, {}).get((namespace, name))

    def list_objects(self, key: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Objects of one resource, sorted by (namespace, name); ``None`` means every namespace."""
        bucket = self.objects.get(key, {})
        order = self._sorted.get(key)
        if order is None:
            order = self._sorted[key] = sorted(bucket)
        if namespace is None:
            return [bucket[k] for k in order]
        return [bucket[k] for k in order if k[0] == namespace]

    def count(self, key: str) -> int:
        return len(self.objects.get(key, {}))

    def locate(self, uid: str) -> Location | None:
        return self.uids.get(uid)

    def dependents_of(self, uid: str) -> list[Location]:
        return sorted(self.dependents.get(uid, ()))

    # Writes.

    def next_rv(self) -> int:
        return self.rv + 1

    def put(self, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` (create or replace) with a new resourceVersion; returns the stored dict."""
        m = meta(obj)
        namespace, name = str(m.get("namespace") or ""), str(m["name"])
        old = self.get(key, namespace, name)
        self.rv += 1
        obj["metadata"] = {**m, "resourceVersion": str(self.rv)}
        if self.persistence is not None:
            self.persistence.save(key, namespace, name, obj, self.rv)
        self.objects.setdefault(key, {})[(namespace, name)] = obj
        if old is None:
            self._sorted.pop(key, None)
        self._index(key, namespace, name, old, obj)
        self._emit(Event(self.rv, "ADDED" if old is None else "MODIFIED", key, namespace, obj, old))
        return obj

    def remove(self, key: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Delete an object; the DELETED event carries it with the deletion's resourceVersion."""
        old = self.get(key, namespace, name)
        if old is None:
            return None
        self.rv += 1
        if self.persistence is not None:
            self.persistence.delete(key, namespace, name, self.rv)
        del self.objects[key][(namespace, name)]
        self._sorted.pop(key, None)
        gone = {**old, "metadata": {**meta(old), "resourceVersion": str(self.rv)}}
        self._index(key, namespace, name, old, None)
        self._emit(Event(self.rv, "DELETED", key, namespace, gone, old))
        return gone

    def drop_resource(self, key: str) -> list[dict[str, Any]]:
        """Remove every object of a resource (its CRD was deleted)."""
        return [
            removed
            for ns, name in sorted(self.objects.get(key, {}))
            if (removed := self.remove(key, ns, name)) is not None
        ]

    def _index(
        self,
        key: str,
        namespace: str,
        name: str,
        old: dict[str, Any] | None,
        new: dict[str, Any] | None,
    ) -> None:
        where = (key, namespace, name)
        if old is not None:
            self.uids.pop(str(meta(old).get("uid")), None)
        if new is not None and meta(new).get("uid"):
            self.uids[str(meta(new)["uid"])] = where
        before, after = owner_uids(old), owner_uids(new)
        for uid in before - after:
            deps = self.dependents.get(uid)
            if deps is not None:
                deps.discard(where)
                if not deps:
                    del self.dependents[uid]
        for uid in after - before:
            self.dependents.setdefault(uid, set()).add(where)

    # Watch support.

    def _emit(self, event: Event) -> None:
        self.history.append(event)
        while len(self.history) > self.history_size:
            self.floor = self.history.popleft().rv
        for sub in self.subscriptions.get(event.key, ()):
            sub.queue.put_nowait(event)

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: older watches get 410."""
        self.history.clear()
        self.floor = self.rv

    def can_replay(self, rv: int) -> bool:
        return rv >= self.floor

    def events_after(self, key: str, rv: int) -> Iterable[Event]:
        """Events of ``key`` after ``rv``; the caller checks :meth:`can_replay` first."""
        return [e for e in self.history if e.rv > rv and e.key == key]

    def subscribe(self, key: str) -> Subscription:
        sub = Subscription(key)
        self.subscriptions.setdefault(key, set()).add(sub)
        if self.closing:
            sub.queue.put_nowait(None)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.subscriptions.get(sub.key)
        if subs is not None:
            subs.discard(sub)

    def end_watches(self, *, reset: bool = False) -> int:
        """End every open watch (fault injection and shutdown); returns how many.

        ``reset`` drops the connections without ending the streams properly, as a
        network failure would; otherwise each stream ends cleanly.
        """
        n = 0
        for subs in self.subscriptions.values():
            for sub in subs:
                sub.queue.put_nowait(RESET if reset else None)
                n += 1
        return n

    def shut_down_watches(self) -> int:
        """End every open watch cleanly and every one opened from now on (shutdown)."""
        self.closing = True
        return self.end_watches()

    def close(self) -> None:
        self.shut_down_watches()
        if self.persistence is not None:
            self.persistence.close()
