"""``ipam-controller``: run the IPAM controller.

::

    ipam-controller run [--kubeconfig PATH] [--workers N] [--cooldown S] [--grace S]
                        [--resync S] [--sweep-interval S] [--no-leader-elect]
                        [--cluster-cidr CIDR ...] [--metrics-addr HOST:PORT]
                        [--log-format F] [--log-level L]

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 when the controller
cannot run (no API server, lost leadership), 2 for bad flags.

Test-only environment variables (never set them in production):
``VMOVERLAY_IPAM_TEST_COMMIT_DELAY`` (seconds between choosing an address and
creating its allocation), ``VMOVERLAY_IPAM_TEST_STATUS_DELAY`` (seconds between
creating it and writing the VM's status) and ``VMOVERLAY_IPAM_TEST_SWEEP_PAUSE``
(seconds between the leak sweeper's two lists).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any

from ipam.allocator import PoolInvalid, parse_network
from ipam.controller import ControllerConfig, IPAMController, default_identity
from ipam.leader import LeaseElector
from ipam.metrics import IPAMMetrics
from vmoverlay import kube
from vmoverlay.logs import StructLogger, add_logging_args, get_logger, setup_logging
from vmoverlay.metrics import HealthServer, parse_listen
from vmoverlay.signals import StopSignals

DEFAULT_METRICS_ADDR = "127.0.0.1:9465"
LEASE_NAME = "vmoverlay-ipam"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipam-controller", description="vmoverlay IPAM: one stable IP and MAC per VM"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="watch VMs and pools and allocate addresses")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or in-cluster)")
    run.add_argument("--workers", type=_positive_int, default=4, help="parallel workers (4)")
    run.add_argument(
        "--cooldown", type=_seconds, default=60.0, help="seconds before a freed address is reused"
    )
    run.add_argument(
        "--grace",
        type=_seconds,
        default=60.0,
        help="seconds an allocation must exist before the leak sweeper may free it (60)",
    )
    run.add_argument("--resync", type=_positive_seconds, default=300.0, help="full resync period")
    run.add_argument(
        "--sweep-interval", type=_positive_seconds, default=30.0, help="leak sweep period (30)"
    )
    run.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hold a coordination.k8s.io Lease so one replica serves (default on)",
    )
    run.add_argument(
        "--lease-namespace", default=os.environ.get("POD_NAMESPACE", "vmoverlay-system")
    )
    run.add_argument("--lease-name", default=LEASE_NAME)
    run.add_argument(
        "--lease-duration",
        type=_lease_seconds,
        default=15,
        help="seconds a standby waits for an unrenewed lease before taking over (15)",
    )
    run.add_argument("--identity", default=default_identity(), help="leader-election identity")
    run.add_argument(
        "--cluster-cidr",
        action="append",
        default=[],
        type=_cidr,
        metavar="CIDR",
        help="a cluster range no pool may overlap (pod, service, node network); repeatable",
    )
    run.add_argument("--metrics-addr", type=_listen, default=DEFAULT_METRICS_ADDR)
    add_logging_args(run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT or lost leadership; the exit code of the command."""
    log = get_logger("ipam")
    try:
        client = kube.load_client(args.kubeconfig)
    except kube.KubeError as exc:
        log.error(f"failed to load Kubernetes configuration: {exc}")
        return 1
    metrics = IPAMMetrics()
    controller = IPAMController(client, controller_config(args), metrics, log)
    elector = lease_elector(args, client, log) if args.leader_elect else None

    def ready() -> tuple[bool, str]:
        if controller.ready.is_set():
            return True, "serving"
        if elector is not None and not elector.leading.is_set():
            if not controller.synced():
                return False, "standby: filling caches"
            return True, f"standby: lease held by {elector.holder or 'nobody'}"
        return False, "rebuilding allocations"

    try:
        server = HealthServer(metrics.registry, args.metrics_addr, ready=ready).start()
    except OSError as exc:
        log.error(f"failed to listen on {args.metrics_addr}: {exc}; pick another --metrics-addr")
        return 1
    stop, lost, failed = threading.Event(), threading.Event(), threading.Event()
    signals = StopSignals(lambda _sig: stop.set()).install()
    host, port = server.address
    log.info("starting", metrics=f"{host}:{port}", leader_elect=elector is not None)

    if elector is not None:
        controller.watch()  # a standby keeps its caches and cool-downs warm
        elector.run(stop, on_lost=lambda: _set_all(lost, stop))
    if not stop.is_set():
        metrics.leader.set(1)
        threading.Thread(
            target=_start, args=(controller, stop, failed), name="controller-start", daemon=True
        ).start()
    stop.wait()

    controller.stop()
    if elector is not None:
        elector.release()
    server.stop()
    reason = "lost leadership" if lost.is_set() else "start-up failed" if failed.is_set() else ""
    log.info("stopped", reason=reason or "signal")
    signals.close()
    return 1 if reason else 0


def controller_config(args: argparse.Namespace) -> ControllerConfig:
    hooks = ControllerConfig.test_hooks_from_env()
    return ControllerConfig(
        workers=args.workers,
        cooldown=args.cooldown,
        grace=args.grace,
        resync=args.resync,
        sweep_interval=args.sweep_interval,
        cluster_cidrs=tuple(args.cluster_cidr),
        test_commit_delay=hooks["test_commit_delay"],
        test_status_delay=hooks["test_status_delay"],
        test_sweep_pause=hooks["test_sweep_pause"],
    )


def lease_elector(args: argparse.Namespace, client: Any, log: StructLogger) -> LeaseElector:
    return LeaseElector(
        client,
        name=args.lease_name,
        namespace=args.lease_namespace,
        identity=args.identity,
        log=log,
        lease_seconds=args.lease_duration,
        renew_seconds=args.lease_duration * 2 / 3,
        retry_seconds=args.lease_duration / 7.5,
    )


def _set_all(*events: threading.Event) -> None:
    for event in events:
        event.set()


def _start(controller: IPAMController, stop: threading.Event, failed: threading.Event) -> None:
    try:
        controller.serve()
    except kube.KubeError as exc:
        controller.log.error(f"failed to start the controller: {exc}; check the API server")
        failed.set()
        stop.set()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0 seconds")
    return value


def _lease_seconds(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value} is too short for a lease; use 2 or more")
    return value


def _cidr(text: str) -> str:
    try:
        return str(parse_network(text, what="cluster range").cidr)
    except PoolInvalid as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


if __name__ == "__main__":
    sys.exit(main())
