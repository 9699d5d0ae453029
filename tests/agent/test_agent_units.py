"""Unit tests of the agent's smaller parts (no kernel, no API).

Scenarios:
- the incremental DesiredModel, fed a random sequence of node/VM updates and deletes,
  always equals desired_state() computed from scratch (including MAC clashes);
- the ownership journal: records replayed across restarts, a torn last line from a
  kill -9 ignored, a malformed earlier line refused with what to do, compaction;
- announcements: QEMU-like schedule (50 ms, +100 ms per round, 5 rounds), a gratuitous
  ARP frame for IPv4 and an unsolicited NA (override, target link-layer option) for IPv6;
- the CLI: --help documents every exit code and the lab's flags; a bad value exits 2
  naming the key; teardown without root fails cleanly;
- the agent's readiness and /status before any sync, and the relevance filter that keeps
  Node heartbeats from waking the reconciler.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from vmoverlay import api
from vxlan_manager import cli
from vxlan_manager.agent import Agent
from vxlan_manager.announce import Announcement, build_frame, schedule
from vxlan_manager.config import AgentConfig, Underlay
from vxlan_manager.desired import DesiredModel, DesiredState, FdbEntry, NeighEntry, desired_state
from vxlan_manager.state import OwnedState, OwnershipFile, StateError

UL = Underlay("198.18.0.1", "eth0", 4, 1500, 1450)


def _node(name: str, ip: str | None, ready: bool = True) -> api.Node:
    return api.Node.from_obj(
        {
            "metadata": {"name": name},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}] if ip else [],
                "conditions": [{"type": "Ready", "status": str(ready)}],
            },
        }
    )


def _vm(
    name: str, node: str | None, mac: str, ip: str, phase: str = "Running"
) -> api.VirtualMachine:
    status: dict[str, Any] = {
        "phase": phase,
        "network": {"ip": ip, "prefix": 16, "mac": mac, "pool": "p"},
    }
    if node:
        status["node"] = node
    return api.VirtualMachine.from_obj(
        {"metadata": {"namespace": "db", "name": name, "uid": name}, "status": status}
    )


def _same(a: DesiredState, b: DesiredState) -> bool:
    return (
        a.fdb == b.fdb
        and a.neighbours == b.neighbours
        and a.peers == b.peers
        and set(a.remote_vms) == set(b.remote_vms)
        and set(a.local_vms) == set(b.local_vms)
        and sorted(a.problems) == sorted(b.problems)
    )


@pytest.mark.parametrize("seed", range(5))
def test_incremental_model_equals_scratch(seed: int) -> None:
    rng = random.Random(seed)
    cfg = AgentConfig(node="n0")
    nets = ["198.19.0.0/24"]
    model = DesiredModel(cfg, UL, bridge_networks=nets)
    nodes: dict[str, api.Node] = {}
    vms: dict[str, api.VirtualMachine] = {}
    for _ in range(400):
        op = rng.random()
        if op < 0.25:
            name = f"n{rng.randrange(6)}"
            ip = rng.choice([f"198.18.0.{rng.randrange(1, 9)}", None, "2001:2::5"])
            nodes[name] = _node(name, ip, ready=rng.random() < 0.8)
            model.set_node(nodes[name])
        elif op < 0.35 and nodes:
            name = rng.choice(sorted(nodes))
            del nodes[name]
            model.delete_node(name)
        elif op < 0.85:
            name = f"vm{rng.randrange(12)}"
            vm = _vm(
                name,
                rng.choice([f"n{rng.randrange(7)}", None]),
                f"0a:00:00:00:00:{rng.randrange(8):02x}",  # clashes on purpose
                f"198.19.{rng.randrange(2)}.{rng.randrange(1, 250)}",
                phase=rng.choice(["Running", "Running", "Migrating", "Stopped"]),
            )
            vms[name] = vm
            model.set_vm(vm)
        elif vms:
            name = rng.choice(sorted(vms))
            vm = vms.pop(name)
            model.delete_vm(vm.key)
        scratch = desired_state(cfg, UL, nodes.values(), vms.values(), bridge_networks=nets)
        assert _same(model.state(), scratch)


def test_journal_replays_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "agent-a.json"
    journal = OwnershipFile(path)
    state = OwnedState(device="vmo-vx0", bridge="vmo-br0")
    journal.compact(state, force=True)
    a, b = FdbEntry("0a:00:00:00:00:01", "198.18.0.2"), FdbEntry("0a:00:00:00:00:02", "198.18.0.3")
    n = NeighEntry("198.19.0.5", "0a:00:00:00:00:01")
    journal.append(add_fdb=[a, b], add_neigh=[n])
    journal.append(del_fdb=[a])
    with path.open("a") as out:
        out.write('{"add_fdb": [["0a:00')  # kill -9 in the middle of an append
    loaded = OwnershipFile(path).load()
    assert (loaded.device, loaded.fdb, loaded.neighbours) == ("vmo-vx0", {b}, {n})

    compacted = OwnershipFile(path)
    compacted.load()
    compacted.compact(loaded, force=True)
    assert len(path.read_text().splitlines()) == 1
    assert OwnershipFile(path).load().fdb == {b}

    path.write_text('not json\n{"add_fdb": []}\n')
    with pytest.raises(StateError, match="line 1 is malformed.*remove the file"):
        OwnershipFile(path).load()
    assert OwnershipFile(tmp_path / "none.json").load().fdb == set()


def test_announce_schedule_and_frames() -> None:
    assert schedule() == [0.05, 0.2, 0.45, 0.8, 1.25]
    arp = build_frame(Announcement("db/pg-0", "198.19.0.7", "0a:00:00:00:00:07"))
    assert arp.dst == "ff:ff:ff:ff:ff:ff" and arp.src == "0a:00:00:00:00:07"
    assert (arp["ARP"].op, arp["ARP"].psrc, arp["ARP"].pdst, arp["ARP"].hwsrc) == (
        1,
        "198.19.0.7",
        "198.19.0.7",
        "0a:00:00:00:00:07",
    )
    na = build_frame(Announcement("db/pg-0", "2001:2::7", "0a:00:00:00:00:07"))
    assert na.dst == "33:33:00:00:00:01" and na["IPv6"].dst == "ff02::1" and na["IPv6"].hlim == 255
    adv = na["ICMPv6ND_NA"]
    assert (adv.tgt, adv.O, adv.S, adv.R) == ("2001:2::7", 1, 0, 0)
    assert na["ICMPv6NDOptDstLLAddr"].lladdr == "0a:00:00:00:00:07"


def test_cli_help_documents_exit_codes_and_lab_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in (
        "--node",
        "--kubeconfig",
        "--underlay-address",
        "--underlay-interface",
        "--vni",
        "--port",
        "--metrics-addr",
        "--log-format",
        "exit codes:",
        "3  refused",
    ):
        assert text in out


def test_cli_bad_value_exits_2_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--node", "a", "--vni", "0", "--log-format", "text"]) == cli.EXIT_CONFIG
    assert "vni 0 is out of range" in capsys.readouterr().err
    assert cli.main([]) == cli.EXIT_CONFIG
    assert cli.main(["run", "--log-format", "text"]) == cli.EXIT_CONFIG  # no node
    assert "--node" in capsys.readouterr().err


def test_agent_status_before_sync_and_heartbeat_filter(tmp_path: Path) -> None:
    agent = Agent(AgentConfig(node="a", state_dir=str(tmp_path)), client=k8s.ApiClient())
    try:
        ok, why = agent.readiness()
        assert not ok and "waiting for the first list" in why
        status = agent.status()
        assert (
            status["ready"] is False and status["config"]["vni"] == 4242 and status["peers"] == []
        )
        node = {
            "metadata": {"name": "b", "resourceVersion": "1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.2"}]},
        }
        agent._apply_event("nodes", "ADDED", node)
        assert len(agent._pending) == 1
        heartbeat = {**node, "metadata": {"name": "b", "resourceVersion": "2"}}
        agent._apply_event("nodes", "MODIFIED", heartbeat)
        assert len(agent._pending) == 1  # nothing that matters changed: no wake-up
        agent._apply_event("nodes", "DELETED", heartbeat)
        assert agent._pending[-1] == ("nodes", "b", None) and "b" not in agent.nodes
    finally:
        agent.kernel.close()
