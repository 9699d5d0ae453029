"""Node agent reconcile cost as the cluster grows (root: runs in a namespace it makes).

For 10, 100 and 500 simulated nodes with 1,000 and 5,000 VM records, a fresh
child process (``ip netns exec`` into a ``vmo-<run>-`` namespace) builds the
agent, fills its caches as the watches would, and measures:

- full resync: desired state + FDB dump + diff + apply, first (empty kernel)
  and steady (nothing to change);
- event to kernel: from the moment a watch event reaches the agent (a VM
  migrates, a node changes address, a node is deleted) to the kernel holding
  the result (the netlink ack), over 30 events: median, p95, max;
- the child's resident memory (VmRSS) after all that, with scapy loaded as
  it is once a VM has arrived.

The API transport is not part of "event to kernel" here: the lab API's own
latency is measured by ``bench.apiserver``. Targets: < 50 ms per change at
500 nodes / 5,000 VMs, RSS < 80 MB.

    python -m bench agent             # all sizes
    python -m bench.agent --nodes 500 --vms 5000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

SIZES = [(10, 1000), (100, 1000), (100, 5000), (500, 1000), (500, 5000)]
EVENTS = 30
ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, help="one size only: this many nodes")
    parser.add_argument("--vms", type=int, default=5000, help="VM records with --nodes")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(
        sys.argv[1:] if argv is None and __name__ == "__main__" else argv or []
    )
    if args.child:
        print(json.dumps(child(args.nodes, args.vms)))
        return 0
    if os.geteuid() != 0:
        print("bench.agent: needs root (it creates a network namespace); skipped")
        return 0
    sizes = [(args.nodes, args.vms)] if args.nodes else SIZES
    from e2e.netns import RunNamespaces

    print(
        f"{'nodes':>5} {'VMs':>5} | {'first sync':>10} {'resync':>8} | event->kernel ms: {'median':>6} {'p95':>6} {'max':>6} | {'RSS MB':>6}"
    )
    with RunNamespaces() as run:
        for nodes, vms in sizes:
            ns = run.add(f"b{nodes}-{vms}")
            run.check(ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
            run.check(ns, ["ip", "addr", "add", "198.18.0.1/15", "dev", "eth0"])
            run.check(ns, ["ip", "link", "set", "eth0", "up"])
            proc = run.run(
                ns,
                [
                    sys.executable,
                    "-m",
                    "bench.agent",
                    "--child",
                    "--nodes",
                    str(nodes),
                    "--vms",
                    str(vms),
                ],
                cwd=ROOT,
                timeout=600,
            )
            if proc.returncode != 0:
                print(f"{nodes:>5} {vms:>5} | failed: {proc.stderr.strip()[-500:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{nodes:>5} {vms:>5} | {r['first_sync_ms']:>8.1f}ms {r['resync_ms']:>6.1f}ms | "
                f"{'':>17} {r['event_median_ms']:>6.2f} {r['event_p95_ms']:>6.2f} {r['event_max_ms']:>6.2f} | {r['rss_mb']:>6.1f}",
                flush=True,
            )
    return 0


def _node(i: int, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"n{i}"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _vm(i: int, node: str) -> dict[str, Any]:
    mac = f"0a:00:00:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"
    ip = f"198.19.{(i >> 8) & 0xFF}.{i & 0xFF}"
    return {
        "metadata": {"namespace": "db", "name": f"vm-{i}", "uid": f"u{i}", "resourceVersion": "1"},
        "status": {
            "node": node,
            "phase": "Running",
            "network": {"ip": ip, "prefix": 16, "mac": mac, "pool": "default"},
        },
    }


def _vtep(i: int) -> str:
    # n0 is this node (198.18.0.1); peers from 198.18.0.2 upward across 198.18.0.0/15.
    n = i + 1
    return f"198.{18 + n // 65536}.{(n // 256) % 256}.{n % 256}"


def child(nodes: int, vms: int) -> dict[str, Any]:
    """Run inside the bench namespace: build an agent, measure, report."""
    import tempfile

    from kubernetes import client as k8s

    from vxlan_manager.agent import Agent
    from vxlan_manager.announce import Announcement, build_frame
    from vxlan_manager.config import AgentConfig

    build_frame(
        Announcement("x", "198.19.0.1", "0a:00:00:00:00:01")
    )  # load scapy as in a real agent
    with tempfile.TemporaryDirectory() as tmp:
        cfg = AgentConfig(node="n0", state_dir=tmp, announce=False)
        agent = Agent(cfg, client=k8s.ApiClient())
        for i in range(nodes):
            agent._apply_event("nodes", "ADDED", _node(i, _vtep(i)))
        for i in range(vms):
            agent._apply_event("virtualmachines", "ADDED", _vm(i, f"n{i % nodes}"))
        agent._synced = {k: True for k in agent._synced}

        t = time.perf_counter()
        agent.reconcile(full=True)
        first = time.perf_counter() - t
        t = time.perf_counter()
        result = agent.reconcile(full=True)
        resync = time.perf_counter() - t
        assert not result.fdb, "steady resync changed entries"

        latencies, changed = [], 0
        for k in range(EVENTS):
            t = time.perf_counter()
            if k % 3 == 0:  # a VM migrates to another node
                i = (k * 7919) % vms
                agent._apply_event("virtualmachines", "MODIFIED", _vm(i, f"n{(i + 1 + k) % nodes}"))
            elif k % 3 == 1:  # a node changes address
                i = 1 + k % (nodes - 1)
                agent._apply_event("nodes", "MODIFIED", _node(i, f"198.19.255.{k}"))
            else:  # a node is deleted
                i = 1 + k % (nodes - 1)
                agent._apply_event("nodes", "DELETED", _node(i, _vtep(i)))
            res = agent.reconcile(full=False)
            latencies.append(time.perf_counter() - t)
            changed += bool(res.fdb)
        agent.kernel.close()
    latencies.sort()
    rss_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return {
        "nodes": nodes,
        "vms": vms,
        "first_sync_ms": first * 1000,
        "resync_ms": resync * 1000,
        "event_median_ms": statistics.median(latencies) * 1000,
        "event_p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "event_max_ms": latencies[-1] * 1000,
        "rss_mb": rss_kb / 1024,
        "events_that_changed_fdb": changed,
    }


if __name__ == "__main__":
    sys.exit(main())
