"""Fabric health on a real 4-node lab: the matrix, each injected fault, recovery, the bench.

One lab (4 nodes, 2 VMs, real agents with the prober at a 2 s period and no periodic full
resync, so no agent repairs a fault before the check sees it) for the module.

Scenarios:
- healthy: every ordered pair of nodes reachable with full-size (1450-byte) probes, no
  finding, exit code 0;
- each fault is detected by the very first `vmoverlay-lab check` after it is injected (the
  check measures the probes itself, now: an agent's last round, up to a period old, would
  still say "reachable") and named (node, peer, property) with the right exit code; with
  --no-fresh the agents' results carry their age; after its removal the check is healthy again within one probe period
  (plus the probe timeout and the check's own run time):
  drop VXLAN UDP on n3 (every pair with n3 unreachable, n3 cut off, 2), lower n3's underlay
  MTU (underlay.mtu on n3, probe.mtu toward n3, the MTU localised on n3, 2), delete n1's
  entry toward n2 (fdb.peer, 2), change n4's VNI (vxlan.vni, n4 cut off, 2), stop n2's
  agent (agent.health, 1);
- `vmoverlay-lab bench throughput` measures both paths and a ratio (1 s runs).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.lab import bench, fault
from e2e.lab.check import LabInfo, lab_report
from e2e.netns import RunNamespaces
from tests.fixtures.netns import require_root_netns
from vxlan_manager.health.findings import Report

PERIOD = 2.0  # VMOVERLAY_PROBE_PERIOD for the lab's agents
TIMEOUT = 1.0  # the probe timeout (default)
NODES = ["n1", "n2", "n3", "n4"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab() -> Iterator[LabInfo]:
    require_root_netns()
    from e2e.lab import preflight, sheet
    from e2e.lab.lab import Lab, LabConfig

    missing = preflight.problems()
    if missing:
        pytest.skip("the lab cannot run here: " + "; ".join(missing))
    # Inherited by the agents: a short probe period, and no periodic full resync during
    # the module, so an agent never repairs an FDB or VNI fault before the check sees it.
    env = {"VMOVERLAY_PROBE_PERIOD": str(PERIOD), "VMOVERLAY_RESYNC_PERIOD": "900"}
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        with RunNamespaces() as run:
            the_lab = Lab(LabConfig(nodes=len(NODES), vms=2), run)
            try:
                the_lab.start()
                info = LabInfo.from_sheet(sheet.describe(the_lab))
                yield info
                fault.clear(info)
            finally:
                the_lab.close()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def wait_report(lab: LabInfo, want: Any, *, within: float) -> tuple[Report, float]:
    """Poll the lab check until ``want(report)``; return the report and the time it took."""
    started = time.monotonic()
    while True:
        report = lab_report(lab, timeout=15)
        took = time.monotonic() - started
        if want(report):
            return report, took
        if took > within:
            names = [(f.node, f.peer, f.property) for f in report.findings]
            raise AssertionError(
                f"not reached within {within:.0f}s: exit {report.exit_code} {names}"
            )
        time.sleep(0.3)


def healthy(report: Report) -> bool:
    return report.exit_code == 0 and len(report.probes) == len(NODES) * (len(NODES) - 1)


def test_healthy_lab_matrix(lab: LabInfo) -> None:
    report, _ = wait_report(lab, healthy, within=3 * PERIOD + 5)
    assert report.findings == []
    pairs = {(p.node, p.peer) for p in report.probes}
    assert pairs == {(a, b) for a in NODES for b in NODES if a != b}
    for p in report.probes:
        assert (p.reachable, p.mtu_ok, p.probe_size) == (True, True, 1450), p
        assert p.rtt_seconds is not None and p.rtt_seconds < TIMEOUT


FAULTS = [
    # (kind, node, peer, expected exit code, findings that must be present)
    (
        "drop-vxlan",
        "n3",
        None,
        2,
        {("n1", "n3", "probe.reachable"), ("n2", "n3", "probe.reachable")}
        | {("n4", "n3", "probe.reachable"), ("n3", "n1", "probe.reachable")}
        | {("n3", None, "cluster.isolated")},
    ),
    (
        "mtu",
        "n3",
        None,
        2,
        {("n3", None, "underlay.mtu"), ("n1", "n3", "probe.mtu"), ("n3", "n2", "probe.mtu")}
        | {("n3", None, "cluster.mtu")},
    ),
    ("fdb", "n1", "n2", 2, {("n1", "n2", "fdb.peer")}),
    ("vni", "n4", None, 2, {("n4", None, "vxlan.vni"), ("n4", None, "cluster.isolated")}),
    ("stop-agent", "n2", None, 1, {("n2", None, "agent.health")}),
]


@pytest.mark.parametrize(
    ("kind", "node", "peer", "code", "expected"), FAULTS, ids=[f[0] for f in FAULTS]
)
def test_fault_detected_and_healed(
    lab: LabInfo,
    kind: str,
    node: str,
    peer: str | None,
    code: int,
    expected: set[tuple[str, str | None, str]],
) -> None:
    wait_report(lab, healthy, within=3 * PERIOD + 5)
    fault.inject(lab, kind, node, peer=peer)
    try:
        report = lab_report(lab, timeout=15)  # at once: no waiting for the agents' next round
        assert expected <= {(f.node, f.peer, f.property) for f in report.findings}, [
            (f.node, f.peer, f.property) for f in report.findings
        ]
        assert report.exit_code == code
        assert report.probes_on_demand and all(p.age_seconds == 0.0 for p in report.probes)
        if kind == "vni":
            f = next(f for f in report.findings if f.property == "vxlan.vni")
            assert (f.expected, f.observed) == ("4242", "4243")
        if code == 1:
            assert all(f.severity == 1 for f in report.findings)
    finally:
        fault.remove(lab, kind, node, peer=peer)
    # Healthy again within one probe period (+ the probe timeout and the check's own time).
    _, took = wait_report(lab, healthy, within=PERIOD + TIMEOUT + 4)
    assert took <= PERIOD + TIMEOUT + 4


def test_agents_results_carry_their_age(lab: LabInfo) -> None:
    report = lab_report(lab, timeout=15, fresh=False)
    assert not report.probes_on_demand and report.probe_max_age == 2 * PERIOD + TIMEOUT
    assert report.probes and all(p.age_seconds is not None for p in report.probes)
    assert all(p.age_seconds <= 2 * PERIOD + TIMEOUT for p in report.probes if p.age_seconds)


def test_bench_throughput(lab: LabInfo) -> None:
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 is not installed: apt-get install iperf3")
    a, b, node_a, node_b = bench.pick_endpoints(lab.sheet)
    assert a.node != b.node and node_a.node != node_b.node
    result = bench.throughput(a, b, node_a, node_b, seconds=1)
    assert result.overlay_bps > 0 and result.underlay_bps > 0
    assert 0 < result.ratio
    print(bench.render(result))
