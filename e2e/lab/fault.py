"""``vmoverlay-lab fault``: inject faults into a running lab's fabric, and remove them.

    vmoverlay-lab fault add drop-vxlan --node n1     nftables drops VXLAN UDP on n1's underlay
    vmoverlay-lab fault add mtu --node n1 [--mtu 1400]   lower n1's underlay link MTU
    vmoverlay-lab fault add fdb --node n1 --peer n2  delete n1's all-zero entry toward n2
    vmoverlay-lab fault add vni --node n1 [--vni 4243]   recreate n1's VXLAN device on another VNI
    vmoverlay-lab fault add stop-agent --node n1     SIGSTOP n1's agent (its data plane stays)
    vmoverlay-lab fault remove KIND --node n1 [--peer n2]
    vmoverlay-lab fault list | clear

Every change happens inside the lab node's own namespace. Each fault records
what it needs to be undone in ``/run/vmoverlay/<run id>.faults.json``;
``remove`` restores exactly that and nothing else (the old MTU, the entry that
was deleted, the device's VNI and FDB entries, SIGCONT). A fault that would
change nothing is refused, because its removal would then "restore" a state
that was never there: an fdb fault toward the node itself or toward a peer
that has no entry, an MTU or VNI equal to the current one, a drop-vxlan fault
where an unrecorded ``vmo_fault`` table exists, a stop-agent fault on an agent
stopped already. Arguments are
checked before anything is touched (``--peer`` only for fdb, ``--mtu`` within
the link's range, ``--vni`` within 24 bits), and netlink errors are reported as
"failed to <verb> <object>: <cause>; <what to do>". An agent's periodic resync
may repair an FDB or VNI fault by itself; ``remove`` is then a no-op that
still succeeds.

The nftables rules go through the ``nftables`` Python module (Debian
python3-nftables), run in a thread that has entered the node's namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from e2e.lab.check import LabInfo, LabNotFound, add_lab_arguments, find_lab, in_netns
from e2e.netns import STATE_DIR
from vmoverlay.logs import add_logging_args, get_logger, setup_logging
from vxlan_manager.config import DEFAULT_BRIDGE, DEFAULT_DEVICE
from vxlan_manager.desired import ZERO_MAC, FdbEntry, FdbPlan
from vxlan_manager.netlink import NTF_SELF, NUD_STATIC, Kernel, NetlinkFailure

KINDS = ("drop-vxlan", "mtu", "fdb", "vni", "stop-agent")
DEFAULT_FAULT_MTU = 1400
ETH_MIN_MTU = 68  # the kernel's minimum for an Ethernet link (IPv4 needs 68 too)
IPV6_MIN_MTU = 1280  # an IPv6 underlay needs at least this
VNI_MAX = 2**24 - 1
UNDERLAY_IF = "eth0"
NFT_TABLE = "vmo_fault"
log = get_logger("lab")


class FaultError(RuntimeError):
    pass


@dataclass
class Fault:
    kind: str
    node: str
    peer: str | None = None
    undo: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.kind, self.node, self.peer)

    def __str__(self) -> str:
        return f"{self.kind} on {self.node}" + (f" toward {self.peer}" if self.peer else "")


# ---- the record of active faults -----------------------------------------------------


def _faults_path(lab: LabInfo) -> Path:
    return STATE_DIR / f"{lab.run_id}.faults.json"


def active(lab: LabInfo) -> list[Fault]:
    path = _faults_path(lab)
    if not path.exists():
        return []
    return [Fault(**f) for f in json.loads(path.read_text())]


def _save(lab: LabInfo, faults: list[Fault]) -> None:
    path = _faults_path(lab)
    if not faults:
        path.unlink(missing_ok=True)
        return
    path.write_text(json.dumps([asdict(f) for f in faults], indent=2) + "\n")


# ---- inject / remove -----------------------------------------------------------------


def check_arguments(
    kind: str,
    node: str,
    *,
    peer: str | None = None,
    mtu: int | None = None,
    vni: int | None = None,
) -> None:
    """Refuse option combinations that do not fit the fault kind (pure)."""
    if kind not in KINDS:
        raise FaultError(f"unknown fault {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "fdb":
        if peer is None:
            raise FaultError("the fdb fault needs --peer NODE (whose entry to delete)")
        if peer == node:
            raise FaultError(
                f"--peer {peer} is the node itself: {node} has no FDB entry toward itself "
                "to delete; name another node"
            )
    elif peer is not None:
        raise FaultError(f"--peer is only for the fdb fault, not {kind}: drop it")
    if mtu is not None and kind != "mtu":
        raise FaultError(f"--mtu is only for the mtu fault, not {kind}: drop it")
    if vni is not None and kind != "vni":
        raise FaultError(f"--vni is only for the vni fault, not {kind}: drop it")


def mtu_problem(mtu: int, *, current: int, low: int, high: int) -> str | None:
    """Why ``mtu`` cannot be the fault's MTU on a link of ``current`` and range (pure)."""
    if not low <= mtu <= high:
        return f"--mtu {mtu} is outside the link's allowed range {low}..{high}"
    if mtu == current:
        return f"--mtu {mtu} is the link's MTU already: the fault would change nothing"
    return None


def vni_problem(vni: int, *, current: int) -> str | None:
    """Why ``vni`` cannot be the fault's VNI on a device of VNI ``current`` (pure)."""
    if not 0 <= vni <= VNI_MAX:
        return f"--vni {vni} is outside the allowed range 0..{VNI_MAX} (24 bits)"
    if vni == current:
        return f"--vni {vni} is the device's VNI already: the fault would change nothing"
    return None


def inject(
    lab: LabInfo,
    kind: str,
    node: str,
    *,
    peer: str | None = None,
    mtu: int | None = None,
    vni: int | None = None,
) -> Fault:
    """Apply one fault and record how to undo it (exactly what it changed)."""
    check_arguments(kind, node, peer=peer, mtu=mtu, vni=vni)
    ns = _node_ns(lab, node)
    fault = Fault(kind, node, peer)
    if any(f.key == fault.key for f in active(lab)):
        raise FaultError(f"{fault} is already injected: remove it first")
    if kind == "drop-vxlan":
        port = _device(ns).port
        if _nft_table_exists(ns):
            # Its removal deletes the whole table: never one this fault did not make.
            raise FaultError(
                f"an nftables table inet {NFT_TABLE} exists in {ns} but no fault records it: "
                f"delete it (`ip netns exec {ns} nft delete table inet {NFT_TABLE}`) first"
            )
        _nft(ns, _drop_rules(port))
        fault.undo = {"port": port}
    elif kind == "mtu":
        want = DEFAULT_FAULT_MTU if mtu is None else mtu
        current, low, high = _link_mtu_range(ns, UNDERLAY_IF, _device(ns).local)
        problem = mtu_problem(want, current=current, low=low, high=high)
        if problem:
            raise FaultError(f"{problem} ({UNDERLAY_IF} on {node}): choose {low}..{high}")
        fault.undo = {"mtu": current}
        _set_mtu(ns, UNDERLAY_IF, want)
    elif kind == "fdb":
        assert peer is not None  # check_arguments
        vtep = _device(_node_ns(lab, peer)).local
        entry = FdbEntry(ZERO_MAC, vtep)
        if entry not in _fdb_entries(ns):
            raise FaultError(
                f"{node} has no all-zero FDB entry toward {peer} ({vtep}) to delete: "
                f"the fault would change nothing; see `vxlan-manager check` on {node}"
            )
        _fdb(ns, "del", entry)
        fault.undo = {"mac": entry.mac, "vtep": entry.dst}
    elif kind == "vni":
        spec = _device(ns)
        want = spec.vni + 1 if vni is None else vni
        problem = vni_problem(want, current=spec.vni)
        if problem:
            raise FaultError(f"{problem} ({DEFAULT_DEVICE} on {node}): choose another")
        fault.undo = {"vni": spec.vni}
        _recreate_device(ns, want)
    elif kind == "stop-agent":
        pids = agent_pids(ns)
        if not pids:
            raise FaultError(f"no vxlan-manager agent runs in {ns}")
        stopped = [pid for pid in pids if process_state(pid) in STOPPED_STATES]
        if stopped:
            # Its removal would continue a process this fault did not stop.
            raise FaultError(
                f"the agent in {ns} is stopped already (pid {', '.join(map(str, stopped))}), "
                f"not by a recorded fault: `kill -CONT {stopped[0]}` if that is unintended"
            )
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        fault.undo = {"pids": pids}
    _save(lab, [*active(lab), fault])
    log.info("fault injected", fault=str(fault), **fault.undo)
    return fault


def remove(lab: LabInfo, kind: str, node: str, *, peer: str | None = None) -> Fault:
    """Undo one recorded fault."""
    faults = active(lab)
    fault = next((f for f in faults if f.kind == kind and f.node == node and f.peer == peer), None)
    if fault is None:
        raise FaultError(f"no {kind} fault recorded on {node}: see `vmoverlay-lab fault list`")
    ns = _node_ns(lab, node)
    if kind == "drop-vxlan":
        _nft(ns, [f"delete table inet {NFT_TABLE}"])
    elif kind == "mtu":
        _set_mtu(ns, UNDERLAY_IF, int(fault.undo["mtu"]))
    elif kind == "fdb":
        # Only the entry this fault deleted (recorded at inject), never anything else.
        mac, vtep = fault.undo.get("mac", ZERO_MAC), fault.undo.get("vtep")
        if vtep:
            _fdb(ns, "append", FdbEntry(str(mac), str(vtep)))
    elif kind == "vni":
        if _device(ns).vni != int(fault.undo["vni"]):
            _recreate_device(ns, int(fault.undo["vni"]))
    elif kind == "stop-agent":
        for pid in fault.undo["pids"]:
            try:
                os.kill(int(pid), signal.SIGCONT)
            except ProcessLookupError:
                log.warning("agent gone while stopped", node=node, pid=pid)
    _save(lab, [f for f in faults if f is not fault])
    log.info("fault removed", fault=str(fault))
    return fault


def clear(lab: LabInfo) -> list[Fault]:
    """Remove every recorded fault, newest first."""
    removed = []
    for fault in reversed(active(lab)):
        removed.append(remove(lab, fault.kind, fault.node, peer=fault.peer))
    return removed


# ---- the mechanics, each inside the node's namespace ---------------------------------


def _node_ns(lab: LabInfo, node: str) -> str:
    if node not in lab.nodes:
        raise FaultError(f"no node {node} in lab {lab.run_id}: nodes {', '.join(lab.nodes)}")
    return lab.nodes[node]


def _drop_rules(port: int) -> list[str]:
    return [
        f"add table inet {NFT_TABLE}",
        f"add chain inet {NFT_TABLE} in {{ type filter hook input priority -10; }}",
        f"add chain inet {NFT_TABLE} out {{ type filter hook output priority -10; }}",
        f'add rule inet {NFT_TABLE} in iifname "{UNDERLAY_IF}" udp dport {port} drop',
        f'add rule inet {NFT_TABLE} out oifname "{UNDERLAY_IF}" udp dport {port} drop',
    ]


def _nft(ns: str, commands: list[str]) -> None:
    def apply() -> None:
        # Debian python3-nftables; imported here so the other faults never need it.
        import nftables  # type: ignore[import-untyped]

        nft = nftables.Nftables()
        # One transaction: all of the rules or none (no half-made table left unrecorded).
        rc, _out, err = nft.cmd("\n".join(commands))
        if rc != 0:
            raise FaultError(
                f"failed to apply nftables rules in {ns}: {err.strip()}; "
                f"`nft list table inet {NFT_TABLE}` there shows what is in place"
            )

    in_netns(ns, apply)


def _device(ns: str) -> Any:
    with IPRoute(netns=ns) as ipr:
        link = Kernel(ipr).link(DEFAULT_DEVICE)
    if link is None or link.vxlan is None:
        raise FaultError(f"no VXLAN device {DEFAULT_DEVICE} in {ns}: is the agent up?")
    return link.vxlan


def netlink_failure(verb: str, what: str, exc: NetlinkError, todo: str) -> FaultError:
    """A netlink error as "failed to <verb> <object>: <cause>; <what to do>"."""
    cause = os.strerror(exc.code) if exc.code else str(exc)
    return FaultError(f"failed to {verb} {what}: {cause} (errno {exc.code}); {todo}")


def _ifindex(ipr: IPRoute, ns: str, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise FaultError(
            f"no link {ifname} in {ns}: is the lab fully up? see `vmoverlay-lab status`"
        )
    return int(found[0])


def _link_mtu_range(ns: str, ifname: str, vtep: str) -> tuple[int, int, int]:
    """(MTU, lowest, highest) for ``ifname``: the kernel's limits for the link and the VTEP's
    address family (68 for IPv4, 1280 for IPv6)."""
    with IPRoute(netns=ns) as ipr:
        link = ipr.get_links(_ifindex(ipr, ns, ifname))[0]
    family_min = IPV6_MIN_MTU if ":" in vtep else ETH_MIN_MTU
    low = max(int(link.get_attr("IFLA_MIN_MTU") or 0), family_min)
    high = int(link.get_attr("IFLA_MAX_MTU") or 65535) or 65535
    return int(link.get_attr("IFLA_MTU")), low, high


def _set_mtu(ns: str, ifname: str, mtu: int) -> None:
    with IPRoute(netns=ns) as ipr:
        try:
            ipr.link("set", index=_ifindex(ipr, ns, ifname), mtu=mtu)
        except NetlinkError as exc:
            raise netlink_failure(
                "set", f"the MTU of {ifname} in {ns} to {mtu}", exc, "check the link's MTU range"
            ) from exc


def _fdb_entries(ns: str) -> set[FdbEntry]:
    with IPRoute(netns=ns) as ipr:
        return Kernel(ipr).fdb_entries(_ifindex(ipr, ns, DEFAULT_DEVICE))


def _fdb(ns: str, command: str, entry: FdbEntry) -> None:
    """Add (``append``) or remove (``del``) one FDB entry, as the agent itself does."""
    plan = FdbPlan(remove=(entry,)) if command == "del" else FdbPlan(add=(entry,))
    with IPRoute(netns=ns) as ipr:
        index = _ifindex(ipr, ns, DEFAULT_DEVICE)
        try:
            Kernel(ipr).apply_fdb(index, plan)
        except NetlinkFailure as exc:
            raise FaultError(
                f"{exc} (in {ns}); `bridge fdb show dev {DEFAULT_DEVICE}` in {ns}; "
                "the agent's resync restores it"
            ) from exc


def _recreate_device(ns: str, vni: int) -> None:
    """The VXLAN device again, same everything but ``vni`` (VNI cannot change in place)."""
    with IPRoute(netns=ns) as ipr:
        kernel = Kernel(ipr)
        old = kernel.link(DEFAULT_DEVICE)
        if old is None or old.vxlan is None:
            raise FaultError(f"no VXLAN device {DEFAULT_DEVICE} in {ns}")
        spec = old.vxlan
        entries: set[FdbEntry] = kernel.fdb_entries(old.index)
        local = "vxlan_local6" if ":" in spec.local else "vxlan_local"
        try:
            ipr.link("del", index=old.index)
            ipr.link(
                "add",
                ifname=DEFAULT_DEVICE,
                kind="vxlan",
                vxlan_id=vni,
                vxlan_port=spec.port,
                vxlan_learning=spec.learning,
                mtu=spec.mtu,
                **{local: spec.local},
            )
            index = _ifindex(ipr, ns, DEFAULT_DEVICE)
            master = ipr.link_lookup(ifname=spec.master or DEFAULT_BRIDGE)
            ipr.link("set", index=index, master=master[0] if master else 0, state="up")
            for entry in entries:
                ipr.neigh(
                    "append",
                    family=socket.AF_BRIDGE,
                    ifindex=index,
                    lladdr=entry.mac,
                    dst=entry.dst,
                    state=NUD_STATIC,
                    flags=NTF_SELF,
                )
        except NetlinkError as exc:
            raise netlink_failure(
                "recreate",
                f"{DEFAULT_DEVICE} with VNI {vni} in {ns}",
                exc,
                "restart the node's agent (it recreates the device at start)",
            ) from exc


STOPPED_STATES = ("T", "t")  # /proc/<pid>/stat: stopped by a signal, or traced


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc/<pid>/stat (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return parse_stat_state(stat)


def parse_stat_state(stat: str) -> str | None:
    """The state field of a /proc/<pid>/stat line (after the parenthesised command).

    >>> parse_stat_state("42 (vxlan manager) T 1 42")
    'T'
    """
    rest = stat[stat.rfind(")") + 1 :].split()
    return rest[0] if rest else None


def _nft_table_exists(ns: str) -> bool:
    def look() -> bool:
        import nftables

        rc, _out, _err = nftables.Nftables().cmd(f"list table inet {NFT_TABLE}")
        return bool(rc == 0)

    return in_netns(ns, look)


def agent_pids(ns: str) -> list[int]:
    """PIDs in ``ns`` whose command line is ``... vxlan-manager run ...``."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != _ns_id(ns):
                continue
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        names = [Path(a.decode(errors="replace")).name for a in argv]
        if "vxlan-manager" in names and "run" in names:
            pids.append(int(pid))
    return pids


def _ns_id(ns: str) -> str:
    """The ``net:[inode]`` link of a named namespace, as /proc/<pid>/ns/net shows it."""
    return f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]"


# ---- command line --------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vmoverlay-lab fault",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_lab_arguments(parser)
    add_logging_args(parser)
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        p = sub.add_parser(action, help=f"{action} a fault")
        p.add_argument("kind", choices=KINDS)
        p.add_argument("--node", required=True)
        p.add_argument("--peer", help="fdb: the peer whose entry is deleted")
        if action == "add":
            p.add_argument("--mtu", type=int, help="mtu: the lowered MTU (default 1400)")
            p.add_argument("--vni", type=int, help="vni: the wrong VNI (default: VNI + 1)")
    sub.add_parser("list", help="faults in place")
    sub.add_parser("clear", help="remove every fault")
    args = parser.parse_args(argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    try:
        lab = find_lab(args.run)
        if args.action == "add":
            fault = inject(lab, args.kind, args.node, peer=args.peer, mtu=args.mtu, vni=args.vni)
            print(f"injected: {fault}")
        elif args.action == "remove":
            print(f"removed: {remove(lab, args.kind, args.node, peer=args.peer)}")
        elif args.action == "clear":
            for fault in clear(lab):
                print(f"removed: {fault}")
        else:
            for fault in active(lab):
                print(fault)
    except (LabNotFound, FaultError) as exc:
        print(f"vmoverlay-lab fault: {exc}", file=sys.stderr)
        return 2
    except NetlinkError as exc:
        failure = netlink_failure(
            args.action, "the fault", exc, "see `vmoverlay-lab status` and the agent's logs"
        )
        print(f"vmoverlay-lab fault: {failure}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"vmoverlay-lab fault: failed to {args.action} the fault: {exc}; are you root, "
            "and is the lab still up (`vmoverlay-lab status`)?",
            file=sys.stderr,
        )
        return 2
    return 0
