"""The precise probe: one long-lived Postgres connection and a datagram echo, every 10 ms.

Runs inside the client namespace (``python -m e2e.lab.probe ...``) until its
standard input closes. It prints JSON lines: ``ready`` once both probes run,
``gap`` (datagrams lost in a row), ``stall`` (queries that took long) and
``break`` (the connection broke) as they happen, for the gate's live display,
and at the end ``result`` with every timestamped observation.
:class:`ProbeRunner` is the gate's side of it. Timestamps are ``time.monotonic()``: CLOCK_MONOTONIC is one clock
for the whole machine, so the gate can lay them beside its own migration
timestamps without any conversion.

- TCP: ``SELECT 1`` every interval on one connection (``e2e.lab.pgwire``). A
  query that errors, or gets no answer within the no-progress bound, breaks the
  connection: it is recorded as broken and the probe reconnects, so later
  migrations are still measured.
- Datagrams: a sequence number every interval to the VM's echo responder; the
  replies are matched by sequence number.

The probe ignores SIGINT: a Ctrl-C in the terminal reaches the whole process
group, and it is the gate's to handle (it closes the probe's stdin, or kills
it when interrupted). To stop a probe run by hand, close its stdin (Ctrl-D).
SIGTERM ends it quietly.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from e2e.lab.pgwire import PgConnection, PgError
from e2e.lab.report import ProbeData

if TYPE_CHECKING:  # the probe itself runs without the lab's heavier imports
    from e2e.netns import RunNamespaces

STALL_EVENT_INTERVALS = 5
_out_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout; the threads share it."""
    with _out_lock:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


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
                done = time.monotonic()
                if (
                    self.queries
                    and done - self.queries[-1][1] > STALL_EVENT_INTERVALS * self.interval
                ):
                    last = self.queries[-1][1]
                    emit("stall", t=round(last, 6), ms=round((done - last) * 1000, 1))
                self.queries.append((start, done))
            except PgError as exc:
                self.breaks.append((time.monotonic(), str(exc)))
                emit("break", t=round(self.breaks[-1][0], 6), error=str(exc))
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
        highest = -1
        while not self.stop.is_set():
            try:
                data = sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                continue  # ICMP errors surface here; the missing reply is the measurement
            if len(data) != 8:
                continue
            seq = struct.unpack("!Q", data)[0]
            self.udp_recv.append((seq, time.monotonic()))
            if seq > highest + 1 and highest >= 0:
                first = abs(self.udp_sent[highest + 1])
                ms = (abs(self.udp_sent[seq]) - first) * 1000
                emit("gap", t=round(first, 6), ms=round(ms, 1), lost=seq - highest - 1)
            highest = max(highest, seq)

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


def quiet_signals() -> None:
    """No traceback on the terminal's Ctrl-C (the gate handles it) nor on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))


def main() -> None:
    quiet_signals()
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
    emit("ready")
    sys.stdin.read()
    probe.stop.set()
    for thread in threads:
        thread.join(timeout=args.bound + 1)
    emit("result", **probe.result())


class ProbeRunner:
    """The gate's side: start the probe in a namespace, follow its events, collect its data."""

    def __init__(self, run: RunNamespaces, ns: str, host: str, *, bound_s: float) -> None:
        argv = [sys.executable, "-m", "e2e.lab.probe", "--host", host, "--bound", str(bound_s)]
        self.host = host
        self.proc = run.popen(ns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self._result: dict[str, Any] | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout=30):
            self.proc.kill()
            raise ProbeError(f"the probe for {host} did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            if event["event"] == "ready":
                self._ready.set()
            elif event["event"] == "result":
                self._result = event
            else:
                self.events.append(event)

    def since(self, start: float) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["t"] >= start]

    def kill(self) -> None:
        """End the probe at once (the run was interrupted): no result is waited for."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> ProbeData:
        """Close the probe's stdin, wait for its result; a probe gone wrong is killed."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        if self._result is None:
            raise ProbeError(f"the probe for {self.host} gave no result")
        return ProbeData.from_json(self._result)


class ProbeError(RuntimeError):
    pass


if __name__ == "__main__":
    main()
