"""Shared helpers for the manifest tests: load YAML files, render with kustomize.

``kubectl kustomize`` is the renderer (kubectl bundles kustomize); when kubectl
is absent the rendering tests skip with a reason that says how to get it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
SAMPLES = Path(__file__).resolve().parent / "samples"
NAMESPACE = "vmoverlay-system"
KUBERNETES_VERSION = "1.32.0"

Obj = dict[str, Any]


def yaml_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.yaml"))


def load_docs(path: Path) -> list[Obj]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip(
            "kubectl not found: install kubectl >= 1.27 (it bundles kustomize), for example "
            "`apt-get install kubectl` from the Kubernetes apt repository, then re-run"
        )
    return path


def render(directory: Path) -> list[Obj]:
    """``kubectl kustomize DIRECTORY`` as a list of objects; fails the test on error."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc is not None]


def find(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    hits = [
        o
        for o in objs
        if o["kind"] == kind and (name is None or o["metadata"]["name"].startswith(name))
    ]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def containers(pod_spec: Obj) -> Iterator[Obj]:
    yield from pod_spec.get("initContainers") or []
    yield from pod_spec.get("containers") or []
