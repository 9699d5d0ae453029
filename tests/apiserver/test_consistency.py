"""Watch consistency under concurrent writers, and the events view conversion.

Scenarios:
- four clients create and patch objects concurrently while three watchers follow
  from the same resourceVersion: every watcher sees the same events, in strictly
  increasing resourceVersion order, each write exactly once, and the last event
  of each object matches what a list returns afterwards;
- events.k8s.io/v1 <-> core/v1 field conversion round-trips, and field
  selectors on the view are rewritten onto the stored fields.
"""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch
from urllib3.exceptions import ProtocolError

from e2e.apiserver import views
from e2e.apiserver.resources import Registry
from tests.fixtures.apiserver import LabApi

WRITERS, OBJECTS, PATCHES = 4, 15, 3


def test_watchers_agree_under_concurrent_writes(lab_api_inproc: LabApi) -> None:
    lab = lab_api_inproc
    core = k8s.CoreV1Api(lab.client())
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    expected = WRITERS * OBJECTS * (1 + PATCHES)
    seen: list[list[tuple[str, str, int]]] = [[] for _ in range(3)]
    streams = [watch.Watch() for _ in seen]

    def follow(n: int) -> None:
        api = k8s.CoreV1Api(lab.client())
        try:
            for event in streams[n].stream(
                api.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=30
            ):
                obj = event["raw_object"]
                seen[n].append(
                    (
                        event["type"],
                        obj["metadata"]["name"],
                        int(obj["metadata"]["resourceVersion"]),
                    )
                )
                if len(seen[n]) == expected:
                    streams[n].stop()
        except ProtocolError:
            return

    def write(w: int) -> None:
        api = k8s.CoreV1Api(lab.client())
        for i in range(OBJECTS):
            name = f"cc-{w}-{i}"
            api.create_namespaced_config_map(
                "default", {"metadata": {"name": name}, "data": {"n": "0"}}
            )
            for p in range(1, PATCHES + 1):
                api.patch_namespaced_config_map(name, "default", {"data": {"n": str(p)}})

    followers = [threading.Thread(target=follow, args=(n,)) for n in range(len(seen))]
    writers = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    for t in followers + writers:
        t.start()
    for t in writers + followers:
        t.join(timeout=60)

    assert len(seen[0]) == expected
    assert seen[0] == seen[1] == seen[2]
    rvs = [r for _, _, r in seen[0]]
    assert rvs == sorted(set(rvs))
    last: dict[str, tuple[str, int]] = {}
    for kind, name, r in seen[0]:
        last[name] = (kind, r)
    listed = core.list_namespaced_config_map("default").items
    current = {
        c.metadata.name: int(c.metadata.resource_version)
        for c in listed
        if c.metadata.name.startswith("cc-")
    }
    assert current == {name: r for name, (_, r) in last.items()}
    assert all(kind == "MODIFIED" for kind, _ in last.values())


def test_event_view_conversion() -> None:
    registry = Registry()
    view = registry.lookup("events.k8s.io", "v1", "events")
    stored = registry.lookup("", "v1", "events")
    assert view is not None and stored is not None and view.key == stored.key == "/events"
    assert registry.by_key("/events") is stored
    event: dict[str, Any] = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "e"},
        "regarding": {"kind": "Node", "name": "n1"},
        "note": "hello",
        "reportingController": "c",
        "reportingInstance": "i",
        "deprecatedCount": 3,
        "reason": "R",
    }
    core_form = views.to_storage(view, stored, event)
    assert core_form == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "e"},
        "involvedObject": {"kind": "Node", "name": "n1"},
        "message": "hello",
        "reportingComponent": "c",
        "reportingInstance": "i",
        "count": 3,
        "reason": "R",
    }
    assert views.from_storage(view, core_form) == event
    assert (
        views.storage_selector("regarding.name=n1,reason!=R,note==x")
        == "involvedObject.name=n1,reason!=R,message==x"
    )
