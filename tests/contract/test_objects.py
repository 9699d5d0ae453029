"""Contract: object writes behave as on a real API server.

Scenarios:
- two clients racing updates of one object: exactly one succeeds, the other gets 409 Conflict;
- create of a taken name is 409 AlreadyExists; generateName makes a fresh name;
- uid and creationTimestamp are set; resourceVersion changes on every write, not on a no-op;
- generation starts at 1 and increments on spec changes only (not labels, not status);
- status subresource: create and main-resource writes ignore status, /status ignores the rest;
- an object without a status subresource keeps status written through the main resource;
- schema validation refuses bad values with 422 Invalid naming the field (pattern,
  required, maximum, enum, type), and prunes unknown fields;
- an integer outside int64 in a ``type: integer`` field (spec or status) is 422
  Invalid naming the field as of type "number" (the real server decodes it as a
  float64); the int64 limits themselves are accepted;
- JSON patch and merge patch on custom resources; a stale resourceVersion in a patch is 409;
- delete preconditions: a wrong uid or resourceVersion is 409 Conflict;
- an unknown resource is 404 NotFound; a missing object is 404 with reason NotFound.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.contract.conftest import Cluster
from vmoverlay import api
from vmoverlay.kube import AlreadyExists, Conflict, CustomObjects, Invalid, NotFound, call

G, V = api.GROUP, api.VERSION


def vm_body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.VM_KIND,
        "metadata": {"name": name},
        "spec": {"pool": "default", **spec},
    }


def pool_body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.POOL_KIND,
        "metadata": {"name": name},
        "spec": {"cidr": "198.19.0.0/16", **spec},
    }


def test_racing_updates_one_wins(cluster: Cluster) -> None:
    ns, name = cluster.namespace, cluster.name("race")
    CustomObjects(cluster.client()).create(api.VM_PLURAL, vm_body(name), ns)
    clients = [CustomObjects(cluster.client(f"racer-{i}")) for i in range(2)]
    copies = [c.get(api.VM_PLURAL, name, ns) for c in clients]
    assert copies[0]["metadata"]["resourceVersion"] == copies[1]["metadata"]["resourceVersion"]
    results: list[str] = []
    barrier = threading.Barrier(2)

    def update(i: int) -> None:
        body = copies[i]
        body["spec"]["cpus"] = i + 1
        barrier.wait()
        try:
            clients[i].api.replace_namespaced_custom_object(G, V, ns, api.VM_PLURAL, name, body)
            results.append("ok")
        except ApiException as exc:
            results.append(f"{exc.status}")

    threads = [threading.Thread(target=update, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["409", "ok"]


def test_conflict_is_reason_conflict(cluster: Cluster) -> None:
    ns, name = cluster.namespace, cluster.name("stale")
    objs = CustomObjects(cluster.client())
    first = objs.create(api.VM_PLURAL, vm_body(name), ns)
    objs.api.patch_namespaced_custom_object(G, V, ns, api.VM_PLURAL, name, {"spec": {"cpus": 2}})
    first["spec"]["cpus"] = 3
    with pytest.raises(Conflict, match="the object has been modified"):
        call(objs.api.replace_namespaced_custom_object, G, V, ns, api.VM_PLURAL, name, first)
    stale = {
        "metadata": {"resourceVersion": first["metadata"]["resourceVersion"]},
        "spec": {"cpus": 4},
    }
    with pytest.raises(ApiException) as err:
        objs.api.patch_namespaced_custom_object(G, V, ns, api.VM_PLURAL, name, stale)
    assert err.value.status == 409


def test_create_taken_name_and_generate_name(cluster: Cluster) -> None:
    ns, name = cluster.namespace, cluster.name("taken")
    objs = CustomObjects(cluster.client())
    objs.create(api.VM_PLURAL, vm_body(name), ns)
    with pytest.raises(AlreadyExists, match="already exists"):
        objs.create(api.VM_PLURAL, vm_body(name), ns)
    body = vm_body("")
    body["metadata"] = {"generateName": f"{name}-"}
    made = objs.create(api.VM_PLURAL, body, ns)
    assert made["metadata"]["name"].startswith(f"{name}-")
    assert len(made["metadata"]["name"]) > len(name) + 1


def test_metadata_and_resource_versions(cluster: Cluster) -> None:
    ns, name = cluster.namespace, cluster.name("meta")
    objs = CustomObjects(cluster.client())
    made = objs.create(api.VM_PLURAL, vm_body(name), ns)
    m = made["metadata"]
    assert m["uid"] and m["creationTimestamp"] and m["resourceVersion"]
    patched = objs.api.patch_namespaced_custom_object(
        G, V, ns, api.VM_PLURAL, name, {"metadata": {"labels": {"a": "1"}}}
    )
    assert int(patched["metadata"]["resourceVersion"]) > int(m["resourceVersion"])
    assert patched["metadata"]["uid"] == m["uid"]
    same = objs.api.patch_namespaced_custom_object(
        G, V, ns, api.VM_PLURAL, name, {"metadata": {"labels": {"a": "1"}}}
    )
    assert same["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]


def test_generation_counts_spec_changes(cluster: Cluster) -> None:
    ns, name = cluster.namespace, cluster.name("gen")
    objs = CustomObjects(cluster.client())
    made = objs.create(api.VM_PLURAL, vm_body(name), ns)
    assert made["metadata"]["generation"] == 1
    p = objs.api.patch_namespaced_custom_object
    assert (
        p(G, V, ns, api.VM_PLURAL, name, {"metadata": {"labels": {"x": "y"}}})["metadata"][
            "generation"
        ]
        == 1
    )
    assert p(G, V, ns, api.VM_PLURAL, name, {"spec": {"cpus": 2}})["metadata"]["generation"] == 2
    status = objs.api.patch_namespaced_custom_object_status(
        G, V, ns, api.VM_PLURAL, name, {"status": {"phase": "Running"}}
    )
    assert status["metadata"]["generation"] == 2


def test_status_subresource(cluster: Cluster) -> None:
    ns, name = cluster.namespace, cluster.name("status")
    objs = CustomObjects(cluster.client())
    body = vm_body(name)
    body["status"] = {"phase": "Running"}
    made = objs.create(api.VM_PLURAL, body, ns)
    assert "status" not in made or not made["status"]

    made["status"] = {"phase": "Running", "node": "n1"}
    made = objs.replace_status(api.VM_PLURAL, name, made, ns)
    assert made["status"] == {"phase": "Running", "node": "n1"}

    made["status"] = {"phase": "Failed"}
    made["spec"]["cpus"] = 4
    main = objs.api.replace_namespaced_custom_object(G, V, ns, api.VM_PLURAL, name, made)
    assert main["status"] == {"phase": "Running", "node": "n1"}
    assert main["spec"]["cpus"] == 4

    main["spec"]["cpus"] = 8
    main["status"]["node"] = "n2"
    via_status = objs.replace_status(api.VM_PLURAL, name, main, ns)
    assert via_status["spec"]["cpus"] == 4
    assert via_status["status"]["node"] == "n2"


def test_no_status_subresource_keeps_status(cluster: Cluster) -> None:
    name = cluster.name("alloc")
    objs = CustomObjects(cluster.client())
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.ALLOCATION_KIND,
        "metadata": {"name": name},
        "spec": {
            "pool": "p",
            "ip": "198.19.0.9",
            "vm": {"namespace": "a", "name": "b", "uid": "c"},
        },
    }
    made = objs.create(api.ALLOCATION_PLURAL, body)
    assert made["metadata"]["generation"] == 1
    assert made["spec"]["ip"] == "198.19.0.9"
    objs.delete(api.ALLOCATION_PLURAL, name)


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"cidr": "not-a-cidr"}, "spec.cidr", "should match"),
        ({"cidr": "198.19.0.0/16", "vni": 16777216}, "spec.vni", "less than or equal to"),
        ({"cidr": "198.19.0.0/16", "mtu": "big"}, "spec.mtu", "must be of type integer"),
        ({"gateway": "198.19.0.1"}, "spec.cidr", "Required value"),
        ({"cidr": "198.19.0.0/16", "vni": 2**64 - 129}, "spec.vni", "must be of type integer"),
        ({"cidr": "198.19.0.0/16", "vni": -(2**63) - 1}, "spec.vni", "must be of type integer"),
    ],
)
def test_validation_names_the_field(
    cluster: Cluster, spec: dict[str, Any], field: str, words: str
) -> None:
    body = pool_body(cluster.name("bad"))
    body["spec"] = spec
    with pytest.raises(Invalid) as err:
        CustomObjects(cluster.client()).create(api.POOL_PLURAL, body)
    assert err.value.status == 422
    assert f"{field}: " in str(err.value) and words in str(err.value)


@pytest.mark.parametrize("too_big", [2**63, 2**64 - 129, 2**70])
def test_integers_beyond_int64_are_refused(cluster: Cluster, too_big: int) -> None:
    name = cluster.name("int64")
    objs = CustomObjects(cluster.client())
    made = objs.create(api.POOL_PLURAL, pool_body(name))
    try:
        made["status"] = {"size": too_big, "allocated": 0, "free": 0}
        with pytest.raises(Invalid) as err:
            objs.replace_status(api.POOL_PLURAL, name, made, None)
        assert err.value.status == 422
        assert 'status.size: Invalid value: "number"' in str(err.value)
        assert "must be of type integer" in str(err.value)
        made["status"] = {"size": 2**63 - 1, "allocated": 0, "free": 2**63 - 1}
        kept = objs.replace_status(api.POOL_PLURAL, name, made, None)
        assert kept["status"]["size"] == 2**63 - 1
    finally:
        objs.api.delete_cluster_custom_object(G, V, api.POOL_PLURAL, name)


def test_enum_validation_on_status(cluster: Cluster) -> None:
    ns, name = cluster.namespace, cluster.name("enum")
    objs = CustomObjects(cluster.client())
    made = objs.create(api.VM_PLURAL, vm_body(name), ns)
    made["status"] = {"phase": "Dancing"}
    with pytest.raises(Invalid, match=r"status\.phase: Unsupported value"):
        objs.replace_status(api.VM_PLURAL, name, made, ns)


def test_unknown_fields_are_pruned(cluster: Cluster) -> None:
    name = cluster.name("prune")
    body = pool_body(name)
    body["spec"]["surprise"] = "x"
    body["extra"] = {"y": 1}
    objs = CustomObjects(cluster.client())
    made = objs.create(api.POOL_PLURAL, body)
    assert "surprise" not in made["spec"] and "extra" not in made
    objs.delete(api.POOL_PLURAL, name)


def test_json_patch_and_merge_patch(cluster: Cluster) -> None:
    ns, name = cluster.namespace, cluster.name("patch")
    objs = CustomObjects(cluster.client())
    objs.create(api.VM_PLURAL, vm_body(name, cpus=1), ns)
    merged = objs.api.patch_namespaced_custom_object(
        G, V, ns, api.VM_PLURAL, name, {"spec": {"image": "pg", "pool": None}}
    )
    assert merged["spec"] == {"cpus": 1, "image": "pg"}
    ops = [
        {"op": "test", "path": "/spec/cpus", "value": 1},
        {"op": "replace", "path": "/spec/cpus", "value": 2},
        {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}},
    ]
    patched = objs.api.patch_namespaced_custom_object(
        G, V, ns, api.VM_PLURAL, name, ops, _content_type="application/json-patch+json"
    )
    assert patched["spec"]["cpus"] == 2 and patched["metadata"]["labels"] == {"k": "v"}


def test_delete_preconditions(cluster: Cluster) -> None:
    ns, name = cluster.namespace, cluster.name("pre")
    objs = CustomObjects(cluster.client())
    made = objs.create(api.VM_PLURAL, vm_body(name), ns)
    with pytest.raises(Conflict, match="Precondition failed"):
        objs.delete(api.VM_PLURAL, name, ns, uid="00000000-0000-0000-0000-000000000000")
    body = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(resource_version="1"))
    with pytest.raises(ApiException) as err:
        objs.api.delete_namespaced_custom_object(G, V, ns, api.VM_PLURAL, name, body=body)
    assert err.value.status == 409
    objs.delete(api.VM_PLURAL, name, ns, uid=made["metadata"]["uid"])
    with pytest.raises(NotFound):
        objs.get(api.VM_PLURAL, name, ns)


def test_not_found(cluster: Cluster) -> None:
    objs = CustomObjects(cluster.client())
    with pytest.raises(NotFound) as err:
        objs.get(api.VM_PLURAL, cluster.name("nothing"), cluster.namespace)
    assert err.value.reason == "NotFound"
    with pytest.raises(ApiException) as raw:
        objs.api.list_cluster_custom_object(G, V, "nosuchthings")
    assert raw.value.status == 404
