"""``vmoverlay-lab apiserver``: run the lab's Kubernetes API server until SIGTERM/SIGINT.

    vmoverlay-lab apiserver [--address 127.0.0.1] [--port 0] [--data-dir DIR]
                            [--kubeconfig-out FILE]

Prints one line ``serving URL`` on stdout once it listens (with ``--port 0``,
the URL carries the port the kernel chose) and ``kubeconfig PATH`` when it
wrote one (``--kubeconfig-out``, else ``DIR/kubeconfig`` with ``--data-dir``); the kubeconfig is plain http without credentials, which the
official client and kubectl accept. Exit codes: 0 after a clean stop, 2 for a
refused address or bad arguments, 1 when the server could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

from e2e.apiserver.server import AddressNotAllowed, LabApiServer, check_address, kubeconfig_text
from vmoverlay.logs import add_logging_args, get_logger, setup_logging

log = get_logger("lab-apiserver")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vmoverlay-lab apiserver",
        description="Run the lab's Kubernetes API server (plain HTTP, no authentication).",
    )
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="listen address: loopback or the lab range 198.18.0.0/15 (default 127.0.0.1)",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--data-dir", default=None, help="keep objects in DIR/objects.sqlite3 across restarts"
    )
    parser.add_argument(
        "--kubeconfig-out",
        default=None,
        help="write a kubeconfig for it here (default: DIR/kubeconfig with --data-dir)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=10000,
        help="watch events kept for watches from a resourceVersion (older ones get 410)",
    )
    parser.add_argument(
        "--bookmark-interval", type=float, default=5.0, help="seconds between watch BOOKMARKs"
    )
    add_logging_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    try:
        check_address(args.address)
    except AddressNotAllowed as exc:
        print(f"vmoverlay-lab apiserver: {exc}", file=sys.stderr)
        return 2
    server = LabApiServer(
        address=args.address,
        port=args.port,
        data_dir=args.data_dir,
        history=args.history,
        bookmark_interval=args.bookmark_interval,
    )
    kubeconfig_out = args.kubeconfig_out
    if kubeconfig_out is None and args.data_dir:
        kubeconfig_out = str(Path(args.data_dir) / "kubeconfig")
    try:
        asyncio.run(_serve(server, kubeconfig_out))
    except OSError as exc:
        print(
            f"vmoverlay-lab apiserver: failed to start on {args.address}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    except sqlite3.Error as exc:
        print(
            f"vmoverlay-lab apiserver: failed to open the data dir {args.data_dir}: {exc}; "
            "check it is writable, or start without --data-dir",
            file=sys.stderr,
        )
        return 1
    return 0


async def _serve(server: LabApiServer, kubeconfig_out: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        if kubeconfig_out:
            path = Path(kubeconfig_out)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(kubeconfig_text(server.url))
            tmp.replace(path)
        print(f"serving {server.url}", flush=True)
        if kubeconfig_out:
            print(f"kubeconfig {kubeconfig_out}", flush=True)
        await stop.wait()
        log.info("stopping lab API server", url=server.url)
    finally:
        await server.stop()
