"""``vxlan-manager check``: node and cluster reports through the lab API and agent endpoints.

Scenarios:
- node check of a hand-built node (namespace) against Nodes and a VM recorded in the lab API:
  healthy prints "no findings" and exits 0; with the VNI changed it prints JSON naming
  node a / property vxlan.vni and exits 2; with a stale entry it exits 1;
- the local agent's probe results are read from its /health endpoint; an agent that does not
  answer is a degraded finding (agent.health), not a crash;
- the agent's results are older than its two probe periods: probe.stale, with the age in
  the JSON (``age_seconds``, ``stale``) and the table;
- ``--fresh`` measures the peers now from the node's probe address: the agent's last round
  said "reachable" but the peers are gone, so the check says probe.reachable (broken),
  ``probes_on_demand`` true, ages 0;
- an unreachable API: exit 3 with the reason on stderr; bad flags (--timeout 0) exit 3 too;
- cluster check: agents' /health reports (served by HealthServer on loopback addresses) are
  merged; the matrix shows reachable, MTU-lost and down pairs; a node whose agent does not
  answer is named; the exit code is the worst of all.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry
from pyroute2 import IPRoute

from e2e.lab.check import in_netns
from e2e.netns import RunNamespaces
from tests.fixtures.apiserver import LabApi
from tests.health.handbuilt import MAC_X, HandBuiltNode
from vmoverlay import api, kube
from vmoverlay.metrics import HealthServer
from vxlan_manager.health import cli
from vxlan_manager.health.findings import Finding, ProbeResult, Report, Severity


def record_node(client: k8s.ApiClient, name: str, ip: str) -> None:
    core = k8s.CoreV1Api(client)
    kube.call(core.create_node, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    node = kube.to_dict(client, kube.call(core.read_node, name))
    node["status"] = {
        "addresses": [{"type": "InternalIP", "address": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    kube.call(core.replace_node_status, name, node)


def record_vm(client: k8s.ApiClient, name: str, node: str, mac: str) -> None:
    core = k8s.CoreV1Api(client)
    kube.call(core.create_namespace, {"apiVersion": "v1", "metadata": {"name": "db"}})
    objs = kube.CustomObjects(client)
    body: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": api.VM_KIND,
        "metadata": {"name": name, "namespace": "db"},
        "spec": {},
    }
    obj = objs.create(api.VM_PLURAL, body, "db")
    network = {"ip": "198.19.0.10", "prefix": 16, "mac": mac, "mtu": 1450, "pool": "default"}
    obj["status"] = {"node": node, "phase": "Running", "network": network}
    objs.replace_status(api.VM_PLURAL, name, obj, "db")


@pytest.fixture
def cluster_api(lab_api_inproc: LabApi) -> Iterator[LabApi]:
    client = lab_api_inproc.client()
    for name, ip in (("a", "198.18.0.1"), ("b", "198.18.0.2"), ("c", "198.18.0.3")):
        record_node(client, name, ip)
    record_vm(client, "x", "b", MAC_X)
    yield lab_api_inproc


def check(capsys: pytest.CaptureFixture[str], ns: str, *argv: str) -> tuple[int, str, str]:
    with IPRoute(netns=ns) as ipr:
        code = cli.run(cli.parse_args(list(argv)), ipr)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_node_check_through_the_api(
    netns: RunNamespaces, cluster_api: LabApi, capsys: pytest.CaptureFixture[str]
) -> None:
    node = HandBuiltNode(netns)
    node.build()
    base = ["--node", "a", "--kubeconfig", str(cluster_api.kubeconfig), "--agent-url", "none"]

    code, out, _ = check(capsys, node.ns, *base)
    assert code == 0, out
    assert "OK (exit 0)" in out and "no findings" in out

    node.fdb("append", "00:00:00:00:00:00", "dev", "vmo-vx0", "dst", "198.18.0.99")
    code, out, _ = check(capsys, node.ns, *base, "--json")
    doc = json.loads(out)
    assert (code, doc["status"], doc["exit_code"]) == (1, "degraded", 1)
    assert [(f["node"], f["peer"], f["property"]) for f in doc["findings"]] == [
        ("a", "198.18.0.99", "fdb.stale")
    ]

    node.ip("link", "del", "vmo-vx0")
    node.vxlan(4243)
    code, out, _ = check(capsys, node.ns, *base, "--json")
    doc = json.loads(out)
    assert code == 2
    assert ("a", "vxlan.vni", "4242", "4243") in [
        (f["node"], f["property"], f["expected"], f["observed"]) for f in doc["findings"]
    ]


def test_node_check_reads_probes_from_the_agent(
    netns: RunNamespaces, cluster_api: LabApi, capsys: pytest.CaptureFixture[str]
) -> None:
    node = HandBuiltNode(netns)
    node.build()
    agent_report = Report(
        scope="node",
        nodes=["a"],
        probes=[
            ProbeResult("a", "b", "198.18.255.2", True, 0.0003, True, 1450, 1.0),
            ProbeResult("a", "c", "198.18.255.3", True, 0.0003, False, 1450, 1.0),
        ],
    )
    server = serve_reports({"127.0.0.1": agent_report})[0]
    try:
        host, port = server.address
        url = f"http://{host}:{port}/health"
        base = ["--node", "a", "--kubeconfig", str(cluster_api.kubeconfig), "--json"]
        code, out, _ = check(capsys, node.ns, *base, "--agent-url", url)
        doc = json.loads(out)
        assert code == 2
        assert [(f["peer"], f["property"]) for f in doc["findings"]] == [("c", "probe.mtu")]
        assert len(doc["probes"]) == 2
    finally:
        server.stop()

    code, out, _ = check(capsys, node.ns, *base, "--agent-url", url)
    doc = json.loads(out)
    assert code == 1
    assert [f["property"] for f in doc["findings"]] == ["agent.health"]


def test_stale_agent_results_and_fresh_probes(
    netns: RunNamespaces,
    cluster_api: LabApi,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = HandBuiltNode(netns)
    node.build()
    node.ip("addr", "add", "198.18.255.1/24", "dev", "vmo-br0")  # the agent's probe address
    agent_report = Report(
        scope="node",
        nodes=["a"],
        probes=[
            ProbeResult("a", "b", "198.18.255.2", True, 0.0003, True, 1450, 25.0),
            ProbeResult("a", "c", "198.18.255.3", True, 0.0003, True, 1450, 3.0),
        ],
        probe_max_age=21.0,
    )
    server = serve_reports({"127.0.0.1": agent_report})[0]
    try:
        host, port = server.address
        base = ["--node", "a", "--kubeconfig", str(cluster_api.kubeconfig)]
        base += ["--agent-url", f"http://{host}:{port}/health"]
        code, out, _ = check(capsys, node.ns, *base, "--json")
        doc = json.loads(out)
        assert code == 1
        assert [(f["peer"], f["property"]) for f in doc["findings"]] == [("b", "probe.stale")]
        assert (doc["probe_max_age_seconds"], doc["probes_on_demand"]) == (21.0, False)
        assert [(p["age_seconds"], p["stale"]) for p in doc["probes"]] == [
            (25.0, True),
            (3.0, False),
        ]
        code, out, _ = check(capsys, node.ns, *base)
        assert "0.3ms 25s STALE" in out and "0.3ms 3s" in out

        # Measured now: neither peer exists, whatever the agent's last round said. The
        # probes leave from the calling thread's namespace (the lab API and the agent stand-in
        # listen on this one's loopback), so only the measurement runs inside node a.
        real = cli.measure_now
        monkeypatch.setattr(
            cli, "measure_now", lambda *a, **kw: in_netns(node.ns, lambda: real(*a, **kw))
        )
        code, out, _ = check(capsys, node.ns, *base, "--json", "--fresh")
        doc = json.loads(out)
        assert code == 2
        assert sorted((f["peer"], f["property"]) for f in doc["findings"]) == [
            ("b", "probe.reachable"),
            ("c", "probe.reachable"),
        ]
        assert doc["probes_on_demand"] is True
        assert [(p["reachable"], p["age_seconds"]) for p in doc["probes"]] == [
            (False, 0.0),
            (False, 0.0),
        ]
    finally:
        server.stop()


def test_bad_flags_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--timeout", "0"])
    assert exited.value.code == 3
    assert "--timeout: 0 must be a number of seconds above 0" in capsys.readouterr().err


def test_unreachable_api_exits_3(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--node", "a", "--kubeconfig", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 3
    assert "does not exist" in err


# ---- cluster -------------------------------------------------------------------------


def serve_reports(reports: dict[str, Report], port: int = 0) -> list[HealthServer]:
    servers = []
    for host, report in reports.items():
        server = HealthServer(CollectorRegistry(), f"{host}:{port}")
        server.add_json_route("/health", lambda r=report: r.to_dict())
        servers.append(server.start())
        port = server.address[1]
    return servers


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_cluster_check_merges_agent_reports(
    lab_api_inproc: LabApi, capsys: pytest.CaptureFixture[str]
) -> None:
    # Loopback addresses stand in for the nodes' InternalIPs: one agent port for all.
    client = lab_api_inproc.client()
    hosts = {"a": "127.0.0.21", "b": "127.0.0.22", "c": "127.0.0.23"}
    for name, ip in hosts.items():
        record_node(client, name, ip)
    probe = ProbeResult("a", "b", "198.18.255.22", True, 0.0004, True, 1450, 1.0)
    a = Report(
        scope="node",
        nodes=["a"],
        checks=["probes"],
        findings=[Finding(Severity.BROKEN, "a", "probe.reachable", "c down", "look", "c")],
        probes=[probe, ProbeResult("a", "c", "198.18.255.23", False, None, None, 1450, 1.0)],
    )
    b = Report(
        scope="node",
        nodes=["b"],
        checks=["probes"],
        probes=[ProbeResult("b", "a", "198.18.255.21", True, 0.0005, False, 1450, 1.0)],
    )
    port = free_port(hosts["a"])
    servers = serve_reports({hosts["a"]: a, hosts["b"]: b}, port)
    try:
        argv = ["--cluster", "--kubeconfig", str(lab_api_inproc.kubeconfig)]
        argv += ["--agent-port", str(port), "--timeout", "2"]
        code = cli.main(argv)
        table = capsys.readouterr().out
        code_json = cli.main([*argv, "--json"])
        doc = json.loads(capsys.readouterr().out)
    finally:
        for server in servers:
            server.stop()
    assert code == code_json == 2
    assert doc["scope"] == "cluster" and doc["nodes"] == ["a", "b", "c"]
    assert [(f["node"], f["property"], f["peer"]) for f in doc["findings"]] == [
        ("a", "probe.reachable", "c"),
        ("c", "agent.health", None),
    ]
    rows = {
        line.split()[0]: line.split()[1:]
        for line in table.splitlines()
        if line[:2] in ("a ", "b ", "c ")
    }
    assert rows["a"] == [".", "0.4ms", "1s", "DOWN", "1s"]
    assert rows["b"] == ["0.5ms", "MTU!", "1s", ".", "?"]
    assert rows["c"] == ["?", "?", "."]
