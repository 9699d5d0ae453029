"""List-then-watch cache of one resource, with relist on 410 Gone and on errors.

An :class:`Informer` keeps every object of one resource in memory, keyed by
``namespace/name`` (or ``name`` when cluster-scoped), and calls a handler for
each change. It lists, then watches from the list's resourceVersion; a watch
that ends (server timeout, dropped connection) resumes from the last version
seen (a stream ended by :meth:`Informer.stop` is not a failure and is logged at
debug level only); a 410 Gone (the version is too old) or any other error relists. A
relist compares the fresh list with the cache and reports the differences as
ADDED / MODIFIED / DELETED, so an object deleted while the watch was down is
still reported as deleted, with its last known state (also when another
object took its name meanwhile: a different UID is a different object).

The handler runs on the informer's thread and must be quick (it only queues
keys). A periodic resync is the controller's business: it re-queues every key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kubernetes import watch as k8s_watch

from vmoverlay import kube
from vmoverlay.logs import StructLogger

Obj = dict[str, Any]
Handler = Callable[[str, Obj | None, Obj | None], None]
ListFn = Callable[..., Any]

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _rv(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    def __init__(
        self,
        *,
        resource: str,
        list_fn: ListFn,
        handler: Handler,
        log: StructLogger,
        watch_timeout: int = 30,
    ) -> None:
        self.resource = resource
        self._list_fn = list_fn
        self._handler = handler
        self._log = log.bind(resource=resource)
        self._watch_timeout = watch_timeout
        self._lock = threading.Lock()
        self._cache: dict[str, Obj] = {}
        self._stop = threading.Event()
        self.synced = threading.Event()
        self._watch: k8s_watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"informer-{resource}", daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._cache.get(key)

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._cache.values())

    def _run(self) -> None:
        delays = kube.backoff_delays(base=0.2, cap=5.0)
        while not self._stop.is_set():
            try:
                version = self._relist()
                self.synced.set()
                delays = kube.backoff_delays(base=0.2, cap=5.0)
                self._watch_from(version)
            except kube.Gone:
                self._log.info("watch version expired, relisting")
            except kube.KubeError as exc:
                if self._stop.is_set():
                    self._log.debug("list/watch ended by stop", error=str(exc))
                    return
                delay = next(delays)
                self._log.warning(
                    "list/watch failed, will relist", error=str(exc), retry_in=f"{delay:.2f}s"
                )
                self._stop.wait(delay)

    def _relist(self) -> str:
        with kube.api_errors():
            answer = self._list_fn(_request_timeout=30)
        fresh = {object_key(o): o for o in answer.get("items") or []}
        with self._lock:
            old, self._cache = self._cache, dict(fresh)
        for key, gone in old.items():
            now = fresh.get(key)
            if now is None or _uid(now) != _uid(gone):
                # Gone, or deleted and created again under the same name while the
                # watch was down: the old object's deletion must be reported too.
                self._handler(DELETED, gone, None)
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None or _uid(before) != _uid(obj):
                self._handler(ADDED, None, obj)
            elif _rv(before) != _rv(obj):
                self._handler(MODIFIED, before, obj)
        return str((answer.get("metadata") or {}).get("resourceVersion") or "")

    def _watch_from(self, version: str) -> None:
        """Watch until stopped; resume after a stream ends or drops; raise on 410 and errors.

        A stream that drops again and again (API server down) resumes after a
        growing delay, up to 5 s; one that delivered events resumes at once.
        """
        drops = 0
        while not self._stop.is_set():
            self._watch = k8s_watch.Watch()
            stream = self._watch.stream(
                self._list_fn,
                resource_version=version,
                timeout_seconds=self._watch_timeout,
                allow_watch_bookmarks=True,
                _request_timeout=self._watch_timeout + 15,
            )
            try:
                with kube.api_errors():
                    for event in stream:
                        version = self._apply(event) or version
                        drops = 0
                        if self._stop.is_set():
                            return
            except kube.Unavailable as exc:
                if self._stop.is_set():
                    # stop() closed the stream itself: not a failure.
                    self._log.debug("watch stream closed by stop", version=version)
                    return
                # A dropped stream: resume from the last version; 410 relists.
                delay = min(5.0, 0.05 * (2**drops))
                drops += 1
                self._log.info(
                    "watch stream dropped, resuming",
                    version=version,
                    attempt=drops,
                    retry_in=f"{delay:.2f}s",
                    error=str(exc),
                )
                self._stop.wait(delay)

    def _apply(self, event: dict[str, Any]) -> str:
        kind = str(event.get("type"))
        obj = event.get("raw_object") or event.get("object")
        if not isinstance(obj, dict):
            return ""
        if kind == "BOOKMARK":
            return _rv(obj)
        key = object_key(obj)
        with self._lock:
            before = self._cache.get(key)
            if kind == DELETED:
                self._cache.pop(key, None)
            else:
                self._cache[key] = obj
        if kind == DELETED:
            self._handler(DELETED, before or obj, None)
        else:
            self._handler(ADDED if before is None else MODIFIED, before, obj)
        return _rv(obj)
