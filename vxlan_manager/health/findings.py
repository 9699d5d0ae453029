"""Findings, severities, exit codes and the stable JSON schema of a health report.

A *finding* names one thing that is not as intended: on which node, toward which
peer (another node, a VTEP address, or a VM), which property, what is wrong and
what to do. A check that passes produces no finding; the report lists which
checks ran, so "no finding" means "checked and fine", not "not looked at".

Severities, in order, and the exit code each maps to (the worst finding wins):

- ``ok`` (0): informational; nothing to do.
- ``degraded`` (1): traffic flows, but not as intended or at risk: a wrong MTU
  or learning setting, a stale FDB entry toward an address that is no node,
  a VM entry missing (its frames are flooded), probe data missing or old,
  an agent that does not answer.
- ``broken`` (2): some traffic that should flow does not: the device or bridge
  is missing, down or mis-configured (VNI, port, local address), a peer has no
  FDB entry, two nodes share a VTEP address, the underlay cannot carry
  full-size frames, a VM entry points at the wrong node, a peer does not answer
  probes, or full-size probes to it are lost.

JSON schema (``schema_version`` 1; fields are only ever added, never renamed or
removed, without bumping the version; readers ignore fields they do not know, and
treat a missing added field as null). Added in 1 (vmoverlay 0.2):
``probe_max_age_seconds``, ``probes_on_demand`` and each probe's ``stale``::

    {
      "kind": "FabricHealth",
      "schema_version": 1,
      "scope": "node" | "cluster",
      "generated_at": "2026-12-04T16:00:00Z",
      "status": "ok" | "degraded" | "broken",
      "exit_code": 0 | 1 | 2,
      "nodes": ["node-a", ...],            # nodes the report covers
      "checks": ["vxlan.device", ...],      # checks that ran
      "probe_max_age_seconds": 21.0 | null, # older probe results are stale (probe.stale)
      "probes_on_demand": true | false,     # probes were measured by this check, now
      "findings": [{
        "severity": "degraded" | "broken" | "ok",
        "node": "node-a",                   # where the problem is seen
        "peer": "node-b" | "198.18.0.9" | "db/pg-0" | null,
        "property": "vxlan.vni",            # dotted name of what is wrong
        "message": "vni is 4243, intended 4242",
        "action": "what to do about it",
        "expected": "4242" | null,
        "observed": "4243" | null
      }, ...],
      "probes": [{                          # one per (node, peer) measured
        "node": "node-a", "peer": "node-b", "peer_ip": "198.18.255.3",
        "reachable": true, "rtt_seconds": 0.0004, "mtu_ok": true,
        "probe_size": 1450, "age_seconds": 2.1, "error": null,
        "stale": false | true | null        # age_seconds > probe_max_age_seconds
      }, ...]
    }
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
REPORT_KIND = "FabricHealth"

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_BROKEN = 2


class Severity(enum.IntEnum):
    OK = 0
    DEGRADED = 1
    BROKEN = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError as exc:
            raise ValueError(f"unknown severity {text!r}: want ok, degraded or broken") from exc


@dataclass(frozen=True)
class Finding:
    severity: Severity
    node: str
    property: str
    message: str
    action: str
    peer: str | None = None
    expected: str | None = None
    observed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity.label,
            "node": self.node,
            "peer": self.peer,
            "property": self.property,
            "message": self.message,
            "action": self.action,
            "expected": self.expected,
            "observed": self.observed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            severity=Severity.parse(str(data["severity"])),
            node=str(data["node"]),
            peer=_opt_str(data.get("peer")),
            property=str(data["property"]),
            message=str(data["message"]),
            action=str(data.get("action") or ""),
            expected=_opt_str(data.get("expected")),
            observed=_opt_str(data.get("observed")),
        )


@dataclass(frozen=True)
class ProbeResult:
    """What the prober on ``node`` last measured toward ``peer`` across the overlay."""

    node: str
    peer: str
    peer_ip: str
    reachable: bool
    rtt_seconds: float | None
    mtu_ok: bool | None
    probe_size: int
    age_seconds: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        rtt, mtu_ok, age = data.get("rtt_seconds"), data.get("mtu_ok"), data.get("age_seconds")
        return cls(
            node=str(data["node"]),
            peer=str(data["peer"]),
            peer_ip=str(data["peer_ip"]),
            reachable=bool(data["reachable"]),
            rtt_seconds=float(rtt) if rtt is not None else None,
            mtu_ok=bool(mtu_ok) if mtu_ok is not None else None,
            probe_size=int(data.get("probe_size") or 0),
            age_seconds=float(age) if age is not None else None,
            error=_opt_str(data.get("error")),
        )


@dataclass
class Report:
    scope: str
    nodes: list[str]
    checks: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    generated_at: str = ""
    probe_max_age: float | None = None  # seconds after which a probe result is stale
    probes_on_demand: bool = False  # the probes were measured by the check itself

    def is_stale(self, probe: ProbeResult) -> bool | None:
        """Whether ``probe`` is older than :attr:`probe_max_age` (None: unknown)."""
        if self.probe_max_age is None or probe.age_seconds is None:
            return None
        return probe.age_seconds > self.probe_max_age

    @property
    def severity(self) -> Severity:
        return worst(self.findings)

    @property
    def exit_code(self) -> int:
        return exit_code(self.findings)

    def extend(self, other: Report) -> None:
        """Merge another report (one node's) into this one (the cluster's)."""
        for name in other.nodes:
            if name not in self.nodes:
                self.nodes.append(name)
        self.checks.extend(c for c in other.checks if c not in self.checks)
        self.findings.extend(other.findings)
        self.probes.extend(other.probes)
        if other.probe_max_age is not None:
            self.probe_max_age = max(self.probe_max_age or 0.0, other.probe_max_age)
        self.probes_on_demand = self.probes_on_demand or other.probes_on_demand

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": REPORT_KIND,
            "schema_version": SCHEMA_VERSION,
            "scope": self.scope,
            "generated_at": self.generated_at or utc_now(),
            "status": self.severity.label,
            "exit_code": self.exit_code,
            "nodes": list(self.nodes),
            "checks": list(self.checks),
            "probe_max_age_seconds": self.probe_max_age,
            "probes_on_demand": self.probes_on_demand,
            "findings": [f.to_dict() for f in sort_findings(self.findings)],
            "probes": [
                {**p.to_dict(), "stale": self.is_stale(p)}
                for p in sorted(self.probes, key=lambda p: (p.node, p.peer))
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        version = data.get("schema_version")
        if data.get("kind") != REPORT_KIND or version != SCHEMA_VERSION:
            raise ValueError(
                f"not a {REPORT_KIND} report of schema version {SCHEMA_VERSION} "
                f"(kind {data.get('kind')!r}, version {version!r}): are agent and "
                "checker the same vmoverlay version?"
            )
        return cls(
            scope=str(data["scope"]),
            nodes=[str(n) for n in data.get("nodes") or []],
            checks=[str(c) for c in data.get("checks") or []],
            findings=[Finding.from_dict(f) for f in data.get("findings") or []],
            probes=[ProbeResult.from_dict(p) for p in data.get("probes") or []],
            generated_at=str(data.get("generated_at") or ""),
            probe_max_age=_opt_float(data.get("probe_max_age_seconds")),
            probes_on_demand=bool(data.get("probes_on_demand")),
        )


def worst(findings: Iterable[Finding]) -> Severity:
    return max((f.severity for f in findings), default=Severity.OK)


def exit_code(findings: Iterable[Finding]) -> int:
    """0 healthy, 1 degraded, 2 broken: the worst finding decides."""
    return int(worst(findings))


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, then by node, property and peer, so output is stable."""
    return sorted(findings, key=lambda f: (-f.severity, f.node, f.property, f.peer or ""))


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: object) -> float | None:
    return None if value is None else float(str(value))


# ---- the table for people ------------------------------------------------------------


def render_table(report: Report) -> str:
    """The report as text: verdict, findings (worst first), and the probe matrix."""
    lines = [
        f"fabric health ({report.scope}: {', '.join(report.nodes) or '-'}): "
        f"{report.severity.label.upper()} (exit {report.exit_code})"
    ]
    if report.probes:
        lines += ["", *render_matrix(report.probes, report.nodes, max_age=report.probe_max_age)]
        lines.append(_probe_source(report))
    lines.append("")
    if not report.findings:
        lines.append(f"no findings; checks run: {', '.join(report.checks) or 'none'}")
        return "\n".join(lines)
    rows = [
        (f.severity.label, f.node, f.peer or "-", f.property, f.message, f.action)
        for f in sort_findings(report.findings)
    ]
    lines += _columns(("SEVERITY", "NODE", "PEER", "PROPERTY", "WHAT IS WRONG", "WHAT TO DO"), rows)
    return "\n".join(lines)


def render_matrix(
    probes: Sequence[ProbeResult], nodes: Sequence[str], *, max_age: float | None = None
) -> list[str]:
    """Node-by-node matrix: a row per node of the report (the prober), a column per node.

    ``0.4ms 3s`` reachable with full-size frames, measured 3 s ago; ``MTU!``
    reachable but full-size probes lost; ``DOWN`` unreachable; ``STALE`` the
    result is older than ``max_age``; ``?`` not measured; ``.`` self.
    """
    names = sorted({*nodes, *(p.node for p in probes), *(p.peer for p in probes)})
    by_pair = {(p.node, p.peer): p for p in probes}
    header = ("FROM \\ TO", *names)
    rows = []
    for src in sorted(nodes) or sorted({p.node for p in probes}):
        cells = [src]
        for dst in names:
            cells.append("." if src == dst else _cell(by_pair.get((src, dst)), max_age))
        rows.append(tuple(cells))
    legend = "RTT and age of the result; MTU! = full-size probe lost"
    if max_age is not None:
        legend += f"; STALE = older than {max_age:.0f}s"
    return [f"reachability matrix ({legend}):", *_columns(header, rows)]


def _cell(probe: ProbeResult | None, max_age: float | None = None) -> str:
    if probe is None:
        return "?"
    if not probe.reachable:
        state = "DOWN"
    else:
        rtt = f"{probe.rtt_seconds * 1000:.1f}ms" if probe.rtt_seconds is not None else "up"
        state = rtt if probe.mtu_ok is not False else f"{rtt} MTU!"
    if probe.age_seconds is None:
        return state
    age = f"{probe.age_seconds:.0f}s"
    stale = max_age is not None and probe.age_seconds > max_age
    return f"{state} {age} STALE" if stale else f"{state} {age}"


def _probe_source(report: Report) -> str:
    ages = [p.age_seconds for p in report.probes if p.age_seconds is not None]
    low, high = (f"{min(ages):.0f}", f"{max(ages):.0f}") if ages else ("", "")
    span = "of unknown age" if not ages else f"{low}s old" if low == high else f"{low}-{high}s old"
    if report.probes_on_demand:
        return f"probes measured by this check, now ({span})"
    return f"probes are the agents' last rounds ({span}); --fresh measures them now"


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    out = []
    for row in (header, *rows):
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        out.append("  ".join(cells).rstrip())
    return out
