"""What the lab's commands accept, checked before anything is created.

Each check names its flag and the allowed range, so a bad value is refused
with exit code 2 in a second instead of failing (or passing vacuously) after
the lab came up. The limits come from the lab's address plan and from what
the gate can measure:

- ``--nodes``: 2 up to :func:`max_nodes`: node ``i`` gets underlay address
  ``198.18.0.(10 + i)`` (:func:`e2e.lab.lab.node_address`) and the underlay is a
  /24, so the last usable host address bounds it (244 nodes).
- ``--vms``: 1 up to :data:`MAX_VMS`; each VM is a Postgres server of its own.
- ``--clients``: at least one per VM, and each VM's share below its Postgres
  ``max_connections`` (the probe holds one more connection).
- ``--migrations``: at least 1: a gate that migrates nothing proves nothing.
- ``--pause-ms``: 0 or more, and below ``--no-progress-ms`` (a longer pause
  breaks every connection by definition).
- ``--no-progress-ms``: at least 1000: below that, ordinary query latency
  under load is reported as a broken client.
- ``--max-stall-ms``: above ``--pause-ms``: every query in flight waits out
  the pause, so a lower bound is a guaranteed FAIL.
- ``--rate``: 0 (unlimited) or more. ``--spacing``: 0 or more seconds; 0
  means each migration starts as soon as its target is prepared (each still
  has its own measurement window, from its freeze to the next one).

Output paths (``--json``, ``--junit``, ``--log-dir``) are checked the same way:
the file's directory must exist and take a new file, the log directory (or
its nearest existing parent, since it is created) must take one too. The
check creates a probe file and removes it at once.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import tempfile
from pathlib import Path

UNDERLAY = ipaddress.ip_network("198.18.0.0/24")
NODE_OFFSET = 10  # node i is .(10 + i); keep in step with e2e.lab.lab.node_address
MAX_VMS = 64
PG_MAX_CONNECTIONS = 200  # e2e.lab.vm.init_postgres sets max_connections to this
MIN_NO_PROGRESS_MS = 1000


def max_nodes() -> int:
    """The most nodes the underlay's address plan holds: the last host is .254."""
    last_host = int(UNDERLAY.broadcast_address) - 1 - int(UNDERLAY.network_address)
    return last_host - NODE_OFFSET


def lab_problems(nodes: int, vms: int) -> list[str]:
    """The shape of the lab (``up`` and ``gate``): one line per bad flag."""
    found = []
    if not 2 <= nodes <= max_nodes():
        found.append(
            f"--nodes {nodes}: must be 2 to {max_nodes()} (node addresses 198.18.0.11 "
            f"up to .254 of the underlay {UNDERLAY})"
        )
    if not 1 <= vms <= MAX_VMS:
        found.append(f"--vms {vms}: must be 1 to {MAX_VMS} (each VM runs its own Postgres)")
    return found


def gate_problems(args: argparse.Namespace) -> list[str]:
    """Every bad value of the gate's flags, each naming its flag and the allowed range."""
    found = lab_problems(args.nodes, args.vms)
    per_vm_max = (PG_MAX_CONNECTIONS - 10) * max(1, args.vms)
    vms_ok = 1 <= args.vms <= MAX_VMS  # else --vms is the flag at fault, not --clients
    if vms_ok and not args.vms <= args.clients <= per_vm_max:
        found.append(
            f"--clients {args.clients}: must be at least --vms ({args.vms}) and at most "
            f"{per_vm_max} ({PG_MAX_CONNECTIONS - 10} per VM: Postgres max_connections is "
            f"{PG_MAX_CONNECTIONS})"
        )
    if args.migrations < 1:
        found.append(
            f"--migrations {args.migrations}: must be 1 or more (a gate without migrations "
            "tests nothing)"
        )
    if args.no_progress_ms < MIN_NO_PROGRESS_MS:
        found.append(
            f"--no-progress-ms {args.no_progress_ms}: must be {MIN_NO_PROGRESS_MS} or more "
            "(below that, ordinary latency under load reads as a broken client)"
        )
    no_progress_ok = args.no_progress_ms >= MIN_NO_PROGRESS_MS
    if args.pause_ms < 0 or (no_progress_ok and args.pause_ms >= args.no_progress_ms):
        found.append(
            f"--pause-ms {args.pause_ms}: must be 0 or more and below --no-progress-ms "
            f"({args.no_progress_ms})"
        )
    if args.max_stall_ms is not None and not (
        math.isfinite(args.max_stall_ms) and args.max_stall_ms > args.pause_ms
    ):
        found.append(
            f"--max-stall-ms {args.max_stall_ms:g}: must be above --pause-ms ({args.pause_ms}): "
            "every query in flight waits out the pause, so a lower bound always fails"
        )
    if args.rate < 0:
        found.append(f"--rate {args.rate}: must be 0 (unlimited) or more transactions/s")
    if not (math.isfinite(args.spacing) and args.spacing >= 0):
        found.append(
            f"--spacing {args.spacing:g}: must be 0 or more seconds (0: each migration as "
            "soon as its target is prepared)"
        )
    return found


def output_problems(
    *, json_path: Path | None, junit_path: Path | None, log_dir: Path | None
) -> list[str]:
    """Output paths that could not be written, each with its flag and what to do."""
    found = []
    for flag, path in (("--json", json_path), ("--junit", junit_path)):
        if path is None:
            continue
        if path.is_dir():
            found.append(f"{flag} {path}: is a directory; give a file name")
            continue
        problem = _writable_dir(path.parent)
        if problem:
            found.append(f"{flag} {path}: {problem}")
    if log_dir is not None:
        if log_dir.exists() and not log_dir.is_dir():
            found.append(f"--log-dir {log_dir}: exists and is not a directory")
        else:
            existing = log_dir
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            problem = _writable_dir(existing, creates=log_dir if existing != log_dir else None)
            if problem:
                found.append(f"--log-dir {log_dir}: {problem}")
    return found


def _writable_dir(directory: Path, *, creates: Path | None = None) -> str | None:
    """Why no file can be made in ``directory`` (None if one can), by trying it."""
    if not directory.exists():
        return f"directory {directory} does not exist: create it first or pick another path"
    if not directory.is_dir():
        return f"{directory} is not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".vmo-write-check-", dir=directory)
    except OSError as exc:
        what = (
            f"cannot create {creates} in {directory}" if creates else f"cannot write in {directory}"
        )
        return f"{what}: {exc.strerror or exc}; pick a writable directory"
    os.close(fd)
    os.unlink(probe)
    return None
