"""Lab API server behaviour beyond the contract: bad input, core types, faults, audit, kubectl.

Scenarios:
- bad input answers a Status and the server keeps serving: malformed JSON 400,
  wrong apiVersion or kind 400, a body over the limit 413, an unknown resource
  404, a missing name 422, a name differing from the URL 400, a missing
  namespace 404, a strategic merge patch on a custom resource 415, PUT without a
  name 405;
- Pods need containers with names and images, and their spec cannot change
  except images (422);
- core types through the official client: Node create keeps status, strategic
  merge of Node labels and status conditions (by type), Pod field selector
  spec.nodeName, Leases (CoordinationV1Api), events.k8s.io Events (EventsV1Api);
- events.k8s.io/v1 and core/v1 Events are one set of objects: each API reads,
  selects (regarding.name / involvedObject.name), patches and watches what the
  other wrote, with the fields converted;
- watch: BOOKMARK events when asked, sendInitialEvents ends with the
  initial-events-end bookmark; cutting watches ends streams and Watch resumes
  from its last resourceVersion without losing events; cutting with reset breaks
  the stream (the client raises ProtocolError); a client that goes away from
  a quiet watch is unsubscribed within seconds; stopping an in-process server
  while Watch loops re-watch at once ends their streams and stops (it used to
  wait for aiohttp's 60 s grace, past the 30 s the thread server allows);
- fault injection: the next N writes fail with the chosen code (and only for
  the chosen resource), then writes work again; delay slows answers;
- audit: records User-Agent, verb, resource, subresource and answer code; a
  create names its object (the body's name, the generated one for generateName,
  and the taken one for a 409);
- garbage collection: Orphan keeps dependents, a dependent created with an
  absent owner is collected; deleting a namespace deletes its contents; deleting
  a CRD deletes its objects and its discovery entry;
- discovery: /api, /apis, /version; kubectl get, get --watch (Table rows) and
  apply work against it (with server-side strict field validation: an unknown
  field is refused);
- a CRD whose name is not plural.group, or without one storage version, is 422;
- metadata checks: bad label keys/values 422, new finalizers on a deleting
  object 422, unsupported field selectors 400, dryRun refused 400.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3 import exceptions as urllib3_errors
from urllib3.exceptions import ProtocolError

from tests.contract.conftest import wait_for
from tests.fixtures.apiserver import ROOT, LabApi, start_lab_api
from vmoverlay import api
from vmoverlay.kube import CustomObjects, NotFound, Unavailable

G, V = api.GROUP, api.VERSION


def raw(
    lab: LabApi, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(lab.url + path, data=body, method=method)
    req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


POOLS = f"/apis/{G}/{V}/ippools"


@pytest.mark.parametrize(
    ("method", "path", "body", "ctype", "code", "reason"),
    [
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            b"{not json",
            "application/json",
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            b'{"apiVersion":"v2","metadata":{"name":"a"}}',
            "application/json",
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            b'{"kind":"Pod","metadata":{"name":"a"}}',
            "application/json",
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            b"[1]",
            "application/json",
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            b'{"metadata":{}}',
            "application/json",
            422,
            "Invalid",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            b'{"metadata":{"name":"Bad_Name"}}',
            "application/json",
            422,
            "Invalid",
        ),
        (
            "POST",
            "/api/v1/namespaces/nowhere/configmaps",
            b'{"metadata":{"name":"a"}}',
            "application/json",
            404,
            "NotFound",
        ),
        ("POST", "/api/v1/namespaces/default/widgets", b"{}", "application/json", 404, "NotFound"),
        ("GET", "/apis/nope.io/v1/things", None, "application/json", 404, "NotFound"),
        (
            "PUT",
            "/api/v1/namespaces/default/configmaps",
            b"{}",
            "application/json",
            405,
            "MethodNotAllowed",
        ),
        (
            "POST",
            "/api/v1/pods",
            b'{"metadata":{"name":"a"}}',
            "application/json",
            405,
            "MethodNotAllowed",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20(b",
            None,
            "application/json",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=abc",
            None,
            "application/json",
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            b"x" * (3 * 1024 * 1024 + 1),
            "application/json",
            413,
            "RequestEntityTooLarge",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            b"\x08\x01",
            "application/vnd.kubernetes.protobuf",
            415,
            "UnsupportedMediaType",
        ),
    ],
)
def test_bad_input_is_a_status(
    lab_api_module: LabApi,
    method: str,
    path: str,
    body: bytes | None,
    ctype: str,
    code: int,
    reason: str,
) -> None:
    status, answer = raw(lab_api_module, method, path, body, ctype)
    assert (status, answer["kind"], answer["reason"], answer["code"]) == (
        code,
        "Status",
        reason,
        code,
    )
    assert answer["message"]
    ok, listed = raw(lab_api_module, "GET", "/api/v1/namespaces")
    assert ok == 200 and listed["items"]


def test_update_and_patch_checks(lab_api_module: LabApi) -> None:
    lab = lab_api_module
    core = k8s.CoreV1Api(lab.client())
    core.create_namespaced_config_map("default", {"metadata": {"name": "cm-put"}})
    status, answer = raw(
        lab, "PUT", "/api/v1/namespaces/default/configmaps/cm-put", b'{"metadata":{"name":"other"}}'
    )
    assert (status, answer["reason"]) == (400, "BadRequest")
    objs = CustomObjects(lab.client())
    objs.create(api.POOL_PLURAL, {"metadata": {"name": "smp"}, "spec": {"cidr": "198.19.0.0/16"}})
    status, answer = raw(
        lab, "PATCH", f"{POOLS}/smp", b'{"spec":{}}', "application/strategic-merge-patch+json"
    )
    assert (status, answer["reason"]) == (415, "UnsupportedMediaType")
    status, answer = raw(
        lab,
        "PATCH",
        f"{POOLS}/smp",
        b'[{"op":"test","path":"/spec/cidr","value":"x"}]',
        "application/json-patch+json",
    )
    assert (status, answer["reason"]) == (422, "Invalid")
    status, answer = raw(
        lab, "PATCH", f"{POOLS}/smp", b'{"spec":{"vni":0}}', "application/merge-patch+json"
    )
    assert status == 422 and answer["details"]["causes"][0]["field"] == "spec.vni"


def test_core_types_through_official_client(lab_api_module: LabApi) -> None:
    c = lab_api_module.client()
    core = k8s.CoreV1Api(c)
    node = core.create_node(
        {
            "metadata": {"name": "core-n1", "labels": {"a": "1"}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "198.18.0.11"}],
                "conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "MemoryPressure", "status": "False"},
                ],
            },
        }
    )
    assert node.status.addresses[0].address == "198.18.0.11"
    core.patch_node(
        "core-n1",
        {"metadata": {"labels": {"b": "2"}, "annotations": {api.VTEP_ANNOTATION: "198.18.0.99"}}},
    )
    core.patch_node_status(
        "core-n1", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    )
    node = core.read_node("core-n1")
    assert node.metadata.labels == {"a": "1", "b": "2"}
    assert [(x.type, x.status) for x in node.status.conditions] == [
        ("Ready", "True"),
        ("MemoryPressure", "False"),
    ]
    assert api.Node.from_obj(c.sanitize_for_serialization(node)).vtep_ip == "198.18.0.99"

    for i, node_name in enumerate(["core-n1", "core-n2", "core-n1"]):
        pod = core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": f"runner-{i}", "annotations": {api.VM_ANNOTATION: f"vm-{i}"}},
                "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "x"}]},
            },
        )
        assert pod.status.phase == "Pending"
    on_n1 = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=core-n1")
    assert sorted(p.metadata.name for p in on_n1.items) == ["runner-0", "runner-2"]

    leases = k8s.CoordinationV1Api(c)
    lease = leases.create_namespaced_lease(
        "default",
        {"metadata": {"name": "ipam"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}},
    )
    lease.spec.holder_identity = "b"
    assert leases.replace_namespaced_lease("ipam", "default", lease).spec.holder_identity == "b"
    lease.spec.holder_identity = "c"
    with pytest.raises(ApiException) as err:
        leases.replace_namespaced_lease("ipam", "default", lease)
    assert err.value.status == 409

    event = k8s.EventsV1Api(c).create_namespaced_event(
        "default",
        {
            "metadata": {"generateName": "vm-"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "vmoverlay.io/ipam",
            "reportingInstance": "ipam-0",
            "action": "Allocate",
            "reason": "Allocated",
            "type": "Normal",
            "regarding": {"kind": "VirtualMachine", "name": "vm-0"},
        },
    )
    assert event.metadata.name.startswith("vm-")
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "e1"},
            "involvedObject": {"kind": "Node", "name": "core-n1"},
            "reason": "R",
        },
    )
    assert [
        e.reason
        for e in core.list_namespaced_event(
            "default", field_selector="involvedObject.name=core-n1"
        ).items
    ] == ["R"]


def read_lines(lab: LabApi, path: str, count: int) -> list[dict[str, Any]]:
    out = []
    with urllib.request.urlopen(lab.url + path, timeout=10) as resp:
        for line in resp:
            out.append(json.loads(line))
            if len(out) >= count:
                break
    return out


def test_bookmarks_and_initial_events_end() -> None:
    with start_lab_api(mode="thread", data_dir=False, crds=False, bookmark_interval=0.2) as lab:
        events = read_lines(
            lab, "/api/v1/namespaces?watch=true&allowWatchBookmarks=true&sendInitialEvents=true", 6
        )
        assert [e["type"] for e in events] == ["ADDED"] * 4 + ["BOOKMARK", "BOOKMARK"]
        assert events[4]["object"]["metadata"]["annotations"] == {
            "k8s.io/initial-events-end": "true"
        }
        assert (
            events[5]["object"]["metadata"]["resourceVersion"]
            == events[4]["object"]["metadata"]["resourceVersion"]
        )


def test_cut_watches_resume_without_loss(lab_api_module: LabApi) -> None:
    lab = lab_api_module
    core = k8s.CoreV1Api(lab.client())
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    names: list[str] = []
    w = watch.Watch()

    def follow() -> None:
        for event in w.stream(
            core.list_namespaced_config_map, "default", resource_version=rv, label_selector="cut=1"
        ):
            names.append(event["object"].metadata.name)
            if len(names) == 6:
                w.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    for i in range(6):
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": f"cut-{i}", "labels": {"cut": "1"}}}
        )
        if i == 2:
            wait_for(lambda: len(names) == 3, what="first three events")
            assert lab.cut_watches() >= 1
    thread.join(timeout=10)
    assert names == [f"cut-{i}" for i in range(6)]


def test_fault_injection(lab_api_module: LabApi) -> None:
    lab = lab_api_module
    objs = CustomObjects(lab.client())
    core = k8s.CoreV1Api(lab.client())
    lab.fail_writes(2, code=503, resource="ipallocations")
    core.create_namespaced_config_map("default", {"metadata": {"name": "not-faulted"}})
    body = {
        "metadata": {"name": "fault-a"},
        "spec": {
            "pool": "p",
            "ip": "198.19.0.1",
            "vm": {"namespace": "a", "name": "b", "uid": "c"},
        },
    }
    for _ in range(2):
        with pytest.raises(Unavailable, match="503 ServiceUnavailable"):
            objs.create(api.ALLOCATION_PLURAL, body)
    with pytest.raises(NotFound):
        objs.get(api.ALLOCATION_PLURAL, "fault-a")
    objs.create(api.ALLOCATION_PLURAL, body)
    lab.fail_writes(1, code=500, verbs=["delete"])
    objs.api.patch_cluster_custom_object(
        G, V, api.ALLOCATION_PLURAL, "fault-a", {"metadata": {"labels": {"x": "y"}}}
    )
    with pytest.raises(Unavailable, match="500 InternalError"):
        objs.delete(api.ALLOCATION_PLURAL, "fault-a")
    lab.delay(150)
    started = time.monotonic()
    objs.get(api.ALLOCATION_PLURAL, "fault-a")
    assert time.monotonic() - started >= 0.15
    lab.clear_faults()
    objs.delete(api.ALLOCATION_PLURAL, "fault-a")


def test_audit_records_user_agents(lab_api_module: LabApi) -> None:
    lab = lab_api_module
    lab.clear_audit()
    agent = k8s.CoreV1Api(lab.client(user_agent="vxlan-manager/0.1 node=n1"))
    agent.list_node()
    with pytest.raises(ApiException):
        agent.read_node("absent-node")
    ipam = CustomObjects(lab.client(user_agent="ipam-controller/0.1"))
    ipam.list(api.POOL_PLURAL)
    records = lab.audit(user_agent="vxlan-manager")
    assert [(r["verb"], r["resource"], r["name"], r["code"]) for r in records] == [
        ("list", "nodes", "", 200),
        ("get", "nodes", "absent-node", 404),
    ]
    assert [(r["verb"], r["group"], r["resource"]) for r in lab.audit(user_agent="ipam")] == [
        ("list", G, api.POOL_PLURAL)
    ]
    assert lab.audit(verb="list", resource="nodes")[0]["userAgent"].startswith("vxlan-manager")


def test_stop_with_rewatching_clients(lab_api_inproc: LabApi) -> None:
    lab = lab_api_inproc
    core = k8s.CoreV1Api(lab.client())
    watchers = [watch.Watch() for _ in range(3)]
    ended: list[str] = []

    def follow(w: watch.Watch) -> None:
        try:
            for _ in w.stream(core.list_namespace):
                pass
        except (ApiException, urllib3_errors.HTTPError, OSError) as exc:
            ended.append(type(exc).__name__)  # the server is gone: expected after stop

    threads = [threading.Thread(target=follow, args=(w,), daemon=True) for w in watchers]
    for t in threads:
        t.start()
    wait_for(lambda: lab.stats()["watches"] == 3)
    lab.stop()  # raises TimeoutError if the server does not stop within 30 s
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(ended) == 3


def test_audit_names_created_objects(lab_api_module: LabApi) -> None:
    lab = lab_api_module
    lab.clear_audit()
    core = k8s.CoreV1Api(lab.client(user_agent="audit-create"))
    core.create_namespaced_config_map("default", {"metadata": {"name": "audit-named"}})
    made = core.create_namespaced_config_map("default", {"metadata": {"generateName": "audit-"}})
    with pytest.raises(ApiException):
        core.create_namespaced_config_map("default", {"metadata": {"name": "audit-named"}})
    records = lab.audit(user_agent="audit-create", verb="create")
    assert [(r["resource"], r["namespace"], r["name"], r["code"]) for r in records] == [
        ("configmaps", "default", "audit-named", 201),
        ("configmaps", "default", made.metadata.name, 201),
        ("configmaps", "default", "audit-named", 409),
    ]
    assert made.metadata.name.startswith("audit-") and made.metadata.name != "audit-"


def test_gc_orphan_and_dangling_owner(lab_api_module: LabApi) -> None:
    core = k8s.CoreV1Api(lab_api_module.client())
    owner = core.create_namespaced_config_map("default", {"metadata": {"name": "orphan-owner"}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "orphan-owner",
        "uid": owner.metadata.uid,
    }
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "orphan-dep", "ownerReferences": [ref]}}
    )
    core.delete_namespaced_config_map("orphan-owner", "default", propagation_policy="Orphan")
    wait_for(
        lambda: (
            not core.read_namespaced_config_map("orphan-dep", "default").metadata.owner_references
        ),
        what="reference stripped",
    )
    dangling = {**ref, "uid": "no-such-uid"}
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "dangling-dep", "ownerReferences": [dangling]}}
    )

    def collected() -> bool:
        return "dangling-dep" not in [
            c.metadata.name for c in core.list_namespaced_config_map("default").items
        ]

    wait_for(collected, what="dependent of an absent owner collected")


def test_namespace_and_crd_deletion(lab_api_module: LabApi) -> None:
    lab = lab_api_module
    c = lab.client()
    core = k8s.CoreV1Api(c)
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_config_map("doomed", {"metadata": {"name": "a"}})
    CustomObjects(c).create(
        api.VM_PLURAL, {"metadata": {"name": "v", "finalizers": ["x/y"]}, "spec": {}}, "doomed"
    )
    core.delete_namespace("doomed")
    assert core.read_namespace("doomed").status.phase == "Terminating"
    wait_for(lambda: core.list_namespaced_config_map("doomed").items == [], what="contents deleted")
    assert core.read_namespace("doomed").status.phase == "Terminating"
    CustomObjects(c).api.patch_namespaced_custom_object(
        G, V, "doomed", api.VM_PLURAL, "v", {"metadata": {"finalizers": None}}
    )

    def ns_gone() -> bool:
        return "doomed" not in [n.metadata.name for n in core.list_namespace().items]

    wait_for(ns_gone, what="namespace removed")

    ext = k8s.ApiextensionsV1Api(c)
    crd = ext.read_custom_resource_definition(f"virtualmachinemigrations.{G}")
    CustomObjects(c).create(
        api.MIGRATION_PLURAL,
        {"metadata": {"name": "m"}, "spec": {"vm": "v", "targetNode": "n"}},
        "default",
    )
    ext.delete_custom_resource_definition(crd.metadata.name)
    with pytest.raises(ApiException) as err:
        CustomObjects(c).api.list_namespaced_custom_object(G, V, "default", api.MIGRATION_PLURAL)
    assert err.value.status == 404
    names = [r["name"] for r in raw(lab, "GET", f"/apis/{G}/{V}")[1]["resources"]]
    assert api.MIGRATION_PLURAL not in names
    lab.apply_crds()
    assert CustomObjects(c).list(api.MIGRATION_PLURAL, "default")["items"] == []


def test_discovery(lab_api_module: LabApi) -> None:
    lab = lab_api_module
    assert raw(lab, "GET", "/api")[1]["versions"] == ["v1"]
    groups = {g["name"] for g in raw(lab, "GET", "/apis")[1]["groups"]}
    assert {G, "coordination.k8s.io", "events.k8s.io", "apiextensions.k8s.io"} <= groups
    core = {r["name"] for r in raw(lab, "GET", "/api/v1")[1]["resources"]}
    assert {"pods", "pods/status", "nodes", "nodes/status", "namespaces", "events"} <= core
    assert raw(lab, "GET", "/version")[1]["major"] == "1"
    assert k8s.VersionApi(lab.client()).get_code().minor == "32"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl(lab_api_module: LabApi) -> None:
    lab = lab_api_module

    def kubectl(*args: str) -> str:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(lab.kubeconfig), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        ).stdout

    assert "configured" in kubectl("apply", "-f", "manifests/crds/")
    assert "unchanged" in kubectl("apply", "-f", "manifests/crds/")
    k8s.CoreV1Api(lab.client()).create_node({"metadata": {"name": "kubectl-n1"}})
    assert "kubectl-n1" in kubectl("get", "nodes")
    CustomObjects(lab.client()).create(
        api.POOL_PLURAL, {"metadata": {"name": "kpool"}, "spec": {"cidr": "198.19.0.0/16"}}
    )
    table = kubectl("get", "ippools")
    assert "CIDR" in table and "198.19.0.0/16" in table
    assert (
        json.loads(kubectl("get", "ippool", "kpool", "-o", "json"))["spec"]["cidr"]
        == "198.19.0.0/16"
    )
    manifest = lab.workdir / "pool.yaml"
    manifest.write_text(
        "apiVersion: vmoverlay.io/v1alpha1\nkind: IPPool\nmetadata: {name: kpool2}\n"
        "spec: {cidr: 198.19.0.0/16, gatewai: 198.19.0.1}\n"
    )
    with pytest.raises(subprocess.CalledProcessError) as err:
        kubectl("apply", "-f", str(manifest))
    assert 'unknown field "spec.gatewai"' in err.value.stderr
    with pytest.raises(subprocess.TimeoutExpired) as watched:
        subprocess.run(
            [
                "kubectl",
                "--kubeconfig",
                str(lab.kubeconfig),
                "get",
                "ns",
                "-w",
                "--output-watch-events",
            ],
            capture_output=True,
            text=True,
            timeout=5,
        )
    out = watched.value.stdout
    text = out.decode() if isinstance(out, bytes) else str(out)
    assert "STATUS" in text and "ADDED" in text and "Active" in text


def test_metadata_checks(lab_api_module: LabApi) -> None:
    core = k8s.CoreV1Api(lab_api_module.client())
    for labels in ({"bad key!": "x"}, {"ok": "198.19.0.1/16"}, {"ok": "x" * 64}):
        with pytest.raises(ApiException) as err:
            core.create_namespaced_config_map(
                "default", {"metadata": {"name": "lbl", "labels": labels}}
            )
        assert err.value.status == 422 and "metadata.labels" in err.value.body
    core.create_namespaced_config_map(
        "default",
        {
            "metadata": {
                "name": "fin",
                "finalizers": ["a/b"],
                "labels": {"vmoverlay.io/pool": "p-1"},
            }
        },
    )
    core.delete_namespaced_config_map("fin", "default")
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map(
            "fin", "default", {"metadata": {"finalizers": ["a/b", "c/d"]}}
        )
    assert err.value.status == 422 and "no new finalizers" in err.value.body
    core.patch_namespaced_config_map(
        "fin", "default", {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a/b"]}}
    )
    wait_for(
        lambda: (
            "fin" not in [c.metadata.name for c in core.list_namespaced_config_map("default").items]
        ),
        what="finalized",
    )
    with pytest.raises(ApiException) as err:
        core.list_pod_for_all_namespaces(field_selector="spec.containers=x")
    assert err.value.status == 400
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default", {"metadata": {"name": "dry"}}, dry_run="All")
    assert err.value.status == 400


def test_cut_watches_reset_breaks_stream(lab_api_module: LabApi) -> None:
    lab = lab_api_module
    core = k8s.CoreV1Api(lab.client())
    errors: list[BaseException] = []
    started = threading.Event()

    def follow() -> None:
        try:
            for _ in watch.Watch().stream(core.list_namespace, timeout_seconds=20):
                started.set()
        except ProtocolError as exc:
            errors.append(exc)

    thread = threading.Thread(target=follow)
    thread.start()
    assert started.wait(timeout=10)
    wait_for(lambda: lab.stats()["watches"] >= 1, what="watch registered")
    assert lab.cut_watches(reset=True) >= 1
    thread.join(timeout=10)
    assert len(errors) == 1


def test_pod_validation(lab_api_module: LabApi) -> None:
    lab = lab_api_module
    core = k8s.CoreV1Api(lab.client())
    for spec, field in (
        ({}, "spec.containers: Required value"),
        ({"containers": [{"name": "c"}]}, "spec.containers[0].image: Required value"),
    ):
        body = json.dumps({"metadata": {"name": "badpod"}, "spec": spec}).encode()
        status, answer = raw(lab, "POST", "/api/v1/namespaces/default/pods", body)
        assert status == 422 and field in answer["message"]
    body = {"metadata": {"name": "pv"}, "spec": {"containers": [{"name": "c", "image": "a"}]}}
    core.create_namespaced_pod("default", body)
    patched = core.patch_namespaced_pod(
        "pv", "default", {"spec": {"containers": [{"name": "c", "image": "b"}]}}
    )
    assert patched.spec.containers[0].image == "b"
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod("pv", "default", {"spec": {"nodeName": "elsewhere"}})
    assert err.value.status == 422 and "pod updates may not change" in err.value.body


def test_events_apis_share_objects(lab_api_module: LabApi) -> None:
    c = lab_api_module.client()
    core, events = k8s.CoreV1Api(c), k8s.EventsV1Api(c)
    ns = "default"
    rv = core.list_namespaced_event(ns).metadata.resource_version
    events.create_namespaced_event(
        ns,
        {
            "metadata": {"name": "shared-1"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "vmoverlay.io/ipam",
            "reportingInstance": "ipam-0",
            "action": "Allocate",
            "reason": "Allocated",
            "note": "took 198.19.0.7",
            "type": "Normal",
            "regarding": {"kind": "VirtualMachine", "name": "shared-vm", "namespace": ns},
        },
    )
    (seen,) = core.list_namespaced_event(ns, field_selector="involvedObject.name=shared-vm").items
    assert (seen.message, seen.reporting_component, seen.involved_object.kind) == (
        "took 198.19.0.7",
        "vmoverlay.io/ipam",
        "VirtualMachine",
    )
    core.create_namespaced_event(
        ns,
        {
            "metadata": {"name": "shared-2"},
            # The official client's EventsV1Event insists on eventTime, which legacy
            # core events may lack (real servers then send null).
            "eventTime": "2026-01-01T00:00:01.000000Z",
            "reportingComponent": "vxlan-manager",
            "reportingInstance": "na",
            "action": "Reconcile",
            "involvedObject": {"kind": "Node", "name": "shared-node"},
            "reason": "VtepChanged",
            "message": "now 198.18.0.9",
            "type": "Warning",
        },
    )
    (back,) = events.list_namespaced_event(ns, field_selector="regarding.name=shared-node").items
    assert (back.note, back.regarding.name, back.type) == (
        "now 198.18.0.9",
        "shared-node",
        "Warning",
    )
    patched = events.patch_namespaced_event("shared-2", ns, {"note": "now 198.18.0.10"})
    assert patched.note == "now 198.18.0.10"
    assert core.read_namespaced_event("shared-2", ns).message == "now 198.18.0.10"
    seen_types = []
    for event in watch.Watch().stream(
        events.list_namespaced_event, ns, resource_version=rv, timeout_seconds=2
    ):
        seen_types.append(
            (event["type"], event["object"].metadata.name, event["raw_object"]["apiVersion"])
        )
        if len(seen_types) == 3:
            break
    assert seen_types == [
        ("ADDED", "shared-1", "events.k8s.io/v1"),
        ("ADDED", "shared-2", "events.k8s.io/v1"),
        ("MODIFIED", "shared-2", "events.k8s.io/v1"),
    ]
    events.delete_namespaced_event("shared-1", ns)
    assert [
        e.metadata.name
        for e in core.list_namespaced_event(ns).items
        if e.metadata.name.startswith("shared-")
    ] == ["shared-2"]


def test_abandoned_quiet_watch_is_dropped() -> None:
    with start_lab_api(mode="thread", data_dir=False, crds=False) as lab:
        with urllib.request.urlopen(lab.url + "/api/v1/nodes?watch=true", timeout=10):
            wait_for(lambda: lab.stats()["watches"] == 1, what="watch registered")
        wait_for(lambda: lab.stats()["watches"] == 0, what="abandoned watch dropped")


def test_crd_checks(lab_api_module: LabApi) -> None:
    def crd(name: str, storage: bool = True) -> bytes:
        return json.dumps(
            {
                "metadata": {"name": name},
                "spec": {
                    "group": "example.io",
                    "scope": "Cluster",
                    "names": {"plural": "widgets", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": storage}],
                },
            }
        ).encode()

    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    status, answer = raw(lab_api_module, "POST", path, crd("widgets.other.io"))
    assert status == 422 and "must be spec.names.plural" in answer["message"]
    status, answer = raw(lab_api_module, "POST", path, crd("widgets.example.io", storage=False))
    assert status == 422 and "storage version" in answer["message"]
    assert raw(lab_api_module, "POST", path, crd("widgets.example.io"))[0] == 201
    assert raw(lab_api_module, "GET", "/apis/example.io/v1/widgets")[1]["items"] == []
