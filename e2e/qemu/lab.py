"""The lab in QEMU mode: each VM is a real QEMU guest inside its runner pod.

:class:`QemuLab` is :class:`e2e.lab.lab.Lab` with the VM parts replaced; the
topology, control plane, agents, CNI plugin, client pod and the gate's
measurements are the namespace mode's own. Per VM::

    runner pod ns (r<i>-<k>-<node>)                             node ns
    QEMU (guest NIC: VM MAC + IP) -- tap0 -- rbr0 -- net1 ==veth== (CNI vm-l2) vmo-br0

The runner's bridge ``rbr0`` joins ``net1``, plugged by the real CNI plugin
in ``vm-l2`` mode, with the tap QEMU opens; both ports are "wires" (no MAC
learning), as in the namespace mode.

A migration, as a VM controller would run it:

1. prepare: VirtualMachineMigration created, the target runner pod recorded
   and plugged (CNI ADD) on the target node, its tap bridged, the target QEMU
   started with ``-incoming`` (Running);
2. switch-over: QMP ``migrate`` on the source; QEMU's ``pause-before-switchover``
   stops it at the start of stop-and-copy, where the VM's ``status.node`` is
   written to the target (asynchronously, as the namespace mode does at the
   start of its pause), then QEMU finishes; the destination announces itself
   (QEMU's own RARP rounds; no announcer of ours);
3. finish: migration Succeeded; in the background the source QEMU quits, CNI
   DEL runs for the source runner pod and the pod is deleted.

QEMU's own figures for each migration (total time, downtime, RAM transferred)
are in :attr:`QemuLab.qemu_figures`, in migration order, for the gate's report.

Limitations: only the ``overlay`` binding (a QEMU guest keeps its address);
``pause_ms`` does not apply (the downtime is QEMU's). Guests boot one after
another, each in about 10-30 s under TCG.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from e2e.lab import vm as vmmod
from e2e.lab.cluster import now_rfc3339
from e2e.lab.cni import invoke
from e2e.lab.lab import Lab, LabError, Prepared, Runner, SwitchTimes
from e2e.lab.vm import LabVM
from e2e.netns import remove_namespace
from e2e.qemu.image import GuestImage, ensure_image
from e2e.qemu.migrate import migrate, start_target
from e2e.qemu.vm import Accel, GuestNetwork, QemuVM, VMConfig, ensure_tap, resolve_accel
from vmoverlay import api
from vmoverlay.api import VMNetwork
from vmoverlay.logs import get_logger

TAP = "tap0"
BOOT_TIMEOUT_S = 300.0
# Polling QMP this often while a migration runs keeps the switch-over hook prompt.
MIGRATION_POLL_S = 0.01
log = get_logger("lab").bind(part="qemu-lab")


class QemuLab(Lab):
    """A :class:`Lab` whose VMs are QEMU guests (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.config.binding != "overlay":
            raise LabError("--mode qemu supports only --binding overlay")
        super().__post_init__()
        self.image: GuestImage | None = None
        self.accel: Accel = "tcg"
        self.guests: dict[str, QemuVM] = {}  # runner pod -> the QEMU in it
        self.targets: dict[str, QemuVM] = {}  # migration -> its destination QEMU
        self.qemu_figures: list[dict[str, Any]] = []

    def start(self) -> None:
        self.progress("guest image: building or reusing the cached Debian kernel + initramfs")
        self.image = ensure_image()
        self.accel = resolve_accel(self.image.kernel)
        self.progress(f"guest image {self.image.key}; QEMU acceleration {self.accel}")
        super().start()

    def _guest_image(self) -> GuestImage:
        if self.image is None:
            raise LabError("the guest image is not built yet")
        return self.image

    def _runner_tap(self, runner: Runner, network: VMNetwork) -> str:
        pod_ns = runner.attachment.pod_ns
        ensure_tap(pod_ns, TAP, bridge=vmmod.RUNNER_BRIDGE, mtu=network.mtu)
        vmmod.wire_port(self.run, pod_ns, TAP)
        return pod_ns

    def _workdir(self, pod: str) -> Path:
        return self._tmp / pod

    def _start_vm(self, name: str, node: str) -> None:
        api_ = self.cluster
        api_.create_vm(name)
        network = api_.wait_vm_network(name)
        api_.set_vm_status(name, node=node, phase="Scheduled")
        runner = self._new_runner(name, node, next(self._counter), network)
        pod_ns = self._runner_tap(runner, network)
        config = VMConfig(name=name, network=guest_network(network))
        workdir = self._workdir(runner.pod)
        guest = QemuVM.start(
            config,
            image=self._guest_image(),
            netns=pod_ns,
            tap=TAP,
            workdir=workdir,
            accel=self.accel,
        )
        self.guests[runner.pod] = guest
        runner.uplink = TAP
        self.runners[name] = runner
        self.vms[name] = LabVM(name, pod_ns, pod_ns, network, node, pod_ns, TAP, workdir)
        seconds = guest.wait_ready(timeout=BOOT_TIMEOUT_S)
        self.progress(f"{name}: Postgres ready in the guest after {seconds:.1f}s ({self.accel})")
        api_.set_vm_status(name, node=node, phase=api.PHASE_RUNNING)

    def prepare_migration(self, vm_name: str, target: str) -> Prepared:
        started = time.monotonic()
        vm = self.vms[vm_name]
        index = next(self._counter)
        migration = f"{vm_name}-mig-{index}"
        self.cluster.create_migration(migration, vm=vm_name, target=target, source=vm.node)
        runner = self._new_runner(vm_name, target, index, vm.network)
        pod_ns = self._runner_tap(runner, vm.network)
        runner.uplink = TAP
        source = self.guests[self.runners[vm_name].pod]
        destination = start_target(
            source,
            image=self._guest_image(),
            netns=pod_ns,
            tap=TAP,
            workdir=self._workdir(runner.pod),
        )
        self.guests[runner.pod] = destination
        self.targets[migration] = destination
        self.cluster.set_migration_status(migration, phase="Running")
        return Prepared(
            index=index,
            vm=vm,
            migration=migration,
            source=vm.node,
            target=target,
            runner=runner,
            new_network=None,
            prepare_s=time.monotonic() - started,
        )

    def switch_over(self, prep: Prepared) -> SwitchTimes:
        """QEMU's live migration; ``status.node`` written when stop-and-copy begins."""
        vm = prep.vm
        source = self.guests[self.runners[vm.name].pod]
        destination = self.targets.pop(prep.migration)
        marks: dict[str, Any] = {}
        written: list[float] = []

        def at_switchover() -> None:
            marks["freeze"], marks["wall"] = time.monotonic(), now_rfc3339()
            marks["status"] = self.cluster.set_vm_status_async(
                vm.name, node=prep.target, phase=api.PHASE_RUNNING
            )
            marks["status"].add_done_callback(lambda _f: written.append(time.monotonic()))

        result = migrate(
            source, destination, poll_interval=MIGRATION_POLL_S, on_switchover=at_switchover
        )
        resumed = time.monotonic()
        if "status" not in marks:
            raise LabError(f"migration of {vm.name} completed without a switch-over")
        marks["status"].result()
        figures = {"migration": prep.migration, **result.as_dict()}
        self.qemu_figures.append(figures)
        log.info(
            "qemu migration",
            vm=vm.name,
            target=prep.target,
            total_ms=result.total_time_ms,
            downtime_ms=result.downtime_ms,
            ram_bytes=result.ram_transferred_bytes,
        )
        vm.node, vm.uplink = prep.target, TAP
        vm.ns = vm.qns = vm.runner_ns = prep.runner.attachment.pod_ns
        freeze = float(marks["freeze"])
        return SwitchTimes(freeze, resumed, written[0] if written else resumed, 0, marks["wall"])

    def _remove_runner(self, vm: LabVM, runner: Runner) -> None:
        """The source runner pod after a migration: QEMU quits, CNI DEL, pod deleted."""
        guest = self.guests.pop(runner.pod, None)
        if guest is not None:
            guest.stop()
        invoke(
            "DEL", runner.attachment, kubeconfig=self.kubeconfig, log_file=self.log_dir / "cni.log"
        )
        self.cluster.delete_pod(runner.pod)
        remove_namespace(runner.attachment.pod_ns)

    def close(self, *, keep_logs: bool = False) -> Path | None:
        # Background removals first: they stop guests of their own.
        self._cleanup.shutdown(wait=True, cancel_futures=True)
        for guest in [*self.guests.values(), *self.targets.values()]:
            guest.stop()
        return super().close(keep_logs=keep_logs)


def guest_network(network: VMNetwork) -> GuestNetwork:
    """The VM's ``status.network`` as the guest's kernel command line needs it."""
    return GuestNetwork(
        ip=network.ip,
        prefix=network.prefix,
        mac=network.mac,
        gateway=network.gateway or None,
        mtu=network.mtu,
    )
