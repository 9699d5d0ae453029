"""``vmoverlay-lab status``: the labs running on this machine, and leftovers of dead runs.

For each live ``vmoverlay-lab up`` (or ``gate --keep``) it prints the stored
cheat sheet: namespaces and how to enter them. Runs whose process is gone are
listed as leftovers, with the command that removes them. ``--json`` prints
the same as one JSON document. Exit code 0.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from e2e.lab.sheet import lab_command, render, sheet_path
from e2e.netns import PREFIX, STATE_DIR, leftover_runs, list_namespaces, run_is_alive


def collect() -> dict[str, Any]:
    labs = []
    for path in sorted(STATE_DIR.glob("*.pid")) if STATE_DIR.exists() else []:
        run_id = path.stem
        info_path = sheet_path(run_id)
        if run_is_alive(run_id) and info_path.exists():
            labs.append(json.loads(info_path.read_text()))
    others = sorted(
        {n[len(PREFIX) :].split("-", 1)[0] for n in list_namespaces() if n.startswith(PREFIX)}
        - {lab["run_id"] for lab in labs}
        - set(leftover_runs())
    )
    return {"labs": labs, "leftovers": leftover_runs(), "other_live_runs": others}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vmoverlay-lab status", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="one JSON document")
    args = parser.parse_args(argv)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if not info["labs"]:
        print(f"no lab is up (start one with: {lab_command()} up)")
    for lab in info["labs"]:
        print(render(lab))
        print()
    if info["other_live_runs"]:
        print(f"other live runs (tests, gates): {', '.join(info['other_live_runs'])}")
    for run_id, names in info["leftovers"].items():
        print(
            f"leftover of dead run {run_id}: {', '.join(names)}  -> "
            f"{lab_command()} down --run {run_id}"
        )
    return 0
