"""The health side of the node agent: the prober thread and the ``/health`` endpoint.

The agent owns the Node and VM caches and the metrics server; this service
borrows them through callables, so wiring it in takes three lines::

    health = HealthService(cfg, agent.metrics.registry,
                           nodes=lambda: list(agent.nodes.values()),
                           vms=lambda: list(agent.vms.values()))
    health.serve(server, status=agent.status)  # GET /health; /status gains "probes"
    health.start()         # the prober thread; health.stop() on shutdown

``/health`` runs the node check (:func:`.checks.check_node`) against the
kernel as it is now, with the prober's latest results, and returns the report
in the stable JSON schema of :mod:`.findings`. ``vxlan-manager check`` reads
it for probe results, ``check --cluster`` for every node's whole report.

Settings (environment, so the agent's own configuration stays untouched):
``VMOVERLAY_PROBE_POOL`` (default 198.18.255.0/24), ``VMOVERLAY_PROBE_PERIOD``
seconds (default 10), ``VMOVERLAY_PROBE_TIMEOUT`` seconds (default 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from pyroute2 import IPRoute

from vmoverlay import api
from vmoverlay.logs import StructLogger, get_logger
from vmoverlay.metrics import HealthServer
from vxlan_manager.config import AgentConfig, ConfigError
from vxlan_manager.health.checks import check_node
from vxlan_manager.health.findings import Finding, Report, Severity
from vxlan_manager.health.observe import observe_node
from vxlan_manager.health.probe import (
    DEFAULT_PERIOD,
    DEFAULT_PROBE_POOL,
    DEFAULT_TIMEOUT,
    Prober,
    stale_after,
)

HEALTH_PATH = "/health"


@dataclass(frozen=True)
class ProbeSettings:
    pool: str = DEFAULT_PROBE_POOL
    period: float = DEFAULT_PERIOD
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProbeSettings:
        env = os.environ if env is None else env
        try:
            return cls(
                pool=env.get("VMOVERLAY_PROBE_POOL") or DEFAULT_PROBE_POOL,
                period=float(env.get("VMOVERLAY_PROBE_PERIOD") or DEFAULT_PERIOD),
                timeout=float(env.get("VMOVERLAY_PROBE_TIMEOUT") or DEFAULT_TIMEOUT),
            )
        except ValueError as exc:
            raise ConfigError(f"bad VMOVERLAY_PROBE_* setting: {exc}") from exc


class HealthService:
    def __init__(
        self,
        cfg: AgentConfig,
        registry: CollectorRegistry | None,
        *,
        nodes: Callable[[], Sequence[api.Node]],
        vms: Callable[[], Sequence[api.VirtualMachine]],
        settings: ProbeSettings | None = None,
        logger: StructLogger | None = None,
    ) -> None:
        self.cfg = cfg
        self.settings = settings or ProbeSettings.from_env()
        self._nodes, self._vms = nodes, vms
        self.log = logger or get_logger("vxlan-manager", node=cfg.node)
        self.prober = Prober(
            cfg.node,
            bridge=cfg.bridge,
            nodes=nodes,
            mtu=self._bridge_mtu,
            registry=registry,
            pool=self.settings.pool,
            period=self.settings.period,
            timeout=self.settings.timeout,
            logger=self.log,
        )

    def serve(
        self, server: HealthServer, *, status: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        """Add ``/health``; with ``status`` (the agent's), ``/status`` gains a ``probes`` key."""
        server.add_json_route(HEALTH_PATH, self.report_dict)
        if status is not None:
            server.add_json_route("/status", lambda: {**status(), "probes": self.probe_status()})

    def probe_status(self) -> dict[str, Any]:
        """The prober's view for the agent's ``/status``: address, period, last results."""
        return {
            "probe_ip": self.prober.probe_ip,
            "pool": self.settings.pool,
            "period_seconds": self.settings.period,
            "timeout_seconds": self.settings.timeout,
            "problems": list(self.prober.problems),
            "peers": [r.to_dict() for r in self.prober.results()],
        }

    def start(self) -> HealthService:
        self.prober.start()
        return self

    def stop(self) -> None:
        self.prober.stop()

    def report(self) -> Report:
        """This node's check now: the kernel as it is, the latest probe round."""
        observed = observe_node(self.cfg)
        report = check_node(
            self.cfg,
            observed,
            self._nodes(),
            self._vms(),
            self.prober.results(),
            probe_max_age=stale_after(self.settings.period, self.settings.timeout),
        )
        report.findings.extend(
            Finding(
                Severity.DEGRADED,
                self.cfg.node,
                "probe.address",
                problem,
                "set the annotation, or choose another VMOVERLAY_PROBE_POOL",
            )
            for problem in self.prober.problems
        )
        return report

    def report_dict(self) -> dict[str, Any]:
        return self.report().to_dict()

    def _bridge_mtu(self) -> int | None:
        """The MTU VMs use on this node: the bridge's, as the kernel has it now."""
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.cfg.bridge)
            if not found:
                return None
            return int(ipr.get_links(found[0])[0].get_attr("IFLA_MTU"))
