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

The API transport is not part of "event to kernel" there. A second,
end-to-end part (``--e2e``, run by default for 500 nodes / 5,000 VMs) starts
the lab API server and a real ``vxlan-manager run`` process in the namespace,
loads the objects, lets one full resync (kernel dump) pass, then patches VM
records (migrations) one at a time and times each from the API write to
``bridge monitor fdb`` showing the kernel entry; it also reads the agent's
RSS and peak RSS from /proc. Targets: < 50 ms per change
at 500 nodes / 5,000 VMs, RSS < 80 MB.

    python -m bench agent             # all sizes, then end to end at 500 / 5,000
    python -m bench.agent --nodes 500 --vms 5000 [--e2e]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
    parser.add_argument("--e2e", action="store_true", help="only the end-to-end part")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--e2e-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(
        sys.argv[1:] if argv is None and __name__ == "__main__" else argv or []
    )
    if args.child:
        print(json.dumps(child(args.nodes, args.vms)))
        return 0
    if args.e2e_child:
        print(json.dumps(e2e_child(args.nodes, args.vms)))
        return 0
    if os.geteuid() != 0:
        print("bench.agent: needs root (it creates a network namespace); skipped")
        return 0
    sizes = [(args.nodes, args.vms)] if args.nodes else SIZES
    from e2e.netns import RunNamespaces

    with RunNamespaces() as run:
        if not args.e2e:
            _in_process(run, sizes)
        e2e_size = (args.nodes, args.vms) if args.nodes else E2E_SIZE
        _end_to_end(run, *e2e_size)
    return 0


def _bench_ns(run: Any, role: str) -> str:
    ns = str(run.add(role))
    run.check(ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
    run.check(ns, ["ip", "addr", "add", "198.18.0.1/15", "dev", "eth0"])
    run.check(ns, ["ip", "link", "set", "eth0", "up"])
    return ns


def _child(run: Any, ns: str, mode: str, nodes: int, vms: int) -> dict[str, Any] | str:
    argv = [sys.executable, "-m", "bench.agent", mode, "--nodes", str(nodes), "--vms", str(vms)]
    proc = run.run(ns, argv, cwd=ROOT, timeout=900)
    if proc.returncode != 0:
        return f"failed: {proc.stderr.strip()[-800:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _in_process(run: Any, sizes: list[tuple[int, int]]) -> None:
    print(
        f"{'nodes':>5} {'VMs':>5} | {'first sync':>10} {'resync':>8} | "
        f"event->kernel ms: {'median':>6} {'p95':>6} {'max':>6} | {'RSS MB':>6}"
    )
    for nodes, vms in sizes:
        r = _child(run, _bench_ns(run, f"b{nodes}-{vms}"), "--child", nodes, vms)
        if isinstance(r, str):
            print(f"{nodes:>5} {vms:>5} | {r}")
            continue
        print(
            f"{nodes:>5} {vms:>5} | {r['first_sync_ms']:>8.1f}ms {r['resync_ms']:>6.1f}ms | "
            f"{'':>17} {r['event_median_ms']:>6.2f} {r['event_p95_ms']:>6.2f} "
            f"{r['event_max_ms']:>6.2f} | {r['rss_mb']:>6.1f}",
            flush=True,
        )


def _end_to_end(run: Any, nodes: int, vms: int) -> None:
    print(f"end to end (lab API -> agent process -> kernel), {nodes} nodes / {vms} VMs:")
    r = _child(run, _bench_ns(run, f"e{nodes}-{vms}"), "--e2e-child", nodes, vms)
    if isinstance(r, str):
        print(f"  {r}")
        return
    print(
        f"  load {r['load_s']:.1f}s, agent ready {r['ready_s']:.1f}s after start; "
        f"API write -> kernel entry over {r['samples']} migrations: median "
        f"{r['median_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, max {r['max_ms']:.1f} ms; "
        f"agent RSS {r['rss_mb']:.1f} MB (peak {r['peak_rss_mb']:.1f} MB)",
        flush=True,
    )


E2E_SIZE = (500, 5000)
E2E_SAMPLES = 30
E2E_RESYNC = 3


def e2e_child(nodes: int, vms: int) -> dict[str, Any]:
    """Inside the bench namespace: lab API + a real agent process; time API write -> kernel."""
    import tempfile

    from bench.apiserver import start_server
    from vmoverlay.kube import load_client

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server, _ = start_server(work, None)
        procs: list[subprocess.Popen[Any]] = [server]
        try:
            client = load_client(str(work / "kubeconfig"))
            started = time.perf_counter()
            _load_objects(client, nodes, vms)
            load = time.perf_counter() - started

            started = time.perf_counter()
            agent = _start_agent(work)
            procs.append(agent)
            while _fdb_count() < vms - vms // nodes + nodes - 1:  # remote VMs + peers
                if agent.poll() is not None or time.perf_counter() - started > 300:
                    raise RuntimeError("agent did not program the FDB")
                time.sleep(0.2)
            ready = time.perf_counter() - started
            time.sleep(E2E_RESYNC + 1)  # let a full resync (kernel dump) happen before measuring

            monitor = subprocess.Popen(
                ["bridge", "monitor", "fdb"], stdout=subprocess.PIPE, text=True
            )
            procs.append(monitor)
            time.sleep(0.3)
            latencies = sorted(_migrations(client, monitor, nodes, vms))
            status = Path(f"/proc/{agent.pid}/status").read_text().splitlines()
            rss = next(int(x.split()[1]) for x in status if x.startswith("VmRSS:"))
            peak = next(int(x.split()[1]) for x in status if x.startswith("VmHWM:"))
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return {
        "load_s": load,
        "ready_s": ready,
        "samples": len(latencies),
        "median_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "max_ms": latencies[-1] * 1000,
        "rss_mb": rss / 1024,
        "peak_rss_mb": peak / 1024,
    }


def _load_objects(client: Any, nodes: int, vms: int) -> None:
    from kubernetes import client as k8s

    from vmoverlay import api

    ext = k8s.ApiextensionsV1Api(client)
    for path in sorted((ROOT / "manifests" / "crds").glob("*.yaml")):
        ext.create_custom_resource_definition(yaml_load(path))
    core, objs = k8s.CoreV1Api(client), k8s.CustomObjectsApi(client)
    core.create_namespace({"metadata": {"name": "db"}})
    for i in range(nodes):
        core.create_node({"metadata": {"name": f"n{i}"}})
        body = _node(i, _vtep(i))
        body["metadata"] = core.read_node(f"n{i}").metadata
        core.replace_node_status(f"n{i}", body)
    g, v, plural = api.GROUP, api.VERSION, api.VM_PLURAL
    for i in range(vms):
        meta = {"name": f"vm-{i}", "namespace": "db"}
        body = {"apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": meta, "spec": {}}
        made = objs.create_namespaced_custom_object(g, v, "db", plural, body)
        made["status"] = _vm(i, f"n{i % nodes}")["status"]
        objs.replace_namespaced_custom_object_status(g, v, "db", plural, f"vm-{i}", made)


def _start_agent(work: Path) -> subprocess.Popen[bytes]:
    argv = [
        str(ROOT / ".venv" / "bin" / "vxlan-manager"),
        *("run", "--node", "n0", "--kubeconfig", str(work / "kubeconfig")),
        *("--state-dir", str(work / "state"), "--metrics-addr", "127.0.0.1:0"),
        *("--resync-period", str(E2E_RESYNC), "--log-level", "warning", "--log-format", "json"),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _migrations(client: Any, monitor: subprocess.Popen[str], nodes: int, vms: int) -> list[float]:
    """Move VM records to other nodes one at a time; seconds from API write to kernel entry."""
    from kubernetes import client as k8s

    from vmoverlay import api

    objs = k8s.CustomObjectsApi(client)
    g, v, plural = api.GROUP, api.VERSION, api.VM_PLURAL
    latencies = []
    for k in range(E2E_SAMPLES):
        i = 1 + (k * 7919) % (vms - 1)
        if i % nodes == 0:  # keep to VMs of other nodes: their entry moves
            i += 1
        obj = objs.get_namespaced_custom_object(g, v, "db", plural, f"vm-{i}")
        target = f"n{1 + (i + k) % (nodes - 1)}"
        if target == obj["status"]["node"]:
            target = f"n{1 + (i + k + 1) % (nodes - 1)}"
        obj["status"]["node"] = target
        mac, vtep = obj["status"]["network"]["mac"], _vtep(int(target[1:]))
        t = time.perf_counter()
        objs.replace_namespaced_custom_object_status(g, v, "db", plural, f"vm-{i}", obj)
        _wait_line(monitor, f"{mac} dev vmo-vx0 dst {vtep}")
        latencies.append(time.perf_counter() - t)
    return latencies


def yaml_load(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def _fdb_count() -> int:
    out = subprocess.run(
        ["bridge", "fdb", "show", "dev", "vmo-vx0"], capture_output=True, text=True, check=False
    ).stdout
    return sum(1 for line in out.splitlines() if " dst " in line and "self" in line)


def _wait_line(monitor: subprocess.Popen[str], text: str, timeout: float = 10.0) -> None:
    import select

    assert monitor.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([monitor.stdout], [], [], 0.5)
        if ready and text in monitor.stdout.readline():
            return
    raise RuntimeError(f"kernel never showed {text!r}")


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
