"""``vmoverlay-lab down``: remove what crashed lab runs left behind, and nothing else.

Only namespaces named ``vmo-<run id>-...`` whose run's owner process is gone
are removed (:func:`e2e.netns.remove_leftovers`); a lab that is still running,
another helper's test run, or any namespace not named ``vmo-`` is never
touched. Temp dirs of those runs (``/tmp/vmo-<run id>-*``) go too. Exit code 0,
also when there was nothing to remove; 2 when not root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from e2e.lab.sheet import sheet_path
from e2e.netns import NetnsError, leftover_runs, remove_leftovers


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vmoverlay-lab down", description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="only this run id (still only if its process is gone)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("vmoverlay-lab down: needs root (sudo make lab-down)", file=sys.stderr)
        return 2
    runs = [r for r in leftover_runs() if args.run in (None, r)]
    try:
        removed = list(remove_leftovers(only=args.run))
    except NetnsError as exc:
        print(f"vmoverlay-lab down: failed to remove a leftover namespace: {exc}", file=sys.stderr)
        return 1
    for run_id in runs:
        sheet_path(run_id).unlink(missing_ok=True)
        for path in Path(tempfile.gettempdir()).glob(f"vmo-{run_id}-*"):
            shutil.rmtree(path, ignore_errors=True)
    for name in removed:
        print(f"removed {name}")
    print(f"{len(removed)} leftover namespace(s) of {len(runs)} dead run(s) removed")
    return 0
