"""The lab's own admin endpoints under ``/_lab/`` (not part of the Kubernetes API).

- ``GET /_lab/faults``: current fault settings.
- ``POST /_lab/faults``: ``{"failWrites": {"count": 3, "code": 503, "resource":
  "ipallocations", "verbs": ["create"]}, "delayMs": 20}`` (each key optional).
- ``DELETE /_lab/faults``: all faults off.
- ``POST /_lab/faults/cut-watches``: end every open watch stream now;
  ``?mode=reset`` drops the connections instead (the client sees a broken stream).
- ``POST /_lab/compact``: forget the event history (watches from older
  resourceVersions get 410 Gone), like etcd compaction.
- ``GET /_lab/audit?userAgent=ipam&verb=create&resource=ipallocations``:
  recorded requests (``userAgent`` matches as a substring); ``DELETE`` clears.
- ``GET /_lab/stats``: resourceVersion, object counts, open watches.
- ``/healthz``, ``/livez``, ``/readyz``: ``ok``.
"""

from __future__ import annotations

import json

from aiohttp import web

from e2e.apiserver import discovery, errors
from e2e.apiserver.audit import AuditLog
from e2e.apiserver.faults import Faults, FaultSpecError
from e2e.apiserver.handlers import json_response
from e2e.apiserver.objects import ObjectApi


class AdminHandlers:
    def __init__(self, api: ObjectApi, audit: AuditLog, faults: Faults) -> None:
        self.api = api
        self.audit = audit
        self.faults = faults

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_lab/faults", self.get_faults),
            web.post("/_lab/faults", self.set_faults),
            web.delete("/_lab/faults", self.clear_faults),
            web.post("/_lab/faults/cut-watches", self.cut_watches),
            web.post("/_lab/compact", self.compact),
            web.get("/_lab/audit", self.get_audit),
            web.delete("/_lab/audit", self.clear_audit),
            web.get("/_lab/stats", self.stats),
            web.get("/healthz", self.ok),
            web.get("/livez", self.ok),
            web.get("/readyz", self.ok),
            web.get("/version", self.version),
            web.get("/version/", self.version),
        ]

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(self.faults.to_dict())

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            spec = json.loads(await request.text() or "{}")
            if not isinstance(spec, dict):
                raise FaultSpecError("the fault request must be a JSON object")
            self.faults.update(spec)
        except (ValueError, TypeError) as exc:
            raise errors.bad_request(f"failed to set faults: {exc}") from exc
        return json_response(self.faults.to_dict())

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.faults.reset()
        return json_response(self.faults.to_dict())

    async def cut_watches(self, request: web.Request) -> web.Response:
        reset = request.query.get("mode") == "reset"
        return json_response({"cut": self.api.store.end_watches(reset=reset)})

    async def compact(self, request: web.Request) -> web.Response:
        self.api.store.compact()
        return json_response({"compactedTo": self.api.store.rv})

    async def get_audit(self, request: web.Request) -> web.Response:
        q = request.query
        records = self.audit.query(
            user_agent=q.get("userAgent"), verb=q.get("verb"), resource=q.get("resource")
        )
        return json_response({"records": records})

    async def clear_audit(self, request: web.Request) -> web.Response:
        self.audit.clear()
        return json_response({"records": []})

    async def stats(self, request: web.Request) -> web.Response:
        store = self.api.store
        return json_response(
            {
                "resourceVersion": store.rv,
                "historyFloor": store.floor,
                "objects": {key: len(objs) for key, objs in sorted(store.objects.items())},
                "watches": sum(len(s) for s in store.subscriptions.values()),
                "faults": self.faults.to_dict(),
            }
        )

    async def ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def version(self, request: web.Request) -> web.Response:
        return json_response(discovery.SERVER_VERSION)
