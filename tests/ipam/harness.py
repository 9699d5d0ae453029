"""Helpers for the IPAM integration tests: controllers (in-process or the real
executable in a subprocess), pools and VMs on the lab API, invariant checks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s

from ipam.controller import ControllerConfig, IPAMController
from ipam.metrics import IPAMMetrics
from tests.fixtures.apiserver import LabApi
from vmoverlay import api, kube

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
IPAM_BIN = ROOT / ".venv" / "bin" / "ipam-controller"
NS = "db"


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float = 60.0,
    *,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``.

    The deadlines are generous on purpose: these are correctness tests that run on a
    loaded 2-core CI machine, not timing tests. ``describe`` says what was seen instead
    (called once, on failure), so a timeout explains itself.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    seen = describe() if describe is not None else f"last: {last!r}"
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; {seen}")


class Lab:
    """The custom objects of one lab API, with the calls tests make."""

    def __init__(self, lab_api: LabApi) -> None:
        self.lab_api = lab_api
        self.client = lab_api.client(user_agent="ipam-test")
        self.objs = kube.CustomObjects(self.client)
        self.core = k8s.CoreV1Api(self.client)
        self.ensure_namespace(NS)

    def ensure_namespace(self, name: str) -> None:
        body = {"metadata": {"name": name}}
        try:
            kube.call(k8s.CoreV1Api(self.client).create_namespace, body)
        except kube.AlreadyExists:
            return

    def create_pool(
        self,
        name: str,
        cidr: str,
        *,
        gateway: str | None = None,
        default: bool = False,
        **extra: Any,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"cidr": cidr, "default": default, **extra}
        if gateway:
            spec["gateway"] = gateway
        body = {"apiVersion": api.API_VERSION, "kind": api.POOL_KIND, "metadata": {"name": name}}
        return self.objs.create(api.POOL_PLURAL, {**body, "spec": spec})

    def create_vm(
        self, name: str, *, pool: str | None = None, namespace: str = NS, status: Any = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": api.API_VERSION,
            "kind": api.VM_KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"pool": pool} if pool else {},
        }
        obj = self.objs.create(api.VM_PLURAL, body, namespace)
        if status is not None:
            obj["status"] = status
            obj = self.objs.replace_status(api.VM_PLURAL, name, obj, namespace)
        return obj

    def delete_vm(self, name: str, namespace: str = NS) -> None:
        self.objs.delete(api.VM_PLURAL, name, namespace)

    def vm(self, name: str, namespace: str = NS) -> dict[str, Any]:
        return self.objs.get(api.VM_PLURAL, name, namespace)

    def vms(self) -> list[dict[str, Any]]:
        return list(self.objs.list(api.VM_PLURAL).get("items") or [])

    def allocations(self) -> list[dict[str, Any]]:
        return list(self.objs.list(api.ALLOCATION_PLURAL).get("items") or [])

    def pool(self, name: str) -> dict[str, Any]:
        return self.objs.get(api.POOL_PLURAL, name)

    def network(self, name: str, namespace: str = NS) -> dict[str, Any] | None:
        net = (self.vm(name, namespace).get("status") or {}).get("network")
        return net if isinstance(net, dict) else None

    def wait_network(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        return wait_for(f"status.network of {name}", lambda: self.network(name), timeout)

    def condition(self, name: str, kind: str = "NetworkReady") -> dict[str, Any] | None:
        for cond in (self.vm(name).get("status") or {}).get("conditions") or []:
            if cond.get("type") == kind:
                return dict(cond)
        return None

    @staticmethod
    def runner_pod(name: str, vm: str, node: str) -> dict[str, Any]:
        """A VM's runner pod as a VM controller would create it on ``node``."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "annotations": {api.VM_ANNOTATION: vm}},
            "spec": {"nodeName": node, "containers": [{"name": "runner", "image": "runner"}]},
        }

    def events_for(self, name: str, namespace: str = NS) -> list[dict[str, Any]]:
        events = self.events_for_namespace(namespace)
        return [e for e in events if (e.get("involvedObject") or {}).get("name") == name]

    def events_for_namespace(self, namespace: str = NS) -> list[dict[str, Any]]:
        answer = kube.call(self.core.list_namespaced_event, namespace)
        return list(self.client.sanitize_for_serialization(answer).get("items") or [])


def wait_addressed(lab: Lab, count: int, timeout: float = 90.0) -> None:
    def addressed() -> int:
        return sum(1 for v in lab.vms() if (v.get("status") or {}).get("network"))

    wait_for(
        f"{count} VMs addressed",
        lambda: addressed() >= count,
        timeout,
        describe=lambda: describe_state(lab),
    )


def wait_settled(lab: Lab, timeout: float = 90.0) -> int:
    """Wait until every VM is addressed and the allocations are exactly the VMs' addresses;
    return how many VMs there are."""

    def settled() -> int | None:
        vms, allocs = lab.vms(), lab.allocations()
        addressed = [v for v in vms if (v.get("status") or {}).get("network")]
        if vms and len(addressed) == len(vms) == len(allocs):
            return len(vms)
        return None

    return wait_for("settled", settled, timeout, describe=lambda: describe_state(lab))


def describe_state(lab: Lab, limit: int = 10) -> str:
    """What the VMs and allocations look like, for a timeout message: "3 VMs without
    address: db/a, ...; 201 allocations for 200 VMs; allocations without a VM: ..."."""
    vms, allocs = lab.vms(), lab.allocations()

    def key(obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        return f"{meta.get('namespace')}/{meta['name']}"

    def some(items: list[str]) -> str:
        more = f" and {len(items) - limit} more" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    unaddressed = sorted(key(v) for v in vms if not (v.get("status") or {}).get("network"))
    uids = {v["metadata"]["uid"] for v in vms}
    held: dict[str, list[str]] = {}
    for a in allocs:
        held.setdefault(a["spec"]["vm"]["uid"], []).append(a["spec"]["ip"])
    orphans = [
        f"{a['metadata']['name']} (vm {a['spec']['vm']['namespace']}/"
        f"{a['spec']['vm']['name']} uid {a['spec']['vm']['uid']}, "
        f"created {a['metadata'].get('creationTimestamp')})"
        for a in allocs
        if a["spec"]["vm"]["uid"] not in uids
    ]
    twice = [f"{uid}: {', '.join(ips)}" for uid, ips in held.items() if len(ips) > 1]
    parts = [f"{len(allocs)} allocations for {len(vms)} VMs"]
    parts.append(f"{len(unaddressed)} VMs without address: {some(unaddressed)}")
    if orphans:
        parts.append(f"{len(orphans)} allocations without a VM: {some(orphans)}")
    if twice:
        parts.append(f"{len(twice)} VMs holding more than one allocation: {some(twice)}")
    return "; ".join(parts)


def check_safety(lab: Lab) -> int:
    """At any moment: no two VMs share an address, and an addressed VM's allocation exists
    and carries its UID. Returns how many VMs are addressed.

    The two lists are not one snapshot: a VM listed with an address may be deleted and
    released before the allocations are listed. So a VM that seems to lack its allocation
    is read again, and only one that still exists, unchanged, fails the check.
    (Allocations of VMs whose status is not written yet, or of VMs deleted a moment ago,
    are allowed here; :func:`check_invariants` checks the settled state.)
    """
    vms = lab.vms()
    allocs = {a["metadata"]["name"]: a for a in lab.allocations()}
    seen: dict[str, str] = {}
    for obj in vms:
        net = (obj.get("status") or {}).get("network")
        if not net:
            continue
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        assert net["ip"] not in seen, f"{key} and {seen.get(net['ip'])} share {net['ip']}"
        seen[net["ip"]] = key
        alloc = allocs.get(api.allocation_name(net["pool"], net["ip"]))
        if alloc is None or alloc["spec"]["vm"]["uid"] != meta["uid"]:
            try:
                again = lab.vm(meta["name"], meta["namespace"])
            except kube.NotFound:
                continue
            if again["metadata"]["uid"] == meta["uid"]:
                raise AssertionError(f"VM {key} records {net['ip']}; allocation: {alloc}")
    return len(seen)


def _check_addressed(vms: list[dict[str, Any]], allocs: list[dict[str, Any]]) -> dict[str, str]:
    by_name = {a["metadata"]["name"]: a for a in allocs}
    addresses: dict[str, str] = {}
    for obj in vms:
        net = (obj.get("status") or {}).get("network")
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        if not net:
            continue
        name = api.allocation_name(net["pool"], net["ip"])
        assert name in by_name, f"VM {key} records {net['ip']} but no allocation {name} exists"
        holder = by_name[name]["spec"]["vm"]
        assert holder["uid"] == obj["metadata"]["uid"], f"{name} held by {holder}, not by {key}"
        addresses[key] = net["ip"]
    ips = list(addresses.values())
    assert len(ips) == len(set(ips)), "duplicate address among VMs"
    return addresses


def check_invariants(lab: Lab, *, expect_vms: int | None = None) -> dict[str, str]:
    """Settled state: every addressed VM holds exactly one allocation, of its own UID; no
    duplicate; no orphan; every allocation recorded in a VM. Returns {vm key: ip}."""
    vms = lab.vms()
    allocs = lab.allocations()
    addresses = _check_addressed(vms, allocs)
    uids = {v["metadata"]["uid"] for v in vms}
    orphans = [a["metadata"]["name"] for a in allocs if a["spec"]["vm"]["uid"] not in uids]
    assert not orphans, f"allocations without a VM: {orphans}"
    owned_twice = len(allocs) - len({a["spec"]["vm"]["uid"] for a in allocs})
    assert owned_twice == 0, "a VM holds more than one allocation"
    assert len(allocs) == len(addresses), "allocations not recorded in any VM status"
    if expect_vms is not None:
        assert len(addresses) == expect_vms, f"{len(addresses)} of {expect_vms} VMs addressed"
    return addresses


@contextmanager
def controller(lab_api: LabApi, **config: Any) -> Iterator[IPAMController]:
    """An IPAM controller in this process (threads), stopped afterwards."""
    settings = {"workers": 4, "cooldown": 0.0, "grace": 30.0, "sweep_interval": 3600.0}
    ctl = IPAMController(
        lab_api.client(user_agent="ipam-controller"),
        ControllerConfig(**{**settings, **config}),
        IPAMMetrics(),
    )
    starter = threading.Thread(target=ctl.start, daemon=True)
    starter.start()
    try:
        wait_for("the controller to be ready", ctl.ready.is_set)
        yield ctl
    finally:
        ctl.stop()


class ControllerProcess:
    """The real ``ipam-controller`` executable, killable and restartable."""

    def __init__(
        self, lab_api: LabApi, workdir: Path, *args: str, env: dict[str, str] | None = None
    ):
        self.lab_api = lab_api
        self.args = [
            str(IPAM_BIN),
            "run",
            "--kubeconfig",
            str(lab_api.kubeconfig),
            "--no-leader-elect",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            *args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.log_path = workdir / f"ipam-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> ControllerProcess:
        self.starts += 1
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, env=self.env)
        log.close()
        return self

    def wait_serving(self, timeout: float = 90.0) -> None:
        """Wait for this start's "serving" line; fail at once if the process exited."""

        def serving() -> bool:
            if self.log_text().count('"msg":"serving"') >= self.starts:
                return True
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"controller exited with {self.proc.returncode} before serving; "
                    f"{self.log_tail()}"
                )
            return False

        wait_for(
            f"controller serving (log {self.log_path})",
            serving,
            timeout,
            describe=lambda: f"running: {self.running}; {self.log_tail()}",
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 12) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return "log tail:\n" + "\n".join(tail) if tail else "log empty"

    def metrics_port(self) -> int:
        """The health/metrics port of the current start, from its "starting" line."""

        def port() -> int | None:
            found = re.findall(r'"msg":"starting","metrics":"[^"]*:(\d+)"', self.log_text())
            return int(found[-1]) if len(found) >= self.starts else None

        return wait_for(f"metrics address in {self.log_path}", port, describe=self.log_tail)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def __enter__(self) -> ControllerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
