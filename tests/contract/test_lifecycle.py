"""Contract: deletion, finalizers, garbage collection and (lab only) persistence.

Scenarios:
- delete of an object with a finalizer answers the object with deletionTimestamp
  and keeps it; removing the last finalizer deletes it;
- an immediate delete of a custom resource or ConfigMap answers a Success Status
  naming the object;
- deleting an owner deletes its dependents (background propagation), both for a
  namespaced owner and for a cluster-scoped owner of a cluster-scoped dependent;
- a dependent with a second, living owner survives and only loses the reference;
- Foreground propagation holds the owner (foregroundDeletion finalizer) until
  its blocking dependent is gone, then removes it;
- lab only: with --data-dir, objects and resourceVersions survive a restart and a
  SIGKILL of the server; creates after the restart get higher resourceVersions.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s

from tests.contract.conftest import Cluster, wait_for
from vmoverlay import api
from vmoverlay.kube import CustomObjects, NotFound, to_dict


def owner_ref(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
    }


def vm(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.VM_KIND,
        "metadata": {"name": name, **meta},
        "spec": {},
    }


def gone(objs: CustomObjects, plural: str, name: str, ns: str | None = None) -> bool:
    try:
        objs.get(plural, name, ns)
    except NotFound:
        return True
    return False


def test_finalizer_holds_deletion(cluster: Cluster) -> None:
    ns, name = cluster.namespace, cluster.name("fin")
    objs = CustomObjects(cluster.client())
    objs.create(api.VM_PLURAL, vm(name, finalizers=["vmoverlay.io/test"]), ns)
    answer = objs.api.delete_namespaced_custom_object(
        api.GROUP, api.VERSION, ns, api.VM_PLURAL, name
    )
    assert answer["kind"] == api.VM_KIND and answer["metadata"]["deletionTimestamp"]
    held = objs.get(api.VM_PLURAL, name, ns)
    assert held["metadata"]["deletionTimestamp"]
    objs.api.patch_namespaced_custom_object(
        api.GROUP, api.VERSION, ns, api.VM_PLURAL, name, {"metadata": {"finalizers": None}}
    )
    wait_for(lambda: gone(objs, api.VM_PLURAL, name, ns), what="finalized object removed")


def test_gc_namespaced_owner(cluster: Cluster) -> None:
    ns = cluster.namespace
    core = k8s.CoreV1Api(cluster.client())
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": cluster.name("own")}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
    }
    dep = cluster.name("dep")
    core.create_namespaced_config_map(ns, {"metadata": {"name": dep, "ownerReferences": [ref]}})
    core.delete_namespaced_config_map(owner.metadata.name, ns)

    def dep_gone() -> bool:
        return not any(c.metadata.name == dep for c in core.list_namespaced_config_map(ns).items)

    wait_for(dep_gone, timeout=30, what="dependent ConfigMap collected")


def test_gc_cluster_owner_and_second_owner(cluster: Cluster) -> None:
    objs = CustomObjects(cluster.client())
    pool = objs.create(
        api.POOL_PLURAL,
        {
            "apiVersion": api.API_VERSION,
            "kind": api.POOL_KIND,
            "metadata": {"name": cluster.name("pool")},
            "spec": {"cidr": "198.19.0.0/16"},
        },
    )
    other = objs.create(
        api.POOL_PLURAL,
        {
            "apiVersion": api.API_VERSION,
            "kind": api.POOL_KIND,
            "metadata": {"name": cluster.name("pool2")},
            "spec": {"cidr": "198.19.0.0/16"},
        },
    )

    def alloc(name: str, owners: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.ALLOCATION_KIND,
            "metadata": {"name": name, "ownerReferences": owners},
            "spec": {
                "pool": "p",
                "ip": "198.19.0.1",
                "vm": {"namespace": "a", "name": "b", "uid": "c"},
            },
        }

    only, shared = cluster.name("only"), cluster.name("shared")
    objs.create(api.ALLOCATION_PLURAL, alloc(only, [owner_ref(pool)]))
    objs.create(api.ALLOCATION_PLURAL, alloc(shared, [owner_ref(pool), owner_ref(other)]))
    objs.delete(api.POOL_PLURAL, pool["metadata"]["name"])
    wait_for(
        lambda: gone(objs, api.ALLOCATION_PLURAL, only), timeout=30, what="dependent collected"
    )

    def ref_dropped() -> bool:
        refs = objs.get(api.ALLOCATION_PLURAL, shared)["metadata"].get("ownerReferences") or []
        return [r["uid"] for r in refs] == [other["metadata"]["uid"]]

    wait_for(ref_dropped, timeout=30, what="owner reference of the deleted owner removed")
    objs.delete(api.ALLOCATION_PLURAL, shared)
    objs.delete(api.POOL_PLURAL, other["metadata"]["name"])


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_persistence_across_restart(cluster: Cluster, how: str) -> None:
    lab = cluster.require_lab("restarts the API server")
    ns = cluster.namespace
    objs = CustomObjects(cluster.client())
    name = cluster.name("keep")
    made = objs.create(api.VM_PLURAL, vm(name), ns)
    made["status"] = {"phase": "Running"}
    kept = objs.replace_status(api.VM_PLURAL, name, made, ns)
    if how == "kill":
        lab.kill()
        lab.start()
    else:
        lab.restart()
    objs = CustomObjects(cluster.client())
    again = objs.get(api.VM_PLURAL, name, ns)
    assert again == kept
    later = objs.create(api.VM_PLURAL, vm(cluster.name("after")), ns)
    assert int(later["metadata"]["resourceVersion"]) > int(kept["metadata"]["resourceVersion"])


def test_immediate_delete_answers_status(cluster: Cluster) -> None:
    ns, name = cluster.namespace, cluster.name("del")
    objs = CustomObjects(cluster.client())
    made = objs.create(api.VM_PLURAL, vm(name), ns)
    answer = objs.api.delete_namespaced_custom_object(
        api.GROUP, api.VERSION, ns, api.VM_PLURAL, name
    )
    assert (answer["kind"], answer["status"]) == ("Status", "Success")
    assert answer["details"]["name"] == name and answer["details"]["uid"] == made["metadata"]["uid"]
    core = k8s.CoreV1Api(cluster.client())
    core.create_namespaced_config_map(ns, {"metadata": {"name": name}})
    status = to_dict(core.api_client, core.delete_namespaced_config_map(name, ns))
    assert status["status"] == "Success" and status["details"]["name"] == name


def test_foreground_deletion_waits_for_blocking_dependent(cluster: Cluster) -> None:
    ns = cluster.namespace
    core = k8s.CoreV1Api(cluster.client())
    owner_name, dep_name = cluster.name("fg-owner"), cluster.name("fg-dep")
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": owner_name}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": owner_name,
        "uid": owner.metadata.uid,
        "blockOwnerDeletion": True,
    }
    core.create_namespaced_config_map(
        ns,
        {
            "metadata": {
                "name": dep_name,
                "ownerReferences": [ref],
                "finalizers": ["vmoverlay.io/hold"],
            }
        },
    )
    core.delete_namespaced_config_map(owner_name, ns, propagation_policy="Foreground")
    held = core.read_namespaced_config_map(owner_name, ns)
    assert held.metadata.deletion_timestamp and "foregroundDeletion" in held.metadata.finalizers
    wait_for(
        lambda: (
            core.read_namespaced_config_map(dep_name, ns).metadata.deletion_timestamp is not None
        ),
        timeout=30,
        what="dependent marked for deletion",
    )
    assert core.read_namespaced_config_map(owner_name, ns).metadata.deletion_timestamp
    core.patch_namespaced_config_map(dep_name, ns, {"metadata": {"finalizers": None}})

    def both_gone() -> bool:
        names = {c.metadata.name for c in core.list_namespaced_config_map(ns).items}
        return owner_name not in names and dep_name not in names

    wait_for(both_gone, timeout=30, what="owner removed after its dependent")
