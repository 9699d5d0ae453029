"""Unit tests of the agent's configuration and underlay choice.

Scenarios:
- defaults (VNI 4242, port 4789, vmo-vx0/vmo-br0, learning off, 60 s resync, 127.0.0.1:9464);
- precedence: file < environment < flags; YAML and JSON files; unknown keys refused;
- validation errors name the key: VNI range, port range, names (also the underlay
  interface's), MTU, missing node, bad address, metrics address not HOST:PORT or port > 65535;
- underlay: from the flag, from the interface, from the node's VTEP; MTU 1500 -> 1450
  (IPv4) / 1430 (IPv6), 9000 -> 8950, configured 1400 wins; address on no interface refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vxlan_manager.config import (
    AgentConfig,
    ConfigError,
    InterfaceInfo,
    load_config,
    netns_id,
    resolve_underlay,
)


def test_defaults() -> None:
    cfg = load_config(flags={"node": "a"}, env={})
    assert (cfg.vni, cfg.port, cfg.device, cfg.bridge) == (4242, 4789, "vmo-vx0", "vmo-br0")
    assert cfg.learning is False and cfg.resync_period == 60.0 and cfg.mtu is None
    assert cfg.metrics_addr == "127.0.0.1:9464"
    assert str(cfg.state_file) == f"/run/vmoverlay/agent-a-{netns_id()}.json"


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("vni: 100\nport: 5000\nlearning: true\nmtu: 1400\n")
    env = {"VMOVERLAY_VNI": "200", "VMOVERLAY_NODE_NAME": "n1"}
    cfg = load_config(flags={"port": 6000, "vni": None}, env=env, config_file=str(path))
    assert (cfg.node, cfg.vni, cfg.port, cfg.learning, cfg.mtu) == ("n1", 200, 6000, True, 1400)
    jpath = tmp_path / "agent.json"
    jpath.write_text('{"underlay-address": "198.18.0.4", "node": "x"}')
    assert (
        load_config(flags={}, env={"VMOVERLAY_CONFIG": str(jpath)}).underlay_address == "198.18.0.4"
    )


def test_unknown_key_in_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("vnii: 5\n")
    with pytest.raises(ConfigError, match="unknown key 'vnii'"):
        load_config(flags={"node": "a"}, env={}, config_file=str(path))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"vni": 0}, "vni 0 is out of range"),
        ({"vni": 1 << 24}, "out of range"),
        ({"port": 70000}, "port 70000 is out of range"),
        ({"device": "a-very-long-device-name"}, "device name"),
        ({"bridge": "vmo-vx0"}, "must differ"),
        ({"mtu": 500}, "mtu 500 is out of range"),
        ({"underlay_address": "198.18.0.300"}, "is not an IP address"),
        ({"vni": "abc"}, "vni: 'abc' is not a valid int"),
        ({"learning": "maybe"}, "learning"),
        ({"metrics_addr": "nonsense"}, "metrics_addr: listen address 'nonsense' is not HOST:PORT"),
        ({"metrics_addr": "127.0.0.1:99999"}, "metrics_addr: .*port 99999 is out of range"),
        ({"metrics_addr": "127.0.0.1:"}, "metrics_addr"),
        ({"underlay_interface": "eth0/x"}, "underlay_interface name"),
        ({"underlay_interface": "a-very-long-interface"}, "underlay_interface name"),
        ({"underlay_interface": ""}, "underlay_interface name"),
    ],
)
def test_validation_errors(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(flags={"node": "a", **flags}, env={})


def test_missing_node_says_how() -> None:
    with pytest.raises(ConfigError, match="--node"):
        load_config(flags={}, env={})


IFACES = [
    InterfaceInfo("lo", 1, 65536, ("127.0.0.1", "::1")),
    InterfaceInfo("eth0", 2, 1500, ("198.18.0.1", "fe80::1", "fd00:18::1")),
    InterfaceInfo("jumbo", 3, 9000, ("198.18.1.1",)),
]


def test_underlay_choice_and_mtu() -> None:
    cfg = AgentConfig(node="a")
    ul = resolve_underlay(cfg, node_vtep="198.18.0.1", interfaces=IFACES)
    assert (ul.address, ul.interface, ul.family, ul.mtu) == ("198.18.0.1", "eth0", 4, 1450)
    ul6 = resolve_underlay(cfg, node_vtep="fd00:18::1", interfaces=IFACES)
    assert (ul6.family, ul6.mtu) == (6, 1430)
    jumbo = resolve_underlay(cfg, node_vtep="198.18.1.1", interfaces=IFACES)
    assert jumbo.mtu == 8950
    fixed = resolve_underlay(
        AgentConfig(node="a", mtu=1400), node_vtep="198.18.0.1", interfaces=IFACES
    )
    assert fixed.mtu == 1400
    by_iface = resolve_underlay(
        AgentConfig(node="a", underlay_interface="jumbo"), node_vtep=None, interfaces=IFACES
    )
    assert by_iface.address == "198.18.1.1"
    by_flag = resolve_underlay(
        AgentConfig(node="a", underlay_address="198.18.1.1"),
        node_vtep="198.18.0.1",
        interfaces=IFACES,
    )
    assert by_flag.interface == "jumbo"


def test_underlay_errors() -> None:
    with pytest.raises(ConfigError, match="on no interface"):
        resolve_underlay(AgentConfig(node="a"), node_vtep="198.18.0.77", interfaces=IFACES)
    with pytest.raises(ConfigError, match="no underlay address"):
        resolve_underlay(AgentConfig(node="a"), node_vtep=None, interfaces=IFACES)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_underlay(
            AgentConfig(node="a", underlay_interface="eth9"), node_vtep=None, interfaces=IFACES
        )
    with pytest.raises(ConfigError, match="not on jumbo"):
        resolve_underlay(
            AgentConfig(node="a", underlay_interface="jumbo", underlay_address="198.18.0.1"),
            node_vtep=None,
            interfaces=IFACES,
        )
