"""The migration-resilience gate as a benchmark: many migrations under pgbench, figures printed.

Runs ``vmoverlay-lab gate --migrations 50 --clients 32`` twice, with the VM's
RARP self-announce and without it (``--no-vm-announce``: the overlay alone,
agents' FDB moves and GARP, must converge), and prints for each: broken
connections, failed transactions, transactions, extra blackout beyond the pause
(p50 / p99 / max), the longest blackout and the longest client stall. The
issue's target: zero broken, zero failed, extra blackout p99 at most 20 ms
(two probe intervals). Needs root; about 2-3 minutes per run on 2 cores.

    python -m bench gate
    python -m bench.gate --migrations 10 --clients 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(migrations: int, clients: int, extra: list[str]) -> dict[str, object] | None:
    with tempfile.TemporaryDirectory(prefix="vmo-bench-gate-") as tmp:
        out = Path(tmp) / "gate.json"
        argv = [sys.executable, "-m", "e2e.cli", "gate", "--migrations", str(migrations)]
        argv += ["--clients", str(clients), "--json", str(out), *extra]
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        if not out.exists():
            print(f"  the gate wrote no summary (exit {proc.returncode}): {proc.stderr[-600:]}")
            return None
        doc: dict[str, object] = json.loads(out.read_text())
        return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gate")
    parser.add_argument("--migrations", type=int, default=50)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args(argv or [])
    if os.geteuid() != 0:
        print("  skipped: the lab needs root (network namespaces)")
        return
    for label, extra in (("with VM announce", []), ("--no-vm-announce", ["--no-vm-announce"])):
        doc = run(args.migrations, args.clients, extra)
        if doc is None:
            continue
        print(
            f"  gate --migrations {args.migrations} --clients {args.clients} ({label}): "
            f"passed={doc['passed']} broken={doc['broken_connections']} "
            f"failed_tx={doc['failed_transactions']} tx={doc['transactions']} "
            f"extra_blackout_ms p50/p99/max={doc['p50_extra_blackout_ms']}/"
            f"{doc['p99_extra_blackout_ms']}/{doc['max_extra_blackout_ms']} "
            f"max_blackout_ms={doc['max_blackout_ms']} max_stall_ms={doc['max_stall_ms']}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
