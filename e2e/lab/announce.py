"""The VM's self-announcement after resume, as QEMU does it: RARP rounds.

QEMU announces a migrated guest by sending, from the guest's MAC, a broadcast
RARP frame (ethertype 0x8035, "request reverse", sender and target MAC = the
guest's, addresses zero) in 5 rounds: the first at once, then 50 ms later,
each further gap 100 ms longer (announce-initial 50 ms, announce-step 100 ms,
announce-rounds 5). It is what makes switches learn the new port; it carries
no IP address, so it does not update ARP caches.

The frames leave through the guest NIC (``eth0`` in the VM namespace), the
way QEMU injects them into the guest's backend. The packet socket is opened
once when the VM is set up (by a thread that enters the VM namespace), so
sending costs no process start at resume time.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from e2e.netns import enter_thread

ETH_P_RARP = 0x8035
ROUNDS = 5
INITIAL_GAP = 0.050
STEP = 0.100


def rarp_frame(mac: str) -> bytes:
    """A QEMU-style RARP announcement for ``mac`` (60 bytes, padded)."""
    hw = bytes.fromhex(mac.replace(":", ""))
    eth = b"\xff" * 6 + hw + struct.pack("!H", ETH_P_RARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + hw + b"\0" * 4 + hw + b"\0" * 4
    frame = eth + arp
    return frame + b"\0" * (60 - len(frame))


def announce_delays(rounds: int = ROUNDS) -> list[float]:
    """Seconds after resume of each round: 0, 0.05, 0.2, 0.45, 0.8 for QEMU's defaults."""
    delays, at, gap = [], 0.0, INITIAL_GAP
    for _ in range(rounds):
        delays.append(round(at, 6))
        at += gap
        gap += STEP
    return delays


def packet_socket(ns: str, ifname: str, proto: int = ETH_P_RARP) -> socket.socket:
    """An AF_PACKET socket for ethertype ``proto``, bound to ``ifname`` inside namespace ``ns``."""
    box: list[socket.socket | BaseException] = []

    def opener() -> None:
        try:
            enter_thread(ns)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
            sock.bind((ifname, 0))
            box.append(sock)
        except (OSError, RuntimeError) as exc:
            box.append(exc)

    thread = threading.Thread(target=opener, name=f"open-{ns}")
    thread.start()
    thread.join()
    result = box[0]
    if isinstance(result, BaseException):
        raise RuntimeError(f"failed to open a packet socket on {ifname} in {ns}: {result}")
    return result


class Announcer:
    """Sends the rounds from a background thread so the migration does not wait for them."""

    def __init__(self, sock: socket.socket, mac: str) -> None:
        self.sock = sock
        self.frame = rarp_frame(mac)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._rounds, daemon=True, name="announce")
        thread.start()
        return thread

    def _rounds(self) -> None:
        start = time.monotonic()
        for delay in announce_delays():
            time.sleep(max(0.0, start + delay - time.monotonic()))
            try:
                self.sock.send(self.frame)
            except OSError:
                return  # the VM is gone (lab teardown); nothing left to announce

    def close(self) -> None:
        self.sock.close()
