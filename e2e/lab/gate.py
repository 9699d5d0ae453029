"""``vmoverlay-lab gate``: pgbench through live migrations; no connection may break.

::

    vmoverlay-lab gate [--nodes 3] [--vms 2] [--migrations 6] [--clients 16]
                       [--pause-ms 100] [--max-stall-ms N] [--no-vm-announce]
                       [--binding overlay|pod-network] [--json FILE] [--junit FILE]
                       [--keep] [--log-dir DIR] [--rate TPS] [--spacing S]
                       [--no-progress-ms MS] [--fault agent-kill|ipam-restart]

Steps: preflight checks; the lab comes up (:mod:`e2e.lab.lab`); ``pgbench -i``
per VM from the client pod; one precise probe per VM (:mod:`e2e.lab.probe`)
and one pgbench per VM for the whole run; the planned migrations
(:mod:`e2e.lab.plan`), each as soon as its target is prepared but at least
``--spacing`` after the previous switch-over, so each migration has its own
measurement window; then the figures (:mod:`e2e.lab.report`), a table, a
verdict, JSON and JUnit.

pgbench gets a generous ``-T`` (a bound, so it stops by itself whatever
happens to the gate) and is ended with SIGINT after the last migration and a
tail; its totals then come from ``pgbench_history`` and its per-second
progress lines (:mod:`e2e.lab.pgbench`).

Every flag and output path is checked before anything starts
(:mod:`e2e.lab.limits`): a bad value or an unwritable ``--json``, ``--junit``
or ``--log-dir`` is refused with its flag named and exit code 2.

Exit codes: 0 passed; 1 a connection broke, a transaction failed, a stall
exceeded ``--max-stall-ms``, the lab failed, or ``--json``/``--junit`` could not
be written after the run (the table and verdict are printed anyway); 2 a
missing prerequisite or bad arguments; 130 interrupted by SIGINT (Ctrl-C);
143 stopped by SIGTERM. Every namespace, process and temp dir goes on every
exit path (SIGINT and SIGTERM included); logs stay with ``--log-dir``, or in
the lab's temp dir when the lab failed or the verdict is FAIL (the path is
printed, and only when there are logs); an interrupted run keeps none.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from e2e.lab import limits, preflight, report, sheet
from e2e.lab.cluster import ClusterError
from e2e.lab.cni import CNIError
from e2e.lab.components import ComponentError
from e2e.lab.lab import BINDINGS, Lab, LabConfig, LabError
from e2e.lab.pgbench import (
    PgbenchResult,
    PgbenchRun,
    history_count_argv,
    init_argv,
    run_argv,
)
from e2e.lab.plan import plan_migrations, split_clients
from e2e.lab.probe import ProbeError, ProbeRunner
from e2e.lab.report import MigrationEvent, Totals
from e2e.lab.vm import VMError
from e2e.netns import NetnsError, RunNamespaces
from e2e.qemu.errors import QemuError
from vmoverlay.api import VMNetwork
from vmoverlay.kube import KubeError
from vmoverlay.logs import add_logging_args, get_logger, setup_logging

FAULTS = ("agent-kill", "ipam-restart")
MODES = ("netns", "qemu")
AGENT_DOWN_S = 1.0
LEAD_S = 2.0
log = get_logger("lab")
TAIL_S = 3.0
LAB_ERRORS = (
    LabError,
    ClusterError,
    CNIError,
    ComponentError,
    VMError,
    NetnsError,
    KubeError,
    QemuError,
    ProbeError,
)


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop, clean up, exit 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# The first SIGINT/SIGTERM this process got: a child that saw the same Ctrl-C
# first may make the gate fail before its own handler runs; it is still an
# interruption, not a lab failure.
_received: list[int] = []


def interrupted_by() -> int | None:
    """The signal that interrupted this run, if one did."""
    return _received[0] if _received else None


def exit_code(signum: int) -> int:
    """128 + the signal's number, as a shell reports it: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="vmoverlay-lab gate",
        description=__doc__.split("\n")[0],
        epilog="Exit codes: 0 passed; 1 failed (verdict FAIL, the lab failed, or an output "
        "file could not be written); 2 bad arguments or a missing prerequisite; "
        "130 interrupted (SIGINT, Ctrl-C); 143 stopped (SIGTERM).",
    )
    p.add_argument(
        "--nodes",
        type=int,
        default=3,
        help=f"node namespaces (default 3, 2 to {limits.max_nodes()})",
    )
    p.add_argument(
        "--vms",
        type=int,
        default=2,
        help=f"VMs running Postgres (default 2, 1 to {limits.MAX_VMS})",
    )
    p.add_argument("--migrations", type=int, default=6, help="live migrations (default 6, min 1)")
    p.add_argument(
        "--clients", type=int, default=16, help="pgbench clients in all (default 16, min --vms)"
    )
    p.add_argument(
        "--pause-ms",
        type=int,
        default=100,
        help="stop-and-copy pause (default 100; 0 up to below --no-progress-ms)",
    )
    p.add_argument(
        "--max-stall-ms", type=float, default=None, help="fail above this stall (> --pause-ms)"
    )
    p.add_argument("--no-vm-announce", action="store_true", help="no RARP after resume")
    p.add_argument("--binding", choices=BINDINGS, default="overlay")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="netns",
        help="netns: VMs as namespaces (default, fast); qemu: real QEMU guests (e2e.qemu)",
    )
    p.add_argument("--rate", type=int, default=200, help="pgbench tps in all, 0 = unlimited")
    p.add_argument(
        "--spacing",
        type=float,
        default=2.0,
        help="seconds between migrations (default 2; 0 = as soon as the target is prepared)",
    )
    p.add_argument(
        "--no-progress-ms",
        type=int,
        default=10000,
        help=f"a client silent this long is broken (default 10000, min {limits.MIN_NO_PROGRESS_MS})",
    )
    p.add_argument("--json", type=Path, help="write the JSON summary here")
    p.add_argument("--junit", type=Path, help="write JUnit XML here")
    p.add_argument("--log-dir", type=Path, help="keep the components' logs here")
    p.add_argument("--keep", action="store_true", help="keep the lab up after the run")
    p.add_argument(
        "--fault",
        action="append",
        choices=FAULTS,
        default=[],
        help="inject a fault (repeatable): agent-kill kills the target node's agent just "
        "before the first switch-over and restarts it 1 s after; ipam-restart restarts the "
        "IPAM controller just before the middle migration",
    )
    add_logging_args(p)
    args = p.parse_args(argv)
    problems = limits.gate_problems(args) + limits.output_problems(
        json_path=args.json, junit_path=args.junit, log_dir=args.log_dir
    )
    if problems:
        p.exit(2, refusal(p.prog, problems))
    return args


def refusal(prog: str, problems: list[str]) -> str:
    """The message for bad arguments: each problem on its own line, no usage dump."""
    lines = [f"{prog}: error: {problems[0]}", *(f"{prog}: error: {p}" for p in problems[1:])]
    return "\n".join([*lines, f"({prog} --help lists every flag and its range)"]) + "\n"


class Display:
    """One progress line per step on stderr, stamped with the time since start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    missing = preflight.problems()
    if args.mode == "qemu":
        missing += qemu_problems()
    if missing:
        print("vmoverlay-lab gate: cannot run the lab:", file=sys.stderr)
        for line in missing:
            print(f"  - {line}", file=sys.stderr)
        return 2
    display = Display()
    _raise_on_signals()
    try:
        doc = Gate(args, display).run()
    except Interrupted as exc:
        return report_interrupted(exc.signum)
    except LAB_ERRORS as exc:
        signum = interrupted_by()
        if signum is not None:
            return report_interrupted(signum)
        print(f"vmoverlay-lab gate: the lab failed: {exc}", file=sys.stderr)
        return 1
    print(report.table(doc))
    errors = write_outputs(args, doc)
    for line in errors:
        print(f"vmoverlay-lab gate: {line}", file=sys.stderr)
    if errors:
        verdict = "PASS" if doc["passed"] else "FAIL"
        print(f"vmoverlay-lab gate: the verdict above ({verdict}) stands; exit 1", file=sys.stderr)
        return 1
    return 0 if doc["passed"] else 1


def report_interrupted(signum: int) -> int:
    name = signal.Signals(signum).name
    print(f"vmoverlay-lab gate: interrupted ({name}); the lab was removed", file=sys.stderr)
    return exit_code(signum)


def write_outputs(args: argparse.Namespace, doc: dict[str, Any]) -> list[str]:
    """Write ``--json`` and ``--junit``; one line per file that could not be written."""
    errors = []
    outputs: list[tuple[str, str, Path | None]] = [
        ("--json", "JSON summary", args.json),
        ("--junit", "JUnit XML", args.junit),
    ]
    for flag, what, path in outputs:
        if path is None:
            continue
        if flag == "--json":
            text = json.dumps(doc, indent=2) + "\n"
        else:
            text = report.junit(doc, duration_s=doc["duration_s"])
        try:
            path.write_text(text)
        except OSError as exc:
            errors.append(
                f"failed to write the {what} to {path} ({flag}): {exc.strerror or exc}; "
                "pick a writable path"
            )
    return errors


def _raise_on_signals() -> None:
    _received.clear()

    def handler(signum: int, _frame: FrameType | None) -> None:
        _received.append(signum)
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@dataclass
class Gate:
    args: argparse.Namespace
    display: Display
    events: list[MigrationEvent] = field(default_factory=list)
    probes: list[ProbeRunner] = field(default_factory=list)
    timers: list[threading.Timer] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def run(self) -> dict[str, Any]:
        args = self.args
        config = LabConfig(
            nodes=args.nodes,
            vms=args.vms,
            pause_ms=args.pause_ms,
            announce=not args.no_vm_announce,
            binding=args.binding,
            bound_ms=args.no_progress_ms,
            log_dir=args.log_dir,
        )
        outcome = "failed"
        with RunNamespaces() as run:
            lab = lab_class(args.mode)(config, run, self.display)
            try:
                lab.start()
                doc = self.measure(lab)
                outcome = "passed" if doc["passed"] else "verdict FAIL"
                if args.keep:
                    keep_running(lab, self.display)
                return doc
            except Interrupted:
                outcome = "interrupted"
                raise
            finally:
                # A second Ctrl-C must not cut the clean-up short.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                if outcome == "failed" and interrupted_by() is not None:
                    outcome = "interrupted"
                for timer in self.timers:
                    timer.cancel()
                    timer.join()
                self.display(
                    "interrupted: removing the lab"
                    if outcome == "interrupted"
                    else "removing the lab"
                )
                logs = lab.close(keep_logs=outcome in ("failed", "verdict FAIL"))
                if logs is not None and outcome != "passed":
                    self.display(f"{describe(outcome)}; its logs are in {logs}")

    def measure(self, lab: Lab) -> dict[str, Any]:
        args, bound_s = self.args, self.args.no_progress_ms / 1000
        vms = sorted(lab.vms)
        plan = plan_migrations(vms, {v: lab.vms[v].node for v in vms}, lab.nodes, args.migrations)
        for name in vms:
            self.display(f"pgbench -i on {name} ({lab.vms[name].ip}) from the client pod")
            lab.run.check(lab.client_ns, init_argv(lab.vms[name].ip, bound_ms=args.no_progress_ms))
        budget = max(args.spacing, 1.5 * max(lab.cni_add_seconds, default=0.5) + 0.5)
        seconds = math.ceil(LEAD_S + 3 * len(plan) * budget + TAIL_S + 30)
        probes = [
            ProbeRunner(lab.run, lab.client_ns, lab.vms[name].ip, bound_s=bound_s) for name in vms
        ]
        self.probes = probes
        self.display(
            f"pgbench: {args.clients} clients; {len(plan)} migrations at least "
            f"{args.spacing:g}s apart, pause {args.pause_ms} ms"
        )
        benches = self._start_pgbench(lab, vms, seconds)
        networks = lab.vm_networks()
        began = time.monotonic()
        try:
            self._migrate(lab, plan, began, seconds, benches)
            self._settle(benches)
            results = [b.finish() for b in benches]
        except BaseException:
            # Interrupted or failed: no waiting for results nobody will read.
            for bench in benches:
                bench.stop()
            for runner in probes:
                runner.kill()
            raise
        for bench in benches:
            bench.stop()
        load_end = time.monotonic()
        data = [p.stop() for p in probes]
        if self.args.log_dir:
            for name, probe in zip(vms, data, strict=True):
                path = self.args.log_dir / f"probe-{name}.json"
                try:
                    path.write_text(json.dumps(probe.__dict__))
                except OSError as exc:  # a log that cannot be kept changes no verdict
                    log.warning("failed to write the probe's data", path=str(path), error=str(exc))
        lab.wait_cleanups(self.reasons)
        self._check_networks(lab, networks)
        end = load_end
        aborts = [t for r in results for t, line in r.events if "aborted" in line]
        failed_progress = [(t, n) for r in results for t, _, n in r.progress]
        for name, bench, result in zip(vms, benches, results, strict=True):
            self._complete(lab, name, bench, result)
        per = report.analyse(self.events, data, aborts, failed_progress, end)
        totals = Totals(
            clients=args.clients,
            transactions=sum(r.transactions for r in results),
            failed_transactions=sum(r.failed_transactions for r in results),
            broken_connections=sum(r.broken_connections for r in results)
            + sum(len(d.breaks) for d in data),
            planned_migrations=len(plan),
            reasons=self.reasons,
        )
        doc = report.summary(per, totals, max_stall_ms=args.max_stall_ms, settings=self.settings())
        doc["run_id"] = lab.run.run_id
        if args.mode == "qemu":
            doc["qemu_migrations"] = getattr(lab, "qemu_figures", [])
        doc["duration_s"] = round(time.monotonic() - self.display.started, 1)
        doc["pgbench_seconds"] = seconds
        return doc

    def _start_pgbench(self, lab: Lab, vms: list[str], seconds: int) -> list[PgbenchRun]:
        """One pgbench per VM from the client pod, the clients and the rate split evenly."""
        args = self.args
        clients = split_clients(args.clients, len(vms))
        rate = math.ceil(args.rate / len(vms)) if args.rate else 0
        benches = []
        for name, count in zip(vms, clients, strict=True):
            argv = run_argv(
                lab.vms[name].ip,
                clients=count,
                seconds=seconds,
                rate=rate,
                bound_ms=args.no_progress_ms,
            )
            benches.append(
                PgbenchRun(
                    ["ip", "netns", "exec", lab.client_ns, *argv],
                    clients=count,
                    bound_s=args.no_progress_ms / 1000,
                )
            )
        return benches

    def _complete(self, lab: Lab, name: str, bench: PgbenchRun, result: PgbenchResult) -> None:
        """Totals of a pgbench the gate ended itself, and whatever else went wrong with it."""
        if not result.summary_seen:
            result.transactions = self._history_count(lab, lab.address(name), result)
            result.failed_transactions = sum(n for _, _, n in result.progress)
        # SIGINT at the end is how the gate stops pgbench; any other exit code is news.
        if not bench.stopped_early and result.exit_code != 0 and not result.broken_connections:
            self.reasons.append(f"pgbench on {name} exited with code {result.exit_code}")
        if result.stalled:
            bound_s = self.args.no_progress_ms / 1000
            self.reasons.append(f"pgbench on {name} made no progress for {bound_s:g}s")

    def _check_networks(self, lab: Lab, before: dict[str, VMNetwork | None]) -> None:
        """IP and MAC are kept through every migration (the pod-network control aside)."""
        if self.args.binding != "overlay":
            return
        for name, after in lab.vm_networks().items():
            if after != before[name]:
                self.reasons.append(f"{name}'s network record changed: {before[name]} -> {after}")

    def _migrate(
        self,
        lab: Lab,
        plan: list[tuple[str, str, str]],
        began: float,
        seconds: int,
        benches: list[PgbenchRun],
    ) -> None:
        due = began + LEAD_S
        for k, (vm, source, target) in enumerate(plan):
            prep = lab.prepare_migration(vm, target)
            self._wait_until(due, benches)
            if k > 0:
                self._live(k - 1)
            if time.monotonic() > began + seconds - TAIL_S:
                self.reasons.append(
                    f"migration {k + 1} could not start before pgbench's end: machine too slow"
                )
                return
            killed = self._inject_faults(lab, k, len(plan), target)
            times = lab.switch_over(prep)
            due = times.resume + self.args.spacing
            if killed:
                timer = threading.Timer(AGENT_DOWN_S, lab.start_agent, args=(target,))
                self.timers.append(timer)
                timer.start()
            self.events.append(
                MigrationEvent(
                    index=k + 1,
                    vm=vm,
                    source=source,
                    target=target,
                    pause_ms=self.args.pause_ms,
                    freeze=times.freeze,
                    resume=times.resume,
                    prepare_ms=prep.prepare_s * 1000,
                    status_ms=(times.status_written - times.freeze) * 1000,
                    freeze_wall=times.freeze_wall,
                )
            )
            lab.finish_migration(prep, times)
            self.display(
                f"migration {k + 1}/{len(plan)}: {vm} {source} -> {target}, "
                f"pause {times.pause_s * 1000:.0f} ms ({times.frozen_pids} processes frozen)"
            )

    @staticmethod
    def _wait_until(due: float, benches: list[PgbenchRun]) -> None:
        """Sleep until ``due``, watching every pgbench for a stall meanwhile."""
        while time.monotonic() < due:
            for bench in benches:
                bench.check_stall()
            time.sleep(min(0.1, max(0.0, due - time.monotonic())))

    def _settle(self, benches: list[PgbenchRun]) -> None:
        """The tail after the last migration: its window, and time for late failures to show."""
        self._wait_until(time.monotonic() + TAIL_S, benches)
        if self.events:
            self._live(len(self.events) - 1)

    def _history_count(self, lab: Lab, ip: str, result: PgbenchResult) -> int:
        """Committed transactions (pgbench_history rows); pgbench's own rates if unreachable."""
        argv = history_count_argv(ip, bound_ms=self.args.no_progress_ms)
        proc = lab.run.run(lab.client_ns, argv)
        if proc.returncode == 0:
            return int(proc.stdout.strip() or 0)
        estimate = round(sum(tps for _, tps, _ in result.progress))
        log.warning(
            "failed to count transactions; using pgbench's per-second rates",
            vm_ip=ip,
            estimate=estimate,
            error=proc.stderr.strip(),
        )
        return estimate

    def _inject_faults(self, lab: Lab, k: int, planned: int, target: str) -> bool:
        """Faults due before migration ``k``; True when the target's agent was killed."""
        if "ipam-restart" in self.args.fault and k == planned // 2:
            self.display("fault: restarting the IPAM controller")
            lab.restart_ipam()
        if "agent-kill" in self.args.fault and k == 0:
            self.display(f"fault: killing the agent on {target} (back in {AGENT_DOWN_S:g}s)")
            lab.kill_agent(target)
            return True
        return False

    def _live(self, k: int) -> None:
        """What the probes saw of migration ``k`` so far: one progress line."""
        event = self.events[k]
        start = event.freeze - report.WINDOW_LEAD_S
        seen = [e for p in self.probes for e in p.since(start)]
        gap = max((e["ms"] for e in seen if e["event"] == "gap"), default=0.0)
        lost = sum(e["lost"] for e in seen if e["event"] == "gap")
        stall = max((e["ms"] for e in seen if e["event"] == "stall"), default=0.0)
        broke = sum(1 for e in seen if e["event"] == "break")
        self.display(
            f"  migration {event.index}: blackout {gap:.0f} ms ({lost} probes lost), "
            f"extra {max(0.0, gap - (event.resume - event.freeze) * 1000):.0f} ms, "
            f"longest query {stall:.0f} ms" + (f", {broke} BROKEN" if broke else "")
        )

    def settings(self) -> dict[str, Any]:
        a = self.args
        return {
            "nodes": a.nodes,
            "vms": a.vms,
            "pause_ms": a.pause_ms,
            "binding": a.binding,
            "mode": a.mode,
            "vm_announce": not a.no_vm_announce,
            "rate": a.rate,
            "no_progress_ms": a.no_progress_ms,
        }


def describe(outcome: str) -> str:
    """How the end of a run reads before "its logs are in ..."."""
    return {"failed": "the lab failed", "verdict FAIL": "the gate failed"}.get(
        outcome, f"the run was {outcome}"
    )


def lab_class(mode: str) -> type[Lab]:
    """The lab for ``mode``; the QEMU mode's module is imported only when asked for."""
    if mode == "qemu":
        from e2e.qemu.lab import QemuLab

        return QemuLab
    return Lab


def qemu_problems() -> list[str]:
    """What ``--mode qemu`` needs beyond the namespace mode: QEMU itself."""
    from e2e.qemu.errors import QemuMissingError
    from e2e.qemu.vm import find_qemu

    try:
        find_qemu()
    except QemuMissingError as exc:
        return [str(exc)]
    return []


def keep_running(lab: Lab, display: Display) -> None:
    """``--keep``: the lab stays up, findable by ``status`` and ``check``, until a signal."""
    path = sheet.save(lab)
    print(sheet.cheat_sheet(lab), flush=True)
    display(f"the lab stays up (cheat sheet in {path}): Ctrl-C (or SIGTERM) removes it")
    try:
        signal.pause()
    except Interrupted:
        return
    finally:
        path.unlink(missing_ok=True)
