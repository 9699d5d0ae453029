"""HTTP handlers: parse a Kubernetes API request, call :class:`ObjectApi`, answer JSON.

Resource paths are parsed here rather than by the router, because the API's
paths are ambiguous for a pattern router (``/api/v1/namespaces/x/status`` is a
namespace's status, ``/api/v1/namespaces/x/pods`` a list of pods):

    /api/v1[/namespaces/NS]/PLURAL[/NAME[/SUBRESOURCE]]
    /apis/GROUP/VERSION[/namespaces/NS]/PLURAL[/NAME[/SUBRESOURCE]]

Every request is recorded in the audit log with its User-Agent, verb and
resource; writes may be failed and every request delayed by fault injection.
Errors are :class:`ApiError` answered as ``Status``; any other exception is
caught at the one top-level place (:func:`error_middleware`), logged, and
answered 500 so the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from e2e.apiserver import discovery, errors
from e2e.apiserver.audit import AuditLog
from e2e.apiserver.errors import ApiError
from e2e.apiserver.faults import Faults
from e2e.apiserver.objects import ObjectApi
from e2e.apiserver.patch import JSON_PATCH, MERGE_PATCH
from e2e.apiserver.resources import ResourceType
from e2e.apiserver.views import ViewApi, resource_api, storage_selector
from e2e.apiserver.watch import DEFAULT_TIMEOUT, WatchRequest, serve_watch
from vmoverlay.logs import get_logger

log = get_logger("lab-apiserver")

MAX_BODY = 3 * 1024 * 1024
NAMESPACE_SUBRESOURCES = ("status", "finalize")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
# Where a create request keeps the name of its object for the audit record.
AUDIT_NAME = web.RequestKey("audit_name", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Target:
    """What a resource path addresses."""

    group: str
    version: str
    namespace: str | None
    plural: str | None
    name: str | None
    subresource: str | None


def parse_path(path: str) -> Target | None:
    """Split an API path; None when it is not a resource path at all."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if (
        len(rest) >= 3
        and rest[0] == "namespaces"
        and not (len(rest) == 3 and rest[2] in NAMESPACE_SUBRESOURCES and group == "")
    ):
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return None
    rest += [None] * (3 - len(rest))  # type: ignore[list-item]
    return Target(group, version, namespace, rest[0], rest[1], rest[2])


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.status(), exc.code)
    except web.HTTPException:
        raise
    except Exception as exc:  # the one top-level place: report, answer 500, keep serving
        log.exception("request failed", method=request.method, path=request.path)
        error = errors.internal(f"{type(exc).__name__}: {exc}")
        return json_response(error.status(), 500)


class ResourceHandlers:
    def __init__(
        self,
        api: ObjectApi,
        audit: AuditLog,
        faults: Faults,
        *,
        bookmark_interval: float = 5.0,
        max_body: int = MAX_BODY,
    ) -> None:
        self.api = api
        self.audit = audit
        self.faults = faults
        self.bookmark_interval = bookmark_interval
        self.max_body = max_body

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.faults.delay_ms:
            await asyncio.sleep(self.faults.delay_ms / 1000)
        target = parse_path(request.path)
        if target is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if target.plural is None:
            return self._discovery(request, target)
        rtype = self.api.resource(target.group, target.version, target.plural)
        verb = _verb(request, target)
        code = 500
        try:
            response = await self._serve(request, rtype, target, verb)
            code = response.status
            return response
        except ApiError as exc:
            code = exc.code
            raise
        finally:
            self.audit.record(
                user_agent=request.headers.get("User-Agent", ""),
                verb=verb,
                group=target.group,
                resource=target.plural,
                subresource=target.subresource or "",
                namespace=target.namespace or "",
                name=target.name or request.get(AUDIT_NAME, ""),
                code=code,
            )

    def _discovery(self, request: web.Request, target: Target) -> web.Response:
        doc = discovery.resource_list(self.api.registry, target.group, target.version)
        if doc is None or target.namespace is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return json_response(doc)

    async def _serve(
        self, request: web.Request, rtype: ResourceType, target: Target, verb: str
    ) -> web.StreamResponse:
        self._check_scope(rtype, target, verb)
        if verb in WRITE_VERBS:
            failure = self.faults.write_failure(verb, rtype.plural)
            if failure is not None:
                raise failure
            if request.query.get("dryRun"):
                # Refused rather than ignored: ignoring it would write what was only tried.
                raise errors.bad_request("dryRun is not supported by the lab API server")
            return await self._write(request, rtype, target, verb)
        q = request.query
        ops = resource_api(self.api, rtype)
        if verb == "get":
            obj = ops.get(target.namespace, target.name or "")
            return self._answer(request, rtype, [obj], single=True)
        if verb == "list":
            listed = ops.list(
                target.namespace,
                label_selector=q.get("labelSelector"),
                field_selector=q.get("fieldSelector"),
                limit=_int(q.get("limit"), "limit"),
                continue_token=q.get("continue"),
            )
            return self._answer(request, rtype, listed["items"], list_doc=listed)
        return await self._watch(request, rtype, target.namespace)

    async def _write(
        self, request: web.Request, rtype: ResourceType, target: Target, verb: str
    ) -> web.Response:
        q = request.query
        ops = resource_api(self.api, rtype)
        ns, name, sub = target.namespace, target.name or "", target.subresource
        strict = q.get("fieldValidation") == "Strict"
        if verb == "create":
            body = await self._body(request)
            # The audit record names the object, as a real audit log does: the name
            # in the body, then the one the server made (generateName).
            request[AUDIT_NAME] = _body_name(body)
            created = ops.create(ns, body, strict=strict)
            request[AUDIT_NAME] = _body_name(created)
            return json_response(created, 201)
        if verb == "update":
            body = await self._body(request)
            return json_response(ops.replace(ns, name, body, subresource=sub, strict=strict))
        if verb == "patch":
            patch = await self._body(request)
            return json_response(
                ops.patch(ns, name, request.content_type, patch, subresource=sub, strict=strict)
            )
        options = await self._delete_options(request)
        if verb == "delete":
            return json_response(ops.delete(ns, name, options))
        return json_response(
            ops.delete_collection(
                ns,
                label_selector=q.get("labelSelector"),
                field_selector=q.get("fieldSelector"),
                options=options,
            )
        )

    def _check_scope(self, rtype: ResourceType, target: Target, verb: str) -> None:
        if target.namespace is not None and not rtype.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if target.subresource not in (None, "status") or (
            target.subresource == "status" and not rtype.has_status
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if rtype.namespaced and target.namespace is None and verb not in ("list", "watch"):
            raise errors.method_not_allowed(
                f"{verb} of namespaced {rtype.plural} needs a namespace in the path"
            )
        if verb in ("update", "patch") and not target.name:
            raise errors.method_not_allowed(f"{verb} needs the name of a {rtype.kind}")
        if target.subresource and verb not in ("get", "update", "patch"):
            raise errors.method_not_allowed(f"{verb} is not supported on {rtype.plural}/status")

    def _answer(
        self,
        request: web.Request,
        rtype: ResourceType,
        items: list[dict[str, Any]],
        *,
        single: bool = False,
        list_doc: dict[str, Any] | None = None,
    ) -> web.Response:
        if "as=Table" in request.headers.get("Accept", ""):
            list_meta = (list_doc or {}).get("metadata") or {
                "resourceVersion": str(self.api.store.rv)
            }
            return json_response(discovery.table(rtype, items, list_meta))
        return json_response(items[0] if single else list_doc)

    async def _watch(
        self, request: web.Request, rtype: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        q = request.query
        timeout = float(_int(q.get("timeoutSeconds"), "timeoutSeconds") or DEFAULT_TIMEOUT)
        ops = resource_api(self.api, rtype)
        if isinstance(ops, ViewApi):
            match = self.api.matcher(
                ops.stored, q.get("labelSelector"), storage_selector(q.get("fieldSelector"))
            )
        else:
            match = self.api.matcher(rtype, q.get("labelSelector"), q.get("fieldSelector"))
        req = WatchRequest(
            rtype=rtype,
            namespace=namespace,
            resource_version=q.get("resourceVersion"),
            match=match,
            convert=ops.out if isinstance(ops, ViewApi) else None,
            timeout=timeout,
            bookmarks=_true(q.get("allowWatchBookmarks")),
            initial_events_end=_true(q.get("sendInitialEvents")),
            as_table="as=Table" in request.headers.get("Accept", ""),
        )
        return await serve_watch(request, self.api.store, req, self.bookmark_interval)

    async def _body(self, request: web.Request) -> Any:
        if request.content_length is not None and request.content_length > self.max_body:
            raise errors.too_large(self.max_body)
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(1 << 16):
            size += len(chunk)
            if size > self.max_body:
                raise errors.too_large(self.max_body)
            chunks.append(chunk)
        raw = b"".join(chunks)
        content_type = request.content_type
        if "protobuf" in content_type:
            # Limitation: no protobuf; kubectl's imperative create commands send it.
            raise errors.unsupported_media_type(content_type, errors.BODY_TYPES)
        try:
            if "yaml" in content_type and "apply-patch" not in content_type:
                return yaml.safe_load(raw.decode())
            return json.loads(raw.decode() or "null")
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(
                f"the body of the request could not be decoded: {exc}"
            ) from exc

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if request.can_read_body:
            body = await self._body(request)
            if isinstance(body, dict):
                options.update(body)
            elif body is not None:
                raise errors.bad_request("DeleteOptions must be a JSON object")
        for key in ("propagationPolicy", "gracePeriodSeconds"):
            if key in request.query:
                options[key] = request.query[key]
        if "orphanDependents" in request.query:
            options["orphanDependents"] = _true(request.query["orphanDependents"])
        return options


def _verb(request: web.Request, target: Target) -> str:
    method = request.method
    if method == "GET":
        if target.name:
            return "get"
        return "watch" if _true(request.query.get("watch")) else "list"
    if method == "POST":
        if target.name:
            raise errors.method_not_allowed("POST to a named object is not allowed")
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        if (
            request.content_type not in (JSON_PATCH, MERGE_PATCH)
            and "patch" not in request.content_type
        ):
            raise errors.unsupported_media_type(request.content_type)
        return "patch"
    if method == "DELETE":
        return "delete" if target.name else "deletecollection"
    raise errors.method_not_allowed(f"the server does not allow the method {method}")


def _body_name(body: Any) -> str:
    """``metadata.name`` of a request or answer body, or "" when it has none."""
    meta = body.get("metadata") if isinstance(body, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else ""


def _true(value: str | None) -> bool:
    return value in ("true", "1", "True")


def _int(value: str | None, name: str) -> int:
    if value in (None, ""):
        return 0
    try:
        return int(str(value))
    except ValueError as exc:
        raise errors.bad_request(f"invalid value for {name}: {value!r}") from exc
