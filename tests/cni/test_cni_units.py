"""The CNI plugin's pure parts, no kernel and no API needed.

Scenarios:
- config: defaults applied; each malformed config maps to its spec code (6 bad JSON,
  1 unknown cniVersion, 7 missing/ill-typed field, 2 unsupported mode value);
- environment: missing CNI_COMMAND / CNI_CONTAINERID / CNI_IFNAME / CNI_NETNS give 4,
  DEL does not need CNI_NETNS, CNI_ARGS parses and rejects items without '=';
- stdout carries only the result: Python and C-level writes to stdout go to stderr;
- the reply version is the config's when supported, else the latest;
- the host port name is stable per (container, ifname), 15 characters, and differs
  per interface; the alias round-trips and foreign aliases are ignored;
- the VM of a pod comes from its annotation, else a VirtualMachine owner;
- results have the spec's shape per version (0.4.0 ip versions, 1.1.0 MTU) and CHECK
  reads them back; a prevResult without the interface is error 7;
- drift between wanted and actual attachment is reported readably;
- anti-spoofing rules: MAC check first, ARP and IP only for the VM's address (IPv4
  or IPv6), the gate only for gated ports, no final drop without anti-spoofing.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest

from cni import antispoof, config, errors, link, result, vm
from cni.errors import CNIError
from cni.main import version_reply

GOOD = {"cniVersion": "1.1.0", "name": "vmoverlay", "type": "vmoverlay"}


def code_of(fn, *args):  # type: ignore[no-untyped-def]
    with pytest.raises(CNIError) as info:
        fn(*args)
    return info.value.code


def test_config_defaults() -> None:
    conf = config.parse_netconf(dict(GOOD))
    assert conf.bridge == "vmo-br0"
    assert conf.mtu is None
    assert conf.anti_spoof is True
    assert conf.mode == "pod"
    assert conf.timeout == config.DEFAULT_TIMEOUT
    assert conf.valid_attachments is None


def test_config_values_parsed() -> None:
    raw = {
        **GOOD,
        "bridge": "br9",
        "mtu": 1400,
        "timeout": 0.5,
        "antiSpoof": False,
        "mode": "vm-l2",
        "kubeconfig": "/k",
        "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth1"}],
    }
    conf = config.parse_netconf(raw)
    assert (conf.bridge, conf.mtu, conf.timeout, conf.anti_spoof, conf.mode) == (
        "br9",
        1400,
        0.5,
        False,
        "vm-l2",
    )
    assert conf.valid_attachments == (config.Attachment("c1", "eth1"),)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"cniVersion": "1.0.0", "name": "vmo', errors.DECODE_FAILURE),
        (b"[1, 2]", errors.DECODE_FAILURE),
        (b"\xff\xfe", errors.DECODE_FAILURE),
    ],
)
def test_undecodable_config_is_6(data: bytes, code: int) -> None:
    assert code_of(config.decode, data) == code


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"cniVersion": "9.9.9"}, errors.INCOMPATIBLE_VERSION),
        ({"cniVersion": None}, errors.INVALID_CONFIG),
        ({"name": None}, errors.INVALID_CONFIG),
        ({"type": None}, errors.INVALID_CONFIG),
        ({"name": "bad name"}, errors.INVALID_CONFIG),
        ({"mtu": "1400"}, errors.INVALID_CONFIG),
        ({"mtu": 1400.5}, errors.INVALID_CONFIG),
        ({"mtu": 20}, errors.INVALID_CONFIG),
        ({"antiSpoof": "yes"}, errors.INVALID_CONFIG),
        ({"timeout": -1}, errors.INVALID_CONFIG),
        ({"timeout": True}, errors.INVALID_CONFIG),
        ({"bridge": "a-bridge-name-too-long"}, errors.INVALID_CONFIG),
        ({"mode": "macvtap"}, errors.UNSUPPORTED_FIELD),
        ({"cni.dev/valid-attachments": [{"ifname": "eth0"}]}, errors.INVALID_CONFIG),
    ],
)
def test_bad_config_codes(change: dict[str, object], code: int) -> None:
    raw = {**GOOD, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    assert code_of(config.parse_netconf, raw) == code


def test_unsupported_field_message_names_key_and_value() -> None:
    with pytest.raises(CNIError) as info:
        config.parse_netconf({**GOOD, "mode": "macvtap"})
    assert "mode" in info.value.msg and "macvtap" in info.value.msg


ADD_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c0ffee",
    "CNI_NETNS": "/var/run/netns/x",
    "CNI_IFNAME": "eth1",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=db;K8S_POD_NAME=pg-0",
}


def test_env_parsed() -> None:
    env = config.parse_env(ADD_ENV)
    assert (env.command, env.container_id, env.ifname) == ("ADD", "c0ffee", "eth1")
    assert (env.pod_namespace, env.pod_name) == ("db", "pg-0")


@pytest.mark.parametrize(
    ("drop", "override"),
    [
        ("CNI_COMMAND", {}),
        ("CNI_CONTAINERID", {}),
        ("CNI_IFNAME", {}),
        ("CNI_NETNS", {}),
        ("", {"CNI_COMMAND": "RESET"}),
        ("", {"CNI_IFNAME": "a/b"}),
        ("", {"CNI_IFNAME": "x" * 16}),
        ("", {"CNI_CONTAINERID": "bad id"}),
        ("", {"CNI_ARGS": "K8S_POD_NAME"}),
    ],
)
def test_bad_env_is_4(drop: str, override: dict[str, str]) -> None:
    environ = {k: v for k, v in {**ADD_ENV, **override}.items() if k != drop}
    assert code_of(config.parse_env, environ) == errors.INVALID_ENV


def test_del_needs_no_netns() -> None:
    environ = {**ADD_ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}
    assert config.parse_env(environ).netns == ""


def test_reply_version() -> None:
    assert config.reply_version({"cniVersion": "0.4.0"}) == "0.4.0"
    assert config.reply_version({"cniVersion": "9.9.9"}) == config.LATEST_VERSION
    assert config.reply_version(None) == config.LATEST_VERSION
    reply = version_reply(b'{"cniVersion": "1.0.0"}')
    assert reply == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    assert version_reply(b"")["cniVersion"] == "1.1.0"


def test_log_file_choice() -> None:
    assert config.log_file({"logFile": "/tmp/a.log"}, {config.LOG_FILE_ENV: "/b"}) == "/tmp/a.log"
    assert config.log_file({}, {config.LOG_FILE_ENV: "/b"}) == "/b"
    assert config.log_file(None, {}) == config.DEFAULT_LOG_FILE


def test_host_port_name_is_stable_and_short() -> None:
    name = link.host_port_name("c0ffee", "eth1")
    assert name == link.host_port_name("c0ffee", "eth1")
    assert len(name) == 15 and name.startswith("vmo")
    assert name != link.host_port_name("c0ffee", "eth2")
    assert name != link.host_port_name("c0ffef", "eth1")
    assert config.interface_name_problem(name) == ""


def test_alias_round_trip() -> None:
    alias = link.port_alias("vmoverlay", "c0ffee", "eth1")
    assert link.parse_alias(alias) == ("vmoverlay", "c0ffee", "eth1")
    assert link.parse_alias("something else") is None
    assert link.parse_alias(None) is None
    assert link.parse_alias("vmoverlay-cni net=x") is None


def test_vm_of_pod() -> None:
    assert vm.vm_name_of({"metadata": {"annotations": {"vmoverlay.io/vm": "a"}}}) == "a"
    owned = {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs"},
                {"apiVersion": "other.io/v1", "kind": "VirtualMachine", "name": "foreign"},
                {"apiVersion": "vmoverlay.io/v1alpha1", "kind": "VirtualMachine", "name": "b"},
            ]
        }
    }
    assert vm.vm_name_of(owned) == "b"
    assert (
        vm.vm_name_of({"metadata": {"ownerReferences": owned["metadata"]["ownerReferences"][:2]}})
        is None
    )


def test_runner_pod_flags_migration_target() -> None:
    meta = {
        "namespace": "db",
        "name": "pg-0-target",
        "uid": "u1",
        "annotations": {"vmoverlay.io/vm": "pg-0", vm.MIGRATION_TARGET_ANNOTATION: "mig-1"},
    }
    pod = vm.runner_pod({"metadata": meta})
    assert (pod.vm_name, pod.uid, pod.migration_target) == ("pg-0", "u1", True)
    with pytest.raises(CNIError) as info:
        vm.runner_pod({"metadata": {"namespace": "db", "name": "web"}})
    assert info.value.code == errors.NOT_A_VM_POD


ATTACHED = result.Attached(
    host_name="vmo0123456789ab",
    host_mac="ee:00:00:00:00:01",
    ifname="eth1",
    mac="0a:00:00:00:00:02",
    mtu=1450,
    sandbox="/var/run/netns/pod",
    addresses=(ipaddress.ip_interface("198.19.0.7/16"),),
    gateway=ipaddress.ip_address("198.19.0.1"),
    default_route=True,
)


def test_result_shape_per_version() -> None:
    new = result.build("1.1.0", ATTACHED)
    assert new["interfaces"][1] == {
        "name": "eth1",
        "mac": "0a:00:00:00:00:02",
        "sandbox": "/var/run/netns/pod",
        "mtu": 1450,
    }
    assert "sandbox" not in new["interfaces"][0]
    assert new["ips"] == [{"address": "198.19.0.7/16", "interface": 1, "gateway": "198.19.0.1"}]
    assert new["routes"] == [{"dst": "0.0.0.0/0", "gw": "198.19.0.1"}]
    old = result.build("0.4.0", ATTACHED)
    assert old["ips"][0]["version"] == "4" and "mtu" not in old["interfaces"][1]
    assert "version" not in result.build("1.0.0", ATTACHED)["ips"][0]
    json.dumps(new)


def test_expected_from_prev_result() -> None:
    prev = result.build("1.1.0", ATTACHED)
    expected = result.expected_from(prev, "eth1")
    assert expected.mac == "0a:00:00:00:00:02" and expected.mtu == 1450
    assert expected.addresses == ATTACHED.addresses and expected.gateway == ATTACHED.gateway
    with pytest.raises(CNIError) as info:
        result.expected_from(prev, "eth9")
    assert info.value.code == errors.INVALID_CONFIG


def test_drift_is_readable() -> None:
    want = link.PortWant("eth1", "0a:00:00:00:00:02", 1450, ATTACHED.addresses, ATTACHED.gateway)
    have = link.PortHave(
        host_exists=True,
        host_master="vmo-br0",
        host_up=True,
        container_exists=True,
        mac="0a:00:00:00:00:02",
        mtu=1450,
        up=True,
        addresses={"198.19.0.7/16"},
        gateways={"198.19.0.1"},
    )
    assert link.port_drift(want, have, bridge="vmo-br0", host_name="vmoX") == []
    have.mac, have.mtu, have.addresses, have.host_master = "0a:00:00:00:00:09", 1500, set(), None
    problems = link.port_drift(want, have, bridge="vmo-br0", host_name="vmoX")
    assert "eth1 MAC 0a:00:00:00:00:09 vs expected 0a:00:00:00:00:02" in problems
    assert "eth1 MTU 1500 vs expected 1450" in problems
    assert any("lacks address 198.19.0.7/16" in p for p in problems)
    assert any("on no bridge" in p for p in problems)


def _policy(**kw: object) -> antispoof.PortPolicy:
    base: dict[str, object] = {
        "port": "vmo1",
        "mac": "0a:00:00:00:00:02",
        "ips": (ipaddress.ip_address("198.19.0.7"),),
    }
    return antispoof.PortPolicy(**{**base, **kw})  # type: ignore[arg-type]


def test_rules_anti_spoof_only() -> None:
    rules = antispoof.port_rules(_policy())
    text = json.dumps(rules)
    assert rules[0][0]["match"]["op"] == "!=" and rules[0][-1] == {"drop": None}
    assert '"saddr ip"}}, "right": "198.19.0.7"' in text
    assert antispoof.OPEN_SET not in text
    assert rules[-1] == [{"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]


def test_rules_gate_without_anti_spoof() -> None:
    rules = antispoof.port_rules(_policy(anti_spoof=False, gate=True))
    assert len(rules) == 2
    assert f"@{antispoof.OPEN_SET}" in json.dumps(rules[0]) and "add" in json.dumps(rules[0])
    assert rules[1][-1] == {"drop": None}
    assert antispoof.port_rules(_policy(anti_spoof=False)) == []
    assert not antispoof.needs_chain(_policy(anti_spoof=False))


def test_port_commands_are_one_transaction_for_one_port() -> None:
    commands = antispoof.port_commands(_policy())
    chains = [c["add"]["chain"]["name"] for c in commands if "chain" in c.get("add", {})]
    assert chains == ["prerouting", "port-vmo1"]
    assert commands[-1]["add"]["element"]["elem"] == [["vmo1", {"jump": {"target": "port-vmo1"}}]]
    without_set = antispoof.port_commands(_policy(), with_open_set=False)
    assert not any("set" in c.get("add", {}) for c in without_set)


def test_rules_ipv6_vm() -> None:
    rules = antispoof.port_rules(_policy(ips=(ipaddress.ip_address("2001:2::7"),)))
    text = json.dumps(rules)
    assert "saddr ip" not in text  # no IPv4 address: no ARP or IPv4 source allowed
    six = next(r for r in rules if '"ip6"' in json.dumps(r))
    allowed = six[0]["match"]["right"]["set"]
    assert "2001:2::7" in allowed and {"prefix": {"addr": "fe80::", "len": 10}} in allowed


def test_stdout_carries_only_the_result() -> None:
    script = (
        "import os, sys\n"
        "from cni.main import _emit, _reserve_stdout\n"
        "fd = _reserve_stdout()\n"
        "print('python noise')\n"
        "os.write(1, b'C-level noise\\n')\n"
        "_emit(fd, {'cniVersion': '1.1.0'})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(proc.stdout) == {"cniVersion": "1.1.0"}
    assert "python noise" in proc.stderr and "C-level noise" in proc.stderr
