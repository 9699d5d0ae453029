"""Lab API server figures from one official-client user: creates/s, updates/s, watch latency.

Starts ``vmoverlay-lab apiserver`` on a free loopback port (in memory, then with
``--data-dir``), applies the project's CRDs and, with one ``kubernetes`` client:

- creates N IPAllocations one after the other (creates/s);
- replaces each once with its current resourceVersion (updates/s);
- creates N more from 4 clients in parallel threads (creates/s);
- creates objects one at a time while one ``watch.Watch`` (then 20, as 20 node
  agents would) waits for each, and reports the time from sending the create to
  each watcher seeing its ADDED event (p50/p99). Watchers are threads of this
  process, so with 20 the figure includes the client's own GIL contention.

Bounded: fixed counts, a few seconds in all. Figures vary with the machine's load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import watch
from urllib3.exceptions import ProtocolError

from e2e.apiserver.server import kubeconfig_text
from vmoverlay import api
from vmoverlay.kube import load_client

ROOT = Path(__file__).resolve().parents[1]
CREATES = int(os.environ.get("VMO_BENCH_APISERVER_CREATES", "2000"))
WATCH_SAMPLES = int(os.environ.get("VMO_BENCH_APISERVER_WATCH", "300"))
PARALLEL = 4
FANOUT = 20


def start_server(workdir: Path, data_dir: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    cmd = [sys.executable, "-m", "e2e.cli", "apiserver", "--port", "0", "--log-level", "warning"]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("serving "):
        proc.kill()
        raise RuntimeError(f"lab API server did not start: {line!r}")
    url = line.split(" ", 1)[1].strip()
    (workdir / "kubeconfig").write_text(kubeconfig_text(url))
    return proc, url


def allocation(i: int) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.ALLOCATION_KIND,
        "metadata": {"name": f"bench-{i}", "labels": {"bench": "yes"}},
        "spec": {
            "pool": "bench",
            "ip": f"198.19.{i // 256}.{i % 256}",
            "vm": {"namespace": "bench", "name": f"vm-{i}", "uid": f"uid-{i}"},
        },
    }


def run(workdir: Path, data_dir: Path | None) -> dict[str, float]:
    proc, _ = start_server(workdir, data_dir)
    kubeconfig = str(workdir / "kubeconfig")
    try:
        c = load_client(kubeconfig)
        ext = k8s.ApiextensionsV1Api(c)
        for path in sorted((ROOT / "manifests" / "crds").glob("*.yaml")):
            ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))
        objs = k8s.CustomObjectsApi(c)
        g, v, plural = api.GROUP, api.VERSION, api.ALLOCATION_PLURAL

        started = time.perf_counter()
        made = [
            objs.create_cluster_custom_object(g, v, plural, allocation(i)) for i in range(CREATES)
        ]
        creates = CREATES / (time.perf_counter() - started)

        started = time.perf_counter()
        for obj in made:
            obj["metadata"]["labels"]["round"] = "1"
            objs.replace_cluster_custom_object(g, v, plural, obj["metadata"]["name"], obj)
        updates = CREATES / (time.perf_counter() - started)

        parallel = parallel_creates(kubeconfig, first=CREATES, clients=PARALLEL)
        start = CREATES * 2
        p50, p99 = watch_latency(kubeconfig, first=start, watchers=1)
        f50, f99 = watch_latency(kubeconfig, first=start + WATCH_SAMPLES, watchers=FANOUT)
        return {
            "creates": creates,
            "updates": updates,
            "parallel": parallel,
            "p50": p50,
            "p99": p99,
            "f50": f50,
            "f99": f99,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def parallel_creates(kubeconfig: str, *, first: int, clients: int) -> float:
    """Creates/s of ``clients`` threads, each with its own client, CREATES objects in all."""
    g, v, plural = api.GROUP, api.VERSION, api.ALLOCATION_PLURAL
    share = CREATES // clients
    apis = [k8s.CustomObjectsApi(load_client(kubeconfig)) for _ in range(clients)]

    def create(n: int) -> None:
        for i in range(first + n * share, first + (n + 1) * share):
            apis[n].create_cluster_custom_object(g, v, plural, allocation(i))

    threads = [threading.Thread(target=create, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return share * clients / (time.perf_counter() - started)


def watch_latency(kubeconfig: str, *, first: int, watchers: int) -> tuple[float, float]:
    """Time from sending a create to each watcher seeing its ADDED event (p50, p99 in ms)."""
    g, v, plural = api.GROUP, api.VERSION, api.ALLOCATION_PLURAL
    writer = k8s.CustomObjectsApi(load_client(kubeconfig))
    seen: dict[tuple[int, str], float] = {}
    arrived = threading.Condition()
    rv = writer.list_cluster_custom_object(g, v, plural, limit=1)["metadata"]["resourceVersion"]
    streams = [watch.Watch() for _ in range(watchers)]

    def follow(n: int) -> None:
        reader = k8s.CustomObjectsApi(load_client(kubeconfig))
        try:
            for event in streams[n].stream(
                reader.list_cluster_custom_object, g, v, plural, resource_version=rv
            ):
                with arrived:
                    seen[(n, event["object"]["metadata"]["name"])] = time.perf_counter()
                    arrived.notify_all()
        except ProtocolError:
            # Watch.stop() shuts the socket down under the reader: the end we asked for.
            return

    for n in range(watchers):
        threading.Thread(target=follow, args=(n,), daemon=True).start()
    samples = []
    for i in range(first, first + WATCH_SAMPLES):
        body = allocation(i)
        name = body["metadata"]["name"]
        sent = time.perf_counter()
        writer.create_cluster_custom_object(g, v, plural, body)
        with arrived:
            arrived.wait_for(
                lambda name=name: all((n, name) in seen for n in range(watchers)), timeout=10
            )
        samples += [seen[(n, name)] - sent for n in range(watchers) if (n, name) in seen]
    for stream in streams:
        stream.stop()
    samples.sort()
    return samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99) - 1] * 1000


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vmo-bench-api-") as tmp:
        for label, data_dir in (("in memory", None), ("--data-dir", Path(tmp) / "data")):
            r = run(Path(tmp), data_dir)
            print(
                f"lab apiserver ({label}): one client {r['creates']:.0f} creates/s, "
                f"{r['updates']:.0f} updates/s; {PARALLEL} clients {r['parallel']:.0f} creates/s; "
                f"watch latency p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms, with {FANOUT} "
                f"watchers p50 {r['f50']:.1f} ms p99 {r['f99']:.1f} ms "
                f"({CREATES} objects, {WATCH_SAMPLES} watch samples)",
                flush=True,
            )


if __name__ == "__main__":
    main()
