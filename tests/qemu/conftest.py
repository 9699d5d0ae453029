"""Fixtures of the QEMU tests: the checks they need and the session's guest image.

- ``qemu_available``: skips, with how to install them, without root or QEMU;
- ``guest_image``: the cached guest image, built once per session (the first build on
  a machine downloads linux-image-amd64; the time is printed);
- ``accel``: TCG, or KVM if the time-limited probe passes, once per session.
"""

from __future__ import annotations

import shutil

import pytest

from e2e.qemu.image import GuestImage, ensure_image
from e2e.qemu.vm import Accel, resolve_accel
from tests.fixtures.netns import require_root_netns


@pytest.fixture(scope="session")
def qemu_available() -> None:
    require_root_netns()
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip(
            "qemu-system-x86_64 not installed: apt-get install --no-install-recommends "
            "qemu-system-x86 busybox-static (scripts/bootstrap.sh installs them)"
        )


@pytest.fixture(scope="session")
def guest_image(qemu_available: None) -> GuestImage:
    image = ensure_image()
    action = "reused" if image.reused else "built"
    print(f"\nguest image {image.key} {action} in {image.build_seconds} s ({image.directory})")
    return image


@pytest.fixture(scope="session")
def accel(guest_image: GuestImage) -> Accel:
    return resolve_accel(guest_image.kernel)
