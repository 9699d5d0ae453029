"""Announce a VM that has just arrived on this node: gratuitous ARP / unsolicited NA.

When a VM's status says it now runs here, every bridge on the way and every
client's ARP/neighbour cache must learn its new location at once, not when
the VM next speaks. The agent sends, on the bridge, as the VM (source MAC =
VM MAC):

- IPv4: a gratuitous ARP request (sender = target = the VM's IP), broadcast;
- IPv6: an unsolicited neighbour advertisement (override flag, target = the
  VM's IP, target link-layer option = its MAC) to all-nodes ff02::1.

Like QEMU's announce-self, it sends several rounds with growing gaps (50 ms,
then +100 ms per round, 5 rounds by default). Frames leave through the
bridge device, so they flood to every local port and, through the VXLAN
device, to every peer; the local bridge does not learn from frames it sends
itself, so the VM's own port keeps its entry.

Frames are built with scapy and sent on an L2 socket bound to the bridge, in
one background thread fed by a queue: reconcile never waits for a round.
The agent starts the thread at start-up, and the thread imports scapy before it
takes its first announcement: importing scapy costs 0.3 s on a quiet machine
and over a second under load, and paid on the first arrival it would delay the
first gratuitous ARP past the moment the fabric needs it.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmoverlay.logs import get_logger

log = get_logger("vxlan-manager")

FIRST_DELAY = 0.05
STEP = 0.10
ROUNDS = 5


def schedule(rounds: int = ROUNDS, first: float = FIRST_DELAY, step: float = STEP) -> list[float]:
    """Offsets (seconds from the arrival) of each round: 0.05, 0.2, 0.45, 0.8, 1.25."""
    out, at, gap = [], 0.0, first
    for _ in range(rounds):
        at += gap
        out.append(round(at, 6))
        gap += step
    return out


@dataclass(frozen=True)
class Announcement:
    vm: str
    ip: str
    mac: str


def build_frame(ann: Announcement) -> Any:
    """The scapy frame announcing ``ann``: gratuitous ARP (IPv4) or unsolicited NA (IPv6)."""
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
    from scapy.layers.l2 import ARP, Ether

    if ipaddress.ip_address(ann.ip).version == 4:
        return Ether(src=ann.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=ann.mac, psrc=ann.ip, hwdst="00:00:00:00:00:00", pdst=ann.ip
        )
    return (
        Ether(src=ann.mac, dst="33:33:00:00:00:01")
        / IPv6(src=ann.ip, dst="ff02::1", hlim=255)
        / ICMPv6ND_NA(tgt=ann.ip, R=0, S=0, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=ann.mac)
    )


class Announcer:
    """Background sender of announcement rounds on one bridge."""

    def __init__(
        self,
        bridge: str,
        *,
        on_sent: Callable[[Announcement], None] | None = None,
        rounds: int = ROUNDS,
    ) -> None:
        self.bridge = bridge
        self.on_sent = on_sent or (lambda _a: None)
        self.offsets = schedule(rounds)
        self._queue: queue.Queue[Announcement | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="announcer", daemon=True)
        self._started = False

    def start(self) -> None:
        """Start the sender thread (and its scapy import) ahead of the first arrival."""
        if not self._started:
            self._started = True
            self._thread.start()

    def announce(self, vm: str, ip: str, mac: str) -> None:
        self.start()
        self._queue.put(Announcement(vm, ip, mac))

    def stop(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        started = time.monotonic()
        build_frame(Announcement("warm-up", "198.18.0.0", "02:00:00:00:00:00"))
        log.debug(
            "announcer ready", bridge=self.bridge, import_s=round(time.monotonic() - started, 3)
        )
        # (due time, tie-breaker, announcement, round number)
        pending: list[tuple[float, int, Announcement, int]] = []
        counter = itertools.count()
        sock: Any = None
        while True:
            timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
            try:
                item = self._queue.get(timeout=timeout)
                if item is None:
                    break
                start = time.monotonic()
                for n, offset in enumerate(self.offsets):
                    heapq.heappush(pending, (start + offset, next(counter), item, n + 1))
                log.info(
                    "announcing VM arrival",
                    vm=item.vm,
                    ip=item.ip,
                    mac=item.mac,
                    rounds=len(self.offsets),
                )
                continue
            except queue.Empty:
                pass
            due, _, ann, n = heapq.heappop(pending)
            try:
                sock = sock or self._open()
                sock.send(build_frame(ann))
                self.on_sent(ann)
                log.debug("announcement sent", vm=ann.vm, ip=ann.ip, round=n)
            except OSError as exc:
                log.warning(
                    "failed to send announcement",
                    vm=ann.vm,
                    ip=ann.ip,
                    round=n,
                    bridge=self.bridge,
                    error=str(exc),
                )
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def _open(self) -> Any:
        from scapy.arch.linux import L2Socket

        return L2Socket(iface=self.bridge)
