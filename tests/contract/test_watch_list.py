"""Contract: watch and list behave as on a real API server.

Scenarios:
- a watch from a resourceVersion sees exactly the later events, in order
  (ADDED, MODIFIED, DELETED), and nothing from before;
- a watch from a resourceVersion that is too old ends with 410 Gone
  (``kubernetes.watch.Watch`` raises ApiException 410);
- a watch with a label selector sees an object leave the selection as DELETED;
- ``timeoutSeconds`` ends a quiet watch;
- label selectors (equality, set-based, existence) and the field selector
  metadata.name filter lists; an unparsable selector is 400;
- limit/continue pages through a list without losing or repeating objects;
  remainingItemCount is given without selectors and omitted with them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from tests.contract.conftest import Cluster
from vmoverlay import api
from vmoverlay.kube import CustomObjects

G, V = api.GROUP, api.VERSION


def vm(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.VM_KIND,
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"pool": "default"},
    }


def collect(cluster: Cluster, rv: str, count: int, **kwargs: Any) -> list[tuple[str, str]]:
    objs = CustomObjects(cluster.client("watcher"))
    w = watch.Watch()
    seen: list[tuple[str, str]] = []
    for event in w.stream(
        objs.api.list_namespaced_custom_object,
        G,
        V,
        cluster.namespace,
        api.VM_PLURAL,
        resource_version=rv,
        timeout_seconds=10,
        **kwargs,
    ):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if len(seen) >= count:
            w.stop()
    return seen


def test_watch_from_resource_version(cluster: Cluster) -> None:
    ns = cluster.namespace
    objs = CustomObjects(cluster.client())
    a, b = cluster.name("wa"), cluster.name("wb")
    objs.create(api.VM_PLURAL, vm(a), ns)
    rv = objs.list(api.VM_PLURAL, ns)["metadata"]["resourceVersion"]
    objs.create(api.VM_PLURAL, vm(b), ns)
    objs.api.patch_namespaced_custom_object(G, V, ns, api.VM_PLURAL, b, {"spec": {"cpus": 2}})
    objs.delete(api.VM_PLURAL, a, ns)
    seen = collect(cluster, rv, 3)
    assert seen == [("ADDED", b), ("MODIFIED", b), ("DELETED", a)]


def test_watch_sees_live_events(cluster: Cluster) -> None:
    ns = cluster.namespace
    objs = CustomObjects(cluster.client())
    rv = objs.list(api.VM_PLURAL, ns)["metadata"]["resourceVersion"]
    name = cluster.name("live")

    def later() -> None:
        time.sleep(0.3)
        objs.create(api.VM_PLURAL, vm(name), ns)

    threading.Thread(target=later).start()
    assert collect(cluster, rv, 1) == [("ADDED", name)]


def test_watch_too_old_is_gone(cluster: Cluster) -> None:
    ns = cluster.namespace
    objs = CustomObjects(cluster.client())
    objs.create(api.VM_PLURAL, vm(cluster.name("old")), ns)
    cluster.expire_history()
    with pytest.raises(ApiException) as err:
        collect(cluster, "1", 1)
    assert err.value.status == 410


def test_watch_selector_leave_is_deleted(cluster: Cluster) -> None:
    ns = cluster.namespace
    objs = CustomObjects(cluster.client())
    name = cluster.name("sel")
    objs.create(api.VM_PLURAL, vm(name, {"watch": "me"}), ns)
    rv = objs.list(api.VM_PLURAL, ns)["metadata"]["resourceVersion"]
    objs.api.patch_namespaced_custom_object(
        G, V, ns, api.VM_PLURAL, name, {"metadata": {"labels": {"watch": "no"}}}
    )
    assert collect(cluster, rv, 1, label_selector="watch=me") == [("DELETED", name)]


def test_watch_timeout_ends_quiet_stream(cluster: Cluster) -> None:
    objs = CustomObjects(cluster.client())
    rv = objs.list(api.VM_PLURAL, cluster.namespace)["metadata"]["resourceVersion"]
    started = time.monotonic()
    events = list(
        watch.Watch().stream(
            objs.api.list_namespaced_custom_object,
            G,
            V,
            cluster.namespace,
            api.VM_PLURAL,
            resource_version=rv,
            label_selector="nothing=matches",
            timeout_seconds=1,
        )
    )
    assert events == []
    assert time.monotonic() - started < 8


def test_selectors(cluster: Cluster) -> None:
    ns = cluster.namespace
    objs = CustomObjects(cluster.client())
    tag = cluster.name("tag")
    names = [cluster.name("s") for _ in range(3)]
    for i, name in enumerate(names):
        objs.create(api.VM_PLURAL, vm(name, {"set": tag, "tier": ["a", "b", "c"][i]}), ns)

    def listed(**kw: str) -> list[str]:
        return sorted(o["metadata"]["name"] for o in objs.list(api.VM_PLURAL, ns, **kw)["items"])

    assert listed(label_selector=f"set={tag}") == sorted(names)
    assert listed(label_selector=f"set={tag},tier!=a") == sorted(names[1:])
    assert listed(label_selector=f"set={tag},tier in (a,c)") == sorted([names[0], names[2]])
    assert listed(label_selector=f"set={tag},tier notin (a)") == sorted(names[1:])
    assert listed(label_selector=f"set={tag},!tier") == []
    assert listed(label_selector=f"set={tag},tier") == sorted(names)
    assert listed(field_selector=f"metadata.name={names[1]}") == [names[1]]
    assert names[1] not in listed(field_selector=f"metadata.name!={names[1]}")
    with pytest.raises(ApiException) as err:
        objs.api.list_namespaced_custom_object(G, V, ns, api.VM_PLURAL, label_selector="a in (b")
    assert err.value.status == 400


def test_limit_and_continue(cluster: Cluster) -> None:
    ns = cluster.namespace
    objs = CustomObjects(cluster.client())
    tag = cluster.name("page")
    names = sorted(cluster.name("p") for _ in range(5))
    for name in names:
        objs.create(api.VM_PLURAL, vm(name, {"page": tag}), ns)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        kw: dict[str, Any] = {"label_selector": f"page={tag}", "limit": 2}
        if token:
            kw["_continue"] = token
        page = objs.api.list_namespaced_custom_object(G, V, ns, api.VM_PLURAL, **kw)
        pages += 1
        seen += [o["metadata"]["name"] for o in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
        # Not counted when a selector filters the list (real servers omit it too).
        assert page["metadata"].get("remainingItemCount") is None
    assert pages == 3
    assert seen == names
    everything = objs.api.list_namespaced_custom_object(G, V, ns, api.VM_PLURAL, limit=1)
    total = len(objs.list(api.VM_PLURAL, ns)["items"])
    assert everything["metadata"]["remainingItemCount"] == total - 1
