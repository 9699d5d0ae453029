"""Peer probes across the overlay: reachability, round-trip time and path MTU.

Probe addresses
    Each node has one IPv4 probe address on its bridge (``vmo-br0``), so probes
    travel exactly the way VM frames do: bridge -> VXLAN device -> underlay ->
    the peer's VXLAN device -> its bridge. The address is the Node annotation
    ``vmoverlay.io/probe-ip`` when set, else derived from the node probe pool
    (default ``198.18.255.0/24``, outside the lab's underlay 198.18.0.0/24 and
    VM pool 198.19.0.0/16): the pool's network plus the low bits of the node's
    VTEP address (VTEP 198.18.0.7 -> 198.18.255.7). That is stable across
    restarts and node churn, and unique as long as VTEPs differ in those bits;
    two nodes mapping to one address are reported, and the annotation settles
    it. The pool must never overlap a VM pool: a probe address is never a VM's.

Answering
    The kernel answers ICMP echo for the probe address: no agent code is on
    the answering path, so a stopped agent still answers and a peer that does
    not answer has a data-plane problem, not a process problem.

Probing
    Every period (default 10 s) the prober sends each peer one small echo
    request (64 bytes) and one full-size one (the overlay MTU, IP header
    included) with don't-fragment set, then waits up to the timeout (default
    1 s) for the replies. ``IP_PMTUDISC_PROBE`` sets DF but ignores the
    kernel's cached path MTU, so a fault that has gone is seen as gone at the
    next round. Cost: 2 packets out and 2 in per peer per period (100 peers,
    10 s: 20 packets/s each way).

    - reachable: either probe answered; RTT from the small one (else the full one);
    - mtu_ok: the full-size probe answered (None when the peer is unreachable).

Age
    Every result carries its age; one older than two periods plus the timeout
    (:func:`stale_after`, 21 s by default) means the prober stalled and is
    reported as ``probe.stale``. A result up to a period old can still say
    "reachable" for a peer that is not any more, so ``check --fresh`` (the
    default of ``vmoverlay-lab check``) measures a round itself, now
    (:func:`measure_now`), from the node's probe address.

# Limitation: probes are IPv4 only (ICMP over an IPv4 probe pool); an IPv6 overlay
# is probed through IPv4 probe addresses on the same bridge, which is fine since
# the bridge is layer 2, but an IPv6-only host stack cannot be probed.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vmoverlay import api
from vmoverlay.logs import StructLogger, get_logger
from vxlan_manager.health.findings import ProbeResult

DEFAULT_PROBE_POOL = "198.18.255.0/24"
DEFAULT_PERIOD = 10.0
DEFAULT_TIMEOUT = 1.0
SMALL_SIZE = 64  # bytes of IP packet
IP_HEADER, ICMP_HEADER = 20, 8
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
# Linux socket options not exported by the socket module on every version.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_PROBE = getattr(socket, "IP_PMTUDISC_PROBE", 3)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RECEIVE_BUFFER = 8 * 1024 * 1024  # ~1,000 peers' full-size replies with kernel overhead

log = get_logger("vxlan-manager")


class ProbeError(RuntimeError):
    """The prober cannot run (no raw socket, no probe address); the message says what to do."""


def stale_after(period: float = DEFAULT_PERIOD, timeout: float = DEFAULT_TIMEOUT) -> float:
    """Age in seconds past which a probe result is stale: two periods plus the timeout.

    >>> stale_after(10.0, 1.0)
    21.0
    """
    return 2 * period + timeout


# ---- addresses (pure) ----------------------------------------------------------------


def probe_address(node: api.Node, pool: str = DEFAULT_PROBE_POOL) -> str | None:
    """The node's probe address: its annotation, else derived from ``pool`` and its VTEP.

    >>> n = api.Node("a", "198.18.0.7", True)
    >>> probe_address(n)
    '198.18.255.7'
    """
    if node.probe_ip:
        return str(ipaddress.ip_address(node.probe_ip))
    if not node.vtep_ip:
        return None
    net = ipaddress.ip_network(pool)
    host = int(ipaddress.ip_address(node.vtep_ip)) & int(net.hostmask)
    if host == 0 or host == int(net.hostmask):
        return None  # would be the pool's network or broadcast address
    return str(net.network_address + host)


def probe_interface(address: str, pool: str = DEFAULT_PROBE_POOL) -> str:
    """``address/prefix`` as it goes on the bridge (the pool's prefix length)."""
    return f"{address}/{ipaddress.ip_network(pool).prefixlen}"


@dataclass(frozen=True)
class Target:
    peer: str
    ip: str


def probe_targets(
    local: str, nodes: Iterable[api.Node], pool: str = DEFAULT_PROBE_POOL
) -> tuple[list[Target], list[str]]:
    """Peers to probe, and problems (a peer without address, two peers on one address)."""
    targets: list[Target] = []
    problems: list[str] = []
    owner: dict[str, str] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        address = probe_address(node, pool)
        if address is None:
            problems.append(
                f"node {node.name} has no probe address: set the {api.PROBE_IP_ANNOTATION} "
                "annotation"
            )
            continue
        if address in owner:
            problems.append(
                f"nodes {owner[address]} and {node.name} share probe address {address}: "
                f"set the {api.PROBE_IP_ANNOTATION} annotation on one of them"
            )
            continue
        owner[address] = node.name
        if node.name != local:
            targets.append(Target(node.name, address))
    return targets, problems


# ---- the probe address on the bridge (netlink) ---------------------------------------


def ensure_probe_address(ipr: IPRoute, bridge: str, address: str, pool: str) -> bool:
    """Put ``address`` (with the pool's prefix) on ``bridge``; drop other pool addresses.

    Returns False when the bridge does not exist (yet). Existing is success.
    """
    found = ipr.link_lookup(ifname=bridge)
    if not found:
        return False
    index = int(found[0])
    net = ipaddress.ip_network(pool)
    present: list[tuple[str, int]] = []
    for msg in ipr.get_addr(family=socket.AF_INET, index=index):
        have = ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))
        if have in net:
            present.append((str(have), int(msg["prefixlen"])))
    for ip, prefix in present:
        if ip != address:
            log.info("removing old probe address", bridge=bridge, address=ip)
            _addr(ipr, "del", index, ip, prefix)
    if (address, net.prefixlen) not in present:
        log.info("adding probe address", bridge=bridge, address=address)
        _addr(ipr, "add", index, address, net.prefixlen)
    return True


def _addr(ipr: IPRoute, command: str, index: int, ip: str, prefix: int) -> None:
    try:
        ipr.addr(command, index=index, address=ip, prefixlen=prefix)
    except NetlinkError as exc:
        if command == "add" and exc.code == errno.EEXIST:
            return
        if command == "del" and exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
            return
        raise ProbeError(f"failed to {command} probe address {ip}/{prefix}: {exc}") from exc


# ---- one round of ICMP probes --------------------------------------------------------


@dataclass
class _Sent:
    target: Target
    full: bool
    at: float


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, size: int) -> bytes:
    """An ICMP echo request whose IP packet is ``size`` bytes long."""
    payload = bytes(max(0, size - IP_HEADER - ICMP_HEADER))
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def parse_echo_reply(packet: bytes) -> tuple[str, int, int] | None:
    """(source, id, seq) of an IPv4 ICMP echo reply as a raw socket receives it."""
    if len(packet) < IP_HEADER + ICMP_HEADER:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + ICMP_HEADER or packet[ihl] != ICMP_ECHO_REPLY:
        return None
    ident, seq = struct.unpack("!HH", packet[ihl + 4 : ihl + 8])
    return socket.inet_ntoa(packet[12:16]), ident, seq


class IcmpProber:
    """Sends the probes of one round and collects the replies (one raw socket)."""

    def __init__(self, *, source: str | None = None) -> None:
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except PermissionError as exc:
            raise ProbeError(
                "failed to open a raw ICMP socket: the agent needs CAP_NET_RAW for probes"
            ) from exc
        self.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        # A round's replies arrive while it is still sending: room for all of them, so
        # none is dropped by a full socket buffer (which would read as loss).
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.sock.setblocking(False)
        self.source = source
        if source:
            self.sock.bind((source, 0))
        self.ident = (os.getpid() ^ id(self)) & 0xFFFF
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def round(
        self, targets: Sequence[Target], *, mtu: int, node: str, timeout: float = DEFAULT_TIMEOUT
    ) -> list[ProbeResult]:
        """One small and one full-size probe per target; results once all answer or time out."""
        sent: dict[int, _Sent] = {}
        errors: dict[tuple[str, bool], str] = {}
        for target in targets:
            for full in (False, True):
                seq = self._next_seq()
                packet = echo_request(self.ident, seq, mtu if full else SMALL_SIZE)
                try:
                    self.sock.sendto(packet, (target.ip, 0))
                except OSError as exc:
                    errors[(target.peer, full)] = f"send failed: {exc.strerror or exc}"
                    continue
                sent[seq] = _Sent(target, full, time.monotonic())
        rtts = self._collect(sent, timeout)
        return [self._result(node, t, mtu, rtts, errors) for t in targets]

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    def _collect(self, sent: dict[int, _Sent], timeout: float) -> dict[tuple[str, bool], float]:
        rtts: dict[tuple[str, bool], float] = {}
        deadline = time.monotonic() + timeout
        pending = dict(sent)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            while True:
                try:
                    packet = self.sock.recv(65535)
                except BlockingIOError:
                    break
                now = time.monotonic()
                reply = parse_echo_reply(packet)
                if reply is None or reply[1] != self.ident or reply[2] not in pending:
                    continue
                probe = pending[reply[2]]
                if reply[0] != probe.target.ip:
                    continue
                del pending[reply[2]]
                rtts[(probe.target.peer, probe.full)] = now - probe.at
        return rtts

    @staticmethod
    def _result(
        node: str,
        target: Target,
        mtu: int,
        rtts: dict[tuple[str, bool], float],
        errors: dict[tuple[str, bool], str],
    ) -> ProbeResult:
        small, full = rtts.get((target.peer, False)), rtts.get((target.peer, True))
        reachable = small is not None or full is not None
        error = None
        if not reachable:
            error = errors.get((target.peer, False)) or "no reply within the timeout"
        elif full is None:
            error = errors.get((target.peer, True)) or f"no reply to the {mtu}-byte probe"
        return ProbeResult(
            node=node,
            peer=target.peer,
            peer_ip=target.ip,
            reachable=reachable,
            rtt_seconds=small if small is not None else full,
            mtu_ok=(full is not None) if reachable else None,
            probe_size=mtu,
            age_seconds=0.0,
            error=error,
        )


# ---- the prober thread ---------------------------------------------------------------


class PeerMetrics:
    """``vmoverlay_peer_{reachable,rtt_seconds,mtu_ok}{node,peer}`` in the agent's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["node", "peer"]
        self.reachable = Gauge(
            "vmoverlay_peer_reachable",
            "1 when the peer answered a probe across the overlay in the last round",
            labels,
            registry=registry,
        )
        self.rtt = Gauge(
            "vmoverlay_peer_rtt_seconds",
            "Round-trip time of the last small probe to the peer (NaN when unreachable)",
            labels,
            registry=registry,
        )
        self.mtu_ok = Gauge(
            "vmoverlay_peer_mtu_ok",
            "1 when a full-size don't-fragment probe crossed to the peer and back",
            labels,
            registry=registry,
        )
        self._seen: set[tuple[str, str]] = set()

    def update(self, results: Sequence[ProbeResult]) -> None:
        now = {(r.node, r.peer) for r in results}
        for gone in self._seen - now:
            for gauge in (self.reachable, self.rtt, self.mtu_ok):
                gauge.remove(*gone)
        self._seen = now
        for r in results:
            self.reachable.labels(r.node, r.peer).set(1 if r.reachable else 0)
            self.rtt.labels(r.node, r.peer).set(
                r.rtt_seconds if r.rtt_seconds is not None else float("nan")
            )
            self.mtu_ok.labels(r.node, r.peer).set(1 if r.mtu_ok else 0)


class Prober:
    """Probes every peer each period in a daemon thread; :meth:`results` is thread-safe.

    ``nodes`` returns the current Node list (the agent's cache); ``mtu`` the
    overlay MTU in use (None until the agent knows it). Each round first
    makes sure this node's probe address is on the bridge (the bridge may
    have been recreated), so the prober needs no other hook into the agent.
    """

    def __init__(
        self,
        node: str,
        *,
        bridge: str,
        nodes: Callable[[], Sequence[api.Node]],
        mtu: Callable[[], int | None],
        registry: CollectorRegistry | None = None,
        pool: str = DEFAULT_PROBE_POOL,
        period: float = DEFAULT_PERIOD,
        timeout: float = DEFAULT_TIMEOUT,
        logger: StructLogger | None = None,
    ) -> None:
        self.node, self.bridge, self.pool = node, bridge, pool
        self.period, self.timeout = period, min(timeout, period)
        self._nodes, self._mtu = nodes, mtu
        self.metrics = PeerMetrics(registry) if registry is not None else None
        self.log = logger or log
        self._lock = threading.Lock()
        self._results: list[ProbeResult] = []
        self._round_at: float | None = None
        self.problems: list[str] = []
        self.probe_ip: str | None = None
        self._last_state: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prober", daemon=True)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def results(self) -> list[ProbeResult]:
        """The last round's results, each with its current age."""
        with self._lock:
            results, at = list(self._results), self._round_at
        if at is None:
            return []
        age = round(time.monotonic() - at, 3)
        return [_aged(r, age) for r in results]

    def _loop(self) -> None:
        prober: IcmpProber | None = None
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    # Every round: the bridge may have been recreated without our address,
                    # or the Node annotation may have changed it.
                    source = self._prepare()
                    if prober is not None and prober.source != source:
                        prober.close()
                        prober = None
                    if prober is None and source is not None:
                        prober = IcmpProber(source=source)
                    if prober is not None:
                        self.run_round(prober)
                except (ProbeError, OSError, NetlinkError) as exc:
                    self.log.warning("probe round failed, will retry", error=str(exc))
                self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))
        finally:
            if prober is not None:
                prober.close()

    def _prepare(self) -> str | None:
        """This node's probe address, put on the bridge; None while not possible yet."""
        me = next((n for n in self._nodes() if n.name == self.node), None)
        address = probe_address(me, self.pool) if me else None
        if address is None:
            return None
        with IPRoute() as ipr:
            if not ensure_probe_address(ipr, self.bridge, address, self.pool):
                return None
        self.probe_ip = address
        return address

    def run_round(self, prober: IcmpProber) -> list[ProbeResult]:
        mtu = self._mtu()
        if mtu is None:
            return []
        targets, problems = probe_targets(self.node, self._nodes(), self.pool)
        results = prober.round(targets, mtu=mtu, node=self.node, timeout=self.timeout)
        with self._lock:
            self._results, self._round_at = results, time.monotonic()
            self.problems = problems
        if self.metrics is not None:
            self.metrics.update(results)
        self._log_changes(results)
        return results

    def _log_changes(self, results: Sequence[ProbeResult]) -> None:
        """One line per peer whose state changed (not one per round: periods are short)."""
        state = {r.peer: _state(r) for r in results}
        for peer, now in sorted(state.items()):
            before = self._last_state.get(peer)
            if now == before:
                continue
            fields = {"peer": peer, "was": before or "unknown", "now": now}
            if now == "ok":
                self.log.info("peer probe state changed", **fields)
            else:
                self.log.warning("peer probe state changed", **fields)
        self._last_state = state
        self.log.debug("probe round", peers=len(results))


def _state(r: ProbeResult) -> str:
    if not r.reachable:
        return "unreachable"
    return "ok" if r.mtu_ok else "full-size lost"


def _aged(r: ProbeResult, age: float) -> ProbeResult:
    return ProbeResult(
        r.node, r.peer, r.peer_ip, r.reachable, r.rtt_seconds, r.mtu_ok, r.probe_size, age, r.error
    )


def measure_now(
    node: str,
    nodes: Sequence[api.Node],
    *,
    mtu: int,
    pool: str = DEFAULT_PROBE_POOL,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[ProbeResult]:
    """One probe round from ``node``'s probe address, now (the check's ``--fresh``).

    Runs in the caller's network namespace and needs CAP_NET_RAW; the address
    must be on the bridge (the agent puts it there).
    """
    me = next((n for n in nodes if n.name == node), None)
    source = probe_address(me, pool) if me else None
    if source is None:
        raise ProbeError(f"failed to probe from {node}: it has no probe address in {pool}")
    targets, _problems = probe_targets(node, nodes, pool)
    try:
        prober = IcmpProber(source=source)
    except OSError as exc:
        raise ProbeError(
            f"failed to probe from {node}'s probe address {source}: {exc.strerror or exc}; "
            "is the agent up (it puts the address on the bridge)?"
        ) from exc
    try:
        return prober.round(targets, mtu=mtu, node=node, timeout=timeout)
    finally:
        prober.close()
