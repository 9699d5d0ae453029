"""The VM's datagram echo responder: sends every datagram back to its sender.

It runs inside the VM namespace beside Postgres, so it is frozen with the rest
of the VM during a migration's pause window, as a guest process would be.
Started as ``python -m e2e.lab.echo --bind IP --port PORT``; no heavy imports,
so it is up in a fraction of a second.
"""

from __future__ import annotations

import argparse
import socket


def serve(bind: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=7)
    args = parser.parse_args()
    try:
        serve(args.bind, args.port)
    except KeyboardInterrupt:
        return


if __name__ == "__main__":
    main()
