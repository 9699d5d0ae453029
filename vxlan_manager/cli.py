"""``vxlan-manager``: the node agent's command line.

    vxlan-manager run --node NAME [--kubeconfig PATH] [--underlay-address IP |
                      --underlay-interface IF] [--vni N] [--port N] [--mtu N]
                      [--metrics-addr HOST:PORT] [--log-format json]
    vxlan-manager teardown --node NAME      (uninstall: removes only what the agent owns)
    vxlan-manager check [--cluster] [--json] (fabric health; see vxlan_manager/health/cli.py)

``run`` never tears the data plane down: SIGTERM/SIGINT stop the agent and
leave devices and entries in place, so a pod restart does not cut traffic.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING

from vmoverlay import kube
from vmoverlay.logs import StructLogger, add_logging_args, get_logger, setup_logging
from vmoverlay.signals import StopSignals
from vxlan_manager.config import (
    DEFAULT_BRIDGE,
    DEFAULT_DEVICE,
    DEFAULT_METRICS_ADDR,
    DEFAULT_PORT,
    DEFAULT_RESYNC,
    DEFAULT_STATE_DIR,
    DEFAULT_VNI,
    AgentConfig,
    ConfigError,
    load_config,
)
from vxlan_manager.netlink import Collision, NetlinkFailure

if TYPE_CHECKING:
    from vxlan_manager.agent import Agent

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_COLLISION = 3
EXIT_KERNEL = 4

EPILOG = f"""\
exit codes:
  {EXIT_OK}  stopped by SIGTERM/SIGINT (data plane left up), or teardown done
  {EXIT_ERROR}  unexpected error (see the log)
  {EXIT_CONFIG}  bad configuration or command line (the message names the key), or no
     usable kubeconfig, or the metrics address cannot be bound
  {EXIT_COLLISION}  refused: the configuration collides with another VXLAN device (for
     example flannel.1 on the same VNI and UDP port); nothing was created
  {EXIT_KERNEL}  the kernel refused an operation (not root / no CAP_NET_ADMIN, no vxlan
     support)

configuration sources, later wins: --config FILE (YAML or JSON, keys as the long
options with - or _), environment (VMOVERLAY_NODE_NAME or NODE_NAME, VMOVERLAY_VNI,
VMOVERLAY_PORT, VMOVERLAY_DEVICE, VMOVERLAY_BRIDGE, VMOVERLAY_UNDERLAY_ADDRESS,
VMOVERLAY_UNDERLAY_INTERFACE, VMOVERLAY_MTU, VMOVERLAY_LEARNING,
VMOVERLAY_RESYNC_PERIOD, VMOVERLAY_METRICS_ADDR, VMOVERLAY_STATE_DIR, KUBECONFIG),
then flags.

endpoints on --metrics-addr: /metrics (Prometheus), /healthz, /readyz (devices
built and first sync done), /status (JSON: config, underlay, device, peers, FDB).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vxlan-manager",
        description="vmoverlay node agent: builds and keeps this node's VXLAN overlay "
        "(device, bridge, FDB entries for peers and VMs).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the agent (foreground)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(run)
    run.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, else in-cluster)")
    run.add_argument("--vni", type=int, help=f"VXLAN network identifier (default {DEFAULT_VNI})")
    run.add_argument("--port", type=int, help=f"VXLAN UDP port (default {DEFAULT_PORT})")
    ul = run.add_mutually_exclusive_group()
    ul.add_argument(
        "--underlay-address", help="VTEP address (default: node's vtep-ip annotation or InternalIP)"
    )
    ul.add_argument("--underlay-interface", help="take the VTEP address from this interface")
    run.add_argument(
        "--mtu", type=int, help="overlay MTU (default: underlay MTU - 50 IPv4 / - 70 IPv6)"
    )
    learning = run.add_mutually_exclusive_group()
    learning.add_argument(
        "--learning",
        dest="learning",
        action="store_true",
        default=None,
        help="let the VXLAN device learn remote MACs",
    )
    learning.add_argument(
        "--no-learning", dest="learning", action="store_false", help="static FDB only (default)"
    )
    run.add_argument(
        "--resync-period",
        type=float,
        help=f"seconds between full resyncs (default {DEFAULT_RESYNC:g})",
    )
    run.add_argument(
        "--metrics-addr", help=f"HOST:PORT for metrics and probes (default {DEFAULT_METRICS_ADDR})"
    )
    run.add_argument(
        "--no-announce",
        dest="announce",
        action="store_false",
        default=None,
        help="do not send gratuitous ARP/NA for arriving VMs",
    )

    down = sub.add_parser(
        "teardown",
        help="remove the agent's devices and entries (uninstall); leaves flannel.1 and others",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(down)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--node", help="this node's Kubernetes name (env VMOVERLAY_NODE_NAME / NODE_NAME)"
    )
    p.add_argument("--config", help="YAML or JSON config file (env VMOVERLAY_CONFIG)")
    p.add_argument("--device", help=f"VXLAN device name (default {DEFAULT_DEVICE})")
    p.add_argument("--bridge", help=f"bridge name (default {DEFAULT_BRIDGE})")
    p.add_argument(
        "--state-dir", help=f"where the ownership record lives (default {DEFAULT_STATE_DIR})"
    )
    add_logging_args(p)


FLAG_KEYS = (
    "node",
    "device",
    "bridge",
    "state_dir",
    "kubeconfig",
    "vni",
    "port",
    "underlay_address",
    "underlay_interface",
    "mtu",
    "learning",
    "resync_period",
    "metrics_addr",
    "announce",
)


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["check"]:  # fabric health check
        from vxlan_manager.health.cli import main as check_main

        return check_main((sys.argv[1:] if argv is None else argv)[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        setup_logging(fmt=args.log_format, level=args.log_level)
    except ValueError as exc:
        print(f"vxlan-manager: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    log = get_logger("vxlan-manager")
    flags = {k: getattr(args, k, None) for k in FLAG_KEYS}
    try:
        cfg = load_config(flags=flags, config_file=args.config)
    except ConfigError as exc:
        log.error("invalid configuration", error=str(exc))
        return EXIT_CONFIG
    try:
        if args.command == "teardown":
            return teardown(cfg)
        return run(cfg)
    except Collision as exc:
        log.error("refused: configuration collides with another device", error=str(exc))
        return EXIT_COLLISION
    except (kube.KubeError, ConfigError) as exc:
        log.error("cannot start", error=str(exc))
        return EXIT_CONFIG
    except (NetlinkFailure, PermissionError) as exc:
        log.error("the kernel refused", error=str(exc), hint="run as root / with CAP_NET_ADMIN")
        return EXIT_KERNEL
    except Exception:  # the one top-level place that reports anything else
        log.exception("vxlan-manager failed")
        return EXIT_ERROR


class StopRequest:
    """What SIGTERM/SIGINT do: remember the request; stop the agent once it exists.

    Called from :class:`vmoverlay.signals.StopSignals`' thread, never from the
    signal handler itself: stopping sets Events and logs, which from a handler
    could deadlock on a lock the interrupted main thread holds.
    """

    def __init__(self, log: StructLogger) -> None:
        self.log = log
        self._lock = threading.Lock()
        self._agent: Agent | None = None
        self.requested = False

    def attach(self, agent: Agent) -> None:
        with self._lock:
            self._agent, requested = agent, self.requested
        if requested:
            agent.stop()

    def __call__(self, sig: signal.Signals) -> None:
        with self._lock:
            again, self.requested, agent = self.requested, True, self._agent
        if again:
            self.log.info("already stopping", signal=sig.name)
        else:
            self.log.info("stopping; the data plane stays up", signal=sig.name)
        if agent is not None:
            agent.stop()


def run(cfg: AgentConfig) -> int:
    from vxlan_manager.agent import Agent
    from vxlan_manager.health.service import HealthService

    log = get_logger("vxlan-manager", node=cfg.node)
    stop = StopRequest(log)
    signals = StopSignals(stop).install()  # first: a SIGTERM during start-up still exits 0
    try:
        client = kube.load_client(cfg.kubeconfig)
        agent = Agent(cfg, client=client, logger=log)
        try:
            server = agent.serve()
        except OSError as exc:
            raise ConfigError(
                f"failed to listen on metrics address {cfg.metrics_addr}: {exc.strerror}"
            ) from exc
        nodes, vms = (lambda: list(agent.nodes.values())), (lambda: list(agent.vms.values()))
        health = HealthService(cfg, agent.metrics.registry, nodes=nodes, vms=vms)
        health.serve(server, status=agent.status)  # GET /health; "probes" in /status
        host, port = server.address
        log.info(
            "vxlan-manager starting",
            vni=cfg.vni,
            port=cfg.port,
            device=cfg.device,
            bridge=cfg.bridge,
            metrics=f"{host}:{port}",
            underlay=cfg.underlay_address or cfg.underlay_interface or "from Node object",
        )
        stop.attach(agent)
        try:
            health.start()  # the prober thread
            agent.run()
        finally:
            health.stop()  # each stop below waits a bounded time
            server.stop()
    finally:
        signals.close()
    return EXIT_OK


def teardown(cfg: AgentConfig) -> int:
    from vxlan_manager.dataplane import Dataplane
    from vxlan_manager.netlink import Kernel

    kernel = Kernel()
    try:
        removed = Dataplane(kernel, state_file=cfg.state_file).teardown(cfg.device, cfg.bridge)
    finally:
        kernel.close()
    print("removed: " + (", ".join(removed) if removed else "nothing (no device of ours found)"))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
