"""Lab API server figures from one official-client user: creates/s, updates/s, watch latency.

Starts ``vmoverlay-lab apiserver`` on a free loopback port (in memory, then with
``--data-dir``), applies the project's CRDs and, with one ``kubernetes`` client:

- creates N IPAllocations one after the other (creates/s);
- replaces each once with its current resourceVersion (updates/s);
- creates objects one at a time while a ``watch.Watch`` waits for each, and
  reports the time from sending the create to seeing its ADDED event (p50/p99).

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
    try:
        c = load_client(str(workdir / "kubeconfig"))
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

        p50, p99 = watch_latency(c, objs)
        return {"creates": creates, "updates": updates, "p50": p50, "p99": p99}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def watch_latency(c: k8s.ApiClient, objs: k8s.CustomObjectsApi) -> tuple[float, float]:
    g, v, plural = api.GROUP, api.VERSION, api.ALLOCATION_PLURAL
    seen: dict[str, float] = {}
    arrived = threading.Condition()
    rv = objs.list_cluster_custom_object(g, v, plural, limit=1)["metadata"]["resourceVersion"]
    w = watch.Watch()
    watcher_api = k8s.CustomObjectsApi(c)

    def follow() -> None:
        try:
            for event in w.stream(
                watcher_api.list_cluster_custom_object, g, v, plural, resource_version=rv
            ):
                with arrived:
                    seen[event["object"]["metadata"]["name"]] = time.perf_counter()
                    arrived.notify_all()
        except ProtocolError:
            # Watch.stop() shuts the socket down under the reader: the end we asked for.
            return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    samples = []
    writer = k8s.CustomObjectsApi(c)
    for i in range(CREATES, CREATES + WATCH_SAMPLES):
        body = allocation(i)
        sent = time.perf_counter()
        writer.create_cluster_custom_object(g, v, plural, body)
        with arrived:
            arrived.wait_for(lambda n=body["metadata"]["name"]: n in seen, timeout=10)
        samples.append(seen[body["metadata"]["name"]] - sent)
    w.stop()
    samples.sort()
    return samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99) - 1] * 1000


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vmo-bench-api-") as tmp:
        for label, data_dir in (("in memory", None), ("--data-dir", Path(tmp) / "data")):
            r = run(Path(tmp), data_dir)
            print(
                f"lab apiserver ({label}): {r['creates']:.0f} creates/s, {r['updates']:.0f} "
                f"updates/s, watch latency p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms "
                f"(one client, {CREATES} objects, {WATCH_SAMPLES} watch samples)",
                flush=True,
            )


if __name__ == "__main__":
    main()
