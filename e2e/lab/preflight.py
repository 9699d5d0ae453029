"""Checks before the lab touches anything, each failure with how to fix it.

The lab needs root (namespaces, veths, bridges), iproute2, network namespace
support in the kernel, Postgres 15's server binaries and pgbench, and
vmoverlay's own commands in this virtualenv. :func:`problems` returns one
readable line per missing piece, so the gate can print them all at once
instead of a traceback.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from e2e.lab.components import ComponentError, command
from e2e.lab.vm import PG_BIN

COMMANDS = ("vmoverlay-lab", "ipam-controller", "vxlan-manager", "vmoverlay-cni")


def problems() -> list[str]:
    found = []
    if os.geteuid() != 0:
        found.append(
            "not root: the lab creates network namespaces, veths and bridges "
            "(inside its own namespaces only). Run it as root: sudo make lab"
        )
    if shutil.which("ip") is None:
        found.append("no `ip` command: apt-get install iproute2")
    if not Path("/proc/self/ns/net").exists():
        found.append("this kernel has no network namespace support (CONFIG_NET_NS)")
    for binary in ("postgres", "initdb", "pg_isready"):
        if not (PG_BIN / binary).exists():
            found.append(
                f"no Postgres 15 server binaries ({PG_BIN / binary} is missing): "
                "apt-get install postgresql-15 (scripts/bootstrap.sh does it)"
            )
            break
    if shutil.which("pgbench") is None:
        found.append("no pgbench: apt-get install postgresql-client-15 postgresql-contrib")
    if shutil.which("setpriv") is None:
        found.append("no setpriv (runs Postgres unprivileged): apt-get install util-linux")
    for name in COMMANDS:
        try:
            command(name)
        except ComponentError as exc:
            found.append(str(exc))
    return found
