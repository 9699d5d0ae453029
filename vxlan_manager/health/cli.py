"""``vxlan-manager check``: the fabric health check, on one node or cluster-wide.

On a node (``check``): reads this network namespace's VXLAN device, bridge,
underlay link, FDB and neighbour entries through netlink, the Nodes and
VirtualMachines through the Kubernetes API, and the peer probe results from
the local agent's ``/health`` endpoint; compares them with the intent (the
same flags, environment and config file the agent takes) and prints findings.

Cluster-wide (``check --cluster``): lists the Nodes, asks every node's agent
for its own report at ``http://<node address>:<agent port>/health`` and merges
them: the node-by-node probe matrix (RTT and MTU status) and every finding by
node. A node whose agent does not answer is itself a finding.

Probe results: by default the node check reads the agent's last probe round
(up to one probe period old; every result shows its age, and one older than
two periods is reported as ``probe.stale``). ``--fresh`` measures a round now
from this node's probe address (needs CAP_NET_RAW, as root on the node or in
the agent pod), so the answer is current; the agent's report is still read
for ``agent.health``. ``vmoverlay-lab check`` uses ``--fresh`` by default.

Output: a table for people, ``--json`` for tools (schema in :mod:`.findings`).
Exit codes: 0 healthy, 1 degraded, 2 broken, 3 the check itself could not run
(API unreachable, bad flags); the reason is printed on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, NoReturn

from kubernetes import client as k8s
from pyroute2 import IPRoute

from vmoverlay import api, kube
from vmoverlay.logs import add_logging_args, get_logger, setup_logging
from vmoverlay.metrics import parse_listen
from vxlan_manager.config import AgentConfig, ConfigError, load_config
from vxlan_manager.health.checks import check_duplicate_vteps, check_node, diagnose_cluster
from vxlan_manager.health.findings import Finding, Report, Severity, render_table
from vxlan_manager.health.observe import observe_node
from vxlan_manager.health.probe import ProbeError, measure_now, stale_after
from vxlan_manager.health.service import ProbeSettings

EXIT_CANNOT_CHECK = 3
DEFAULT_AGENT_PORT = 9464
HEALTH_PATH = "/health"
log = get_logger("vxlan-manager")


class CheckError(RuntimeError):
    """The check could not run; the message says why and what to do."""


class CheckArgumentParser(argparse.ArgumentParser):
    """Bad flags exit with 3 ("the check could not run"), not argparse's 2 (= broken)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_CANNOT_CHECK, f"{self.prog}: error: {message}\n")


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds above 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", help="this node's name (default: $VMOVERLAY_NODE_NAME)")
    parser.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG, else in-cluster)")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument(
        "--cluster", action="store_true", help="check every node through its agent's endpoint"
    )
    parser.add_argument(
        "--agent-url",
        help=f"this node's agent, for probe results (default: its --metrics-addr + "
        f"{HEALTH_PATH}; 'none' skips probes)",
    )
    parser.add_argument(
        "--agent-port",
        type=int,
        default=DEFAULT_AGENT_PORT,
        help="port of every agent's metrics/health server, for --cluster",
    )
    parser.add_argument(
        "--timeout", type=positive_seconds, default=3.0, help="seconds per agent request"
    )
    parser.add_argument(
        "--fresh",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="measure the probes now from this node (needs CAP_NET_RAW) instead of "
        "reading the agent's last round (default: --no-fresh)",
    )
    intent = parser.add_argument_group(
        "intent: the agent's own configuration sources (flags > environment > --config file)"
    )
    intent.add_argument("--config", help="the agent's config file (default: $VMOVERLAY_CONFIG)")
    intent.add_argument("--vni", type=int)
    intent.add_argument("--port", type=int, help="VXLAN UDP port")
    intent.add_argument("--device")
    intent.add_argument("--bridge")
    intent.add_argument("--underlay-address", help="local VTEP (default: the Node's VTEP)")
    intent.add_argument("--underlay-interface")
    intent.add_argument("--mtu", type=int, help="overlay MTU (default: underlay - 50/70)")
    intent.add_argument(
        "--learning", action="store_const", const=True, help="the device learns MACs"
    )
    intent.add_argument("--metrics-addr", help="the local agent's metrics/health server")
    add_logging_args(parser)


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = CheckArgumentParser(
        prog="vxlan-manager check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, ipr: IPRoute | None = None) -> int:
    """Run the check the arguments ask for; print it; return the exit code."""
    setup_logging(level=args.log_level, fmt=args.log_format)
    try:
        report = cluster_report(args) if args.cluster else node_report(args, ipr)
    except (CheckError, kube.KubeError) as exc:
        print(f"vxlan-manager check: {exc}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    print(json.dumps(report.to_dict(), indent=2) if args.json else render_table(report))
    return report.exit_code


# ---- one node ------------------------------------------------------------------------


def node_report(args: argparse.Namespace, ipr: IPRoute | None = None) -> Report:
    """This node's report; ``ipr``: read another namespace's kernel (tests), else this one."""
    cfg = config_from_args(args)
    client = kube.load_client(args.kubeconfig or cfg.kubeconfig)
    nodes, vms = list_nodes(client), list_vms(client)
    observed = observe_node(cfg, ipr)

    url = args.agent_url or agent_url(cfg.metrics_addr)
    settings = probe_settings()
    max_age = stale_after(settings.period, settings.timeout)
    probes, agent_problem = None, None
    if url != "none":
        try:
            agent = fetch_report(url, args.timeout)
        except CheckError as exc:
            agent_problem = agent_unreachable(cfg.node, str(exc))
        else:
            probes = agent.probes
            max_age = agent.probe_max_age or max_age  # the agent knows its own period
    on_demand = False
    if getattr(args, "fresh", False):
        if observed.bridge is None:
            log.warning("no fresh probes: the bridge is missing", bridge=cfg.bridge)
        else:
            try:
                probes = measure_now(
                    cfg.node,
                    nodes,
                    mtu=observed.bridge.mtu,
                    pool=settings.pool,
                    timeout=settings.timeout,
                )
                on_demand = True
            except ProbeError as exc:
                log.warning("no fresh probes, using the agent's last round", error=str(exc))
    report = check_node(cfg, observed, nodes, vms, probes, probe_max_age=max_age)
    report.probes_on_demand = on_demand
    if agent_problem is not None:
        report.findings.append(agent_problem)
    return report


def probe_settings() -> ProbeSettings:
    """The agents' probe settings (the same ``VMOVERLAY_PROBE_*`` environment)."""
    try:
        return ProbeSettings.from_env()
    except ConfigError as exc:
        raise CheckError(str(exc)) from exc


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The agent's configuration, from the same sources the agent reads."""
    keys = ["node", "vni", "port", "device", "bridge", "underlay_address", "underlay_interface"]
    keys += ["mtu", "learning", "metrics_addr", "kubeconfig"]
    flags = {key: getattr(args, key) for key in keys}
    try:
        return load_config(flags=flags, config_file=args.config)
    except ConfigError as exc:
        raise CheckError(str(exc)) from exc


def agent_url(metrics_addr: str) -> str:
    """The local agent's health URL from its metrics address (a wildcard means loopback)."""
    host, port = parse_listen(metrics_addr)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{_host(host)}:{port}{HEALTH_PATH}"


# ---- cluster -------------------------------------------------------------------------


def cluster_report(args: argparse.Namespace) -> Report:
    client = kube.load_client(args.kubeconfig)
    nodes = list_nodes(client)
    checks = ["agents", "cluster.localisation"]
    report = Report(scope="cluster", nodes=[n.name for n in nodes], checks=checks)
    report.findings.extend(check_duplicate_vteps(nodes))
    for node in nodes:
        address = node.internal_ip or node.vtep_ip
        if not address:
            report.findings.append(agent_unreachable(node.name, "the Node has no InternalIP"))
            continue
        url = f"http://{_host(address)}:{args.agent_port}{HEALTH_PATH}"
        try:
            report.extend(fetch_report(url, args.timeout))
        except CheckError as exc:
            report.findings.append(agent_unreachable(node.name, str(exc)))
    _dedupe_vtep_findings(report)
    report.findings.extend(diagnose_cluster(report.probes))
    return report


def _dedupe_vtep_findings(report: Report) -> None:
    """Each agent reports duplicate VTEPs for itself; the cluster view did too."""
    seen: set[tuple[str, str, str | None]] = set()
    kept = []
    for f in report.findings:
        key = (f.node, f.property, f.peer)
        if f.property == "nodes.vtep" and key in seen:
            continue
        seen.add(key)
        kept.append(f)
    report.findings[:] = kept


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def agent_unreachable(node: str, why: str) -> Finding:
    return Finding(
        Severity.DEGRADED,
        node,
        "agent.health",
        f"the vxlan-manager agent on {node} did not answer: {why}; its data plane is not "
        "being kept and its probe results are unknown",
        f"check the agent pod on {node} (is it running? its logs) and that its metrics "
        "server listens where --agent-port / --agent-url point",
    )


def fetch_report(url: str, timeout: float) -> Report:
    """The report an agent serves at ``url`` (its own node's findings and probes)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CheckError(f"failed to read {url}: {exc}") from exc
    try:
        return Report.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckError(f"failed to parse the report from {url}: {exc}") from exc


# ---- the API -------------------------------------------------------------------------


def list_nodes(client: k8s.ApiClient) -> list[api.Node]:
    core = k8s.CoreV1Api(client)
    items = kube.call(core.list_node).items
    return [api.Node.from_obj(kube.to_dict(client, item)) for item in items]


def list_vms(client: k8s.ApiClient) -> list[api.VirtualMachine]:
    """Every VM with a parsable record; a malformed one is logged and skipped."""
    objs: list[dict[str, Any]] = kube.CustomObjects(client).list(api.VM_PLURAL)["items"]
    out = []
    for obj in objs:
        try:
            out.append(api.VirtualMachine.from_obj(obj))
        except api.InvalidObject as exc:
            log.warning("skipping malformed VirtualMachine", error=str(exc))
    return out


if __name__ == "__main__":
    sys.exit(main())
