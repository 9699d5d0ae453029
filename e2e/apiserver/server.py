"""Assemble and run the lab API server: store, semantics, handlers, aiohttp app.

:class:`LabApiServer` runs on the caller's event loop (``await start()`` /
``await stop()``); :class:`ThreadedLabApiServer` runs one in a thread with its
own loop, for tests that want it in-process. ``vmoverlay-lab apiserver``
(:mod:`e2e.apiserver.main`) is the process form.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from e2e.apiserver import discovery
from e2e.apiserver.admin import AdminHandlers
from e2e.apiserver.audit import AuditLog
from e2e.apiserver.errors import ApiError
from e2e.apiserver.faults import Faults
from e2e.apiserver.handlers import ResourceHandlers, error_middleware, json_response
from e2e.apiserver.objects import ObjectApi
from e2e.apiserver.persist import SqlitePersistence
from e2e.apiserver.resources import Registry
from e2e.apiserver.store import Store
from vmoverlay.logs import get_logger

log = get_logger("lab-apiserver")

ALLOWED_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("198.18.0.0/15"))


class AddressNotAllowed(ValueError):
    """The server may only listen on loopback or the lab range."""


class BadSetting(ValueError):
    """A numeric setting outside its range (port, history, bookmark interval)."""


class DataDirError(OSError):
    """The data dir cannot be used; the message names it and says why."""


# Seconds a stopping server waits for requests in flight before it cancels them.
SHUTDOWN_GRACE = 1.0
MAX_HISTORY = 10_000_000
MAX_BOOKMARK_INTERVAL = 3600.0


def check_port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise BadSetting(f"port {port} is out of range: use 0-65535 (0 picks a free port)")
    return port


def check_history(history: int) -> int:
    if not 1 <= history <= MAX_HISTORY:
        raise BadSetting(f"history {history} is out of range: keep 1-{MAX_HISTORY} watch events")
    return history


def check_bookmark_interval(seconds: float) -> float:
    # NaN fails both comparisons, so it is refused too.
    if not 0 < seconds <= MAX_BOOKMARK_INTERVAL:
        raise BadSetting(
            f"bookmark interval {seconds} is out of range: use more than 0 and at most "
            f"{MAX_BOOKMARK_INTERVAL:g} seconds"
        )
    return seconds


def check_data_dir(data_dir: str | Path) -> Path:
    """The data dir, refused when it is not a directory or its parent is missing.

    The server creates the data dir itself but never its parents: a typo in a
    path must not make a tree of directories somewhere (as root, under ``/``).
    """
    path = Path(data_dir)
    if path.exists() and not path.is_dir():
        raise DataDirError(
            f"failed to use data dir {path}: it exists and is not a directory; "
            "name a directory (it is created if only the last part is missing)"
        )
    if not path.exists() and not path.parent.is_dir():
        raise DataDirError(
            f"failed to use data dir {path}: its parent {path.parent} is not an existing "
            "directory; create the parent first (only the last part is created)"
        )
    return path


def check_output_file(kind: str, file: str | Path) -> Path:
    """A file the server will write (``kind`` names it): its directory must already exist."""
    path = Path(file)
    if path.is_dir():
        raise DataDirError(f"failed to write {kind} {path}: it is a directory; name a file")
    if not path.parent.is_dir():
        raise DataDirError(
            f"failed to write {kind} {path}: directory {path.parent} does not exist; "
            "create it first"
        )
    return path


def check_address(address: str) -> str:
    """Refuse anything outside 127.0.0.0/8 and 198.18.0.0/15 (the lab's benchmarking range)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise AddressNotAllowed(
            f"failed to use listen address {address!r}: not an IPv4 address; "
            "use an address in 127.0.0.0/8 (loopback) or 198.18.0.0/15 (the lab range)"
        ) from exc
    if not any(ip in net for net in ALLOWED_NETWORKS):
        raise AddressNotAllowed(
            f"refusing to listen on {address}: the lab API server only serves on loopback "
            "(127.0.0.0/8) or the lab range (198.18.0.0/15)"
        )
    return address


def kubeconfig_text(url: str, name: str = "vmoverlay-lab") -> str:
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


class LabApiServer:
    def __init__(
        self,
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | Path | None = None,
        history: int = 10000,
        bookmark_interval: float = 5.0,
    ) -> None:
        self.address = check_address(address)
        self.requested_port = check_port(port)
        self.data_dir = check_data_dir(data_dir) if data_dir else None
        self.history = check_history(history)
        self.bookmark_interval = check_bookmark_interval(bookmark_interval)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.store: Store | None = None
        self.api: ObjectApi | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        persistence = self._open_persistence()
        self.store = Store(history=self.history, persistence=persistence)
        self.api = ObjectApi(self.store, Registry(), schedule=lambda fn: _call_soon(loop, fn))
        audit, faults = AuditLog(), Faults()
        resources = ResourceHandlers(
            self.api, audit, faults, bookmark_interval=self.bookmark_interval
        )
        admin = AdminHandlers(self.api, audit, faults)
        app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024 * 1024)
        app.add_routes(admin.routes())
        app.router.add_get("/api", self._api_versions)
        app.router.add_get("/api/", self._api_versions)
        app.router.add_get("/apis", self._groups)
        app.router.add_get("/apis/", self._groups)
        app.router.add_get("/apis/{group}", self._group)
        app.router.add_get("/openapi/v3", self._openapi_root)
        app.router.add_get("/openapi/v3/{gv:.*}", self._openapi_gv)
        app.router.add_route("*", "/{tail:.*}", resources.handle)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address, self.requested_port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        log.info("lab API server serving", url=self.url, data_dir=str(self.data_dir or ""))

    def _open_persistence(self) -> SqlitePersistence | None:
        if self.data_dir is None:
            return None
        try:
            return SqlitePersistence(check_data_dir(self.data_dir))
        except (OSError, sqlite3.Error) as exc:
            if isinstance(exc, DataDirError):
                raise
            raise DataDirError(
                f"failed to open data dir {self.data_dir} "
                f"({Path(self.data_dir) / 'objects.sqlite3'}): {exc}; check the directory is "
                "writable and the file is the lab's database (move it away to start empty), "
                "or start without --data-dir"
            ) from exc

    async def stop(self) -> None:
        """Stop promptly, as the real server does: open watch streams end cleanly.

        It stops listening, ends every open watch (and any a client opens on a
        kept-alive connection meanwhile) with a proper end of stream, waits up to
        :data:`SHUTDOWN_GRACE` seconds for requests in flight, then cancels the rest.
        """
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
        if self.store is not None:
            self.store.shut_down_watches()
            deadline = time.monotonic() + SHUTDOWN_GRACE
            while any(self.store.subscriptions.values()) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.store is not None:
            self.store.close()
            self.store = None

    async def _api_versions(self, request: web.Request) -> web.Response:
        return json_response(discovery.api_versions(f"{self.address}:{self.port}"))

    async def _groups(self, request: web.Request) -> web.Response:
        assert self.api is not None
        return json_response(discovery.group_list(self.api.registry))

    async def _openapi_root(self, request: web.Request) -> web.Response:
        assert self.api is not None
        return json_response(discovery.openapi_root(self.api.registry))

    async def _openapi_gv(self, request: web.Request) -> web.Response:
        assert self.api is not None
        doc = discovery.openapi_group_version(self.api.registry, request.match_info["gv"])
        if doc is None:
            error = ApiError(404, "NotFound", "the server could not find the requested resource")
            return json_response(error.status(), 404)
        return json_response(doc)

    async def _group(self, request: web.Request) -> web.Response:
        assert self.api is not None
        doc = discovery.group(self.api.registry, request.match_info["group"])
        if doc is None:
            error = ApiError(404, "NotFound", "the server could not find the requested resource")
            return json_response(error.status(), 404)
        return json_response(doc)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any) -> None:
    loop.call_soon(fn)


class ThreadedLabApiServer:
    """A :class:`LabApiServer` on its own event loop in a daemon thread."""

    def __init__(self, **kwargs: Any) -> None:
        self.server = LabApiServer(**kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=30)
        return self.server.url

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    @property
    def url(self) -> str:
        return self.server.url
