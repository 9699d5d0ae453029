"""``vmoverlay-lab down``: remove what crashed lab runs left behind, and nothing else.

Only namespaces named ``vmo-<run id>-...`` whose run's owner process is gone
are removed (:func:`e2e.netns.remove_leftovers`); a lab that is still running,
another helper's test run, or any namespace not named ``vmo-`` is never
touched. The lab's temp dirs of dead runs (``/tmp/vmo-<run id>-lab-*`` and the
VMs' ``/tmp/vmo-<run id>-vm<i>-*``) go too.

Exit codes: 0 done (also when there was nothing to remove); 1 a namespace
could not be removed; 2 not root, or ``--run ID`` names no run this machine
knows (no namespace, pid file or temp dir of it), or a run that is still
running (its pid is printed: stop it with Ctrl-C or ``kill PID``, which
removes everything, then ``down`` has nothing left to do).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from e2e.lab.sheet import lab_command, sheet_path
from e2e.netns import (
    PREFIX,
    STATE_DIR,
    NetnsError,
    leftover_runs,
    list_namespaces,
    remove_leftovers,
    run_is_alive,
    run_owner,
)

LAB_DIR_RE = re.compile(r"^vmo-(?P<run>[0-9a-f]{6})-(lab|vm\d+)-")


def dead_lab_dirs(root: Path | None = None, *, only: str | None = None) -> list[Path]:
    """Temp dirs of lab runs whose process is gone (the lab's own and its VMs' data dirs)."""
    found = []
    for path in sorted((root or Path(tempfile.gettempdir())).glob("vmo-*")):
        match = LAB_DIR_RE.match(path.name)
        if not match or only not in (None, match.group("run")):
            continue
        if path.is_dir() and not run_is_alive(match.group("run")):
            found.append(path)
    return found


def run_problem(run_id: str, *, tmp_root: Path | None = None) -> str | None:
    """Why ``down --run run_id`` has nothing it may remove, or None when it has."""
    pid = run_owner(run_id)
    if pid is not None:
        return (
            f"run {run_id} is still running (pid {pid}); stop it first (Ctrl-C in its "
            f"terminal, or kill {pid}): it removes its own lab"
        )
    known = (
        any(n.startswith(f"{PREFIX}{run_id}-") for n in list_namespaces())
        or (STATE_DIR / f"{run_id}.pid").exists()
        or bool(dead_lab_dirs(tmp_root, only=run_id))
    )
    if not known:
        return (
            f"no run {run_id}: no namespace, pid file or temp dir of it "
            f"({lab_command()} status lists the runs)"
        )
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vmoverlay-lab down",
        description=__doc__.split("\n")[0],
        epilog="Exit codes: 0 done (also with nothing to remove); 1 a namespace could not be "
        "removed; 2 not root, an unknown run, or a run that is still running.",
    )
    parser.add_argument("--run", help="only this run id (still only if its process is gone)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("vmoverlay-lab down: needs root (sudo make lab-down)", file=sys.stderr)
        return 2
    if args.run is not None:
        problem = run_problem(args.run)
        if problem:
            print(f"vmoverlay-lab down: {problem}", file=sys.stderr)
            return 2
    runs = [r for r in leftover_runs() if args.run in (None, r)]
    try:
        removed = list(remove_leftovers(only=args.run))
    except NetnsError as exc:
        print(f"vmoverlay-lab down: failed to remove a leftover namespace: {exc}", file=sys.stderr)
        return 1
    for run_id in runs:
        sheet_path(run_id).unlink(missing_ok=True)
    if args.run is not None:  # a dead run without namespaces left may still have these
        sheet_path(args.run).unlink(missing_ok=True)
        (STATE_DIR / f"{args.run}.pid").unlink(missing_ok=True)
    for path in dead_lab_dirs(only=args.run):
        shutil.rmtree(path, ignore_errors=True)
        print(f"removed {path}")
    for name in removed:
        print(f"removed {name}")
    print(f"{len(removed)} leftover namespace(s) of {len(runs)} dead run(s) removed")
    return 0
