"""The shared core: typed views, allocation names, stable MACs, logging, error mapping.

Scenarios:
- a VirtualMachine dict with and without status.network parses to the right view;
- a Node's VTEP address comes from the annotation, else its InternalIP;
- allocation names are unique per address for IPv4 and IPv6;
- the MAC derived from a UID is stable, unicast, locally administered, and differs per UID;
- JSON log lines carry component and object fields; text lines are key=value;
- ApiException codes map to NotFound / Conflict / AlreadyExists / Gone / Invalid / Unavailable.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from vmoverlay import api, kube, logs
from vmoverlay.identity import is_local_unicast, mac_from_uid


def vm_obj(**status: object) -> dict[str, object]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.VM_KIND,
        "metadata": {"name": "pg-0", "namespace": "db", "uid": "u-1", "resourceVersion": "7"},
        "spec": {"pool": "default"},
        "status": status,
    }


def test_vm_view_without_network() -> None:
    vm = api.VirtualMachine.from_obj(vm_obj(phase="Pending"))
    assert vm.key == "db/pg-0"
    assert vm.network is None
    assert vm.phase == "Pending"
    assert vm.pool == "default"


def test_vm_view_with_network_round_trips() -> None:
    net = {"ip": "198.19.0.7", "prefix": 16, "mac": "0A:11:22:33:44:55", "mtu": 1450, "pool": "p"}
    vm = api.VirtualMachine.from_obj(vm_obj(node="n1", network=net))
    assert vm.node == "n1"
    assert vm.network is not None
    assert vm.network.mac == "0a:11:22:33:44:55"
    assert vm.network.to_dict() == {**net, "mac": "0a:11:22:33:44:55"}


def test_vm_view_rejects_incomplete_network() -> None:
    with pytest.raises(api.InvalidObject, match="status.network"):
        api.VirtualMachine.from_obj(vm_obj(network={"ip": "198.19.0.7"}))


def test_node_vtep_from_annotation_or_internal_ip() -> None:
    node = {
        "metadata": {"name": "n1"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "198.18.0.11"}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    assert api.Node.from_obj(node).vtep_ip == "198.18.0.11"
    assert api.Node.from_obj(node).ready
    node["metadata"] = {"name": "n1", "annotations": {api.VTEP_ANNOTATION: "198.18.1.11"}}
    assert api.Node.from_obj(node).vtep_ip == "198.18.1.11"


def test_allocation_names_are_unique_per_address() -> None:
    assert api.allocation_name("p", "198.19.0.7") != api.allocation_name("p", "198.19.0.70")
    assert api.allocation_name("p", "fd00::7") == "p-fd00--7"


def test_mac_from_uid_is_stable_and_local_unicast() -> None:
    a = mac_from_uid("uid-a")
    assert a == mac_from_uid("uid-a")
    assert a != mac_from_uid("uid-b")
    assert is_local_unicast(a)
    assert len({mac_from_uid(f"uid-{i}") for i in range(2000)}) == 2000
    with pytest.raises(ValueError, match="empty UID"):
        mac_from_uid("")


def test_json_log_lines_name_component_and_object() -> None:
    buf = io.StringIO()
    logs.setup_logging(fmt="json", stream=buf)
    logs.get_logger("ipam").bind(pool="default").info("allocated address", vm="db/pg-0", n=3)
    line = json.loads(buf.getvalue().strip())
    assert line["component"] == "ipam"
    assert line["msg"] == "allocated address"
    assert (line["vm"], line["pool"], line["n"]) == ("db/pg-0", "default", 3)


def test_text_log_lines_are_key_value() -> None:
    buf = io.StringIO()
    logs.setup_logging(fmt="text", stream=buf)
    logs.get_logger("vxlan-manager").warning("peer removed", node="n3", vtep="198.18.0.13")
    out = buf.getvalue()
    assert "WARNING" in out and "vxlan-manager" in out
    assert "node=n3 vtep=198.18.0.13" in out


def test_bad_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        logs.setup_logging(fmt="xml")


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        (404, "NotFound", kube.NotFound),
        (409, "Conflict", kube.Conflict),
        (409, "AlreadyExists", kube.AlreadyExists),
        (410, "Expired", kube.Gone),
        (422, "Invalid", kube.Invalid),
        (500, "InternalError", kube.Unavailable),
        (429, "TooManyRequests", kube.Unavailable),
    ],
)
def test_api_errors_are_translated(status: int, reason: str, kind: type) -> None:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "reason": reason, "message": "boom"})
    err = kube.translate(exc)
    assert type(err) is kind
    assert err.status == status
    assert "boom" in str(err)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "is a directory"),
        ("root:x:0:0:root:/root:/bin/bash\n", "no list of clusters"),
        ("clusters: [\n", "not valid YAML"),
        ("clusters: []\ncurrent-context: nowhere\n", "no Kubernetes configuration|not a usable"),
    ],
)
def test_bad_kubeconfig_files_give_clear_errors(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "kc"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    with pytest.raises(kube.KubeError, match=message):
        kube.load_client(str(path))


def test_missing_kubeconfig_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(kube.KubeError, match="does not exist"):
        kube.load_client(str(tmp_path / "nope"))
