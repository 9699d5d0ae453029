"""The cluster the contract tests run against: the lab API server always, a real one when asked.

``cluster`` is parametrised: ``lab`` starts a lab API server subprocess (with a
``--data-dir``, so the persistence test can restart it) once per module;
``real`` uses the cluster named by ``$KUBECONFIG`` and skips, with that reason,
when it is not set. On a real cluster the tests only create objects they name
``vmo-ct-<run id>-...`` in a namespace of their own, and remove them afterwards;
the project's CRDs are applied if missing and removed only if this run made them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.fixtures.apiserver import CRD_DIR, LabApi, start_lab_api
from vmoverlay import api
from vmoverlay.kube import load_client

RUN_ID = uuid.uuid4().hex[:6]
CRD_NAMES = [
    f"{p}.{api.GROUP}"
    for p in ("ippools", "ipallocations", "virtualmachines", "virtualmachinemigrations")
]


class Cluster:
    """What a contract test needs: clients, a namespace, unique names, and lab-only hooks."""

    def __init__(self, kind: str, kubeconfig: str, lab: LabApi | None) -> None:
        self.kind = kind
        self.kubeconfig = kubeconfig
        self.lab = lab
        self.namespace = f"vmo-ct-{RUN_ID}"
        self._n = 0

    def client(self, user_agent: str = "vmoverlay-contract") -> k8s.ApiClient:
        c = load_client(self.kubeconfig)
        c.user_agent = user_agent
        return c

    def name(self, base: str) -> str:
        self._n += 1
        return f"vmo-ct-{RUN_ID}-{base}-{self._n}"

    def expire_history(self) -> None:
        """Make old resourceVersions too old to watch from (lab: compaction; real: already)."""
        if self.lab is not None:
            self.lab.compact()

    def require_lab(self, why: str) -> LabApi:
        if self.lab is None:
            pytest.skip(f"lab API server only: {why}")
        return self.lab


def wait_for(predicate: Any, *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` is true; the real garbage collector takes seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _ensure_crds(client: k8s.ApiClient) -> list[str]:
    ext = k8s.ApiextensionsV1Api(client)
    made = []
    for path in sorted(Path(CRD_DIR).glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(doc)
            made.append(doc["metadata"]["name"])
        except k8s.exceptions.ApiException as exc:
            if exc.status != 409:
                raise
    for name in CRD_NAMES:
        wait_for(lambda n=name: _established(ext, n), what=f"CRD {name} Established")
    return made


def _established(ext: k8s.ApiextensionsV1Api, name: str) -> bool:
    crd = ext.read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


@pytest.fixture(scope="module", params=["lab", "real"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if request.param == "real":
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig:
            pytest.skip("real-cluster contract run: set KUBECONFIG to a cluster to run it")
        yield from _real_cluster(kubeconfig)
        return
    with start_lab_api(mode="process") as lab:
        cl = Cluster("lab", str(lab.kubeconfig), lab)
        k8s.CoreV1Api(cl.client()).create_namespace({"metadata": {"name": cl.namespace}})
        yield cl


def _real_cluster(kubeconfig: str) -> Iterator[Cluster]:
    cl = Cluster("real", kubeconfig, None)
    c = cl.client()
    made = _ensure_crds(c)
    core = k8s.CoreV1Api(c)
    core.create_namespace({"metadata": {"name": cl.namespace}})
    try:
        yield cl
    finally:
        core.delete_namespace(cl.namespace)
        objs = k8s.CustomObjectsApi(c)
        for plural in ("ippools", "ipallocations"):
            for item in objs.list_cluster_custom_object(api.GROUP, api.VERSION, plural)["items"]:
                if item["metadata"]["name"].startswith(f"vmo-ct-{RUN_ID}-"):
                    objs.delete_cluster_custom_object(
                        api.GROUP, api.VERSION, plural, item["metadata"]["name"]
                    )
        ext = k8s.ApiextensionsV1Api(c)
        for name in made:
            ext.delete_custom_resource_definition(name)
