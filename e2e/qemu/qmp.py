"""A small synchronous QMP client: QEMU's JSON machine protocol over a unix socket.

Why not a library: PyPI's ``qemu.qmp`` is asyncio-only and still 0.0.x; the lab
drives one QEMU at a time from plain threads, and QMP itself is small: a
greeting, ``qmp_capabilities``, then one JSON object per line each way.
Replies carry the ``id`` of their command; asynchronous events (``STOP``,
``RESUME``, ``MIGRATION``...) can arrive between them and are kept in
:attr:`QMPClient.events` for callers that want them.

    with QMPClient.connect(Path("/run/vm/qmp.sock"), timeout=10) as qmp:
        qmp.execute("query-status")          # {'status': 'running', ...}
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import time
from pathlib import Path
from typing import Any

from e2e.qemu.errors import QMPError
from vmoverlay.logs import get_logger

log = get_logger("lab").bind(part="qmp")


class QMPClient:
    """One QMP session on a connected socket; use :meth:`connect` to make one."""

    def __init__(self, sock: socket.socket, *, timeout: float) -> None:
        self._sock = sock
        self._sock.settimeout(timeout)
        self._reader = sock.makefile("rb")
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] = {}

    @classmethod
    def connect(cls, path: Path, *, timeout: float = 30.0) -> QMPClient:
        """Connect (waiting up to ``timeout`` for QEMU to create the socket) and negotiate."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise QMPError("connect", "SocketError", f"{path}: {exc}") from exc
                time.sleep(0.05)
        client = cls(sock, timeout=timeout)
        try:
            client._negotiate()
        except (QMPError, OSError):
            client.close()
            raise
        return client

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # Flushing a reader whose peer is gone can fail; the socket is closed anyway.
        with contextlib.suppress(OSError):
            self._reader.close()
        self._sock.close()

    def _negotiate(self) -> None:
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError("connect", "ProtocolError", f"no QMP greeting: {greeting}")
        self.greeting = greeting["QMP"]
        self.execute("qmp_capabilities")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``command``; return its ``return`` value or raise :class:`QMPError`."""
        request_id = f"vmo-{next(self._ids)}"
        request: dict[str, Any] = {"execute": command, "id": request_id}
        if arguments:
            request["arguments"] = arguments
        log.debug("qmp command", command=command, arguments=arguments)
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\r\n")
        except OSError as exc:
            raise QMPError(command, "SocketError", str(exc)) from exc
        while True:
            reply = self._read(command)
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != request_id:
                continue
            if "error" in reply:
                error = reply["error"]
                raise QMPError(command, error.get("class", "?"), error.get("desc", str(error)))
            return reply.get("return")

    def _read(self, command: str = "connect") -> dict[str, Any]:
        try:
            line = self._reader.readline()
        except OSError as exc:
            raise QMPError(command, "SocketError", str(exc)) from exc
        if not line:
            raise QMPError(command, "SocketClosed", "QEMU closed the QMP socket")
        try:
            message = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QMPError(command, "ProtocolError", f"bad JSON {line[:200]!r}") from exc
        if not isinstance(message, dict):
            raise QMPError(command, "ProtocolError", f"not an object: {line[:200]!r}")
        return message

    # The commands the lab uses, typed.

    def status(self) -> str:
        """``query-status``: ``running``, ``inmigrate``, ``postmigrate``, ``paused``..."""
        return str(self.execute("query-status")["status"])

    def migrate(self, uri: str) -> None:
        self.execute("migrate", {"uri": uri})

    def query_migrate(self) -> dict[str, Any]:
        result: dict[str, Any] = self.execute("query-migrate")
        return result

    def announce_self(
        self, *, initial: int = 50, max_ms: int = 550, rounds: int = 5, step: int = 100
    ) -> None:
        """Ask QEMU to send its RARP announce rounds again (as after a migration)."""
        args = {"initial": initial, "max": max_ms, "rounds": rounds, "step": step}
        self.execute("announce-self", args)

    def quit(self) -> None:
        """``quit``: QEMU may close the socket before or after it answers."""
        try:
            self.execute("quit")
        except QMPError as exc:
            # A closed socket is QEMU exiting, which is what quit asks for.
            if exc.error_class not in ("SocketClosed", "SocketError"):
                raise
