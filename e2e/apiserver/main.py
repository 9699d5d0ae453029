"""``vmoverlay-lab apiserver``: run the lab's Kubernetes API server until SIGTERM/SIGINT.

    vmoverlay-lab apiserver [--address 127.0.0.1] [--port 0] [--data-dir DIR]
                            [--kubeconfig-out FILE] [--history N] [--bookmark-interval S]

Prints one line ``serving URL`` on stdout once it listens (with ``--port 0``,
the URL carries the port the kernel chose) and ``kubeconfig PATH`` when it
wrote one (``--kubeconfig-out``, else ``DIR/kubeconfig`` with ``--data-dir``); the kubeconfig is plain http without credentials, which the
official client and kubectl accept. Exit codes: 0 after a clean stop, 2 for a
refused address or bad arguments, 1 when the server could not start.

Every argument is checked before anything starts: ``--port`` 0-65535,
``--history`` 1-10000000 events, ``--bookmark-interval`` more than 0 and at
most 3600 seconds. ``--data-dir`` is created when missing, but only the last
part of it: its parent must exist, so a mistyped path never makes a tree of
directories; a path that is not a directory is refused. ``--kubeconfig-out``
must name a file in an existing directory. Each refusal names the argument and
the problem, and exits 2. On SIGTERM/SIGINT it stops listening and ends every
open watch stream cleanly, so it exits within about a second even with watchers.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from e2e.apiserver.server import (
    AddressNotAllowed,
    BadSetting,
    DataDirError,
    LabApiServer,
    check_address,
    check_bookmark_interval,
    check_data_dir,
    check_history,
    check_output_file,
    check_port,
    kubeconfig_text,
)
from vmoverlay.logs import add_logging_args, get_logger, setup_logging

log = get_logger("lab-apiserver")

T = TypeVar("T", int, float)


def _ranged(convert: Callable[[str], T], check: Callable[[T], T]) -> Callable[[str], T]:
    """An argparse ``type=``: parse, then check the range (argparse exits 2 with the message)."""

    def parse(text: str) -> T:
        try:
            return check(convert(text))
        except BadSetting as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        except ValueError as exc:
            kind = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from exc

    return parse


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
    parser.add_argument(
        "--port", type=_ranged(int, check_port), default=0, help="TCP port; 0 picks a free one"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="keep objects in DIR/objects.sqlite3 across restarts (DIR's parent must exist)",
    )
    parser.add_argument(
        "--kubeconfig-out",
        default=None,
        help="write a kubeconfig for it here (default: DIR/kubeconfig with --data-dir)",
    )
    parser.add_argument(
        "--history",
        type=_ranged(int, check_history),
        default=10000,
        help="watch events kept for watches from a resourceVersion (older ones get 410)",
    )
    parser.add_argument(
        "--bookmark-interval",
        type=_ranged(float, check_bookmark_interval),
        default=5.0,
        help="seconds between watch BOOKMARKs (more than 0, at most 3600)",
    )
    add_logging_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    kubeconfig_out = args.kubeconfig_out
    if kubeconfig_out is None and args.data_dir:
        kubeconfig_out = str(Path(args.data_dir) / "kubeconfig")
    try:
        check_address(args.address)
        if args.data_dir:
            check_data_dir(args.data_dir)
        if args.kubeconfig_out:
            check_output_file("kubeconfig", args.kubeconfig_out)
    except (AddressNotAllowed, DataDirError) as exc:
        print(f"vmoverlay-lab apiserver: {exc}", file=sys.stderr)
        return 2
    server = LabApiServer(
        address=args.address,
        port=args.port,
        data_dir=args.data_dir,
        history=args.history,
        bookmark_interval=args.bookmark_interval,
    )
    try:
        asyncio.run(_serve(server, kubeconfig_out))
    except DataDirError as exc:
        print(f"vmoverlay-lab apiserver: {exc}", file=sys.stderr)
        return 1
    except KubeconfigError as exc:
        print(f"vmoverlay-lab apiserver: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"vmoverlay-lab apiserver: failed to start on {args.address}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


class KubeconfigError(Exception):
    """The kubeconfig could not be written (the message names it)."""


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
            try:
                tmp.write_text(kubeconfig_text(server.url))
                tmp.replace(path)
            except OSError as exc:
                raise KubeconfigError(f"failed to write kubeconfig {path}: {exc}") from exc
        print(f"serving {server.url}", flush=True)
        if kubeconfig_out:
            print(f"kubeconfig {kubeconfig_out}", flush=True)
        await stop.wait()
        log.info("stopping lab API server", url=server.url)
    finally:
        await server.stop()
