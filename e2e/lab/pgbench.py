"""pgbench as the lab's load: started, watched, and its output turned into numbers.

pgbench 15 runs the built-in TPC-B-like script with ``--max-tries=1`` and
``--failures-detailed``, so a serialization or deadlock failure counts as one
failed transaction and does not end the client, while a connection error aborts
the client: that is a broken connection. libpq's ``tcp_user_timeout`` and
``connect_timeout`` bound how long a dead path can hang a client; the watcher
adds a client-side bound on top: if progress lines show no transaction at all
for longer than the no-progress bound, every client of that pgbench counts as
broken and pgbench is stopped, so a hung server can neither pass nor hang the
gate.

pgbench prints its totals only when ``-T`` runs out, so the gate gives it a
generous ``-T`` and ends it with SIGINT once the migrations are done; then
committed transactions are counted in ``pgbench_history`` (one row per
TPC-B-like transaction) and failures are the sum of the per-second counts.

Every line pgbench prints is stamped with ``time.monotonic()`` when it arrives,
so errors and per-second progress can be attributed to a migration window.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

PROGRESS_RE = re.compile(r"^progress: (?P<ts>[\d.]+) s, (?P<tps>[\d.]+) tps")
FAILED_RE = re.compile(r", (?P<failed>\d+) failed")
ABORT_RE = re.compile(r"client (?P<client>\d+) aborted")
CONNECT_FAIL_RE = re.compile(r"connection to (?:server|database).*failed")


@dataclass
class PgbenchResult:
    """What one pgbench run reported."""

    clients: int
    transactions: int = 0
    failed_transactions: int = 0
    aborted_clients: set[int] = field(default_factory=set)
    connect_failures: int = 0
    stalled: bool = False
    exit_code: int | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    progress: list[tuple[float, float, int]] = field(default_factory=list)
    summary_seen: bool = False

    @property
    def broken_connections(self) -> int:
        if self.stalled:
            return self.clients
        return min(self.clients, len(self.aborted_clients) + self.connect_failures)


def conninfo(host: str, *, bound_ms: int, dbname: str = "postgres") -> str:
    """libpq connection string: trust auth, and a dead path errors within ``bound_ms``."""
    connect_s = max(2, bound_ms // 1000)
    return (
        f"host={host} port=5432 user=postgres dbname={dbname} "
        f"connect_timeout={connect_s} tcp_user_timeout={bound_ms} "
        "keepalives=1 keepalives_idle=2 keepalives_interval=1 keepalives_count=3"
    )


def history_count_argv(host: str, *, bound_ms: int) -> list[str]:
    """psql counting committed transactions (one pgbench_history row each)."""
    sql = "SELECT count(*) FROM pgbench_history"
    return ["psql", "-At", "-c", sql, conninfo(host, bound_ms=bound_ms)]


def init_argv(host: str, *, bound_ms: int) -> list[str]:
    return ["pgbench", "-i", "-q", "-s", "1", conninfo(host, bound_ms=bound_ms)]


def run_argv(host: str, *, clients: int, seconds: int, rate: int, bound_ms: int) -> list[str]:
    argv = ["pgbench", "-n", "-c", str(clients), "-j", str(min(2, clients)), "-T", str(seconds)]
    argv += ["-P", "1", "--progress-timestamp", "--max-tries=1", "--failures-detailed"]
    if rate > 0:
        argv += ["-R", str(rate)]
    return [*argv, conninfo(host, bound_ms=bound_ms)]


def parse_line(result: PgbenchResult, stamp: float, line: str) -> None:
    """Fold one output line into ``result`` (pure: no I/O)."""
    line = line.strip()
    if not line:
        return
    match = PROGRESS_RE.match(line)
    if match:
        failed_match = FAILED_RE.search(line)
        failed = int(failed_match.group("failed")) if failed_match else 0
        result.progress.append((stamp, float(match.group("tps")), failed))
        return
    if line.startswith("number of transactions actually processed:"):
        result.transactions = int(line.split(":")[1].split("/")[0].strip())
        result.summary_seen = True
    elif line.startswith("number of failed transactions:"):
        result.failed_transactions = int(line.split(":")[1].split()[0])
    aborted = ABORT_RE.search(line)
    if aborted:
        result.aborted_clients.add(int(aborted.group("client")))
        result.events.append((stamp, line))
    elif CONNECT_FAIL_RE.search(line):
        result.connect_failures += 1
        result.events.append((stamp, line))
    elif "error" in line.lower() and "results are incomplete" not in line:
        result.events.append((stamp, line))


class PgbenchRun:
    """A running pgbench whose stdout and stderr are read and stamped by a thread."""

    def __init__(self, argv: Sequence[str], *, clients: int, bound_s: float) -> None:
        self.result = PgbenchResult(clients=clients)
        self.bound_s = bound_s
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self._lock = threading.Lock()
        self.stopped_early = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                parse_line(self.result, time.monotonic(), line)

    def no_progress_for(self) -> float:
        """Seconds since the last progress line that counted a transaction."""
        with self._lock:
            last = self.started
            for stamp, tps, _ in self.result.progress:
                if tps > 0:
                    last = stamp
        return time.monotonic() - last

    def check_stall(self) -> bool:
        """Stop pgbench and count every client broken if it made no progress for too long."""
        if self.proc.poll() is None and self.no_progress_for() > self.bound_s:
            self.result.stalled = True
            self.proc.kill()
            return True
        return False

    def wait(self, timeout: float) -> PgbenchResult:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if self.check_stall():
                break
            if time.monotonic() > deadline:
                self.result.stalled = True
                self.proc.kill()
                break
            time.sleep(0.2)
        self.proc.wait()
        self._reader.join(timeout=5)
        self.result.exit_code = self.proc.returncode
        return self.result

    def finish(self) -> PgbenchResult:
        """End the run now (SIGINT) and return what it reported; no summary is printed then."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.stopped_early = True
        return self.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
