"""The install manifests parse, render, validate offline and say what the design needs.

Scenarios:
- every YAML file under manifests/ and tests/manifests/samples/ parses, and every
  object in it names its apiVersion, kind and name;
- ``kubectl kustomize manifests/`` and the monitoring overlay render, and every
  manifest file is reached by a kustomization or is an example/sample;
- every rendered object validates against the Kubernetes 1.32 OpenAPI schemas
  (kubernetes-validate, strict: unknown fields are errors; offline, bundled
  schemas); the only kinds without a bundled schema are the expected CRD kinds;
- the node agent DaemonSet: host network, NET_ADMIN + NET_RAW only (not
  privileged, everything else dropped), tolerates every taint,
  system-node-critical, rolling update with maxUnavailable and no surge, no
  preStop hook, liveness /healthz and readiness /readyz on the metrics port,
  node name and host IP from the downward API, resources on every container,
  /run/vmoverlay and the CNI host paths mounted, the CNI installer as an init
  container;
- the agent's settings (ConfigMap + env) load through vxlan_manager.config with
  the defaults VNI 4242 / UDP 4789, and its command parses with its CLI;
- the IPAM Deployment: two replicas, leader election on with its Lease name,
  PodDisruptionBudget keeping one, non-root, probes on its metrics port, and
  its command parses with ipam-controller's CLI;
- Services select the pods and name their metrics port; every container runs
  the project's image at the project's version;
- the uninstall DaemonSet runs `vxlan-manager teardown` (as its CLI parses it)
  and the installer's uninstall in init containers on every node, with
  NET_ADMIN only, no API token, and the same host paths as the agent;
- the Multus example's CNI config is accepted by the plugin's own config parser
  and points at the shim name and kubeconfig path the installer writes.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import kubernetes_validate
import pytest

from tests.manifests.rendered import (
    KUBERNETES_VERSION,
    MANIFESTS,
    NAMESPACE,
    ROOT,
    SAMPLES,
    Obj,
    containers,
    find,
    load_docs,
    render,
    yaml_files,
)
from vmoverlay.metrics import parse_listen

# Kinds that come from CRDs: kubernetes-validate has no schema for them. Ours are
# checked by the lab API server (test_crds.py); the others belong to Multus and
# the Prometheus operator.
CRD_KINDS = {
    ("vmoverlay.io/v1alpha1", "IPPool"),
    ("vmoverlay.io/v1alpha1", "IPAllocation"),
    ("vmoverlay.io/v1alpha1", "VirtualMachine"),
    ("vmoverlay.io/v1alpha1", "VirtualMachineMigration"),
    ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
# Files kustomize does not install: examples, samples, the image build helpers,
# the optional monitoring add-on and the uninstall step.
NOT_INSTALLED = ("examples", "samples", "image", "overlays", "uninstall")


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(MANIFESTS)


@pytest.fixture(scope="module")
def monitoring() -> list[Obj]:
    return render(MANIFESTS / "overlays" / "monitoring")


def _version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


# ---------------------------------------------------------------- parse and render


@pytest.mark.parametrize(
    "path",
    yaml_files(MANIFESTS, SAMPLES),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_file_parses_into_named_objects(path: Any) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: object without apiVersion/kind"
        if doc["kind"] != "Kustomization":
            assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without a name"


def test_base_renders_everything_in_the_install_namespace(base: list[Obj]) -> None:
    kinds = {o["kind"] for o in base}
    assert {
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
    } <= kinds
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in base:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]
    assert find(base, "Namespace")["metadata"]["name"] == NAMESPACE


def test_monitoring_overlay_renders_service_monitors(monitoring: list[Obj]) -> None:
    names = {o["metadata"]["name"] for o in monitoring if o["kind"] == "ServiceMonitor"}
    assert names == {"vmoverlay-agent", "vmoverlay-ipam"}


def test_every_installable_file_is_reached_by_a_kustomization() -> None:
    reached = set()
    for kfile in MANIFESTS.rglob("kustomization.yaml"):
        (kust,) = load_docs(kfile)
        for entry in kust.get("resources") or []:
            target = (kfile.parent / entry).resolve()
            reached.add(target / "kustomization.yaml" if target.is_dir() else target)
    for path in yaml_files(MANIFESTS):
        rel = path.relative_to(MANIFESTS)
        if rel.parts[0] in NOT_INSTALLED or path == MANIFESTS / "kustomization.yaml":
            continue
        assert path.resolve() in reached, f"{rel} is in no kustomization's resources"


# ---------------------------------------------------------------- offline schema validation


def _validate(objs: list[Obj]) -> list[tuple[str, str]]:
    """Validate each object strictly; return the (apiVersion, kind) pairs without a schema."""
    unknown = []
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.append((obj["apiVersion"], obj["kind"]))
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    return unknown


def test_rendered_objects_validate_against_kubernetes_schemas(
    base: list[Obj], monitoring: list[Obj]
) -> None:
    unknown = _validate(base + monitoring)
    assert set(unknown) <= CRD_KINDS


def test_examples_and_samples_validate_against_kubernetes_schemas() -> None:
    dirs = (MANIFESTS / "examples", MANIFESTS / "samples", MANIFESTS / "uninstall")
    docs = [d for p in yaml_files(*dirs) for d in load_docs(p)]
    unknown = _validate(docs)
    assert set(unknown) <= CRD_KINDS


def test_validator_rejects_a_broken_object(base: list[Obj]) -> None:
    # The validator really looks: an unknown field in the DaemonSet is an error.
    ds = find(base, "DaemonSet")
    broken = {**ds, "spec": {**ds["spec"], "replicas": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------- node agent


def _agent(base: list[Obj]) -> tuple[Obj, Obj]:
    ds = find(base, "DaemonSet", "vmoverlay-agent")
    spec = ds["spec"]["template"]["spec"]
    (agent,) = [c for c in spec["containers"] if c["name"] == "agent"]
    return ds, agent


def test_agent_is_host_network_with_two_capabilities_only(base: list[Obj]) -> None:
    ds, agent = _agent(base)
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert not spec.get("hostPID") and not spec.get("hostIPC")
    sc = agent["securityContext"]
    assert sc.get("privileged") in (None, False)
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    for c in containers(spec):
        csc = c["securityContext"]
        assert "ALL" in csc["capabilities"]["drop"], c["name"]
        assert not csc.get("privileged"), c["name"]
        assert set(csc["capabilities"].get("add") or []) <= {"NET_ADMIN", "NET_RAW"}, c["name"]
        if c["name"] != "agent":
            assert not csc["capabilities"].get("add"), f"{c['name']} needs no capability"


def test_agent_rolls_one_node_at_a_time_without_teardown(base: list[Obj]) -> None:
    ds, _ = _agent(base)
    strategy = ds["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 1
    assert strategy["rollingUpdate"].get("maxSurge", 0) == 0
    for c in containers(ds["spec"]["template"]["spec"]):
        assert "preStop" not in (c.get("lifecycle") or {}), f"{c['name']} has a preStop hook"
        assert "teardown" not in " ".join(c.get("command", []) + c.get("args", []))


def test_agent_probes_and_downward_api(base: list[Obj]) -> None:
    _, agent = _agent(base)
    (port,) = agent["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", 9464)
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = {e["name"]: e for e in agent["env"]}
    assert env["VMOVERLAY_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["VMOVERLAY_HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["VMOVERLAY_METRICS_ADDR"]["value"] == "$(VMOVERLAY_HOST_IP):9464"


def test_every_container_has_requests_and_limits(base: list[Obj]) -> None:
    for kind in ("DaemonSet", "Deployment"):
        for c in containers(find(base, kind)["spec"]["template"]["spec"]):
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), c["name"]
            assert {"cpu", "memory"} <= set(res["limits"]), c["name"]


def test_agent_mounts_state_and_cni_host_paths(base: list[Obj]) -> None:
    ds, agent = _agent(base)
    spec = ds["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host == {
        "cni-bin": "/opt/cni/bin",
        "cni-bundle": "/opt/vmoverlay/cni",
        "cni-conf": "/etc/cni/net.d/vmoverlay.d",
        "state": "/run/vmoverlay",
    }
    assert {"name": "state", "mountPath": "/run/vmoverlay"} in agent["volumeMounts"]
    (init,) = spec["initContainers"]
    assert init["command"] == ["/opt/vmoverlay/bin/install-cni", "install"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    root = next(e["value"] for e in init["env"] if e["name"] == "VMOVERLAY_HOST_ROOT")
    for name, path in mounts.items():
        assert path == root + host[name], f"{name} is mounted at {path}, not under {root}"


def _agent_env(base: list[Obj], agent: Obj) -> dict[str, str]:
    """The environment the agent process sees, with downward-API values filled in."""
    env: dict[str, str] = {}
    for src in agent.get("envFrom") or []:
        cm = find(base, "ConfigMap", src["configMapRef"]["name"])
        env.update(cm["data"])
    fake = {"spec.nodeName": "worker-1", "status.hostIP": "198.18.0.11"}
    for e in agent["env"]:
        if "valueFrom" in e:
            env[e["name"]] = fake[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"])
    return env


def test_agent_settings_load_through_the_agents_config(base: list[Obj]) -> None:
    from vxlan_manager.cli import build_parser
    from vxlan_manager.config import ENV_KEYS, load_config

    _, agent = _agent(base)
    env = _agent_env(base, agent)
    ours = {k for k in env if k.startswith("VMOVERLAY_") and k != "VMOVERLAY_HOST_IP"}
    assert ours <= set(ENV_KEYS), f"unknown to the agent: {sorted(ours - set(ENV_KEYS))}"
    cfg = load_config(flags={}, env=env)
    assert (cfg.node, cfg.vni, cfg.port, cfg.mtu) == ("worker-1", 4242, 4789, None)
    assert cfg.metrics_addr == "198.18.0.11:9464"
    assert cfg.state_dir == "/run/vmoverlay"
    command = agent["command"][1:] + agent.get("args", [])
    assert agent["command"][0] == "vxlan-manager"
    assert build_parser().parse_args(command).command == "run"


# ---------------------------------------------------------------- IPAM controller


def test_ipam_is_two_leader_elected_replicas_with_a_budget(base: list[Obj]) -> None:
    from ipam.cli import LEASE_NAME, build_parser

    dep = find(base, "Deployment", "vmoverlay-ipam")
    assert dep["spec"]["replicas"] == 2
    spec = dep["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    (ctr,) = spec["containers"]
    assert ctr["command"][0] == "ipam-controller"
    env = {e["name"]: "vmoverlay-ipam-abc-123" for e in ctr["env"]}
    env["POD_NAMESPACE"] = NAMESPACE
    argv = [
        re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a)
        for a in ctr["command"][1:] + ctr["args"]
    ]
    args = build_parser().parse_args(argv)
    assert args.command == "run" and args.leader_elect is True
    assert (args.lease_namespace, args.lease_name) == (NAMESPACE, LEASE_NAME)
    assert args.identity == "vmoverlay-ipam-abc-123"
    (port,) = ctr["ports"]
    assert port["containerPort"] == 9465 == parse_listen(args.metrics_addr)[1]
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    pdb = find(base, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= spec_labels(dep).items()
    assert 0 < pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]


def spec_labels(workload: Obj) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def test_services_select_their_pods_by_named_port(base: list[Obj]) -> None:
    workloads = [find(base, "DaemonSet"), find(base, "Deployment")]
    for svc in (o for o in base if o["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        (target,) = [w for w in workloads if sel.items() <= spec_labels(w).items()]
        port_names = {
            p["name"]
            for c in target["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, svc["metadata"]["name"]


def test_every_container_runs_the_project_image_at_its_version(base: list[Obj]) -> None:
    want = f"vmoverlay:{_version()}"
    for kind in ("DaemonSet", "Deployment"):
        for c in containers(find(base, kind)["spec"]["template"]["spec"]):
            assert c["image"] == want, f"{c['name']}: {c['image']} is not {want}"


# ---------------------------------------------------------------- Multus example


def test_multus_example_config_is_accepted_by_the_plugin() -> None:
    import json

    from cni.config import parse_netconf

    docs = load_docs(MANIFESTS / "examples" / "vm-l2-network.yaml")
    nad = next(d for d in docs if d["kind"] == "NetworkAttachmentDefinition")
    conf = parse_netconf(json.loads(nad["spec"]["config"]))
    assert conf.mode == "vm-l2"
    installer = (MANIFESTS / "image" / "install-cni.sh").read_text()
    assert f"SHIM=/opt/cni/bin/{conf.type}\n" in installer
    assert conf.kubeconfig == "/etc/cni/net.d/vmoverlay.d/vmoverlay.kubeconfig"
    assert "CONF=/etc/cni/net.d/vmoverlay.d\n" in installer
    pod = next(d for d in docs if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == nad["metadata"]["name"]
    assert "vmoverlay.io/vm" in pod["metadata"]["annotations"]


# ---------------------------------------------------------------- uninstall


def test_teardown_daemonset_cleans_every_node_without_api_access(base: list[Obj]) -> None:
    from vxlan_manager.cli import build_parser

    (ds,) = load_docs(MANIFESTS / "uninstall" / "teardown.yaml")
    assert ds["metadata"]["namespace"] == NAMESPACE
    spec = ds["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["hostNetwork"] is True and spec["tolerations"] == [{"operator": "Exists"}]
    teardown, remove_cni = spec["initContainers"]
    assert build_parser().parse_args(teardown["command"][1:]).command == "teardown"
    assert teardown["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert remove_cni["command"] == ["/opt/vmoverlay/bin/install-cni", "uninstall"]
    agent_ds = find(base, "DaemonSet", "vmoverlay-agent")
    agent_volumes = agent_ds["spec"]["template"]["spec"]["volumes"]
    agent_host = {v["hostPath"]["path"] for v in agent_volumes if "hostPath" in v}
    assert {v["hostPath"]["path"] for v in spec["volumes"]} == agent_host
    for c in containers(spec):
        assert c["image"] == f"vmoverlay:{_version()}", c["name"]
