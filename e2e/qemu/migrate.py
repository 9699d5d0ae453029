"""Live migration of a QEMU guest between two runner namespaces, through QMP.

    target = start_target(source, image=image, netns="vmo-ab12cd-runner-b", tap="tap0",
                          workdir=Path("/tmp/pg-0-b"))
    result = migrate(source, target)     # MigrationError with QEMU's own message
    source.stop()                        # the source is left paused in 'postmigrate'
    print(result.downtime_ms, result.total_time_ms, result.ram_transferred_bytes)

The target is the source's exact command line plus ``-incoming unix:<path>``:
a unix socket is enough between two processes on one machine (network
namespaces do not separate the file system), so the migration stream needs no
network of its own and the overlay carries only the guest's traffic.

The figures in :class:`MigrationResult` are QEMU's own (``query-migrate`` on
the source once it reports ``completed``): total time, downtime (the
stop-and-copy pause the guest saw), RAM transferred. They sit beside the
client-observed blackout so the hypervisor's share of an interruption can be
told from the overlay's.

The announce after the switch-over is QEMU's own: the destination sends its
self-announce rounds (or has the guest send gratuitous ARPs where virtio-net
negotiated ``GUEST_ANNOUNCE``) as soon as it runs. :meth:`QMPClient.announce_self`
asks for more rounds if a caller wants them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from e2e.qemu.errors import MigrationError, QemuError, QMPError
from e2e.qemu.image import GuestImage
from e2e.qemu.vm import QemuVM
from vmoverlay.logs import get_logger

log = get_logger("lab").bind(part="qemu-migrate")

# QEMU 7.2 caps a migration at 32 MiB/s unless told otherwise; a unix socket on
# one machine takes far more, and a slower stream only lengthens the pre-copy.
DEFAULT_MAX_BANDWIDTH = 4 << 30
DEFAULT_DOWNTIME_LIMIT_MS = 300
FINAL_STATES = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class MigrationResult:
    """QEMU's own figures for one completed migration, plus the wall time we saw."""

    vm: str
    status: str
    total_time_ms: int
    downtime_ms: int
    setup_time_ms: int
    ram_transferred_bytes: int
    ram_total_bytes: int
    ram_mbps: float
    dirty_sync_count: int
    wall_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def incoming_uri(workdir: Path) -> str:
    return f"unix:{workdir / 'migrate.sock'}"


def start_target(
    source: QemuVM, *, image: GuestImage, netns: str, tap: str, workdir: Path
) -> QemuVM:
    """Start the destination QEMU in ``netns``, waiting for the source's state.

    Same configuration and acceleration as ``source`` (QEMU refuses a stream
    from a different machine), its own tap, serial log and QMP socket.
    """
    uri = incoming_uri(workdir)
    (workdir / "migrate.sock").unlink(missing_ok=True)
    return QemuVM.start(
        source.config,
        image=image,
        netns=netns,
        tap=tap,
        workdir=workdir,
        accel=source.accel,
        incoming=uri,
    )


def migrate(
    source: QemuVM,
    target: QemuVM,
    *,
    timeout: float = 180.0,
    poll_interval: float = 0.05,
    max_bandwidth: int = DEFAULT_MAX_BANDWIDTH,
    downtime_limit_ms: int = DEFAULT_DOWNTIME_LIMIT_MS,
    on_switchover: Callable[[], None] | None = None,
) -> MigrationResult:
    """Migrate ``source`` into ``target`` (started by :func:`start_target`); wait for it.

    ``on_switchover``, when given, runs at the start of the stop-and-copy phase:
    QEMU's ``pause-before-switchover`` capability holds the source there (vCPUs
    stopped) until the hook returns and ``migrate-continue`` lets it finish, as
    a VM controller that records the VM's new node at switch-over would. Keep
    the hook short: its time is downtime.

    Returns once QEMU reports ``completed`` and the target runs. Raises
    :class:`MigrationError` carrying QEMU's error when the migration fails, is
    cancelled, or does not finish within ``timeout`` (it is cancelled then).
    """
    name = source.config.name
    uri = _target_uri(target)
    _wait_listening(target, uri, timeout=30.0)
    source.qmp.execute(
        "migrate-set-parameters",
        {"max-bandwidth": max_bandwidth, "downtime-limit": downtime_limit_ms},
    )
    pause = {"capability": "pause-before-switchover", "state": on_switchover is not None}
    source.qmp.execute("migrate-set-capabilities", {"capabilities": [pause]})
    started = time.monotonic()
    log.info("migration started", vm=name, source=source.netns, target=target.netns, uri=uri)
    try:
        source.qmp.migrate(uri)
    except QMPError as exc:
        raise MigrationError(name, "setup", exc.desc) from exc
    info = _wait_final(
        source, timeout=timeout, poll_interval=poll_interval, on_switchover=on_switchover
    )
    wall = time.monotonic() - started
    result = parse_migration(name, info, wall_seconds=wall)
    _wait_running(target, timeout=30.0)
    log.info(
        "migration completed",
        vm=name,
        target=target.netns,
        total_ms=result.total_time_ms,
        downtime_ms=result.downtime_ms,
        ram_mb=round(result.ram_transferred_bytes / 2**20, 1),
    )
    return result


def parse_migration(vm: str, info: dict[str, Any], *, wall_seconds: float) -> MigrationResult:
    """QEMU's ``query-migrate`` answer -> figures; :class:`MigrationError` unless completed."""
    status = str(info.get("status", "none"))
    if status != "completed":
        error = info.get("error-desc") or f"migration ended in state {status}"
        raise MigrationError(vm, status, str(error))
    ram = info.get("ram", {})
    return MigrationResult(
        vm=vm,
        status=status,
        total_time_ms=int(info.get("total-time", 0)),
        downtime_ms=int(info.get("downtime", 0)),
        setup_time_ms=int(info.get("setup-time", 0)),
        ram_transferred_bytes=int(ram.get("transferred", 0)),
        ram_total_bytes=int(ram.get("total", 0)),
        ram_mbps=float(ram.get("mbps", 0.0)),
        dirty_sync_count=int(ram.get("dirty-sync-count", 0)),
        wall_seconds=round(wall_seconds, 3),
    )


def _target_uri(target: QemuVM) -> str:
    argv = target.argv
    if "-incoming" not in argv:
        raise QemuError(f"target of {target.config.name} was not started with -incoming")
    return argv[argv.index("-incoming") + 1]


def _wait_listening(target: QemuVM, uri: str, *, timeout: float) -> None:
    path = Path(uri.removeprefix("unix:"))
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not target.alive() or time.monotonic() >= deadline:
            raise MigrationError(
                target.config.name,
                "setup",
                f"target QEMU not listening on {uri}: "
                + " | ".join(target.serial_tail(5) or ["no serial output"]),
            )
        time.sleep(0.05)


def _wait_final(
    source: QemuVM,
    *,
    timeout: float,
    poll_interval: float,
    on_switchover: Callable[[], None] | None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    hook = on_switchover
    while True:
        info = source.qmp.query_migrate()
        if info.get("status") in FINAL_STATES:
            return info
        if info.get("status") == "pre-switchover" and hook is not None:
            hook()
            hook = None  # the state may still read pre-switchover once more
            source.qmp.execute("migrate-continue", {"state": "pre-switchover"})
            continue
        if time.monotonic() >= deadline:
            source.qmp.execute("migrate_cancel")
            raise MigrationError(
                source.config.name,
                str(info.get("status")),
                f"not completed within {timeout:.0f} s; cancelled "
                f"(transferred {info.get('ram', {}).get('transferred', 0)} bytes)",
            )
        time.sleep(poll_interval)


def _wait_running(target: QemuVM, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    status = target.qmp.status()
    while status != "running":
        if time.monotonic() >= deadline:
            raise MigrationError(
                target.config.name, status, f"target not running {timeout:.0f} s after completion"
            )
        time.sleep(0.05)
        status = target.qmp.status()
