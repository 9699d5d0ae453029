"""The migration-resilience gate end to end: real Postgres, pgbench and components, as root.

Scenarios:
- the gate on small settings (3 nodes, 1 VM, 2 migrations, 4 clients) passes; its
  JSON summary has every promised field with sane values, its JUnit XML parses,
  and no namespace of its run is left behind;
- the failing control, ``--binding pod-network``: a migration re-addresses the VM,
  connections break, the gate counts them and exits 1;
- faults: the target node's agent killed just before the first switch-over (back
  after 1 s) and the IPAM controller restarted before the second migration: no
  connection breaks, no VM is re-addressed;
- C13 (in-process, through the Lab API): while a client on node C pings every
  10 ms and holds pgbench sessions, the VM moves A -> B: a gratuitous ARP for
  the VM is seen on B's bridge within 1 s of switch-over, C's FDB entry for the
  VM's MAC points at B, the probe gap is the pause plus at most a few probe
  intervals, pgbench has no failed transaction and no reconnect, and Postgres
  sees the client's own overlay address (never source-NATed); no lab namespace
  has a default route.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from e2e.lab import report
from e2e.lab.announce import packet_socket
from e2e.lab.lab import Lab, LabConfig, node_address
from e2e.lab.pgbench import PgbenchRun, conninfo, init_argv, run_argv
from e2e.lab.probe import ProbeRunner
from e2e.netns import RunNamespaces, list_namespaces
from tests.fixtures.netns import require_root_netns

pytestmark = [pytest.mark.root, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
ETH_P_ARP = 0x0806
ETH_P_ALL = 0x0003  # only ETH_P_ALL sockets see frames the node itself sends


def run_gate(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    require_root_netns()
    out_json, out_xml = tmp_path / "gate.json", tmp_path / "gate.xml"
    argv = [sys.executable, "-m", "e2e.cli", "gate", "--json", str(out_json)]
    argv += ["--junit", str(out_xml), "--log-dir", str(tmp_path / "logs"), *args]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=400)
    output = proc.stdout + proc.stderr
    assert out_json.exists(), f"the gate wrote no JSON (exit {proc.returncode}):\n{output}"
    doc = json.loads(out_json.read_text())
    ET.fromstring(out_xml.read_text())
    assert not [n for n in list_namespaces() if n.startswith(f"vmo-{doc['run_id']}-")]
    return proc.returncode, doc, output


def test_gate_passes_on_small_settings(tmp_path: Path) -> None:
    code, doc, output = run_gate(
        tmp_path, "--nodes", "3", "--vms", "1", "--migrations", "2", "--clients", "4"
    )
    assert code == 0, output
    assert doc["passed"] is True and doc["reasons"] == []
    assert doc["migrations"] == 2 and doc["clients"] == 4
    assert doc["transactions"] > 0
    assert doc["failed_transactions"] == 0 and doc["broken_connections"] == 0
    assert 0 < doc["max_blackout_ms"] < 1000
    assert 0 <= doc["max_extra_blackout_ms"] <= doc["max_blackout_ms"]
    assert doc["max_stall_ms"] > 0
    rows = doc["per_migration"]
    assert [(r["vm"], r["source"], r["target"]) for r in rows] == [
        ("vm1", "n1", "n2"),
        ("vm1", "n2", "n3"),
    ]
    for row in rows:
        assert 100 <= row["pause_actual_ms"] < 300
        assert row["probe_loss"] > 0  # the pause is visible: the probe is not blind
    assert "verdict: PASS" in output


def test_pod_network_control_fails(tmp_path: Path) -> None:
    code, doc, output = run_gate(
        tmp_path,
        *("--nodes", "2", "--vms", "1", "--migrations", "1", "--clients", "2"),
        *("--binding", "pod-network", "--no-progress-ms", "3000"),
    )
    assert code == 1, output
    assert doc["passed"] is False
    assert doc["broken_connections"] >= 2  # the pgbench clients, and the probe
    assert doc["per_migration"][0]["broken_connections"] >= 1
    assert "verdict: FAIL" in output


def test_agent_killed_and_ipam_restarted_during_migration(tmp_path: Path) -> None:
    code, doc, output = run_gate(
        tmp_path,
        *("--nodes", "3", "--vms", "1", "--migrations", "2", "--clients", "4"),
        *("--fault", "agent-kill", "--fault", "ipam-restart"),
    )
    assert "fault: killing the agent on n2" in output
    assert "fault: restarting the IPAM controller" in output
    assert code == 0, output
    assert doc["broken_connections"] == 0 and doc["failed_transactions"] == 0


class ArpSniffer:
    """Every ARP frame seen on one interface of one namespace, with its arrival time."""

    def __init__(self, ns: str, ifname: str) -> None:
        self.sock = packet_socket(ns, ifname, ETH_P_ALL)
        self.sock.settimeout(0.2)
        self.frames: list[tuple[float, bytes]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                continue
            self.frames.append((time.monotonic(), frame))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()

    def gratuitous(self, ip: str, mac: str) -> list[float]:
        """Arrival times of gratuitous ARPs (sender = target = ``ip``) from ``mac``."""
        want_ip, want_mac = socket.inet_aton(ip), bytes.fromhex(mac.replace(":", ""))
        times = []
        for stamp, frame in self.frames:
            if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
                continue
            sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
            if sha == want_mac and spa == want_ip and tpa == want_ip:
                times.append(stamp)
        return times


def test_c13_fabric_learns_the_new_location_at_once(netns: RunNamespaces, tmp_path: Path) -> None:
    lab = Lab(LabConfig(nodes=3, vms=1, pause_ms=100, log_dir=tmp_path / "logs"), netns)
    benches: list[PgbenchRun] = []
    probe = None
    try:
        lab.start()
        vm = lab.vms["vm1"]
        assert (vm.node, lab.client_node) == ("n1", "n3")
        # The VM's first ever move: n1 (A) -> n2 (B), the client on n3 (C). The target's
        # agent has never announced a VM before, so its first GARP must not be late.
        a, b, c = "n1", "n2", lab.client_node
        netns.check(lab.client_ns, init_argv(vm.ip, bound_ms=10000))
        probe = ProbeRunner(netns, lab.client_ns, vm.ip, bound_s=10)
        argv = run_argv(vm.ip, clients=2, seconds=60, rate=100, bound_ms=10000)
        benches.append(
            PgbenchRun(["ip", "netns", "exec", lab.client_ns, *argv], clients=2, bound_s=10)
        )
        sniffer = ArpSniffer(lab.node_ns[b], "vmo-br0")
        time.sleep(1.5)

        prep = lab.prepare_migration("vm1", b)
        assert prep.source == a
        times = lab.switch_over(prep)
        lab.finish_migration(prep, times)
        time.sleep(1.5)
        sniffer.close()

        garps = [t - times.freeze for t in sniffer.gratuitous(vm.ip, vm.network.mac)]
        garps = [t for t in garps if t >= 0]
        assert garps, "no gratuitous ARP for the VM on the target node's bridge"
        assert garps[0] < 1.0, f"gratuitous ARPs at {garps} s after switch-over"

        fdb = netns.check(lab.node_ns[c], ["bridge", "fdb", "show", "dev", "vmo-vx0"])
        entries = [line for line in fdb.splitlines() if line.startswith(vm.network.mac)]
        assert any(f"dst {node_address(2)}" in line for line in entries), fdb

        sql = (
            "SELECT DISTINCT host(client_addr) FROM pg_stat_activity WHERE client_addr IS NOT NULL"
        )
        seen = netns.check(
            lab.client_ns, ["psql", "-At", "-c", sql, conninfo(vm.ip, bound_ms=5000)]
        )
        assert seen.split() == [lab.client_ip]
        for node_ns in lab.node_ns.values():
            rules = netns.run(node_ns, ["nft", "list", "ruleset"]).stdout
            assert "masquerade" not in rules and "snat" not in rules
        for ns in netns.names:  # no lab namespace has a way out of the lab
            for family in ("-4", "-6"):
                routes = netns.run(ns, ["ip", family, "route", "show", "default"]).stdout
                assert routes.strip() == "", (ns, routes)

        result = benches[0].finish()
        gaps = [e for e in probe.since(times.freeze - 0.3) if e["event"] == "gap"]
        data = probe.stop()
        assert gaps, "the probe reported no live gap for the pause"
        black, lost = report.blackout(data, times.freeze - 0.3, times.resume + 1.5)
        assert lost > 0
        assert black <= times.pause_s + 5 * data.interval, (black, times.pause_s)
        assert data.breaks == []
        assert sum(n for _, _, n in result.progress) == 0
        assert result.aborted_clients == set() and result.connect_failures == 0
        assert any(tps > 0 for _, tps, _ in result.progress)
    finally:
        for bench in benches:
            bench.stop()
        if probe is not None and probe.proc.poll() is None:
            probe.proc.kill()
        lab.close()
