"""A minimal Postgres wire-protocol client for the lab's precise probe.

The probe needs one long-lived TCP connection that runs a tiny query every
10 ms with exact control over its socket (``TCP_USER_TIMEOUT``, per-read
deadlines) and nothing else: protocol 3.0 start-up with trust authentication
and the simple-query flow. Anything beyond that (passwords, TLS, extended
protocol) is refused with a clear error rather than half-supported.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time

PROTOCOL_3_0 = 196608
AUTH_OK = 0


class PgError(RuntimeError):
    """The server answered with an error, or the connection failed or timed out."""


class PgConnection:
    """One connection; :meth:`query` returns the rows of a simple query as text."""

    def __init__(
        self,
        host: str,
        port: int = 5432,
        *,
        user: str = "postgres",
        database: str = "postgres",
        timeout: float = 10.0,
    ) -> None:
        self.timeout = timeout
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise PgError(f"failed to connect to {host}:{port}: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The kernel gives up on unacknowledged data after ``timeout`` too, so a
        # connection whose peer vanished errors instead of retrying for minutes.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timeout * 1000))
        self._buf = b""
        params = f"user\0{user}\0database\0{database}\0application_name\0vmoverlay-probe\0\0"
        body = struct.pack("!I", PROTOCOL_3_0) + params.encode()
        self._send(struct.pack("!I", len(body) + 4) + body)
        self._until_ready()

    def query(self, sql: str) -> list[list[str | None]]:
        body = sql.encode() + b"\0"
        self._send(b"Q" + struct.pack("!I", len(body) + 4) + body)
        return self._until_ready()

    def close(self) -> None:
        # A connection already gone cannot say goodbye; closing the socket is all that is left.
        with contextlib.suppress(PgError):
            self._send(b"X\0\0\0\4")
        self.sock.close()

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise PgError(f"failed to send to the server: {exc}") from exc

    def _until_ready(self) -> list[list[str | None]]:
        rows: list[list[str | None]] = []
        error = ""
        deadline = time.monotonic() + self.timeout
        while True:
            kind, payload = self._message(deadline)
            if kind == b"R":
                (code,) = struct.unpack("!I", payload[:4])
                if code != AUTH_OK:
                    raise PgError(f"server wants authentication method {code}; use trust auth")
            elif kind == b"D":
                rows.append(_data_row(payload))
            elif kind == b"E":
                error = _error_text(payload)
            elif kind == b"Z":
                if error:
                    raise PgError(f"server error: {error}")
                return rows

    def _message(self, deadline: float) -> tuple[bytes, bytes]:
        header = self._read(5, deadline)
        (length,) = struct.unpack("!I", header[1:5])
        return header[:1], self._read(length - 4, deadline)

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PgError(f"no answer from the server within {self.timeout:.1f}s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError as exc:
                raise PgError(f"no answer from the server within {self.timeout:.1f}s") from exc
            except OSError as exc:
                raise PgError(f"failed to read from the server: {exc}") from exc
            if not chunk:
                raise PgError("the server closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _data_row(payload: bytes) -> list[str | None]:
    (count,) = struct.unpack("!H", payload[:2])
    pos = 2
    row: list[str | None] = []
    for _ in range(count):
        (size,) = struct.unpack("!i", payload[pos : pos + 4])
        pos += 4
        if size < 0:
            row.append(None)
            continue
        row.append(payload[pos : pos + size].decode())
        pos += size
    return row


def _error_text(payload: bytes) -> str:
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode(errors="replace")
    return f"{fields.get(b'C', '?')} {fields.get(b'M', '')}".strip()
