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
removed, without bumping the version)::

    {
      "kind": "FabricHealth",
      "schema_version": 1,
      "scope": "node" | "cluster",
      "generated_at": "2026-12-04T16:00:00Z",
      "status": "ok" | "degraded" | "broken",
      "exit_code": 0 | 1 | 2,
      "nodes": ["node-a", ...],            # nodes the report covers
      "checks": ["vxlan.device", ...],      # checks that ran
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
        "probe_size": 1450, "age_seconds": 2.1, "error": null
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
            "findings": [f.to_dict() for f in sort_findings(self.findings)],
            "probes": [p.to_dict() for p in sorted(self.probes, key=lambda p: (p.node, p.peer))],
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


# ---- the table for people ------------------------------------------------------------


def render_table(report: Report) -> str:
    """The report as text: verdict, findings (worst first), and the probe matrix."""
    lines = [
        f"fabric health ({report.scope}: {', '.join(report.nodes) or '-'}): "
        f"{report.severity.label.upper()} (exit {report.exit_code})"
    ]
    if report.probes:
        lines += ["", *render_matrix(report.probes, report.nodes)]
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


def render_matrix(probes: Sequence[ProbeResult], nodes: Sequence[str]) -> list[str]:
    """Node-by-node matrix: a row per node of the report (the prober), a column per node.

    ``0.4ms`` reachable with full-size frames; ``0.4ms MTU!`` reachable but
    full-size probes lost; ``DOWN`` unreachable; ``?`` not measured; ``.`` self.
    """
    names = sorted({*nodes, *(p.node for p in probes), *(p.peer for p in probes)})
    by_pair = {(p.node, p.peer): p for p in probes}
    header = ("FROM \\ TO", *names)
    rows = []
    for src in sorted(nodes) or sorted({p.node for p in probes}):
        cells = [src]
        for dst in names:
            cells.append("." if src == dst else _cell(by_pair.get((src, dst))))
        rows.append(tuple(cells))
    return ["reachability matrix (RTT; MTU! = full-size probe lost):", *_columns(header, rows)]


def _cell(probe: ProbeResult | None) -> str:
    if probe is None:
        return "?"
    if not probe.reachable:
        return "DOWN"
    rtt = f"{probe.rtt_seconds * 1000:.1f}ms" if probe.rtt_seconds is not None else "up"
    return rtt if probe.mtu_ok is not False else f"{rtt} MTU!"


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    out = []
    for row in (header, *rows):
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        out.append("  ".join(cells).rstrip())
    return out
