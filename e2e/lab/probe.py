"""The precise probe: one long-lived Postgres connection and a datagram echo, every 10 ms.

Runs inside the client namespace (``python -m e2e.lab.probe ...``) until its
standard input closes, then prints one JSON document with every timestamped
observation. Timestamps are ``time.monotonic()``: CLOCK_MONOTONIC is one clock
for the whole machine, so the gate can lay them beside its own migration
timestamps without any conversion.

- TCP: ``SELECT 1`` every interval on one connection (``e2e.lab.pgwire``). A
  query that errors, or gets no answer within the no-progress bound, breaks the
  connection: it is recorded as broken and the probe reconnects, so later
  migrations are still measured.
- Datagrams: a sequence number every interval to the VM's echo responder; the
  replies are matched by sequence number.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from typing import Any

from e2e.lab.pgwire import PgConnection, PgError


class Probe:
    def __init__(self, *, host: str, pg_port: int, udp_port: int, interval: float, bound: float):
        self.host, self.pg_port, self.udp_port = host, pg_port, udp_port
        self.interval, self.bound = interval, bound
        self.stop = threading.Event()
        self.udp_sent: list[float] = []
        self.udp_recv: list[tuple[int, float]] = []
        self.queries: list[tuple[float, float]] = []
        self.breaks: list[tuple[float, str]] = []

    def run_tcp(self) -> None:
        conn: PgConnection | None = None
        next_tick = time.monotonic()
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                if conn is None:
                    conn = PgConnection(self.host, self.pg_port, timeout=self.bound)
                    start = time.monotonic()
                conn.query("SELECT 1")
                self.queries.append((start, time.monotonic()))
            except PgError as exc:
                self.breaks.append((time.monotonic(), str(exc)))
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(0.1)
            next_tick = _next_tick(next_tick, self.interval)
            self.stop.wait(max(0.0, next_tick - time.monotonic()))
        if conn is not None:
            conn.close()

    def run_udp_send(self, sock: socket.socket) -> None:
        next_tick = time.monotonic()
        while not self.stop.is_set():
            seq = len(self.udp_sent)
            self.udp_sent.append(time.monotonic())
            try:
                sock.send(struct.pack("!Q", seq))
            except OSError:
                # A refused or unreachable send is one lost probe; it shows as loss.
                self.udp_sent[-1] = -self.udp_sent[-1]
            next_tick = _next_tick(next_tick, self.interval)
            self.stop.wait(max(0.0, next_tick - time.monotonic()))

    def run_udp_recv(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data = sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                continue  # ICMP errors surface here; the missing reply is the measurement
            if len(data) == 8:
                self.udp_recv.append((struct.unpack("!Q", data)[0], time.monotonic()))

    def result(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "udp_sent": [round(t, 6) for t in self.udp_sent],
            "udp_recv": [[seq, round(t, 6)] for seq, t in self.udp_recv],
            "queries": [[round(a, 6), round(b, 6)] for a, b in self.queries],
            "breaks": [[round(t, 6), msg] for t, msg in self.breaks],
        }


def _next_tick(previous: float, interval: float) -> float:
    """The next tick after ``previous`` that is not already past: no bursts after a stall."""
    now = time.monotonic()
    tick = previous + interval
    if tick < now:
        tick = now + interval - ((now - previous) % interval)
    return tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--udp-port", type=int, default=7)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--bound", type=float, default=10.0, help="no-progress bound, seconds")
    args = parser.parse_args()
    probe = Probe(
        host=args.host,
        pg_port=args.pg_port,
        udp_port=args.udp_port,
        interval=args.interval,
        bound=args.bound,
    )
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect((args.host, args.udp_port))
    threads = [
        threading.Thread(target=probe.run_tcp, daemon=True),
        threading.Thread(target=probe.run_udp_send, args=(udp,), daemon=True),
        threading.Thread(target=probe.run_udp_recv, args=(udp,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()
    probe.stop.set()
    for thread in threads:
        thread.join(timeout=args.bound + 1)
    json.dump(probe.result(), sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
