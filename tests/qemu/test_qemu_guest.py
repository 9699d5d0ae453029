"""Real QEMU guests in namespaces of the test's own: boot, Postgres, live migration.

Needs root and Debian's qemu-system-x86 (skipped with how to install it otherwise).
The guest image is built once per test session (the first build on a machine
downloads linux-image-amd64 and prints how long it took) and cached.

Scenarios:
- the image cache is reused by a second build: same key, same files, untouched;
- one guest boots in a runner namespace: a too short wait fails with the serial
  lines, then Postgres answers psql from a client namespace over a veth/bridge,
  the client's ARP entry for the VM's IP is the VM's MAC, and the guest's UDP
  echo (port 7, for the gate's probe) answers;
- a guest whose Postgres cannot start (port 0) fails to boot with its init's
  VMOVERLAY-FAILED line and Postgres' own error among the last serial lines;
- live migration between two QEMU processes in two runner namespaces on one
  bridge: a migration to a dead target fails with QEMU's error and leaves the
  source running; the real one holds at the start of stop-and-copy for a hook
  (where a VM controller records the new node), completes with QEMU's own figures, pgbench
  clients running through it lose no transaction, the source is gone, and the
  VM answers psql at the same IP with the same MAC, now from the target's port.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.netns import RunNamespaces
from e2e.qemu.errors import GuestNotReadyError, MigrationError
from e2e.qemu.image import GuestImage, ensure_image
from e2e.qemu.migrate import migrate, start_target
from e2e.qemu.vm import (
    Accel,
    GuestNetwork,
    QemuVM,
    VMConfig,
    ensure_tap,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

VM_IP = "198.19.0.5"
VM_MAC = "0a:58:c6:13:00:05"
CLIENT_IP = "198.19.0.100"
NETWORK = GuestNetwork(ip=VM_IP, prefix=16, mac=VM_MAC, mtu=1500)


@pytest.fixture
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Short paths: QEMU's QMP and migration sockets must fit a unix socket name.
    path = tmp_path_factory.mktemp("vmoq")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _bridge(run: RunNamespaces, ns: str, name: str) -> None:
    run.check(ns, ["ip", "link", "add", name, "type", "bridge"])
    run.check(ns, ["ip", "link", "set", name, "up"])


def _uplink(run: RunNamespaces, ns: str, bridge: str, peer_ns: str, peer: str) -> None:
    """A veth from ``bridge`` in ``ns`` to interface ``peer`` in ``peer_ns``."""
    run.check(
        ns, ["ip", "link", "add", f"to-{peer}", "type", "veth", "peer", peer, "netns", peer_ns]
    )
    run.check(ns, ["ip", "link", "set", f"to-{peer}", "master", bridge, "up"])


def _client(run: RunNamespaces, fabric: str, bridge: str) -> str:
    client = run.add("cli")
    _uplink(run, fabric, bridge, client, "eth0")
    run.check(client, ["ip", "addr", "add", f"{CLIENT_IP}/16", "dev", "eth0"])
    run.check(client, ["ip", "link", "set", "eth0", "up"])
    return client


def _psql(run: RunNamespaces, client: str, sql: str) -> str:
    argv = ["psql", "-h", VM_IP, "-U", "postgres", "-d", "postgres", "-Atc", sql]
    return run.check(client, argv, timeout=60).strip()


def _neighbour_mac(run: RunNamespaces, client: str) -> str:
    out = run.check(client, ["ip", "neigh", "show", VM_IP, "dev", "eth0"])
    fields = out.split()
    return fields[fields.index("lladdr") + 1] if "lladdr" in fields else ""


def _udp_echo(run: RunNamespaces, client: str, payload: bytes) -> bytes:
    """One datagram to the guest's echo responder (port 7) from the client namespace."""
    code = (
        "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.settimeout(5); s.sendto(sys.argv[1].encode(), ({VM_IP!r}, 7)); "
        "print(s.recv(2048).decode())"
    )
    return run.check(client, [sys.executable, "-c", code, payload.decode()]).strip().encode()


def test_image_cache_reused(guest_image: GuestImage) -> None:
    before = guest_image.initrd.stat().st_mtime_ns
    again = ensure_image()
    assert again.reused
    assert (again.key, again.directory) == (guest_image.key, guest_image.directory)
    assert again.initrd.stat().st_mtime_ns == before


def test_boot_and_query_from_another_namespace(
    netns: RunNamespaces, guest_image: GuestImage, accel: Accel, workdir: Path
) -> None:
    runner = netns.add("run")
    _bridge(netns, runner, "br0")
    client = _client(netns, runner, "br0")
    ensure_tap(runner, "tap0", bridge="br0")
    config = VMConfig(name="pg-boot", network=NETWORK)

    with QemuVM.start(
        config, image=guest_image, netns=runner, tap="tap0", workdir=workdir, accel=accel
    ) as vm:
        with pytest.raises(GuestNotReadyError, match="no VMOVERLAY-READY within"):
            vm.wait_ready(timeout=0.1)
        seconds = vm.wait_ready(timeout=180)
        print(f"\nguest ready {seconds} s after QEMU started ({accel})")
        assert vm.qmp.status() == "running"

        assert _psql(netns, client, "select inet_server_addr()") == VM_IP
        assert _neighbour_mac(netns, client) == VM_MAC
        assert _psql(netns, client, "show lc_collate") == "C"
        assert _udp_echo(netns, client, b"vmoverlay-probe") == b"vmoverlay-probe"
    assert not vm.alive()


def test_guest_not_ready_reports_serial_lines(
    netns: RunNamespaces, guest_image: GuestImage, accel: Accel, workdir: Path
) -> None:
    runner = netns.add("run")
    ensure_tap(runner, "tap0")
    config = VMConfig(name="pg-bad", network=NETWORK, port=0)

    with QemuVM.start(
        config, image=guest_image, netns=runner, tap="tap0", workdir=workdir, accel=accel
    ) as vm:
        with pytest.raises(GuestNotReadyError) as failure:
            vm.wait_ready(timeout=180)
    message = str(failure.value)
    assert failure.value.reason == "VMOVERLAY-FAILED: postgres exited while starting", message
    assert "outside the valid range for parameter" in message


def test_migration_keeps_ip_and_mac(
    netns: RunNamespaces, guest_image: GuestImage, accel: Accel, workdir: Path
) -> None:
    fabric = netns.add("fab")
    _bridge(netns, fabric, "sw0")
    runners = {}
    for side in ("a", "b"):
        runner = netns.add(f"run{side}")
        _bridge(netns, runner, "br0")
        run_port = f"p{side}"
        netns.check(runner, ["ip", "link", "add", "up0", "type", "veth", "peer", run_port,
                             "netns", fabric])  # fmt: skip
        netns.check(runner, ["ip", "link", "set", "up0", "master", "br0", "up"])
        netns.check(fabric, ["ip", "link", "set", run_port, "master", "sw0", "up"])
        ensure_tap(runner, "tap0", bridge="br0")
        runners[side] = runner
    client = _client(netns, fabric, "sw0")
    config = VMConfig(name="pg-mig", network=NETWORK)

    source = QemuVM.start(
        config, image=guest_image, netns=runners["a"], tap="tap0", workdir=workdir / "a",
        accel=accel,
    )  # fmt: skip
    target: QemuVM | None = None
    try:
        source.wait_ready(timeout=180)
        netns.check(client, ["pgbench", "-h", VM_IP, "-U", "postgres", "-i", "-q", "postgres"])

        dead = start_target(source, image=guest_image, netns=runners["b"], tap="tap0",
                            workdir=workdir / "dead")  # fmt: skip
        dead.stop()
        with pytest.raises(MigrationError, match="failed to migrate guest pg-mig"):
            migrate(source, dead, timeout=30)
        assert source.qmp.status() == "running"

        bench = netns.popen(
            client,
            ["pgbench", "-h", VM_IP, "-U", "postgres", "-c", "2", "-T", "12", "postgres"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(3)
        target = start_target(source, image=guest_image, netns=runners["b"], tap="tap0",
                              workdir=workdir / "b")  # fmt: skip
        switched: list[float] = []
        result = migrate(source, target, on_switchover=lambda: switched.append(time.monotonic()))
        source.stop()
        output, _ = bench.communicate(timeout=120)
        print(f"\nmigration: {result.as_dict()}\n{output[-400:]}")

        assert result.status == "completed"
        assert len(switched) == 1  # held at pre-switchover once, then continued
        assert result.total_time_ms > 0 and result.ram_transferred_bytes > 0
        assert not source.alive()
        assert bench.returncode == 0, output
        assert "number of failed transactions: 0 " in output
        assert target.qmp.status() == "running"

        netns.check(client, ["ip", "neigh", "flush", "dev", "eth0"])
        assert _psql(netns, client, "select inet_server_addr()") == VM_IP
        assert _neighbour_mac(netns, client) == VM_MAC
        fdb = netns.check(fabric, ["bridge", "fdb", "show", "br", "sw0"])
        assert any(line.startswith(f"{VM_MAC} dev pb") for line in fdb.splitlines()), fdb
    finally:
        source.stop()
        if target is not None:
            target.stop()
