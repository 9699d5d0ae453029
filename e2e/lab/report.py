"""Turn the gate's raw observations into per-migration figures, a verdict, JSON and JUnit.

Everything here is pure: the gate hands in timestamps (``time.monotonic()``,
one clock for every process on the machine) and gets numbers and text back.

Definitions, per migration, over its window (from just before its freeze to
just before the next migration's freeze, or the end of the run):

- *network blackout*: the longest run of datagram probes that got no echo,
  measured from the send time of the first lost probe to the send time of the
  first answered probe after it (0 when none was lost). Resolution: one probe
  interval (10 ms).
- *extra blackout*: blackout minus the measured pause window, floored at 0:
  what the overlay itself added. Its physical limit is zero.
- *client stall*: the longest gap between two consecutive answered queries on
  the probe's long-lived Postgres connection, minus one interval; it includes
  TCP retransmission back-off, so it is longer than the blackout.
- *probe loss*: datagram probes without an echo.
- *broken connections*: probe connections that broke plus pgbench clients that
  aborted (or a pgbench that stalled past the no-progress bound) in the window.
- *failed transactions*: pgbench's per-second failed counts in the window.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

WINDOW_LEAD_S = 0.3


@dataclass(frozen=True)
class ProbeData:
    interval: float
    udp_sent: list[float]
    udp_recv: list[tuple[int, float]]
    queries: list[tuple[float, float]]
    breaks: list[tuple[float, str]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeData:
        return cls(
            interval=float(data["interval"]),
            udp_sent=[float(t) for t in data["udp_sent"]],
            udp_recv=[(int(s), float(t)) for s, t in data["udp_recv"]],
            queries=[(float(a), float(b)) for a, b in data["queries"]],
            breaks=[(float(t), str(m)) for t, m in data["breaks"]],
        )


@dataclass(frozen=True)
class MigrationEvent:
    index: int
    vm: str
    source: str
    target: str
    pause_ms: int
    freeze: float
    resume: float
    prepare_ms: float
    status_ms: float
    freeze_wall: str = ""


@dataclass
class MigrationResult:
    index: int
    vm: str
    source: str
    target: str
    pause_ms: int
    pause_actual_ms: float
    blackout_ms: float
    extra_blackout_ms: float
    stall_ms: float
    probe_loss: int
    broken_connections: int
    failed_transactions: int
    prepare_ms: float
    status_write_ms: float
    freeze_time: str = ""
    errors: list[str] = field(default_factory=list)


def windows(events: Sequence[MigrationEvent], end: float) -> list[tuple[float, float]]:
    starts = [e.freeze - WINDOW_LEAD_S for e in events]
    return [(s, starts[i + 1] if i + 1 < len(starts) else end) for i, s in enumerate(starts)]


def blackout(probe: ProbeData, start: float, end: float) -> tuple[float, int]:
    """(longest blackout in seconds, probes lost) among datagrams sent in [start, end)."""
    answered = {seq for seq, _ in probe.udp_recv}
    longest, lost, run_start = 0.0, 0, None
    for seq, sent in enumerate(probe.udp_sent):
        sent = abs(sent)
        if not start <= sent < end:
            if sent >= end and run_start is not None:
                longest = max(longest, sent - run_start)
                run_start = None
            continue
        if seq in answered:
            if run_start is not None:
                longest = max(longest, sent - run_start)
                run_start = None
        else:
            lost += 1
            if run_start is None:
                run_start = sent
    if run_start is not None:
        longest = max(longest, end - run_start)
    return longest, lost


def stall(probe: ProbeData, start: float, end: float) -> float:
    """Longest gap between consecutive answered queries in the window, minus one interval."""
    done = sorted(b for _, b in probe.queries)
    before = [t for t in done if t < start]
    inside = [t for t in done if start <= t < end]
    if not inside:
        return max(0.0, end - (before[-1] if before else start))
    # Silence that runs to the window's end is a stall too (a connection that broke).
    points = ([before[-1]] if before else []) + inside + [end]
    gaps = [b - a for a, b in zip(points, points[1:], strict=False)]
    return max(0.0, max(gaps, default=0.0) - probe.interval)


def count_in(stamps: Sequence[float], start: float, end: float) -> int:
    return sum(1 for t in stamps if start <= t < end)


def analyse(
    events: Sequence[MigrationEvent],
    probes: Sequence[ProbeData],
    abort_stamps: Sequence[float],
    failed_progress: Sequence[tuple[float, int]],
    end: float,
) -> list[MigrationResult]:
    results = []
    for event, (start, stop) in zip(events, windows(events, end), strict=True):
        black, lost, gap = 0.0, 0, 0.0
        breaks: list[tuple[float, str]] = []
        for probe in probes:
            b, n = blackout(probe, start, stop)
            black, lost = max(black, b), lost + n
            gap = max(gap, stall(probe, start, stop))
            breaks += [(t, m) for t, m in probe.breaks if start <= t < stop]
        pause_actual = (event.resume - event.freeze) * 1000
        results.append(
            MigrationResult(
                index=event.index,
                vm=event.vm,
                source=event.source,
                target=event.target,
                pause_ms=event.pause_ms,
                pause_actual_ms=round(pause_actual, 1),
                blackout_ms=round(black * 1000, 1),
                extra_blackout_ms=round(max(0.0, black * 1000 - pause_actual), 1),
                stall_ms=round(gap * 1000, 1),
                probe_loss=lost,
                broken_connections=len(breaks) + count_in(abort_stamps, start, stop),
                failed_transactions=sum(n for t, n in failed_progress if start <= t < stop),
                prepare_ms=round(event.prepare_ms, 1),
                status_write_ms=round(event.status_ms, 1),
                freeze_time=event.freeze_wall,
                errors=[m for _, m in breaks],
            )
        )
    return results


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Totals:
    clients: int
    transactions: int
    failed_transactions: int
    broken_connections: int
    planned_migrations: int
    reasons: list[str] = field(default_factory=list)


def summary(
    results: Sequence[MigrationResult],
    totals: Totals,
    *,
    max_stall_ms: float | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    reasons = list(totals.reasons)
    if totals.broken_connections:
        reasons.append(f"{totals.broken_connections} broken connection(s)")
    if totals.failed_transactions:
        reasons.append(f"{totals.failed_transactions} failed transaction(s)")
    if len(results) < totals.planned_migrations:
        reasons.append(f"only {len(results)} of {totals.planned_migrations} migrations ran")
    if totals.transactions == 0:
        reasons.append("pgbench committed no transaction")
    worst_stall = max((r.stall_ms for r in results), default=0.0)
    if max_stall_ms is not None and worst_stall > max_stall_ms:
        reasons.append(f"client stall {worst_stall:.0f} ms exceeds --max-stall-ms {max_stall_ms:g}")
    extra = [r.extra_blackout_ms for r in results]
    return {
        "passed": not reasons,
        "reasons": reasons,
        "migrations": len(results),
        "clients": totals.clients,
        "transactions": totals.transactions,
        "failed_transactions": totals.failed_transactions,
        "broken_connections": totals.broken_connections,
        "max_stall_ms": worst_stall,
        "max_blackout_ms": max((r.blackout_ms for r in results), default=0.0),
        "max_extra_blackout_ms": max(extra, default=0.0),
        "p50_extra_blackout_ms": percentile(extra, 50),
        "p99_extra_blackout_ms": percentile(extra, 99),
        "probe_loss": sum(r.probe_loss for r in results),
        "settings": settings,
        "per_migration": [asdict(r) for r in results],
    }


COLUMNS = (
    ("#", "index", "{:>3}"),
    ("VM", "vm", "{:<5}"),
    ("from", "source", "{:<4}"),
    ("to", "target", "{:<4}"),
    ("pause", "pause_actual_ms", "{:>7.1f}"),
    ("blackout", "blackout_ms", "{:>8.1f}"),
    ("extra", "extra_blackout_ms", "{:>6.1f}"),
    ("stall", "stall_ms", "{:>7.1f}"),
    ("loss", "probe_loss", "{:>5}"),
    ("broken", "broken_connections", "{:>6}"),
    ("failed", "failed_transactions", "{:>6}"),
)


def table(doc: dict[str, Any]) -> str:
    """The per-migration table and the verdict, for people (times in ms)."""
    header = "  ".join(_pad(name, fmt) for name, _, fmt in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in doc["per_migration"]:
        lines.append("  ".join(fmt.format(row[key]) for _, key, fmt in COLUMNS))
    lines.append("")
    lines.append(
        f"{doc['migrations']} migrations, {doc['clients']} clients, "
        f"{doc['transactions']} transactions, {doc['failed_transactions']} failed, "
        f"{doc['broken_connections']} broken connections; max stall {doc['max_stall_ms']:.0f} ms, "
        f"max blackout {doc['max_blackout_ms']:.0f} ms, extra blackout "
        f"p50 {doc['p50_extra_blackout_ms']:.0f} / p99 {doc['p99_extra_blackout_ms']:.0f} / "
        f"max {doc['max_extra_blackout_ms']:.0f} ms"
    )
    verdict = "PASS" if doc["passed"] else "FAIL: " + "; ".join(doc["reasons"])
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)


def _pad(name: str, fmt: str) -> str:
    """Pad a header like its column: the width is the digits after ``<`` or ``>``."""
    spec = fmt[3:-1]
    width = int(spec.split(".")[0].rstrip("f") or 0)
    return name.rjust(width) if fmt[2] == ">" else name.ljust(width)


def junit(doc: dict[str, Any], *, duration_s: float) -> str:
    """JUnit XML: one test case per migration plus one for the whole run."""
    cases = []
    failures = 0
    for row in doc["per_migration"]:
        name = f"migration {row['index']}: {row['vm']} {row['source']} -> {row['target']}"
        problems = []
        if row["broken_connections"]:
            problems.append(f"{row['broken_connections']} broken connection(s)")
        if row["failed_transactions"]:
            problems.append(f"{row['failed_transactions']} failed transaction(s)")
        body = ""
        if problems:
            failures += 1
            body = f"<failure message={quoteattr('; '.join(problems))}/>"
        out = escape(json.dumps(row))
        cases.append(
            f'  <testcase classname="vmoverlay.lab.gate" name={quoteattr(name)} time="0">'
            f"{body}<system-out>{out}</system-out></testcase>"
        )
    total_body = ""
    if not doc["passed"]:
        failures += 1
        total_body = f"<failure message={quoteattr('; '.join(doc['reasons']))}/>"
    cases.append(
        f'  <testcase classname="vmoverlay.lab.gate" name="whole run" time="{duration_s:.1f}">'
        f"{total_body}</testcase>"
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="vmoverlay-lab-gate" tests="{len(cases)}" failures="{failures}" '
        f'errors="0" time="{duration_s:.1f}">\n' + "\n".join(cases) + "\n</testsuite>\n"
    )
