"""Probe cost: the prober against 100 simulated peers (root: runs in namespaces it makes).

Two namespaces joined by a veth underlay (198.18.0.1 and 198.18.0.2), each with
``vmo-br0`` + ``vmo-vx0`` (VNI 4242, MTU 1450). The peer side holds 100 probe
addresses (198.18.255.2-101) on its bridge, so the kernel answers 100 peers
behind one VTEP; every probe still crosses the overlay both ways. A child
process in the prober's namespace runs real probe rounds (one 64-byte and one
1450-byte don't-fragment echo per peer) and measures, per round: wall time,
CPU time of the process, packets sent and received. From those it prints the
cost at the default 10 s period: packets/s and CPU% of one core.

    python -m bench health            # 100 peers
    python -m bench.health --peers 250
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS = 100
ROUNDS = 10
PERIOD = 10.0  # the prober's default period


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.health", description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=PEERS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(
        sys.argv[1:] if argv is None and __name__ == "__main__" else argv or []
    )
    if args.child:
        print(json.dumps(child(args.peers, args.rounds)))
        return 0
    if os.geteuid() != 0:
        print("bench.health: needs root (network namespaces); skipped")
        return 0
    if not 1 <= args.peers <= 250:
        print("bench.health: --peers must be 1..250 (one /24 probe pool)")
        return 2
    figures = run(args.peers, args.rounds)
    print(render(figures))
    return 0


def run(peers: int, rounds: int) -> dict[str, Any]:
    from e2e.netns import RunNamespaces

    with RunNamespaces() as ns_run:
        prober_ns, peers_ns = ns_run.add("hb-a"), ns_run.add("hb-b")
        build(ns_run, prober_ns, peers_ns, peers)
        argv = [sys.executable, "-m", "bench.health", "--child"]
        argv += ["--peers", str(peers), "--rounds", str(rounds)]
        out = ns_run.check(prober_ns, argv, cwd=str(ROOT), timeout=120)
    figures: dict[str, Any] = json.loads(out)
    return figures


def build(ns_run: Any, a: str, b: str, peers: int) -> None:
    ns_run.check(a, ["ip", "link", "add", "eth0", "type", "veth", "peer", "eth0", "netns", b])
    for i, ns in ((1, a), (2, b)):
        for cmd in (
            ["addr", "add", f"198.18.0.{i}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "add", "vmo-br0", "mtu", "1450", "type", "bridge"],
            ["link", "set", "vmo-br0", "up"],
            ["link", "add", "vmo-vx0", "mtu", "1450", "type", "vxlan", "id", "4242",
             "dstport", "4789", "local", f"198.18.0.{i}", "nolearning"],
            ["link", "set", "vmo-vx0", "master", "vmo-br0", "up"],
        ):  # fmt: skip
            ns_run.check(ns, ["ip", *cmd])
        other = f"198.18.0.{3 - i}"
        fdb = ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vmo-vx0", "dst", other]
        ns_run.check(ns, fdb)
    batch = "".join(f"address add 198.18.255.{2 + k}/24 dev vmo-br0\n" for k in range(peers))
    ns_run.check(b, ["ip", "-batch", "-"], input=batch)


def child(peers: int, rounds: int) -> dict[str, Any]:
    """Runs inside the prober's namespace: real rounds against ``peers`` addresses."""
    from vmoverlay import api
    from vxlan_manager.health.probe import IcmpProber, Prober

    nodes = [api.Node("self", "198.18.0.1", True, probe_ip="198.18.255.1")]
    nodes += [
        api.Node(f"peer{k:03d}", "198.18.0.2", True, probe_ip=f"198.18.255.{2 + k}")
        for k in range(peers)
    ]
    prober = Prober(
        "self", bridge="vmo-br0", nodes=lambda: nodes, mtu=lambda: 1450, pool="198.18.255.0/24"
    )
    source = prober._prepare()
    icmp = IcmpProber(source=source)
    try:
        prober.run_round(icmp)  # warm-up: ARP for every peer
        walls, cpus, reachable, mtu_ok = [], [], 0, 0
        for _ in range(rounds):
            cpu0, wall0 = _cpu(), time.perf_counter()
            results = prober.run_round(icmp)
            walls.append(time.perf_counter() - wall0)
            cpus.append(_cpu() - cpu0)
            reachable = sum(r.reachable for r in results)
            mtu_ok = sum(bool(r.mtu_ok) for r in results)
    finally:
        icmp.close()
    return {
        "peers": peers,
        "rounds": rounds,
        "round_wall_ms_median": sorted(walls)[len(walls) // 2] * 1000,
        "round_cpu_ms_median": sorted(cpus)[len(cpus) // 2] * 1000,
        "reachable": reachable,
        "mtu_ok": mtu_ok,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def render(f: dict[str, Any]) -> str:
    packets_out = 2 * f["peers"]
    cpu_pct = f["round_cpu_ms_median"] / 1000 / PERIOD * 100
    return "\n".join(
        [
            f"probe cost, {f['peers']} peers, {f['rounds']} rounds "
            f"(all reachable: {f['reachable']}/{f['peers']}, full-size ok: {f['mtu_ok']})",
            f"  one round: {f['round_wall_ms_median']:.1f} ms wall, "
            f"{f['round_cpu_ms_median']:.1f} ms CPU, {packets_out} probes out + "
            f"{packets_out} replies in",
            f"  at the default {PERIOD:.0f} s period: {packets_out / PERIOD:.0f} packets/s out, "
            f"{packets_out / PERIOD:.0f} in, {cpu_pct:.2f}% of one core; "
            f"child RSS {f['rss_mb']:.0f} MB",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
