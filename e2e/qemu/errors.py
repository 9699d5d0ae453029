"""Errors of the QEMU guest mode, one class per failure a lab user must tell apart.

Each message says what failed, why, and what to do about it; callers catch
:class:`QemuError` to report any of them at their one top-level place.
"""

from __future__ import annotations

from collections.abc import Sequence


class QemuError(RuntimeError):
    """Base of every error of the QEMU guest mode."""


class QemuMissingError(QemuError):
    """``qemu-system-x86_64`` (or another host tool the mode needs) is not installed."""

    def __init__(self, tool: str, package: str) -> None:
        self.tool = tool
        self.package = package
        super().__init__(
            f"failed to find {tool}: install Debian's {package} "
            f"(apt-get install --no-install-recommends {package}, or run "
            f'VMOVERLAY_EXTRA_APT="qemu-system-x86 busybox-static" scripts/bootstrap.sh)'
        )


class ImageBuildError(QemuError):
    """One step of the guest image build failed; ``step`` names it."""

    def __init__(self, step: str, cause: str) -> None:
        self.step = step
        self.cause = cause
        super().__init__(f"failed to build the guest image at step {step!r}: {cause}")


class QMPError(QemuError):
    """QEMU answered a QMP command with an error, or the QMP socket failed."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        self.command = command
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"failed to run QMP command {command}: {error_class}: {desc}")


class GuestNotReadyError(QemuError):
    """The guest did not print its readiness marker in time (or QEMU exited)."""

    def __init__(self, vm: str, reason: str, serial_tail: Sequence[str]) -> None:
        self.vm = vm
        self.reason = reason
        self.serial_tail = list(serial_tail)
        tail = "\n".join(f"    {line}" for line in self.serial_tail) or "    (serial log empty)"
        super().__init__(f"failed to boot guest {vm}: {reason}; last serial console lines:\n{tail}")


class MigrationError(QemuError):
    """A live migration did not complete; ``qemu_error`` is QEMU's own message."""

    def __init__(self, vm: str, status: str, qemu_error: str) -> None:
        self.vm = vm
        self.status = status
        self.qemu_error = qemu_error
        super().__init__(f"failed to migrate guest {vm}: status {status}: {qemu_error}")
