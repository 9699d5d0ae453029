"""The agent-side health service, without root: settings, /status and /health routes.

Scenarios:
- VMOVERLAY_PROBE_* settings are read from the environment; a bad one is a ConfigError;
- serving with the agent's status adds a "probes" key to /status (address, pool, period,
  results) and keeps the agent's own keys;
- the prober's metrics are registered in the agent's registry under the documented names.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from vmoverlay import api
from vmoverlay.metrics import HealthServer
from vxlan_manager.config import AgentConfig, ConfigError
from vxlan_manager.health.findings import ProbeResult
from vxlan_manager.health.service import HealthService, ProbeSettings


def test_settings_from_env() -> None:
    assert ProbeSettings.from_env({}) == ProbeSettings("198.18.255.0/24", 10.0, 1.0)
    env = {"VMOVERLAY_PROBE_PERIOD": "2", "VMOVERLAY_PROBE_POOL": "198.18.254.0/24"}
    assert ProbeSettings.from_env(env) == ProbeSettings("198.18.254.0/24", 2.0, 1.0)
    with pytest.raises(ConfigError, match="VMOVERLAY_PROBE"):
        ProbeSettings.from_env({"VMOVERLAY_PROBE_TIMEOUT": "soon"})


def test_status_gains_probes_and_metrics_are_registered() -> None:
    registry = CollectorRegistry()
    nodes = [api.Node("a", "198.18.0.1", True), api.Node("b", "198.18.0.2", True)]
    service = HealthService(
        AgentConfig(node="a"),
        registry,
        nodes=lambda: nodes,
        vms=lambda: [],
        settings=ProbeSettings(period=5.0),
    )
    result = ProbeResult("a", "b", "198.18.255.2", True, 0.001, True, 1450)
    assert service.prober.metrics is not None
    service.prober.metrics.update([result])
    server = HealthServer(registry, "127.0.0.1:0")
    service.serve(server, status=lambda: {"node": "a", "ready": True})
    server.start()
    try:
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=5) as resp:
            status = json.loads(resp.read())
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
    finally:
        server.stop()
    assert (status["node"], status["ready"]) == ("a", True)
    assert status["probes"]["period_seconds"] == 5.0
    assert status["probes"]["pool"] == "198.18.255.0/24"
    assert status["probes"]["peers"] == []  # no round has run yet
    assert 'vmoverlay_peer_reachable{node="a",peer="b"} 1.0' in metrics
    assert 'vmoverlay_peer_mtu_ok{node="a",peer="b"} 1.0' in metrics
    assert 'vmoverlay_peer_rtt_seconds{node="a",peer="b"} 0.001' in metrics
