"""Malformed objects never crash a request: every answer is a Status below 500.

Scenarios:
- bodies with wrongly typed metadata fields (name, labels, finalizers,
  ownerReferences...), spec and status, sent as create, update, merge and
  strategic patch, status update and delete options, to core, cluster-scoped and
  custom resources, are answered 4xx (or accepted) and never 500;
- malformed JSON patches are 4xx;
- the server answers normally afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.apiserver.test_server import raw
from tests.fixtures.apiserver import LabApi, start_lab_api

WEIRD_META: list[Any] = [
    [],
    "x",
    5,
    None,
    {"name": 5},
    {"name": ""},
    {"name": "a", "labels": []},
    {"name": "a", "labels": {"a": 5}},
    {"name": "a", "ownerReferences": "x"},
    {"name": "a", "ownerReferences": [5, {"uid": 3}]},
    {"name": "a", "finalizers": 3},
    {"name": "a", "finalizers": [1, None]},
    {"name": "a", "annotations": None},
    {"generateName": 5},
    {"name": "a", "namespace": 5},
    {"name": "a", "resourceVersion": "abc"},
    {"name": "a", "resourceVersion": 5},
    {"name": "a", "uid": []},
]
WEIRD_REST: list[dict[str, Any]] = [
    {},
    {"spec": []},
    {"spec": "x"},
    {"status": "x"},
    {"spec": {"cidr": 5}},
    {"spec": {"containers": "x"}},
    {"spec": {"containers": [5]}},
]
PATHS = [
    "/api/v1/namespaces/default/configmaps",
    "/api/v1/namespaces/default/pods",
    "/apis/vmoverlay.io/v1alpha1/ippools",
    "/apis/vmoverlay.io/v1alpha1/namespaces/default/virtualmachines",
    "/api/v1/nodes",
    "/api/v1/namespaces",
]
BASE = json.dumps(
    {
        "metadata": {"name": "base"},
        "spec": {"cidr": "198.19.0.0/16", "containers": [{"name": "c", "image": "i"}]},
    }
).encode()
REQUESTS = [
    ("POST", "", "application/json"),
    ("PUT", "/base", "application/json"),
    ("PATCH", "/base", "application/merge-patch+json"),
    ("PATCH", "/base", "application/strategic-merge-patch+json"),
    ("PUT", "/base/status", "application/json"),
    ("DELETE", "/base", "application/json"),
]


@pytest.fixture(scope="module")
def lab() -> Iterator[LabApi]:
    with start_lab_api(mode="thread", data_dir=False) as lab:
        yield lab


@pytest.mark.parametrize("path", PATHS)
def test_malformed_objects_never_500(lab: LabApi, path: str) -> None:
    raw(lab, "POST", path, BASE)
    failures = []
    for i, meta in enumerate(WEIRD_META):
        body = json.dumps({"metadata": meta, **WEIRD_REST[i % len(WEIRD_REST)]}).encode()
        for method, suffix, ctype in REQUESTS:
            code, answer = raw(lab, method, path + suffix, body, ctype)
            if answer.get("kind") == "Status" and answer.get("status") == "Failure":
                assert answer["code"] == code
            if code >= 500:
                failures.append((method, suffix, body, answer.get("message")))
            if method == "DELETE" and code == 200:
                raw(lab, "POST", path, BASE)
    assert failures == []
    assert raw(lab, "GET", path)[0] == 200


@pytest.mark.parametrize(
    "ops",
    [
        [5],
        [{"op": "add", "path": 5}],
        [{"op": "add", "path": "/metadata", "value": 5}],
        [{"op": "remove", "path": "/metadata"}],
        [{"op": "move", "from": "/data", "path": "/data/x"}],
        {"op": "add"},
    ],
)
def test_malformed_json_patch_is_4xx(lab: LabApi, ops: Any) -> None:
    path = "/api/v1/namespaces/default/configmaps"
    raw(lab, "POST", path, b'{"metadata": {"name": "jp"}, "data": {"a": "b"}}')
    code, answer = raw(
        lab, "PATCH", f"{path}/jp", json.dumps(ops).encode(), "application/json-patch+json"
    )
    assert 400 <= code < 500 and answer["kind"] == "Status"
