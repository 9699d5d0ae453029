"""Set links up and down in one namespace with one netlink message each: the switch-over's clock.

The pause window is measured in milliseconds, so moving the VM's uplink must
not cost a process start (``ip`` takes 5-30 ms on a busy machine). A
:class:`LinkControl` holds a NETLINK_ROUTE socket opened by a thread that
entered the namespace (the socket stays in that namespace for its life) and
sends RTM_NEWLINK / RTM_SETLINK (up/down, bridge master, port learning),
waiting for the kernel's ack of each.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading

from e2e.netns import enter_thread

RTM_NEWLINK = 16
RTM_SETLINK = 19
AF_BRIDGE = 7
IFLA_PROTINFO = 12
IFLA_MASTER = 10
IFLA_BRPORT_LEARNING = 8
NLA_F_NESTED = 0x8000
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
IFF_UP = 0x1


class LinkError(RuntimeError):
    pass


def link_index(ns: str, ifname: str) -> int:
    proc = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", "dev", ifname],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise LinkError(f"failed to find link {ifname} in {ns}: {proc.stderr.strip()}")
    return int(json.loads(proc.stdout)[0]["ifindex"])


class LinkControl:
    """Up/down of links inside namespace ``ns`` through a netlink socket living there."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._seq = 0
        box: list[socket.socket | BaseException] = []

        def opener() -> None:
            try:
                enter_thread(ns)
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
                sock.bind((0, 0))
                box.append(sock)
            except (OSError, RuntimeError) as exc:
                box.append(exc)

        thread = threading.Thread(target=opener, name=f"netlink-{ns}")
        thread.start()
        thread.join()
        if isinstance(box[0], BaseException):
            raise LinkError(f"failed to open a netlink socket in {ns}: {box[0]}")
        self.sock = box[0]
        self.sock.settimeout(5.0)

    def set_up(self, index: int, up: bool) -> None:
        ifinfo = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP)
        self._request(RTM_NEWLINK, ifinfo, what=f"set link {index} {'up' if up else 'down'}")

    def set_master(self, index: int, master: int) -> None:
        """Enslave link ``index`` to bridge ``master`` (0: release it), synchronously.

        A port added while its carrier is already up forwards at once; bringing
        a port's carrier up instead is applied to the bridge later, from the
        kernel's link-watch work, which lagged tens of milliseconds under load.
        """
        ifinfo = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
        attr = struct.pack("=HHI", 8, IFLA_MASTER, master)
        self._request(RTM_NEWLINK, ifinfo + attr, what=f"set the master of link {index}")

    def set_learning(self, index: int, on: bool) -> None:
        """MAC learning of bridge port ``index``."""
        ifinfo = struct.pack("=BxHiII", AF_BRIDGE, 0, index, 0, 0)
        inner = struct.pack("=HHB3x", 5, IFLA_BRPORT_LEARNING, 1 if on else 0)
        protinfo = struct.pack("=HH", 4 + len(inner), IFLA_PROTINFO | NLA_F_NESTED) + inner
        self._request(RTM_SETLINK, ifinfo + protinfo, what=f"set learning of port {index}")

    def _request(self, kind: int, body: bytes, *, what: str) -> None:
        self._seq += 1
        header = struct.pack(
            "=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, self._seq, 0
        )
        self.sock.send(header + body)
        while True:
            reply = self.sock.recv(65536)
            _length, kind, _flags, seq, _pid = struct.unpack("=IHHII", reply[:16])
            if kind == NLMSG_ERROR and seq == self._seq:
                (code,) = struct.unpack("=i", reply[16:20])
                if code != 0:
                    raise LinkError(f"failed to {what} in {self.ns}: {os.strerror(-code)}")
                return

    def close(self) -> None:
        self.sock.close()
