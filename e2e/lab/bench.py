"""``vmoverlay-lab bench throughput``: TCP throughput across the overlay vs the underlay.

Runs iperf3 (TCP, one stream, ``--seconds`` each, default 5) on a running
lab, ``--repeat`` times (default 3) alternating the two paths, and reports the
median of each (the machine is shared, single runs are noisy):

- overlay: between two VMs on different nodes, guest to guest, so every
  frame crosses the VM's uplink, the node bridge, VXLAN encapsulation, the
  fabric, and the same path back up on the other node;
- underlay: between the two nodes hosting those VMs, node address to node
  address over the same fabric link, without encapsulation.

The ratio overlay / underlay is the overlay's cost on this machine. Both runs
are bounded (iperf3 ``-t`` plus a hard timeout) and stop by themselves; all
traffic stays inside the lab's namespaces on lab addresses.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from e2e.lab.check import LabNotFound, add_lab_arguments, find_lab
from vmoverlay.logs import add_logging_args, get_logger, setup_logging

PORT = 5201
log = get_logger("lab")


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoint:
    ns: str
    ip: str
    node: str


@dataclass(frozen=True)
class Throughput:
    overlay_bps: float
    underlay_bps: float
    seconds: int
    overlay: tuple[str, str]  # VM names
    underlay: tuple[str, str]  # node names
    repeat: int = 1  # runs of each; the figures are their medians

    @property
    def ratio(self) -> float:
        return self.overlay_bps / self.underlay_bps if self.underlay_bps else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vmoverlay-lab bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", choices=["throughput"])
    add_lab_arguments(parser)
    parser.add_argument("--seconds", type=int, default=5, help="seconds per iperf3 run (1-60)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each path (1-10)")
    parser.add_argument("--json", action="store_true")
    add_logging_args(parser)
    args = parser.parse_args(argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    try:
        if not 1 <= args.seconds <= 60 or not 1 <= args.repeat <= 10:
            raise BenchError("--seconds must be 1..60 and --repeat 1..10")
        lab = find_lab(args.run)
        a, b, node_a, node_b = pick_endpoints(lab.sheet)
        result = throughput(a, b, node_a, node_b, seconds=args.seconds, repeat=args.repeat)
    except (LabNotFound, BenchError) as exc:
        print(f"vmoverlay-lab bench: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"vmoverlay-lab bench: failed to run the benchmark: {exc}; are you root, and is the "
            "lab still up (`vmoverlay-lab status`)?",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render(result))
    return 0


def render(r: Throughput) -> str:
    return "\n".join(
        [
            f"iperf3 TCP, 1 stream, {r.seconds} s per run, median of {r.repeat} alternating runs",
            f"  overlay   {r.overlay[0]} -> {r.overlay[1]}: {r.overlay_bps / 1e9:8.2f} Gbit/s",
            f"  underlay  {r.underlay[0]} -> {r.underlay[1]}: {r.underlay_bps / 1e9:8.2f} Gbit/s",
            f"  ratio overlay/underlay: {r.ratio:.2f}",
        ]
    )


def pick_endpoints(sheet: dict[str, Any]) -> tuple[Endpoint, Endpoint, Endpoint, Endpoint]:
    """Two VMs on different nodes, and those two nodes (underlay address from their eth0)."""
    try:
        return _pick_endpoints(sheet)
    except (KeyError, TypeError, AttributeError) as exc:
        raise BenchError(
            f"failed to read the lab's VMs from its cheat sheet (missing {exc}): restart the "
            "lab with this vmoverlay version (`vmoverlay-lab down`, then `up`)"
        ) from exc


def _pick_endpoints(sheet: dict[str, Any]) -> tuple[Endpoint, Endpoint, Endpoint, Endpoint]:
    vms = sorted((sheet.get("vms") or {}).items())
    for i, (name_a, a) in enumerate(vms):
        for name_b, b in vms[i + 1 :]:
            if a["node"] != b["node"]:
                nodes = sheet["nodes"]
                return (
                    Endpoint(a["guest"], a["ip"], name_a),
                    Endpoint(b["guest"], b["ip"], name_b),
                    Endpoint(nodes[a["node"]], underlay_ip(nodes[a["node"]]), a["node"]),
                    Endpoint(nodes[b["node"]], underlay_ip(nodes[b["node"]]), b["node"]),
                )
    raise BenchError("the lab has no two VMs on different nodes: start it with --vms 2 or more")


def underlay_ip(ns: str) -> str:
    proc = subprocess.run(
        ["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(
            f"failed to read the underlay address of eth0 in {ns}: {proc.stderr.strip()}; "
            "is the lab still up (`vmoverlay-lab status`)?"
        )
    for link in json.loads(proc.stdout or "[]"):
        for addr in link.get("addr_info", []):
            return str(addr["local"])
    raise BenchError(f"no IPv4 address on eth0 in {ns}")


def throughput(
    a: Endpoint, b: Endpoint, node_a: Endpoint, node_b: Endpoint, *, seconds: int, repeat: int = 1
) -> Throughput:
    """Median of ``repeat`` alternating overlay/underlay runs (a shared machine is noisy)."""
    if shutil.which("iperf3") is None:
        raise BenchError("iperf3 is not installed: apt-get install iperf3")
    overlay, underlay = [], []
    for _ in range(repeat):
        overlay.append(iperf(b, a, seconds))
        underlay.append(iperf(node_b, node_a, seconds))
    return Throughput(
        statistics.median(overlay),
        statistics.median(underlay),
        seconds,
        (b.node, a.node),
        (node_b.node, node_a.node),
        repeat,
    )


def iperf(client: Endpoint, server: Endpoint, seconds: int) -> float:
    """Bits/s received by ``server`` from one TCP stream of ``client`` for ``seconds``."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server.ns, "iperf3", "-s", "-1", "-B", server.ip, "-p", str(PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(0.3)  # let the one-off server listen
        argv = ["ip", "netns", "exec", client.ns, "iperf3", "-c", server.ip, "-p", str(PORT)]
        argv += ["-t", str(seconds), "-J"]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 15, check=False
        )
        if proc.returncode != 0:
            raise BenchError(
                f"iperf3 {client.ns} -> {server.ip} failed: {proc.stdout[-300:]} {proc.stderr}"
            )
        try:
            bps = float(json.loads(proc.stdout)["end"]["sum_received"]["bits_per_second"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BenchError(
                f"failed to read iperf3's result ({client.ns} -> {server.ip}): {exc}; "
                "run iperf3 by hand in those namespaces to see why"
            ) from exc
        log.info("iperf3", client=client.node, server=server.node, gbps=round(bps / 1e9, 2))
        return bps
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"iperf3 {client.ns} -> {server.ip} did not finish") from exc
    finally:
        if srv.poll() is None:
            srv.terminate()
        srv.wait(timeout=5)
