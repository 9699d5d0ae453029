"""``vmoverlay-lab check``: the fabric health check of a running lab, cluster-wide.

A lab's agents serve their metrics and ``/health`` on loopback inside their
node namespaces, and the lab API server listens on the lab underlay, so the
cluster-wide view is gathered from inside: the node check (what
``vxlan-manager check`` does) runs for every node at once in a thread that has
entered that node's namespace, each reading its own kernel, the lab API and
its agent's probe results; the reports are merged into one cluster report
(probe matrix + findings by node), printed as a table or ``--json`` (schema:
:mod:`vxlan_manager.health.findings`).

Probes are measured by the check itself, now, from every node's probe address
(``--fresh``, the default here), so a fault injected a second ago shows at
once; ``--no-fresh`` reads the agents' last rounds instead (each result shows
its age; older than two probe periods is ``probe.stale``).

The lab is found the way ``vmoverlay-lab status`` finds it (the cheat sheet
``vmoverlay-lab up`` stores); ``--run`` picks one when several run.

Exit codes: 0 healthy, 1 degraded, 2 broken, 3 the check could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyroute2 import netns as pyr_netns
from pyroute2.netlink.exceptions import NetlinkError

from e2e.lab import status
from vmoverlay.kube import KubeError
from vmoverlay.logs import add_logging_args, setup_logging
from vxlan_manager.health import cli as health_cli
from vxlan_manager.health.checks import diagnose_cluster
from vxlan_manager.health.findings import Finding, Report, Severity, render_table

T = TypeVar("T")

EXIT_CANNOT_CHECK = 3


class LabNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class LabInfo:
    """What the health tools need of a running lab (from its cheat sheet)."""

    run_id: str
    kubeconfig: str
    nodes: dict[str, str]  # node name -> namespace
    sheet: dict[str, Any] = field(default_factory=dict)  # the whole cheat sheet

    @classmethod
    def from_sheet(cls, data: dict[str, Any]) -> LabInfo:
        return cls(
            run_id=str(data["run_id"]),
            kubeconfig=str(data["kubeconfig"]),
            nodes={str(k): str(v) for k, v in data["nodes"].items()},
            sheet=data,
        )


def find_lab(run_id: str | None = None) -> LabInfo:
    """The running lab ``run_id``, or the only one running; errors say what to do."""
    labs = {str(lab["run_id"]): lab for lab in status.collect()["labs"]}
    if run_id is not None:
        if run_id not in labs:
            running = ", ".join(labs) or "none"
            raise LabNotFound(f"no running lab with run id {run_id}: running: {running}")
        chosen = labs[run_id]
    elif len(labs) == 1:
        chosen = next(iter(labs.values()))
    elif not labs:
        raise LabNotFound("no lab is running: start one with `vmoverlay-lab up`")
    else:
        raise LabNotFound(f"several labs are running ({', '.join(sorted(labs))}): pass --run")
    try:
        return LabInfo.from_sheet(chosen)
    except (KeyError, AttributeError) as exc:
        raise LabNotFound(f"the cheat sheet of lab {chosen.get('run_id')} lacks {exc}") from exc


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="run id of the lab (default: the only one running)")


def main(argv: list[str]) -> int:
    parser = health_cli.CheckArgumentParser(
        prog="vmoverlay-lab check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_lab_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument(
        "--timeout", type=health_cli.positive_seconds, default=20.0, help="seconds per node check"
    )
    parser.add_argument(
        "--fresh",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the probes now (default) or read the agents' last rounds (--no-fresh)",
    )
    add_logging_args(parser)
    args = parser.parse_args(argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    try:
        lab = find_lab(args.run)
    except LabNotFound as exc:
        print(f"vmoverlay-lab check: {exc}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    report = lab_report(lab, timeout=args.timeout, fresh=args.fresh)
    print(json.dumps(report.to_dict(), indent=2) if args.json else render_table(report))
    return report.exit_code


def lab_report(lab: LabInfo, *, timeout: float = 20.0, fresh: bool = True) -> Report:
    """Every node's check, run in its namespace at once, merged into one cluster report.

    ``fresh``: each node measures its probes now rather than reporting its agent's last round.
    """
    report = Report(scope="cluster", nodes=sorted(lab.nodes))
    results: dict[str, Report | Finding] = {}
    threads = [
        threading.Thread(
            target=lambda n=name, ns=ns: results.__setitem__(
                n, node_check(lab, n, ns, fresh=fresh)
            ),
            name=f"check-{name}",
            daemon=True,
        )
        for name, ns in sorted(lab.nodes.items())
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for name in sorted(lab.nodes):
        one = results.get(name) or _not_run(name, f"no answer within {timeout:g}s")
        if isinstance(one, Report):
            report.extend(one)
        else:
            report.findings.append(one)
    report.findings.extend(diagnose_cluster(report.probes))
    return report


def node_check(lab: LabInfo, node: str, ns: str, *, fresh: bool = True) -> Report | Finding:
    """``vxlan-manager check`` for ``node``, run in a thread inside its namespace.

    One process for all nodes (the Kubernetes client is imported once): each
    thread enters its node's namespace, so its netlink reads, its API requests
    over the lab underlay and its request to the agent's loopback endpoint all
    happen from that node, as ``vxlan-manager check`` on the node would.
    """
    argv = ["--node", node, "--kubeconfig", lab.kubeconfig, "--fresh" if fresh else "--no-fresh"]
    try:
        return in_netns(ns, lambda: health_cli.node_report(health_cli.parse_args(argv)))
    except (health_cli.CheckError, KubeError, OSError, NetlinkError) as exc:
        return _not_run(node, str(exc))


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a new thread that entered ``ns`` (setns changes only the calling thread).

    Exceptions of ``fn`` are raised in the caller.
    """
    out: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            pyr_netns.setns(ns, flags=0)
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 (re-raised in the calling thread)
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"in-{ns}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


def _not_run(node: str, why: str) -> Finding:
    return Finding(
        Severity.BROKEN,
        node,
        "check.run",
        f"the node check on {node} could not run: {why}",
        "run `vxlan-manager check` in that node's namespace by hand to see the error",
    )
