"""Watch streams: newline-delimited JSON events, as the real server sends them.

A watch starts from a resourceVersion:

- none or ``"0"``: a synthetic ADDED for every current object, then changes;
- ``R``: every change after R, replayed from the store's history, then live
  ones. When the history no longer reaches back to R the stream carries a
  single ERROR event whose object is a 410 Expired ``Status`` and ends, which is
  what the real server does and what ``kubernetes.watch.Watch`` expects.

With a label or field selector, an object that starts matching is sent as
ADDED and one that stops matching as DELETED. ``allowWatchBookmarks`` adds a
BOOKMARK every ``bookmark_interval`` seconds; ``sendInitialEvents=true`` sends
the current objects as ADDED whatever the resourceVersion (a streaming list)
and ends them with the ``k8s.io/initial-events-end`` bookmark.
``timeoutSeconds`` ends the stream cleanly. When the client asks for
``as=Table`` (``kubectl get --watch``) each object is sent as a one-row Table.

The subscription is made before the replay, so no event can fall between the
replay and the live part; events at or below the last one sent are skipped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from e2e.apiserver import errors
from e2e.apiserver.discovery import table
from e2e.apiserver.resources import ResourceType
from e2e.apiserver.store import RESET, Event, Store
from vmoverlay.logs import get_logger

log = get_logger("lab-apiserver")

DEFAULT_TIMEOUT = 1800.0
CLIENT_CHECK = 1.0


class ConnectionReset(Exception):
    """Raised inside a watch to drop its connection (fault injection)."""


class WatchRequest:
    def __init__(
        self,
        *,
        rtype: ResourceType,
        namespace: str | None,
        resource_version: str | None,
        match: Callable[[dict[str, Any]], bool],
        timeout: float,
        bookmarks: bool,
        initial_events_end: bool,
        as_table: bool = False,
        convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.rtype = rtype
        self.namespace = namespace
        self.resource_version = resource_version
        self.match = match
        self.timeout = timeout
        self.bookmarks = bookmarks
        self.initial_events_end = initial_events_end
        self.as_table = as_table
        self.convert = convert

    def line(self, kind: str, obj: dict[str, Any], shared: Event | None = None) -> bytes:
        """One event line; objects become one-row Tables for kubectl get --watch."""
        if self.convert is not None:
            obj = self.convert(obj)
            shared = None
        if self.as_table:
            rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
            return _line(kind, table(self.rtype, [obj], {"resourceVersion": rv}))
        if shared is not None and shared.type == kind:
            return shared.line()
        return _line(kind, obj)


def _line(kind: str, obj: dict[str, Any]) -> bytes:
    return (json.dumps({"type": kind, "object": obj}, separators=(",", ":")) + "\n").encode()


def _bookmark(rtype: ResourceType, rv: int, initial_end: bool = False) -> bytes:
    m: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        m["annotations"] = {"k8s.io/initial-events-end": "true"}
    return _line("BOOKMARK", {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": m})


def translate(event: Event, req: WatchRequest) -> bytes | None:
    """The line a watcher with this filter gets for ``event``, or None."""
    if req.namespace is not None and event.namespace != req.namespace:
        return None
    now_match = req.match(event.obj)
    if event.type in ("ADDED", "DELETED"):
        return req.line(event.type, event.obj, event) if now_match else None
    was_match = event.old is not None and req.match(event.old)
    if now_match and was_match:
        return req.line("MODIFIED", event.obj, event)
    if now_match:
        return req.line("ADDED", event.obj)
    if was_match:
        return req.line("DELETED", event.obj)
    return None


async def serve_watch(
    request: web.Request, store: Store, req: WatchRequest, bookmark_interval: float
) -> web.StreamResponse:
    start_rv = _parse_rv(req.resource_version)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    sub = store.subscribe(req.rtype.key)
    try:
        await response.prepare(request)
        if start_rv is not None and not store.can_replay(start_rv):
            status = errors.gone(
                f"too old resource version: {start_rv} ({store.floor + 1})"
            ).status()
            await response.write(_line("ERROR", status))
            await response.write_eof()
            return response
        last = await _send_initial(response, store, req, start_rv)
        await _follow(request, response, sub.queue, req, last, bookmark_interval)
        await response.write_eof()
    except ConnectionReset:
        # Fault injection: drop the connection mid-stream, no end-of-stream chunk.
        if request.transport is not None:
            request.transport.close()
    except ConnectionResetError:
        # The client went away mid-stream; there is no one left to answer.
        log.debug("watch client went away", resource=req.rtype.key)
    finally:
        store.unsubscribe(sub)
    return response


def _parse_rv(text: str | None) -> int | None:
    if text in (None, "", "0"):
        return None
    try:
        return int(str(text))
    except ValueError as exc:
        raise errors.bad_request(f"invalid resource version: {text!r}") from exc


async def _send_initial(
    response: web.StreamResponse, store: Store, req: WatchRequest, start_rv: int | None
) -> int:
    # A resourceVersion from the future is waited for, as on a real server.
    last = max(store.rv, start_rv or 0)
    chunks: list[bytes] = []
    if start_rv is None or req.initial_events_end:
        for obj in store.list_objects(req.rtype.key, req.namespace):
            if req.match(obj):
                chunks.append(req.line("ADDED", obj))
        if req.initial_events_end and req.bookmarks:
            chunks.append(_bookmark(req.rtype, last, initial_end=True))
    else:
        for event in store.events_after(req.rtype.key, start_rv):
            line = translate(event, req)
            if line is not None:
                chunks.append(line)
    if chunks:
        await response.write(b"".join(chunks))
    return last


async def _follow(
    request: web.Request,
    response: web.StreamResponse,
    queue: asyncio.Queue[Event | str | None],
    req: WatchRequest,
    last: int,
    bookmark_interval: float,
) -> None:
    deadline = time.monotonic() + req.timeout
    next_bookmark = time.monotonic() + bookmark_interval
    while True:
        now = time.monotonic()
        if now >= deadline:
            return
        # Wake up at least every CLIENT_CHECK seconds: a client that went away
        # while nothing happened must not keep its subscription until the timeout.
        wait = min(deadline - now, CLIENT_CHECK)
        if req.bookmarks:
            wait = min(wait, max(0.0, next_bookmark - now))
        try:
            event = await asyncio.wait_for(queue.get(), timeout=wait)
        except TimeoutError:
            if request.transport is None or request.transport.is_closing():
                return
            if req.bookmarks and time.monotonic() >= next_bookmark:
                await response.write(_bookmark(req.rtype, last))
                next_bookmark = time.monotonic() + bookmark_interval
            continue
        if event is None:
            return
        if event == RESET:
            raise ConnectionReset()
        assert isinstance(event, Event)
        if event.rv <= last:
            continue
        last = event.rv
        chunks = [line] if (line := translate(event, req)) is not None else []
        while not queue.empty():
            more = queue.get_nowait()
            if more is None or more == RESET:
                if chunks:
                    await response.write(b"".join(chunks))
                if more == RESET:
                    raise ConnectionReset()
                return
            if isinstance(more, Event) and more.rv > last:
                last = more.rv
                if (line := translate(more, req)) is not None:
                    chunks.append(line)
        if chunks:
            await response.write(b"".join(chunks))
