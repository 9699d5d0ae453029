"""The health report: its JSON schema is pinned, it round-trips, and the table reads well.

Scenarios:
- the JSON document has exactly the documented top-level, finding and probe fields,
  ``schema_version`` 1 and ``kind`` FabricHealth; status and exit code follow the worst finding;
- a report parsed back from its JSON equals the original (the cluster check relies on it);
- a report of another kind or schema version is refused with a clear error;
- merging node reports into a cluster report keeps every node, finding and probe;
- the table shows the verdict, each finding's node / peer / property, and the probe
  matrix with RTT, MTU trouble and unreachable peers, and each result's age; results
  older than the report's probe_max_age are marked STALE (table) / "stale" (JSON);
- a version-1 document from before probe_max_age_seconds / probes_on_demand / stale were
  added still parses (the added fields are optional).
"""

from __future__ import annotations

import json

import pytest

from vxlan_manager.health.findings import (
    SCHEMA_VERSION,
    Finding,
    ProbeResult,
    Report,
    Severity,
    render_table,
)

TOP_LEVEL = {
    "kind",
    "schema_version",
    "scope",
    "generated_at",
    "status",
    "exit_code",
    "nodes",
    "checks",
    "probe_max_age_seconds",
    "probes_on_demand",
    "findings",
    "probes",
}
FINDING_FIELDS = {
    "severity",
    "node",
    "peer",
    "property",
    "message",
    "action",
    "expected",
    "observed",
}
PROBE_FIELDS = {
    "node",
    "peer",
    "peer_ip",
    "reachable",
    "rtt_seconds",
    "mtu_ok",
    "probe_size",
    "age_seconds",
    "error",
    "stale",
}


def sample() -> Report:
    return Report(
        scope="node",
        nodes=["a"],
        checks=["vxlan.device", "probes"],
        findings=[
            Finding(Severity.DEGRADED, "a", "vxlan.mtu", "mtu 1400", "fix", None, "1450", "1400"),
            Finding(Severity.BROKEN, "a", "probe.reachable", "c down", "look", "c"),
        ],
        probes=[
            ProbeResult("a", "b", "198.18.255.2", True, 0.0005, True, 1450, 1.5),
            ProbeResult("a", "c", "198.18.255.3", False, None, None, 1450, 1.5, "timeout"),
        ],
        generated_at="2026-12-04T16:00:00Z",
        probe_max_age=21.0,
    )


def test_json_schema_is_pinned() -> None:
    doc = json.loads(json.dumps(sample().to_dict()))
    assert set(doc) == TOP_LEVEL
    assert doc["kind"] == "FabricHealth"
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert (doc["status"], doc["exit_code"]) == ("broken", 2)
    assert doc["scope"] == "node" and doc["nodes"] == ["a"]
    for f in doc["findings"]:
        assert set(f) == FINDING_FIELDS
        assert f["severity"] in ("ok", "degraded", "broken")
    # Worst first.
    assert [f["property"] for f in doc["findings"]] == ["probe.reachable", "vxlan.mtu"]
    for p in doc["probes"]:
        assert set(p) == PROBE_FIELDS
    assert doc["probes"][1] == {
        "node": "a",
        "peer": "c",
        "peer_ip": "198.18.255.3",
        "reachable": False,
        "rtt_seconds": None,
        "mtu_ok": None,
        "probe_size": 1450,
        "age_seconds": 1.5,
        "error": "timeout",
        "stale": False,
    }
    assert (doc["probe_max_age_seconds"], doc["probes_on_demand"]) == (21.0, False)


def test_empty_report_is_ok_with_exit_zero() -> None:
    doc = Report(scope="cluster", nodes=["a", "b"]).to_dict()
    assert (doc["status"], doc["exit_code"], doc["findings"]) == ("ok", 0, [])


def test_round_trip() -> None:
    original = sample()
    parsed = Report.from_dict(json.loads(json.dumps(original.to_dict())))
    assert parsed.to_dict() == original.to_dict()


def test_other_schema_is_refused() -> None:
    doc = sample().to_dict()
    doc["schema_version"] = 2
    with pytest.raises(ValueError, match="schema version 1"):
        Report.from_dict(doc)


def test_merge_into_cluster_report() -> None:
    cluster = Report(scope="cluster", nodes=[])
    b = Report(
        scope="node",
        nodes=["b"],
        checks=["bridge"],
        findings=[Finding(Severity.DEGRADED, "b", "fdb.stale", "m", "a")],
    )
    cluster.extend(sample())
    cluster.extend(b)
    assert cluster.nodes == ["a", "b"]
    assert cluster.checks == ["vxlan.device", "probes", "bridge"]
    assert len(cluster.findings) == 3 and len(cluster.probes) == 2
    assert cluster.exit_code == 2


def test_table_names_findings_and_matrix() -> None:
    text = render_table(sample())
    assert text.splitlines()[0].endswith("BROKEN (exit 2)")
    assert "probe.reachable" in text and "vxlan.mtu" in text
    matrix = [line for line in text.splitlines() if line.startswith(("a ", "b ", "c "))]
    assert matrix[0].split() == ["a", ".", "0.5ms", "2s", "DOWN", "2s"]
    assert "agents' last rounds (2s old)" in text
    mtu_bad = Report(
        scope="cluster",
        nodes=["a", "b"],
        probes=[ProbeResult("a", "b", "x", True, 0.001, False, 1450)],
    )
    assert "1.0ms MTU!" in render_table(mtu_bad)
    assert "no findings" in render_table(Report(scope="node", nodes=["a"], checks=["bridge"]))


def test_stale_results_are_marked() -> None:
    old = Report(
        scope="node",
        nodes=["a"],
        probes=[
            ProbeResult("a", "b", "x", True, 0.001, True, 1450, 30.0),
            ProbeResult("a", "c", "y", False, None, None, 1450, 5.0),
        ],
        probe_max_age=21.0,
    )
    doc = old.to_dict()
    assert [p["stale"] for p in doc["probes"]] == [True, False]
    text = render_table(old)
    assert "1.0ms 30s STALE" in text and "DOWN 5s" in text and "older than 21s" in text
    unknown = Report(scope="node", nodes=["a"], probes=old.probes)
    assert [p["stale"] for p in unknown.to_dict()["probes"]] == [None, None]
    assert "STALE" not in render_table(unknown)


def test_older_version_1_document_still_parses() -> None:
    doc = sample().to_dict()
    for key in ("probe_max_age_seconds", "probes_on_demand"):
        del doc[key]
    for p in doc["probes"]:
        del p["stale"]
    parsed = Report.from_dict(doc)
    assert (parsed.probe_max_age, parsed.probes_on_demand) == (None, False)
    assert len(parsed.probes) == 2
