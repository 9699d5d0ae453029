"""``vmoverlay-lab up``: bring a lab cluster up and keep it running for exploration.

::

    vmoverlay-lab up [--nodes 3] [--vms 2] [--log-dir DIR]

Builds the same lab the gate uses (real API server, IPAM controller, node
agents, CNI plugin, VMs running Postgres, a client pod), prints a cheat sheet
of namespace names and how to enter them, stores it for ``vmoverlay-lab
status``, and stays in the foreground until Ctrl-C or SIGTERM, which remove
the whole lab. Exit codes: 0 after a clean stop by Ctrl-C or SIGTERM, 1 the
lab failed (its logs stay and the path is printed, if it wrote any), 2 bad
arguments (each names its flag and range, :mod:`e2e.lab.limits`) or a missing
prerequisite.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from e2e.lab import limits, preflight, sheet
from e2e.lab.gate import LAB_ERRORS, Display, Interrupted, _raise_on_signals, refusal
from e2e.lab.lab import Lab, LabConfig
from e2e.netns import RunNamespaces
from vmoverlay.logs import add_logging_args, setup_logging


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vmoverlay-lab up",
        description=__doc__.split("\n")[0],
        epilog="Exit codes: 0 stopped by Ctrl-C or SIGTERM; 1 the lab failed; "
        "2 bad arguments or a missing prerequisite.",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=3,
        help=f"node namespaces (default 3, 2 to {limits.max_nodes()})",
    )
    parser.add_argument(
        "--vms",
        type=int,
        default=2,
        help=f"VMs running Postgres (default 2, 1 to {limits.MAX_VMS})",
    )
    parser.add_argument("--log-dir", type=Path, help="keep the components' logs here")
    add_logging_args(parser)
    args = parser.parse_args(argv)
    problems = limits.lab_problems(args.nodes, args.vms) + limits.output_problems(
        json_path=None, junit_path=None, log_dir=args.log_dir
    )
    if problems:
        parser.exit(2, refusal(parser.prog, problems))
    setup_logging(level=args.log_level, fmt=args.log_format)
    missing = preflight.problems()
    if missing:
        print("vmoverlay-lab up: cannot run the lab:", file=sys.stderr)
        for line in missing:
            print(f"  - {line}", file=sys.stderr)
        return 2
    display = Display()
    _raise_on_signals()
    config = LabConfig(nodes=args.nodes, vms=args.vms, log_dir=args.log_dir)
    failed = False
    with RunNamespaces() as run:
        lab = Lab(config, run, display)
        try:
            lab.start()
            path = sheet.save(lab)
            print(sheet.cheat_sheet(lab), flush=True)
            display(f"the lab is up (cheat sheet in {path}); Ctrl-C or SIGTERM removes it")
            signal.pause()
        except Interrupted:
            display("removing the lab")
        except LAB_ERRORS as exc:
            print(f"vmoverlay-lab up: the lab failed: {exc}", file=sys.stderr)
            failed = True
            return 1
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            logs = lab.close(keep_logs=failed)
            if logs is not None and failed:
                display(f"the lab failed; its logs are in {logs}")
            sheet.sheet_path(run.run_id).unlink(missing_ok=True)
    return 0
