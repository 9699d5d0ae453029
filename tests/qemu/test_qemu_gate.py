"""The gate in QEMU mode, end to end: one real guest, one QEMU live migration, pgbench.

Needs root and qemu-system-x86 (skipped with how to install it otherwise); runs
``vmoverlay-lab gate --mode qemu`` as a separate process, as CI and people do.

Scenario:
- two nodes with the real agents, IPAM controller and CNI plugin; one QEMU guest in
  its runner pod (CNI vm-l2 + tap), the client pod on the other node; one QEMU live
  migration through QMP while pgbench runs: the gate passes (no failed transaction,
  no broken connection, the VM's network record unchanged, the source runner
  removed), and its JSON carries QEMU's own figures for the migration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_gate_qemu_mode_one_migration(accel: str, tmp_path: Path) -> None:
    # accel: QEMU checked, the image built before the gate's clock starts, KVM probed once.
    env = {**os.environ, "VMOVERLAY_QEMU_ACCEL": accel}
    summary = tmp_path / "gate.json"
    argv = [sys.executable, "-m", "e2e.cli", "gate", "--mode", "qemu", "--nodes", "2"]
    argv += ["--vms", "1", "--migrations", "1", "--clients", "2", "--json", str(summary)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        stdout, stderr = proc.communicate(timeout=270)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the gate removes its namespaces on SIGTERM.
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"the gate did not finish within 270 s:\n{stderr[-3000:]}")
    progress = "\n".join(line for line in stderr.splitlines() if line.startswith("["))
    print(f"\n{progress}\n{stdout}")

    assert proc.returncode == 0, stderr[-3000:]
    doc = json.loads(summary.read_text())
    assert doc["passed"] and doc["reasons"] == []
    assert doc["settings"]["mode"] == "qemu"
    assert (doc["failed_transactions"], doc["broken_connections"]) == (0, 0)
    assert doc["transactions"] > 0
    [migration] = doc["qemu_migrations"]
    assert migration["status"] == "completed"
    assert migration["downtime_ms"] > 0 and migration["ram_transferred_bytes"] > 0
