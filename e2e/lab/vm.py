"""A lab VM in the default ``netns`` mode: a namespace running real Postgres.

Two namespaces per VM, like a guest and the QEMU process that owns its tap::

    guest ns        QEMU-side ns                          runner pod ns              node ns
    eth0 ==veth== vport -- br0 -- up<k> ==veth== vmup -- rbr0 -- net1 ==veth== (CNI vm-l2) vmo-br0
    (VM MAC + IP)

``eth0`` is the guest NIC and the only interface of the guest namespace besides
loopback. Its veth peer ``vport`` sits on the bridge ``br0`` of the VM's
QEMU-side namespace for the VM's whole life, so ``eth0`` keeps carrier while
the uplink moves from one runner pod to another: what a guest sees when QEMU
switches its tap backend. The uplink ``up<k>`` is a veth whose far end
``vmup`` sits in the runner pod's namespace, bridged there (``rbr0``) with
``net1``, the port the CNI plugin plugged into the node's overlay bridge.

Why a separate QEMU-side namespace rather than the bridge beside ``eth0``: a
Linux bridge in the guest's own stack answers ARP for the guest's address
with the bridge's MAC (the weak host model), and clients then address a MAC
that changes when the uplink moves. A real guest has no such bridge.

IPv6 is disabled in the VM and runner namespaces, so no DAD, router
solicitation or MLD report ever announces the VM by accident; the only
announcement is the one :mod:`e2e.lab.announce` sends after resume, as QEMU.

Processes (the postmaster and its backends, the echo responder) are found by
their network namespace, so freezing "every process of the VM" needs no
bookkeeping and catches backends forked a moment ago.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from e2e.netns import NETNS_DIR, NetnsError, RunNamespaces
from vmoverlay.api import VMNetwork
from vmoverlay.logs import get_logger

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PORT = 5432
ECHO_PORT = 7
RUNNER_BRIDGE = "rbr0"
RUNNER_PORT = "vmup"
log = get_logger("lab")

NO_IPV6 = (
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
)


class VMError(RuntimeError):
    pass


@dataclass
class LabVM:
    """One VM: its namespace, network record, processes and current uplink."""

    name: str
    ns: str
    qns: str
    network: VMNetwork
    node: str
    runner_ns: str
    uplink: str
    datadir: Path
    uplinks_made: int = 1
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return self.network.ip


def disable_ipv6(run: RunNamespaces, ns: str) -> None:
    run.check(ns, ["sysctl", "-q", "-w", *NO_IPV6])


def build_guest(run: RunNamespaces, ns: str, qns: str, network: VMNetwork) -> None:
    """The guest NIC ``eth0`` with the VM's MAC and IP; its peer on the QEMU-side bridge."""
    mtu = str(network.mtu)
    disable_ipv6(run, ns)
    disable_ipv6(run, qns)
    run.check(qns, ["ip", "link", "add", "br0", "mtu", mtu, "type", "bridge"])
    run.check(
        qns,
        ["ip", "link", "add", "vport", "mtu", mtu, "type", "veth", "peer", "name", "eth0"]
        + ["mtu", mtu, "address", network.mac, "netns", ns],
    )
    run.check(qns, ["ip", "link", "set", "vport", "master", "br0", "up"])
    wire_port(run, qns, "vport")
    run.check(qns, ["ip", "link", "set", "br0", "up"])
    run.check(ns, ["ip", "addr", "add", f"{network.ip}/{network.prefix}", "dev", "eth0"])
    run.check(ns, ["ip", "link", "set", "eth0", "up"])


def build_runner_bridge(run: RunNamespaces, runner_ns: str, mtu: int) -> None:
    """In a runner pod: bridge ``rbr0`` joining ``net1`` (plugged by CNI) with the VM uplink."""
    disable_ipv6(run, runner_ns)
    run.check(runner_ns, ["ip", "link", "add", RUNNER_BRIDGE, "mtu", str(mtu), "type", "bridge"])
    run.check(runner_ns, ["ip", "link", "set", "net1", "master", RUNNER_BRIDGE, "up"])
    wire_port(run, runner_ns, "net1")
    run.check(runner_ns, ["ip", "link", "set", RUNNER_BRIDGE, "up"])


def make_uplink(
    run: RunNamespaces, qns: str, runner_ns: str, uplink: str, mtu: int, *, attach: bool
) -> None:
    """A veth from the VM's QEMU side to a runner pod, both ends up.

    With ``attach`` the VM end joins the VM bridge now (a VM's first start);
    otherwise it stays outside the bridge, carrier up, until the switch-over
    enslaves it (:meth:`e2e.lab.linkctl.LinkControl.set_master`).
    """
    run.check(
        qns,
        ["ip", "link", "add", uplink, "mtu", str(mtu), "type", "veth", "peer", "name"]
        + [RUNNER_PORT, "mtu", str(mtu), "netns", runner_ns],
    )
    run.check(runner_ns, ["ip", "link", "set", RUNNER_PORT, "master", RUNNER_BRIDGE, "up"])
    wire_port(run, runner_ns, RUNNER_PORT)
    if attach:
        run.check(qns, ["ip", "link", "set", uplink, "master", "br0"])
        wire_port(run, qns, uplink)
    run.check(qns, ["ip", "link", "set", uplink, "up"])


def wire_port(run: RunNamespaces, ns: str, port: str) -> None:
    """No MAC learning on a port of the VM's own bridges: they stand in for a tap, a wire.

    A learning bridge here would learn the VM's MAC on the uplink from the
    node agent's gratuitous ARP (sent as the VM, flooded to the VM's port too)
    and then drop the client's frames to the VM as "same port": a loss that
    no real tap backend has.
    """
    run.check(ns, ["ip", "link", "set", "dev", port, "type", "bridge_slave", "learning", "off"])


def link_batch(qns: str, commands: list[str]) -> None:
    """Several ``ip link`` commands in one process: one fork for the whole switch-over."""
    proc = subprocess.run(
        ["ip", "-n", qns, "-batch", "-"],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise VMError(f"failed to switch the uplink in {qns}: {proc.stderr.strip()}")


# --- processes -------------------------------------------------------------------------


def pids_in_netns(ns: str) -> list[int]:
    """Every process whose network namespace is ``ns`` (by inode), without forking."""
    want = os.stat(NETNS_DIR / ns).st_ino
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino == want:
                pids.append(int(entry))
    return pids


def freeze(ns: str) -> list[int]:
    """SIGSTOP every process of the VM; a second pass catches one forked meanwhile."""
    stopped: set[int] = set()
    for _ in range(2):
        for pid in pids_in_netns(ns):
            if pid not in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)
    return sorted(stopped)


def thaw(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise VMError(
            "no 'postgres' user: install Postgres 15 (apt-get install postgresql-15)"
        ) from exc


def init_postgres(run_id: str, vm_name: str, subnet: str) -> Path:
    """initdb into a fresh temp dir owned by ``postgres``; trust auth for ``subnet`` only."""
    user = postgres_user()
    datadir = Path(tempfile.mkdtemp(prefix=f"vmo-{run_id}-{vm_name}-"))
    os.chown(datadir, user.pw_uid, user.pw_gid)
    pgdata = datadir / "data"
    proc = subprocess.run(
        [str(PG_BIN / "initdb"), "-D", str(pgdata), "-U", "postgres", "-A", "trust"]
        + ["--no-sync", "--no-instructions", "-E", "UTF8", "--locale", "C"],
        capture_output=True,
        text=True,
        check=False,
        user=user.pw_uid,
        group=user.pw_gid,
        cwd=datadir,
    )
    if proc.returncode != 0:
        raise VMError(f"failed to initdb for {vm_name}: {proc.stderr.strip()[-400:]}")
    with open(pgdata / "pg_hba.conf", "w") as hba:
        hba.write("local all all trust\n")
        hba.write(f"host all all {subnet} trust\n")
    return datadir


def start_postgres(run: RunNamespaces, vm: LabVM) -> subprocess.Popen[bytes]:
    user = postgres_user()
    pgdata = vm.datadir / "data"
    settings = {
        "listen_addresses": vm.ip,
        "port": str(PG_PORT),
        "unix_socket_directories": str(vm.datadir),
        "max_connections": "200",
        "shared_buffers": "32MB",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "autovacuum": "off",
        "log_min_messages": "warning",
    }
    argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    argv += [str(PG_BIN / "postgres"), "-D", str(pgdata)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    with open(vm.datadir / "postgres.log", "ab") as logfile:
        return run.popen(vm.ns, argv, stdout=logfile, stderr=subprocess.STDOUT, cwd=vm.datadir)


def wait_postgres(run: RunNamespaces, vm: LabVM, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = run.run(vm.ns, [str(PG_BIN / "pg_isready"), "-q", "-h", vm.ip, "-t", "1"])
        if probe.returncode == 0:
            return
        time.sleep(0.2)
    tail = (vm.datadir / "postgres.log").read_text(errors="replace")[-600:]
    raise VMError(f"Postgres in {vm.name} did not come up within {timeout:.0f}s: {tail}")


def start_echo(run: RunNamespaces, vm: LabVM) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "e2e.lab.echo", "--bind", vm.ip, "--port", str(ECHO_PORT)]
    return run.popen(vm.ns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_processes(vms: list[LabVM], *, timeout: float = 2.0) -> None:
    """End every VM's processes at once: Postgres by SIGQUIT, the rest by SIGTERM.

    SIGQUIT is Postgres's immediate shutdown; its data dir is thrown away next,
    and the SIGTERM that removing the namespace would send is a "smart"
    shutdown that waits for clients. What is still alive after ``timeout``
    is killed.
    """
    procs = [p for vm in vms for p in vm.procs if p.poll() is None]
    for proc in procs:
        argv = proc.args if isinstance(proc.args, list) else [proc.args]
        is_postgres = any(str(a).endswith("/postgres") for a in argv)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGQUIT if is_postgres else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def remove_datadir(vm: LabVM) -> None:
    shutil.rmtree(vm.datadir, ignore_errors=True)


__all__ = ["LabVM", "NetnsError", "VMError"]
