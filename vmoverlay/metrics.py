"""The metrics and health endpoint every long-running component serves.

- ``/metrics``: Prometheus text format from the component's registry.
- ``/healthz``: 200 while the process is alive and its main loop is ticking.
- ``/readyz``: 200 once the component says it is ready (devices built, first
  sync done...), else 503 with the reason.
- Extra JSON endpoints (``/status`` of the node agent, for example) are added
  with ``add_json_route``.

The server runs in a daemon thread and never takes the component down.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from vmoverlay import __version__

Check = Callable[[], tuple[bool, str]]


def build_info(registry: CollectorRegistry, component: str) -> None:
    """``vmoverlay_build_info{component,version} 1``."""
    gauge = Gauge(
        "vmoverlay_build_info",
        "vmoverlay build information; always 1",
        ["component", "version"],
        registry=registry,
    )
    gauge.labels(component=component, version=__version__).set(1)


def parse_listen(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port), with a clear error."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise ValueError(f"listen address {addr!r} is not HOST:PORT (for example 127.0.0.1:9464)")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {addr!r}: port {int(port)} is out of range 0..65535")
    return host.strip("[]") or "0.0.0.0", int(port)


class HealthServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        listen: str,
        *,
        ready: Check | None = None,
        alive: Check | None = None,
    ) -> None:
        self.registry = registry
        self._ready = ready or (lambda: (True, "ok"))
        self._alive = alive or (lambda: (True, "ok"))
        self._routes: dict[str, Callable[[], Any]] = {}
        host, port = parse_listen(listen)
        handler = self._handler_class()
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-server", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def add_json_route(self, path: str, fn: Callable[[], Any]) -> None:
        self._routes[path] = fn

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; bounded (``shutdown()`` alone waits forever if never started)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, why = (outer._alive if path == "/healthz" else outer._ready)()
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
                elif path in outer._routes:
                    body = json.dumps(outer._routes[path](), indent=2).encode()
                    self._send(200, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would drown the component's own logs

        return Handler
