"""One QEMU guest inside a network namespace: start it, wait for Postgres, stop it.

    image = ensure_image()
    net = GuestNetwork(ip="198.19.0.5", prefix=16, gateway=None, mac="0a:58:c6:13:00:05")
    ensure_tap("vmo-ab12cd-runner", "tap0", bridge="br0", mtu=1450)
    vm = QemuVM.start(VMConfig(name="pg-0", network=net), image=image,
                      netns="vmo-ab12cd-runner", tap="tap0", workdir=Path("/tmp/pg-0"))
    vm.wait_ready(timeout=120)      # GuestNotReadyError with the last serial lines
    ...
    vm.stop()

The guest NIC is QEMU's virtio-net-pci with the VM's MAC, on a tap device made
inside the runner namespace (``ip tuntap``: the tap goes through the tun
device, not rtnetlink), which the runner bridges to its overlay port. The
guest's IP, prefix, gateway and MTU reach its init on the kernel command line.
The serial console goes to ``<workdir>/serial.log``, QMP to ``<workdir>/qmp.sock``.

Acceleration: TCG unless ``/dev/kvm`` passes :func:`probe_kvm`: the guest
kernel must print its banner under KVM within a time limit (nested KVM can
hang instead of failing, and on this project's machines it does). ``VMOVERLAY_QEMU_ACCEL=tcg|kvm``
overrides the probe.

A target for a live migration is the same command line plus ``-incoming``
(see :mod:`e2e.qemu.migrate`); both sides must use the same machine type,
memory size and acceleration, which :func:`qemu_argv` keeps fixed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from e2e.qemu.errors import GuestNotReadyError, QemuError, QemuMissingError, QMPError
from e2e.qemu.image import GuestImage
from e2e.qemu.qmp import QMPClient
from vmoverlay.logs import get_logger

log = get_logger("lab").bind(part="qemu")

QEMU_BINARY = "qemu-system-x86_64"
QEMU_PACKAGE = "qemu-system-x86"
READY_MARKER = "VMOVERLAY-READY"
FAILED_MARKER = "VMOVERLAY-FAILED"
MACHINE = "pc"
Accel = Literal["tcg", "kvm"]


@dataclass(frozen=True)
class GuestNetwork:
    """The VM's network record (``status.network``): what the guest configures."""

    ip: str
    prefix: int
    mac: str
    gateway: str | None = None
    mtu: int = 1500


@dataclass(frozen=True)
class VMConfig:
    name: str
    network: GuestNetwork
    memory_mb: int = 512
    cpus: int = 1
    port: int = 5432
    extra_kernel_args: tuple[str, ...] = field(default=())


def find_qemu() -> str:
    """The QEMU binary's path, or :class:`QemuMissingError` saying how to install it."""
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise QemuMissingError(QEMU_BINARY, QEMU_PACKAGE)
    return path


def kernel_cmdline(config: VMConfig) -> str:
    """The guest kernel's command line: serial console, quiet boot, the VM's network."""
    net = config.network
    args = ["console=ttyS0", "quiet", "loglevel=4", "panic=-1", "mitigations=off"]
    args += [f"vmoverlay.ip={net.ip}/{net.prefix}", f"vmoverlay.mac={net.mac.lower()}"]
    args += [f"vmoverlay.mtu={net.mtu}", f"vmoverlay.port={config.port}"]
    if net.gateway:
        args.append(f"vmoverlay.gw={net.gateway}")
    return " ".join([*args, *config.extra_kernel_args])


def qemu_argv(
    qemu: str,
    image: GuestImage,
    config: VMConfig,
    *,
    accel: Accel,
    tap: str,
    qmp_socket: Path,
    serial_log: Path,
    incoming: str | None = None,
) -> list[str]:
    """The full QEMU command line; source and migration target differ only by ``incoming``."""
    argv = [qemu, "-name", config.name, "-machine", f"{MACHINE},accel={accel}"]
    argv += ["-cpu", "host" if accel == "kvm" else "qemu64"]
    argv += ["-m", str(config.memory_mb), "-smp", str(config.cpus)]
    argv += ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
    argv += ["-kernel", str(image.kernel), "-initrd", str(image.initrd)]
    argv += ["-append", kernel_cmdline(config)]
    argv += ["-serial", f"file:{serial_log}"]
    argv += ["-qmp", f"unix:{qmp_socket},server=on,wait=off"]
    argv += ["-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no"]
    # romfile= : no iPXE option ROM; the guest boots from -kernel, not the network.
    argv += ["-device", f"virtio-net-pci,netdev=net0,mac={config.network.mac.lower()},romfile="]
    if incoming:
        argv += ["-incoming", incoming]
    return argv


def ensure_tap(netns: str, name: str, *, bridge: str | None = None, mtu: int | None = None) -> None:
    """Create tap ``name`` in ``netns`` (if absent), set it up, enslave it to ``bridge``."""
    exists = _ns_run(netns, ["ip", "link", "show", "dev", name], check=False)
    if exists.returncode != 0:
        _ns_run(netns, ["ip", "tuntap", "add", "dev", name, "mode", "tap"])
    if mtu is not None:
        _ns_run(netns, ["ip", "link", "set", "dev", name, "mtu", str(mtu)])
    if bridge is not None:
        _ns_run(netns, ["ip", "link", "set", "dev", name, "master", bridge])
    _ns_run(netns, ["ip", "link", "set", "dev", name, "up"])


def resolve_accel(kernel: Path, qemu: str | None = None) -> Accel:
    """``VMOVERLAY_QEMU_ACCEL`` if set, else KVM when :func:`probe_kvm` passes, else TCG."""
    wanted = os.environ.get("VMOVERLAY_QEMU_ACCEL", "auto")
    if wanted in ("tcg", "kvm"):
        return "kvm" if wanted == "kvm" else "tcg"
    if wanted != "auto":
        raise QemuError(f"VMOVERLAY_QEMU_ACCEL={wanted!r} is not one of tcg, kvm, auto")
    return "kvm" if probe_kvm(qemu or find_qemu(), kernel) else "tcg"


@functools.cache
def probe_kvm(qemu: str, kernel: Path, timeout: float = 5.0) -> bool:
    """True if the guest kernel starts under KVM: it prints its banner within ``timeout``.

    The kernel itself, not a toy boot sector: nested KVM on this project's
    machines runs a BIOS and a boot sector fine, then hangs for good at the
    switch to long mode. The probe QEMU is killed as soon as it has answered.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log.info("KVM not available: no usable /dev/kvm; using TCG")
        return False
    with tempfile.TemporaryDirectory(prefix="vmo-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = [qemu, "-machine", f"{MACHINE},accel=kvm", "-cpu", "host", "-m", "128"]
        argv += ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
        argv += ["-kernel", str(kernel), "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"]
        argv += ["-serial", f"file:{serial}"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        works = False
        try:
            while not works and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
                works = serial.exists() and b"Linux version" in serial.read_bytes()
        finally:
            proc.kill()
            proc.wait()
    if works:
        log.info("KVM probe: the guest kernel starts under KVM; using KVM")
    else:
        log.warning(
            "KVM probe: no kernel banner under KVM (nested KVM?); using TCG", timeout=timeout
        )
    return works


class QemuVM:
    """A running QEMU process in a namespace, with its QMP session and serial log."""

    def __init__(
        self,
        config: VMConfig,
        *,
        netns: str,
        process: subprocess.Popen[bytes],
        workdir: Path,
        accel: Accel,
        argv: list[str],
    ) -> None:
        self.config = config
        self.netns = netns
        self.process = process
        self.workdir = workdir
        self.accel = accel
        self.argv = argv
        self.started = time.monotonic()
        self._qmp: QMPClient | None = None

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def qmp_socket(self) -> Path:
        return self.workdir / "qmp.sock"

    @classmethod
    def start(
        cls,
        config: VMConfig,
        *,
        image: GuestImage,
        netns: str,
        tap: str,
        workdir: Path,
        accel: Accel | None = None,
        incoming: str | None = None,
    ) -> QemuVM:
        """Start QEMU in ``netns`` (as a migration target if ``incoming`` is given)."""
        qemu = find_qemu()
        accel = accel or resolve_accel(image.kernel, qemu)
        if len(str(workdir / "migrate.sock")) > 100:
            raise QemuError(f"workdir {workdir} is too long for unix sockets; use a shorter path")
        workdir.mkdir(parents=True, exist_ok=True)
        for stale in (workdir / "qmp.sock", workdir / "serial.log"):
            stale.unlink(missing_ok=True)
        argv = qemu_argv(
            qemu,
            image,
            config,
            accel=accel,
            tap=tap,
            qmp_socket=workdir / "qmp.sock",
            serial_log=workdir / "serial.log",
            incoming=incoming,
        )
        stderr = (workdir / "qemu.stderr").open("wb")
        with stderr:
            process = subprocess.Popen(
                ["ip", "netns", "exec", netns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        vm = cls(config, netns=netns, process=process, workdir=workdir, accel=accel, argv=argv)
        log.info(
            "qemu started",
            vm=config.name,
            netns=netns,
            pid=process.pid,
            accel=accel,
            mac=config.network.mac,
            ip=config.network.ip,
            incoming=incoming or "",
        )
        return vm

    @property
    def qmp(self) -> QMPClient:
        """The QMP session, connected on first use."""
        if self._qmp is None:
            try:
                self._qmp = QMPClient.connect(self.qmp_socket, timeout=30.0)
            except QMPError as exc:
                raise QemuError(
                    f"failed to connect to QMP of {self.config.name}: {exc}; {self._exit_reason()}"
                ) from exc
        return self._qmp

    def alive(self) -> bool:
        return self.process.poll() is None

    def serial_lines(self) -> list[str]:
        try:
            text = self.serial_log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return []
        return [line.rstrip("\r") for line in text.split("\n") if line.strip()]

    def serial_tail(self, count: int = 20) -> list[str]:
        return self.serial_lines()[-count:]

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait for the guest's readiness marker; return seconds since QEMU started.

        Raises :class:`GuestNotReadyError` with the last serial lines when QEMU
        exits, the guest's init reports a failure, or ``timeout`` passes. (A
        migration target never prints the marker: its guest was ready already.)
        """
        deadline = time.monotonic() + timeout
        while True:
            lines = self.serial_lines()
            if any(line.startswith(READY_MARKER) for line in lines):
                elapsed = round(time.monotonic() - self.started, 2)
                log.info("guest ready", vm=self.config.name, seconds=elapsed, accel=self.accel)
                return elapsed
            failed = [line for line in lines if line.startswith(FAILED_MARKER)]
            if failed:
                raise GuestNotReadyError(self.config.name, failed[0], self.serial_tail())
            if not self.alive():
                raise GuestNotReadyError(self.config.name, self._exit_reason(), self.serial_tail())
            if time.monotonic() >= deadline:
                reason = f"no {READY_MARKER} within {timeout:.0f} s ({self.accel})"
                raise GuestNotReadyError(self.config.name, reason, self.serial_tail())
            time.sleep(0.1)

    def _exit_reason(self) -> str:
        code = self.process.poll()
        if code is None:
            return "QEMU is still running"
        try:
            stderr = (self.workdir / "qemu.stderr").read_text(errors="replace").strip()
        except FileNotFoundError:
            stderr = ""
        return f"QEMU exited with status {code}: {stderr[-500:] or '(no output)'}"

    def stop(self, *, timeout: float = 10.0) -> None:
        """Quit QEMU through QMP, or kill it; safe to call twice."""
        if self.alive():
            with contextlib.suppress(QemuError, OSError):
                # A QEMU that does not answer QMP is killed below.
                self.qmp.quit()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("qemu did not quit; killing it", vm=self.config.name)
                self.process.kill()
                self.process.wait(timeout=timeout)
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        log.info("qemu stopped", vm=self.config.name, netns=self.netns)

    def __enter__(self) -> QemuVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ns_run(
    netns: str, argv: Sequence[str], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise QemuError(
            f"failed to run {' '.join(argv)} in {netns}: {proc.stderr.strip() or proc.returncode}"
        )
    return proc
