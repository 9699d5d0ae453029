"""IPAM controller figures: allocations/s and latency from "VM created" to "status.network written".

For one and for two controllers (the real ``ipam-controller`` executable, no leader
election, 4 workers each), against a fresh lab API server (in memory) per run:

- burst: 1,000 VMs created at once by 8 client threads; allocations/s is 1,000 over
  the time from the first create to the last ``status.network`` seen; latency is
  per VM, from sending its create to the watch event that carries its address,
  so it includes the time the VM waits in the queue behind the burst;
- paced: 1,000 VMs created at a steady 100/s; the latency a VM sees when the
  controller is not saturated.

Targets from the issue: at least 200 allocations/s, p99 under 100 ms. Bounded:
fixed counts, a deadline of 120 s per run. Figures vary with the machine's load;
the lab API server is Python too and shares the two cores.

    python -m bench ipam            # VMO_BENCH_IPAM_VMS=200 for a quick look
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch

from tests.fixtures.apiserver import LabApi, start_lab_api
from vmoverlay import api, kube

ROOT = Path(__file__).resolve().parents[1]
IPAM_BIN = ROOT / ".venv" / "bin" / "ipam-controller"
VMS = int(os.environ.get("VMO_BENCH_IPAM_VMS", "1000"))
PACED_RATE = float(os.environ.get("VMO_BENCH_IPAM_RATE", "100"))
DEADLINE = 120.0
NS = "bench"


def main() -> None:
    print(f"ipam: {VMS} VMs per run, pool 198.19.0.0/16, 4 workers per controller")
    print(
        f"{'controllers':>11} {'mode':>6} {'alloc/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for controllers in (1, 2):
        for mode in ("burst", "paced"):
            result = run(controllers, mode)
            print(
                f"{controllers:>11} {mode:>6} {result['rate']:>8.0f} {result['p50']:>8.1f} "
                f"{result['p99']:>8.1f} {result['max']:>8.1f}",
                flush=True,
            )


def run(controllers: int, mode: str) -> dict[str, float]:
    with start_lab_api(mode="process", data_dir=False) as lab:
        objs = kube.CustomObjects(lab.client(user_agent="bench"))
        kube.call(k8s.CoreV1Api(lab.client()).create_namespace, {"metadata": {"name": NS}})
        objs.create(
            api.POOL_PLURAL,
            {
                "apiVersion": api.API_VERSION,
                "kind": api.POOL_KIND,
                "metadata": {"name": "bench"},
                "spec": {"cidr": "198.19.0.0/16", "default": True},
            },
        )
        procs = [start_controller(lab) for _ in range(controllers)]
        try:
            return measure(lab, objs, mode)
        finally:
            for proc, _ in procs:
                proc.terminate()
                proc.wait(timeout=20)


def start_controller(lab: LabApi) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    args = [str(IPAM_BIN), "run", "--kubeconfig", str(lab.kubeconfig), "--no-leader-elect"]
    args += ["--cooldown", "0", "--metrics-addr", f"127.0.0.1:{port}", "--log-level", "warning"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.read().startswith(b"serving"):
                    return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("ipam-controller did not become ready in 30 s")


def measure(lab: LabApi, objs: kube.CustomObjects, mode: str) -> dict[str, float]:
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()
    watcher = threading.Thread(target=watch_addresses, args=(lab, seen, done), daemon=True)
    watcher.start()
    time.sleep(0.5)  # the watch is open

    def create(i: int) -> None:
        name = f"vm-{i:04d}"
        body = {"apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": {"name": name}}
        sent[name] = time.monotonic()
        objs.create(api.VM_PLURAL, body, NS)

    start = time.monotonic()
    if mode == "burst":
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(VMS)))
    else:
        for i in range(VMS):
            time.sleep(max(0.0, start + i / PACED_RATE - time.monotonic()))
            create(i)
    deadline = start + DEADLINE
    while len(seen) < VMS and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    if len(seen) < VMS:
        raise RuntimeError(f"only {len(seen)} of {VMS} VMs addressed within {DEADLINE:.0f} s")
    latencies = sorted((seen[n] - sent[n]) * 1000 for n in sent)
    return {
        "rate": VMS / (max(seen.values()) - start),
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99) - 1],
        "max": latencies[-1],
    }


def watch_addresses(lab: LabApi, seen: dict[str, float], done: threading.Event) -> None:
    """Record when each VM's status.network first shows up in the watch."""
    custom = k8s.CustomObjectsApi(lab.client(user_agent="bench-watch"))
    version = ""
    while not done.is_set():
        stream: Any = watch.Watch().stream(
            custom.list_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            NS,
            api.VM_PLURAL,
            resource_version=version or None,
            timeout_seconds=5,
        )
        for event in stream:
            obj = event["raw_object"]
            version = obj["metadata"].get("resourceVersion", version)
            name = obj["metadata"]["name"]
            if name not in seen and (obj.get("status") or {}).get("network"):
                seen[name] = time.monotonic()
            if done.is_set():
                break


if __name__ == "__main__":
    main()
