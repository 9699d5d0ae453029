"""RBAC matches use: each component's roles grant exactly the calls its code makes.

The table of calls below is kept by hand from reading the code
(vxlan_manager/agent.py and health/cli.py; cni/vm.py; ipam/store.py,
informer.py, leader.py). The IPAM controller and the node agent are also
checked live against the lab API server's audit log, where each is told apart
by the User-Agent vmoverlay.kube.load_client gives every program
("vmoverlay/ipam-controller 0.1.0", "vmoverlay/vxlan-manager 0.1.0"). The CNI
plugin is checked by the table only.

Scenarios:
- no rule uses a wildcard or a non-resource URL;
- each component's ClusterRole (and, for the IPAM controller, its Role for the
  leader-election Lease) grants exactly the (group, resource, verb) calls in the
  table: nothing used is missing, nothing granted is unused;
- every role is bound to its component's ServiceAccount in vmoverlay-system,
  and that ServiceAccount is the one its workload runs as; the CNI plugin's
  role is bound to the agent's ServiceAccount (the plugin runs with the token
  the agent's init container installs), and that account holds nothing else;
- the Lease rule names the controller's Lease (get/update) and creates only;
- docs/install.md's permission table of each component lists exactly the
  resources and verbs its roles grant;
- live (root): two real node agents in lab namespaces sync nodes and VMs; every
  call they made is in the table and granted by the agent's ClusterRole;
- live: the real ipam-controller addresses a VM, writes pool and VM status,
  records events, holds the Lease and releases the address of a deleted VM
  against a lab API server; every call it made (from the audit log) is in the
  table and granted by its roles, including the Lease's name and namespace.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s

from tests.manifests.rendered import MANIFESTS, NAMESPACE, Obj, find, render
from vmoverlay import api, kube

T = TypeVar("T")
Call = tuple[str, str, str]  # (API group, resource[/subresource], verb)
G = api.GROUP

USES: dict[str, set[Call]] = {
    # Two list-then-watch loops (nodes, VMs); `vxlan-manager check` lists both.
    "agent": {
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        (G, "virtualmachines", "list"),
        (G, "virtualmachines", "watch"),
    },
    # The runner pod (its vmoverlay.io/vm annotation), then the VM's network record.
    "cni": {
        ("", "pods", "get"),
        (G, "virtualmachines", "get"),
    },
    "ipam": {
        (G, "virtualmachines", "get"),
        (G, "virtualmachines", "list"),
        (G, "virtualmachines", "watch"),
        (G, "virtualmachines/status", "update"),
        (G, "ippools", "list"),
        (G, "ippools", "watch"),
        (G, "ippools/status", "update"),
        (G, "ipallocations", "get"),
        (G, "ipallocations", "list"),
        (G, "ipallocations", "watch"),
        (G, "ipallocations", "create"),
        (G, "ipallocations", "delete"),
        ("", "events", "create"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
    },
}
ROLES = {
    "agent": [("ClusterRole", "vmoverlay-agent")],
    "cni": [("ClusterRole", "vmoverlay-cni")],
    "ipam": [("ClusterRole", "vmoverlay-ipam"), ("Role", "vmoverlay-ipam-leader-election")],
}
ACCOUNTS = {"agent": "vmoverlay-agent", "cni": "vmoverlay-agent", "ipam": "vmoverlay-ipam"}
WORKLOADS = {"agent": "DaemonSet", "ipam": "Deployment"}
LEASE = "vmoverlay-ipam"


@pytest.fixture(scope="module")
def objs() -> list[Obj]:
    return render(MANIFESTS)


def _role(objs: list[Obj], kind: str, name: str) -> Obj:
    (role,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return role


def _grants(role: Obj) -> set[Call]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _component_grants(objs: list[Obj], component: str) -> set[Call]:
    return set().union(*(_grants(_role(objs, k, n)) for k, n in ROLES[component]))


def test_no_wildcards_and_no_raw_urls(objs: list[Obj]) -> None:
    for role in (o for o in objs if o["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule, role["metadata"]["name"]
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in (rule.get(key) or []), f"{role['metadata']['name']}: {key} *"


@pytest.mark.parametrize("component", sorted(USES))
def test_roles_grant_exactly_what_the_code_uses(objs: list[Obj], component: str) -> None:
    granted = _component_grants(objs, component)
    assert not USES[component] - granted, f"used but not granted: {USES[component] - granted}"
    assert not granted - USES[component], f"granted but never used: {granted - USES[component]}"


@pytest.mark.parametrize("component", sorted(USES))
def test_roles_are_bound_to_the_components_service_account(objs: list[Obj], component: str) -> None:
    account = ACCOUNTS[component]
    find(objs, "ServiceAccount", account)
    for kind, name in ROLES[component]:
        bindings = [
            b
            for b in objs
            if b["kind"] == f"{kind}Binding"
            and b["roleRef"]
            == {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": kind,
                "name": name,
            }
        ]
        assert len(bindings) == 1, f"{kind} {name} is bound {len(bindings)} times"
        subjects = bindings[0]["subjects"]
        assert subjects == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    if component in WORKLOADS:
        spec = find(objs, WORKLOADS[component])["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == account


def test_agent_account_holds_only_agent_and_plugin_rights(objs: list[Obj]) -> None:
    bound = set()
    for b in objs:
        if b["kind"] in ("RoleBinding", "ClusterRoleBinding") and any(
            s["name"] == "vmoverlay-agent" for s in b["subjects"]
        ):
            bound |= _grants(_role(objs, b["roleRef"]["kind"], b["roleRef"]["name"]))
    assert bound == USES["agent"] | USES["cni"]


def test_lease_rule_is_limited_to_the_controllers_lease(objs: list[Obj]) -> None:
    from ipam.cli import LEASE_NAME

    role = _role(objs, "Role", "vmoverlay-ipam-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    by_verbs = {tuple(r["verbs"]): r.get("resourceNames") for r in role["rules"]}
    assert by_verbs == {("create",): None, ("get", "update"): [LEASE_NAME]}
    assert LEASE_NAME == LEASE


# ---------------------------------------------------------------- live: the IPAM controller


def _wait(what: str, check: Callable[[], T | None], proc: subprocess.Popen[bytes]) -> T:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ipam-controller exited with {proc.returncode}"
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _allowed(objs: list[Obj], component: str, record: dict[str, Any]) -> bool:
    """Whether the component's roles grant this audited request (namespace and name too)."""
    call = _call(record)
    for kind, name in ROLES[component]:
        role = _role(objs, kind, name)
        if kind == "Role" and record["namespace"] != role["metadata"]["namespace"]:
            continue
        for rule in role["rules"]:
            names = rule.get("resourceNames")
            if call in _grants({"rules": [rule]}) and (not names or record["name"] in names):
                return True
    return False


def _call(record: dict[str, Any]) -> Call:
    resource = record["resource"] + (f"/{record['subresource']}" if record["subresource"] else "")
    return (record["group"], resource, record["verb"])


def _check_audit(objs: list[Obj], component: str, records: list[dict[str, Any]]) -> set[Call]:
    """Every audited call is granted and in the table; return the calls seen."""
    records = [r for r in records if r["resource"]]
    assert records, f"the audit log recorded no call of the {component}"
    for r in records:
        assert _allowed(objs, component, r), f"not granted to the {component}: {r}"
    used = {_call(r) for r in records}
    assert used <= USES[component], f"missing from the table: {used - USES[component]}"
    return used


def test_live_ipam_calls_are_in_the_table_and_granted(
    lab_api: Any, objs: list[Obj], tmp_path: Path
) -> None:
    client = lab_api.client(user_agent="vmoverlay-tests-rbac")
    core, custom = k8s.CoreV1Api(client), kube.CustomObjects(client)
    for ns in (NAMESPACE, "vmo-rbac"):  # "default" exists already, as on a real cluster
        kube.call(core.create_namespace, {"metadata": {"name": ns}})
    custom.create(
        api.POOL_PLURAL,
        {
            "apiVersion": api.API_VERSION,
            "kind": api.POOL_KIND,
            "metadata": {"name": "default"},
            "spec": {"cidr": "198.19.0.0/24", "gateway": "198.19.0.1", "default": True},
        },
    )
    vm = {"apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": {"name": "db-0"}}
    custom.create(api.VM_PLURAL, vm, "vmo-rbac")

    log = (tmp_path / "ipam.log").open("wb")
    program = Path(sys.executable).parent / "ipam-controller"  # the console script
    controller = [str(program), "run", "--kubeconfig", lab_api.kubeconfig]
    controller += ["--lease-namespace", NAMESPACE, "--metrics-addr", "127.0.0.1:0"]
    proc = subprocess.Popen(controller, stdout=log, stderr=log)
    try:
        _wait(
            "the VM's address",
            lambda: (custom.get(api.VM_PLURAL, "db-0", "vmo-rbac").get("status") or {}).get(
                "network"
            ),
            proc,
        )
        _wait("pool status", lambda: custom.get(api.POOL_PLURAL, "default").get("status"), proc)
        custom.delete(api.VM_PLURAL, "db-0", "vmo-rbac")
        _wait(
            "the address's release",
            lambda: not custom.list(api.ALLOCATION_PLURAL)["items"],
            proc,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()

    # vmoverlay.kube.load_client names the program in the User-Agent.
    used = _check_audit(objs, "ipam", lab_api.audit(user_agent="vmoverlay/ipam-controller "))
    # The scenario reaches the main paths: reads, writes, status, events, lease.
    for call in [
        (G, "ipallocations", "create"),
        (G, "ipallocations", "delete"),
        (G, "virtualmachines/status", "update"),
        (G, "ippools/status", "update"),
        ("", "events", "create"),
        ("coordination.k8s.io", "leases", "create"),
    ]:
        assert call in used, f"the scenario never made {call}"


# ---------------------------------------------------------------- live: the node agent


@pytest.mark.root
def test_live_agent_calls_are_in_the_table_and_granted(
    netns: Any, objs: list[Obj], tmp_path: Path
) -> None:
    from tests.agent.cluster import Cluster

    cluster = Cluster(netns, tmp_path, node_names=("na", "nb"))
    try:
        for name, node in cluster.nodes.items():
            cluster.put_node(name, node.ip)
        cluster.put_vm("db-0", "na", ip="198.19.0.10", mac="0a:58:c6:13:00:0a")
        for name in cluster.nodes:
            cluster.start_agent(name)
        cluster.wait_ready(*cluster.nodes)
        for name in list(cluster.agents):
            cluster.stop_agent(name)  # ends the watches, so they are recorded too
        query = f"{cluster.url}/_lab/audit?userAgent=vmoverlay/vxlan-manager%20"

        def audit() -> list[dict[str, Any]]:
            with urllib.request.urlopen(query, timeout=10) as resp:
                records: list[dict[str, Any]] = json.load(resp)["records"]
                return records

        records = cluster.call(audit)
    finally:
        cluster.close()
    used = _check_audit(objs, "agent", records)
    assert {("", "nodes", "list"), (G, "virtualmachines", "list")} <= used


# ---------------------------------------------------------------- the documentation


VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
DOC_SECTIONS = {"agent": "**Node agent**", "cni": "**CNI plugin**", "ipam": "**IPAM controller**"}


def _documented(component: str) -> set[tuple[str, str]]:
    """(resource, verb) pairs in the component's permission table of docs/install.md."""
    text = (MANIFESTS.parent / "docs" / "install.md").read_text()
    section = text.split(DOC_SECTIONS[component], 1)[1]
    table = section[section.index("\n| resource |") :].split("\n\n", 1)[0]
    out = set()
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        resource = cells[0].split("`")[1].split(".")[0]
        out |= {
            (resource, v)
            for v in cells[1].replace(";", ",").replace(" ", ",").split(",")
            if v in VERBS
        }
    return out


@pytest.mark.parametrize("component", sorted(USES))
def test_documented_permissions_match_the_roles(objs: list[Obj], component: str) -> None:
    granted = {(resource, verb) for _, resource, verb in _component_grants(objs, component)}
    assert _documented(component) == granted
