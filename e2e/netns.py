"""Network namespaces for the lab and the tests, named and cleaned up safely.

Every namespace is named ``vmo-<run id>-<role>``. A run records its owner's PID
in ``/run/vmoverlay/<run id>.pid``, so ``vmoverlay-lab down`` can remove the
namespaces of runs whose process is gone without ever touching a run that is
still alive, or anything not named ``vmo-``.

Nothing here configures the host's root namespace: links are created inside
the namespaces (or moved into them at once by the caller).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import netns as pyr_netns

from vmoverlay.logs import get_logger

PREFIX = "vmo-"
STATE_DIR = Path(os.environ.get("VMOVERLAY_RUN_DIR", "/run/vmoverlay"))
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
log = get_logger("lab")
T = TypeVar("T")


class NetnsError(RuntimeError):
    pass


def new_run_id() -> str:
    """A short random run id: 6 hex characters (namespace names stay under 16 chars)."""
    return secrets.token_hex(3)


def list_namespaces() -> list[str]:
    return sorted(pyr_netns.listnetns())


def _pids_in(name: str) -> list[int]:
    proc = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    )
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_namespace_processes(name: str, *, grace: float = 2.0) -> None:
    """SIGTERM every process in ``name``, then SIGKILL what is left after ``grace``."""
    pids = _pids_in(name)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.05)
        if not pids:
            return


def remove_namespace(name: str) -> None:
    """Kill what runs in ``name`` and remove it; a namespace already gone is fine."""
    if not name.startswith(PREFIX):
        raise NetnsError(f"refusing to remove namespace {name!r}: not a vmoverlay namespace")
    if name not in list_namespaces():
        return
    kill_namespace_processes(name)
    pyr_netns.remove(name)
    log.debug("namespace removed", netns=name)


class RunNamespaces:
    """The namespaces of one lab or test run; ``close()`` removes them all.

    Use as a context manager so the namespaces go even when the body fails::

        with RunNamespaces() as run:
            fabric = run.add("fabric")
            run.check(fabric, ["ip", "link", "add", "sw0", "type", "bridge"])
    """

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id or new_run_id()
        self.names: list[str] = []
        self._closed = False
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._pidfile = STATE_DIR / f"{self.run_id}.pid"
        self._pidfile.write_text(f"{os.getpid()}\n")

    def __enter__(self) -> RunNamespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def name(self, role: str) -> str:
        return f"{PREFIX}{self.run_id}-{role}"

    def add(self, role: str) -> str:
        """Create ``vmo-<run id>-<role>`` with loopback up; return its name."""
        name = self.name(role)
        if len(name) > 40:
            raise NetnsError(f"namespace name {name!r} is too long; use a shorter role")
        if name in list_namespaces():
            raise NetnsError(f"namespace {name} already exists: is run {self.run_id} reused?")
        pyr_netns.create(name)
        self.names.append(name)
        self.check(name, ["ip", "link", "set", "lo", "up"])
        log.debug("namespace created", netns=name)
        return name

    def run(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` and wait; output captured as text."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("check", False)
        return subprocess.run(["ip", "netns", "exec", ns, *argv], **kwargs)

    def check(self, ns: str, argv: Sequence[str], **kwargs: Any) -> str:
        """Run ``argv`` inside ``ns``; raise with its stderr when it fails."""
        proc = self.run(ns, argv, **kwargs)
        if proc.returncode != 0:
            raise NetnsError(
                f"in {ns}: {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return str(proc.stdout)

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``ns`` in the background; killed by ``close()``."""
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)

    def close(self) -> None:
        if self._closed:
            return
        errors = []
        for name in reversed(self.names):
            try:
                remove_namespace(name)
            except (OSError, NetnsError) as exc:
                errors.append(f"{name}: {exc}")
        # Namespaces created by a child process of this run (same prefix) go too.
        for name in list_namespaces():
            if name.startswith(f"{PREFIX}{self.run_id}-"):
                remove_namespace(name)
        self._pidfile.unlink(missing_ok=True)
        self._closed = True
        if errors:
            raise NetnsError("could not remove: " + "; ".join(errors))


def run_owner(run_id: str) -> int | None:
    """The pid of the process that owns run ``run_id``, if that process is still alive."""
    pidfile = STATE_DIR / f"{run_id}.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def run_is_alive(run_id: str) -> bool:
    return run_owner(run_id) is not None


def leftover_runs() -> dict[str, list[str]]:
    """Run id -> namespaces, for every ``vmo-`` run whose owner process is gone."""
    runs: dict[str, list[str]] = {}
    for name in list_namespaces():
        if not name.startswith(PREFIX):
            continue
        run_id = name[len(PREFIX) :].split("-", 1)[0]
        runs.setdefault(run_id, []).append(name)
    return {run: names for run, names in runs.items() if not run_is_alive(run)}


def remove_leftovers(only: str | None = None) -> Iterator[str]:
    """Remove the namespaces of dead runs (or of dead run ``only``), yielding each name."""
    for run_id, names in leftover_runs().items():
        if only is not None and run_id != only:
            continue
        for name in names:
            remove_namespace(name)
            yield name
        (STATE_DIR / f"{run_id}.pid").unlink(missing_ok=True)
    # A run killed before it made a namespace (or after it removed them) leaves only
    # its pid file; drop those of dead runs too, never a live run's.
    for pidfile in STATE_DIR.glob("*.pid"):
        run_id = pidfile.stem
        if (only is None or run_id == only) and not run_is_alive(run_id):
            pidfile.unlink(missing_ok=True)


def enter_thread(name: str) -> None:
    """Move the calling thread, and only it, into namespace ``name``.

    setns(2) with CLONE_NEWNET changes the network namespace of one thread;
    sockets it opens afterwards belong to ``name`` for their whole life. The
    process's main thread (what ``ip netns pids`` sees) stays where it was.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"failed to enter namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsExecutor:
    """A worker thread that lives in one namespace; ``call`` runs a function there.

    The lab uses it to talk to its API server, which listens on the lab's
    underlay inside the control-plane namespace, without any address or route
    in the host's root namespace.
    """

    def __init__(self, name: str, *, workers: int = 1) -> None:
        self.name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"netns-{name}",
            initializer=enter_thread,
            initargs=(name,),
        )

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def submit(
        self, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
