"""The IPAM controller: one stable IP and MAC per VM, never duplicated, never leaked.

Sources of truth and guarantees
-------------------------------
- One ``IPAllocation`` object per taken address, named
  ``api.allocation_name(pool, ip)``. Creating it is the only way to take an
  address; the API server refuses a second object of the same name
  (AlreadyExists), so two controllers, or two workers, can never hand out
  one address twice. Leader election only avoids wasted work.
- ``IPAllocation`` is cluster-scoped and a VM is namespaced, and Kubernetes
  forbids owner references from a cluster-scoped object to a namespaced one,
  so there is no garbage collection to lean on. The allocation records its
  VM in ``spec.vm`` {namespace, name, uid} and this controller releases it
  itself: on the VM's DELETED event (matched by UID), and through the leak
  sweeper (:mod:`ipam.sweeper`) for deletions it missed while down.
- ``status.network`` of the VM is written once, with a resourceVersion-checked
  status update, and never changed afterwards: not on migration, restart or
  pod re-creation.

Allocation, crash-safe order
----------------------------
1. Pick candidates (:mod:`ipam.allocator`), skipping taken and cooling-down
   addresses; create the allocation; on AlreadyExists take the next one, or
   adopt the object if it already belongs to this VM's UID.
2. Write ``status.network`` (MAC from :func:`vmoverlay.identity.mac_from_uid`).
   If the write is refused for good (VM gone, another controller addressed
   it, validation error), delete the allocation again (UID precondition).
   If the outcome is unknown (timeout), keep the allocation: the next pass
   adopts it, so the VM gets that same address.

A controller that dies between 1 and 2 leaves an allocation that carries the
VM's UID; after restart the VM adopts it. A controller that dies after a VM
was deleted leaves an allocation whose UID no VM has; the sweeper frees it
once it is older than the grace period.

Start-up rebuilds before it serves: the caches are filled, every VM that has
an address in its status gets its allocation back if it is missing (or a
conflict is reported when another VM holds it: Event, condition, metric,
nothing changed), and only then do the workers hand out new addresses.

Freed addresses cool down (default 60 s) before reuse, so a late packet for a
deleted VM never reaches a new one (in memory: see :mod:`ipam.state`).

Work is a queue of keys (``("vm", "ns/name")``, ``("release", uid)``,
``("pool", name)``); one key is handled by one worker at a time.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import netaddr
from kubernetes import client as k8s

from ipam import allocator
from ipam.allocator import PoolCheck, PoolLayout
from ipam.informer import DELETED, Informer, object_key
from ipam.metrics import IPAMMetrics
from ipam.state import AllocationIndex, CoolDown, Held, held_from_obj
from ipam.store import (
    CONDITION_NETWORK,
    CONDITION_POOL_READY,
    EventRecorder,
    IPAMStore,
    condition,
    get_condition,
    with_condition,
)
from ipam.sweeper import find_leaks
from ipam.workqueue import WorkQueue
from vmoverlay import api, kube
from vmoverlay.identity import mac_from_uid
from vmoverlay.logs import StructLogger, get_logger

Obj = dict[str, Any]
Key = tuple[str, str]

# Candidates tried per pass before backing off: a stale cache costs a few 409s.
MAX_CLAIM_ATTEMPTS = 64
STATUS_ATTEMPTS = 5
POOL_STATUS_DELAY = 0.5
INT64_MAX = 2**63 - 1
# An allocation of a VM without status, made by another controller, is left to it
# for this long (it is writing the status) before this controller adopts it.
ADOPT_AFTER = 2.0
# A pool that looks full only because a VM briefly holds two addresses: look again.
TRANSIENT_FULL_RETRY = 0.2

# A VM waiting for a full pool looks again this often, even without a release event.
EXHAUSTED_RECHECK = 5.0

# Test-only hooks (never set in production), in seconds: a pause between
# choosing an address and creating its allocation (C01), between creating it
# and writing the VM's status (to kill the controller there), and between the
# sweeper's two lists (C02).
ENV_TEST_COMMIT_DELAY = "VMOVERLAY_IPAM_TEST_COMMIT_DELAY"
ENV_TEST_STATUS_DELAY = "VMOVERLAY_IPAM_TEST_STATUS_DELAY"
ENV_TEST_SWEEP_PAUSE = "VMOVERLAY_IPAM_TEST_SWEEP_PAUSE"


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class ControllerConfig:
    workers: int = 4
    cooldown: float = 60.0
    grace: float = 60.0
    resync: float = 300.0
    sweep_interval: float = 30.0
    cluster_cidrs: tuple[str, ...] = ()
    watch_timeout: int = 30
    test_commit_delay: float = 0.0
    test_status_delay: float = 0.0
    test_sweep_pause: float = 0.0

    @classmethod
    def test_hooks_from_env(cls) -> dict[str, float]:
        """The test-only delays from the environment (0 when unset)."""
        return {
            "test_commit_delay": float(os.environ.get(ENV_TEST_COMMIT_DELAY) or 0),
            "test_status_delay": float(os.environ.get(ENV_TEST_STATUS_DELAY) or 0),
            "test_sweep_pause": float(os.environ.get(ENV_TEST_SWEEP_PAUSE) or 0),
        }


class ClaimContended(kube.KubeError):
    """Every candidate tried in one pass was taken meanwhile; retry after back-off."""


class IPAMController:
    def __init__(
        self,
        client: k8s.ApiClient,
        config: ControllerConfig,
        metrics: IPAMMetrics,
        log: StructLogger | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.log = log or get_logger("ipam")
        self.store = IPAMStore(client, self.log)
        self.events = EventRecorder(client, self.log, on_error=metrics.error)
        self.index = AllocationIndex()
        self.cooldown = CoolDown(config.cooldown)
        self.queue: WorkQueue[Key] = WorkQueue()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._checks: dict[str, PoolCheck] = {}
        self._default_pool: str | None = None
        self._waiting: dict[str, set[str]] = {}
        self._pool_status_due: set[str] = set()
        self._mine: set[str] = set()  # allocation object uids this process created
        self._seen_at: dict[str, float] = {}  # allocation object uid -> first seen (monotonic)
        self._threads: list[threading.Thread] = []
        self.vms = self._informer(api.VM_PLURAL, self._on_vm)
        self.pools = self._informer(api.POOL_PLURAL, self._on_pool)
        self.allocations = self._informer(api.ALLOCATION_PLURAL, self._on_allocation)

    def _informer(self, plural: str, handler: Any) -> Informer:
        list_fn = functools.partial(
            self.store.objects.api.list_cluster_custom_object, api.GROUP, api.VERSION, plural
        )
        return Informer(
            resource=plural,
            list_fn=list_fn,
            handler=handler,
            log=self.log,
            watch_timeout=self.config.watch_timeout,
        )

    # Life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Fill the caches, rebuild missing allocations, then start serving."""
        self.watch()
        self.serve()

    def watch(self) -> None:
        """Start the caches only: a standby replica keeps its index and cool-downs warm,
        so a fail-over does not forget which addresses were freed a moment ago."""
        if self.vms.started:
            return
        for informer in (self.pools, self.allocations, self.vms):
            informer.start()

    def synced(self) -> bool:
        """Whether every cache has been filled from the API at least once."""
        return all(i.synced.is_set() for i in (self.pools, self.allocations, self.vms))

    def serve(self) -> None:
        """Wait for the caches, rebuild missing allocations, then hand out addresses."""
        self.watch()
        self.events.start()
        for informer in (self.pools, self.allocations, self.vms):
            while not informer.synced.wait(0.2):
                if self._stop.is_set():
                    return
        self._refresh_pool_checks()
        self.rebuild()
        for n in range(self.config.workers):
            self._spawn(self._work, f"worker-{n}")
        self._spawn(self._sweep_loop, "sweeper")
        self._spawn(self._resync_loop, "resync")
        self.ready.set()
        self.log.info(
            "serving",
            workers=self.config.workers,
            vms=len(self.vms.items()),
            allocations=len(self.index),
            cooldown=self.config.cooldown,
            grace=self.config.grace,
        )

    def stop(self) -> None:
        self._stop.set()
        self.queue.shutdown()
        for informer in (self.pools, self.allocations, self.vms):
            informer.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        self.events.stop()

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def rebuild(self) -> None:
        """Give every VM with a recorded address its allocation back, before serving.

        An API outage that outlasts the retries raises: serving without the
        rebuild could hand a recorded address to a new VM. A VM whose allocation
        the API refuses (invalid, forbidden) is reported and skipped.
        """
        restored = 0
        for obj in self.vms.items():
            vm = self._parse_vm(obj)
            if vm is None or vm.network is None:
                continue
            before = len(self.index)
            try:
                kube.retry(
                    functools.partial(self._ensure_recorded, vm, obj, conditions=False),
                    what=f"restore allocation of VM {vm.key}",
                    log=self.log,
                    attempts=5,
                    retry_on=(kube.Unavailable, kube.Conflict),
                )
            except (kube.Invalid, kube.Forbidden) as exc:
                self.metrics.error("rebuild")
                self.log.error("failed to restore allocation", vm=vm.key, error=str(exc))
            restored += len(self.index) - before
        self.log.info("rebuilt allocations from VM status", restored=restored)

    # Event handlers (informer threads: only queue work) -----------------------

    def _on_vm(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        if kind == DELETED and old is not None:
            uid = str((old.get("metadata") or {}).get("uid") or "")
            if uid:
                self.queue.add(("release", uid))
            return
        if new is not None:
            self.queue.add(("vm", object_key(new)))

    def _on_pool(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        if old is not None and new is not None and old.get("spec") == new.get("spec"):
            return  # a status write (ours, mostly): nothing to re-validate
        self._refresh_pool_checks()
        for obj in self.pools.items():
            self.queue.add(("pool", object_key(obj)))
        if kind == DELETED and old is not None:
            self.metrics.drop_pool(object_key(old))
        for obj in self.vms.items():
            if not (obj.get("status") or {}).get("network"):
                self.queue.add(("vm", object_key(obj)))

    def _on_allocation(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        obj = new if new is not None else old
        if obj is None:
            return
        try:
            held = held_from_obj(obj)
        except api.InvalidObject as exc:
            self.log.warning("ignoring malformed allocation", error=str(exc))
            self.metrics.error("malformed_allocation")
            return
        if kind != DELETED:
            self.index.put(held)
            with self._lock:
                self._seen_at.setdefault(held.object_uid, time.monotonic())
        else:
            self._forget_allocation(held)
        self._pool_status_soon(held.alloc.pool)

    def _forget_allocation(self, held: Held) -> None:
        current = self.index.get(held.name)
        if current is not None and current.object_uid != held.object_uid:
            return  # the name was taken again already; this event is about the old object
        self.index.drop(held.name)
        self.cooldown.freed(held.alloc.pool, held.ip_int)
        with self._lock:
            self._mine.discard(held.object_uid)
            self._seen_at.pop(held.object_uid, None)
            waiting = self._waiting.pop(held.alloc.pool, set())
        for key in waiting:
            self.queue.add_after(("vm", key), self.config.cooldown + 0.05)
        owner = self.vms.get(held.alloc.vm.key)
        if owner is not None:
            self.queue.add(("vm", held.alloc.vm.key))

    def _pool_status_soon(self, pool: str) -> None:
        with self._lock:
            if pool in self._pool_status_due:
                return
            self._pool_status_due.add(pool)
        self.queue.add_after(("pool", pool), POOL_STATUS_DELAY)

    def _refresh_pool_checks(self) -> None:
        objs = sorted(
            self.pools.items(),
            key=lambda o: (o["metadata"].get("creationTimestamp") or "", o["metadata"]["name"]),
        )
        pools: list[api.IPPool] = []
        checks: dict[str, PoolCheck] = {}
        for obj in objs:
            try:
                pools.append(api.IPPool.from_obj(obj))
            except (api.InvalidObject, ValueError, TypeError) as exc:
                name = str(obj["metadata"]["name"])
                checks[name] = PoolCheck(name, None, str(exc), "InvalidSpec")
        checks.update(allocator.check_pools(pools, self.config.cluster_cidrs))
        default = next((p.name for p in pools if p.default and checks[p.name].usable), None)
        with self._lock:
            self._checks, self._default_pool = checks, default

    # Workers -------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self.queue.get(timeout=1.0)
            if item is None:
                continue
            try:
                again = self._handle(item)
                self.queue.forget(item)
                if again is not None:
                    self.queue.add_after(item, again)
            except kube.KubeError as exc:
                delay = self.queue.retry(item)
                self.metrics.error(type(exc).__name__.lower())
                # A conflict is optimistic concurrency doing its job (another writer
                # was first, mostly a second controller), and NotFound is an object
                # deleted meanwhile (the retry finds it gone); anything else is worth
                # a warning.
                quiet = isinstance(exc, (kube.Conflict, kube.NotFound))
                report = self.log.info if quiet else self.log.warning
                report(
                    f"failed to handle {item[0]}, will retry",
                    key=item[1],
                    retry_in=f"{delay:.2f}s",
                    error=str(exc),
                )
            except Exception:  # the worker's top level: report, keep serving
                self.queue.retry(item)
                self.metrics.error("internal")
                self.log.exception(f"unexpected error handling {item[0]}", key=item[1])
            finally:
                self.queue.done(item)

    def _handle(self, item: Key) -> float | None:
        kind, key = item
        if kind == "vm":
            return self.sync_vm(key)
        if kind == "release":
            self.release(key)
        elif kind == "pool":
            with self._lock:
                self._pool_status_due.discard(key)
            self.sync_pool(key)
        return None

    def _parse_vm(self, obj: Obj) -> api.VirtualMachine | None:
        try:
            return api.VirtualMachine.from_obj(obj)
        except api.InvalidObject as exc:
            self.log.warning("ignoring malformed VM", vm=object_key(obj), error=str(exc))
            self.metrics.error("malformed_vm")
            return None

    def sync_vm(self, key: str) -> float | None:
        """Make VM ``key`` hold exactly its address; return a delay to look again, or None."""
        obj = self.vms.get(key)
        if obj is None:
            return None
        vm = self._parse_vm(obj)
        if vm is None:
            return None
        if vm.network is not None:
            self._ensure_recorded(vm, obj)
            return None
        if vm.deleting:
            return None
        return self._allocate(vm, obj)

    # A VM that already has an address ---------------------------------------

    def _ensure_recorded(
        self, vm: api.VirtualMachine, obj: Obj, *, conditions: bool = True
    ) -> None:
        """The VM keeps its recorded address: re-create its allocation or report a conflict.

        With ``conditions=False`` (the rebuild) no status is written; the VM's key is
        queued anyway and a worker sets its condition.
        """
        net = vm.network
        assert net is not None
        address, reason, message = self._check_recorded(net)
        if address is None:
            if conditions:
                self._report(obj, reason, message)
            return

        name = api.allocation_name(net.pool, address)
        held = self.index.get(name) or self._restore_allocation(vm, net.pool, address)
        if held is None or not conditions:
            return
        if held.alloc.vm.uid != vm.uid:
            self._report_address_conflict(vm, obj, held)
            return
        if (get_condition(obj, CONDITION_NETWORK) or {}).get("status") != "True":
            self._set_condition(
                obj, True, "Allocated", _allocated_message(net.ip, net.prefix, net.pool)
            )

    def _check_recorded(self, net: api.VMNetwork) -> tuple[str | None, str, str]:
        """(canonical address, "", "") when the recorded address is plausible, else
        (None, reason, message)."""
        try:
            address = netaddr.IPAddress(net.ip)
        except (netaddr.AddrFormatError, ValueError):
            return None, "InvalidAddress", f"recorded address {net.ip!r} is not an IP address"
        with self._lock:
            check = self._checks.get(net.pool)
        if check is not None and check.layout is not None and not check.layout.contains(address):
            cidr = check.layout.network.cidr
            message = f"address {address} is outside pool {net.pool} ({cidr})"
            return None, "AddressOutsidePool", message
        return str(address), "", ""

    def _restore_allocation(self, vm: api.VirtualMachine, pool: str, ip: str) -> Held | None:
        """Re-create the allocation of a recorded address; None if the VM is gone meanwhile.

        The VM is read again after the create: a VM deleted just before (its
        release found nothing to free) must not leave the new allocation behind.
        One deleted just after finds it in the index when its DELETED event comes.
        """
        name = api.allocation_name(pool, ip)
        try:
            held = held_from_obj(self.store.create_allocation(pool, ip, vm.ref))
        except kube.AlreadyExists:
            existing = self._fetch_allocation(name)
            if existing is None:
                raise kube.Conflict(f"allocation {name} vanished while restoring it") from None
            return existing
        self.index.put(held)
        current = self._reread(vm)
        if current is None or (current.get("metadata") or {}).get("uid") != vm.uid:
            self._rollback(name, held.object_uid, vm, "VM deleted while restoring its allocation")
            return None
        self.log.info(
            "restored missing allocation of recorded address", vm=vm.key, ip=ip, pool=pool
        )
        return held

    def _report_address_conflict(self, vm: api.VirtualMachine, obj: Obj, held: Held) -> None:
        owner = held.alloc.vm
        message = (
            f"recorded address {held.alloc.ip} (pool {held.alloc.pool}) is held by VM "
            f"{owner} (uid {owner.uid}); not re-addressing, resolve by hand"
        )
        if self._report(obj, "AddressConflict", message):
            self.metrics.address_conflicts.inc()
            self.log.error("address conflict", vm=vm.key, ip=held.alloc.ip, holder=str(owner))

    def _report(self, obj: Obj, reason: str, message: str) -> bool:
        """Set NetworkReady=False with ``reason`` and send a warning Event; True if new."""
        return self._set_condition(obj, False, reason, message)

    def _set_condition(self, obj: Obj, ok: bool, reason: str, message: str) -> bool:
        status = dict(obj.get("status") or {})
        conditions, changed = with_condition(
            status.get("conditions"), condition(CONDITION_NETWORK, ok, reason, message)
        )
        if not changed:
            return False
        status["conditions"] = conditions
        self.store.write_vm_status(obj, status)
        self.events.emit(obj, kind=api.VM_KIND, reason=reason, message=message, warning=not ok)
        return True

    # A VM without an address ------------------------------------------------------

    def _allocate(self, vm: api.VirtualMachine, obj: Obj) -> float | None:
        started = time.monotonic()
        layout, reason, message = self._resolve_pool(vm)
        if layout is None:
            self._report(obj, reason, message)
            return None
        own = [h for h in self.index.held_by(vm.uid) if h.alloc.pool == layout.name]
        held = own[0] if own else self._claim(vm, layout)
        if held is None:
            return self._exhausted(vm, obj, layout)
        wait = self._other_is_committing(held)
        if wait is not None:
            return wait
        if own and not self._is_mine(held):
            self.log.info("adopting allocation already made for VM", vm=vm.key, ip=held.alloc.ip)
        self._commit(vm, obj, layout, held.alloc.ip, held.object_uid, started)
        return None

    def _other_is_committing(self, held: Held) -> float | None:
        """Seconds to wait when another controller made ``held`` a moment ago, else None.

        That controller is about to write the VM's status; writing it too would only
        cost both a conflict. If it died instead, this controller adopts the
        allocation once it is ADOPT_AFTER seconds old (by this controller's clock).
        """
        with self._lock:
            if held.object_uid in self._mine:
                return None
            first_seen = self._seen_at.setdefault(held.object_uid, time.monotonic())
        age = time.monotonic() - first_seen
        return ADOPT_AFTER - age + 0.05 if age < ADOPT_AFTER else None

    def _is_mine(self, held: Held) -> bool:
        with self._lock:
            return held.object_uid in self._mine

    def _resolve_pool(self, vm: api.VirtualMachine) -> tuple[PoolLayout | None, str, str]:
        with self._lock:
            name = vm.pool or self._default_pool
            check = self._checks.get(name) if name else None
        if not name:
            return None, "NoPool", "spec.pool is empty and no usable default pool exists"
        if check is None:
            return None, "PoolNotFound", f"pool {name} not found"
        if check.layout is None:
            return None, "PoolUnusable", f"pool {name} is unusable: {check.reason}"
        return check.layout, "", ""

    def _claim(self, vm: api.VirtualMachine, layout: PoolLayout) -> Held | None:
        """Create an allocation for ``vm`` (or find the VM's own), or None if the pool is full."""
        blocked = self.index.taken(layout.name) | self.cooldown.cooling(layout.name)
        for attempt, ip in enumerate(allocator.candidates(layout, blocked, vm.uid)):
            if attempt >= MAX_CLAIM_ATTEMPTS:
                raise ClaimContended(f"{attempt} candidates in pool {layout.name} taken meanwhile")
            if self.config.test_commit_delay:
                time.sleep(self.config.test_commit_delay)
            try:
                held = held_from_obj(self.store.create_allocation(layout.name, ip, vm.ref))
            except kube.AlreadyExists:
                self.metrics.conflicts.inc()
                existing = self._fetch_allocation(api.allocation_name(layout.name, ip))
                if existing is not None and existing.alloc.vm.uid == vm.uid:
                    return existing
                continue
            with self._lock:
                self._mine.add(held.object_uid)
            self.index.put(held)
            return held
        return None

    def _fetch_allocation(self, name: str) -> Held | None:
        try:
            held = held_from_obj(self.store.get_allocation(name))
        except kube.NotFound:
            return None
        self.index.put(held)
        return held

    def _exhausted(self, vm: api.VirtualMachine, obj: Obj, layout: PoolLayout) -> float | None:
        if self.index.doubly_held(layout.name):
            return TRANSIENT_FULL_RETRY  # not really full: a race is being undone
        used = allocator.usage(
            layout, self.index.taken(layout.name), self.cooldown.cooling(layout.name)
        )
        message = allocator.exhausted_message(layout.name, used)
        with self._lock:
            self._waiting.setdefault(layout.name, set()).add(vm.key)
        if self._report(obj, "PoolExhausted", message):
            self.log.warning("pool exhausted", vm=vm.key, pool=layout.name, detail=message)
        wait = self.cooldown.next_expiry(layout.name)
        # Nothing cooling: a release wakes the waiting VMs. One that came between the
        # claim and joining ``_waiting`` found nobody to wake, so look again anyway.
        return wait + 0.05 if wait is not None else EXHAUSTED_RECHECK

    def _commit(
        self,
        vm: api.VirtualMachine,
        obj: Obj,
        layout: PoolLayout,
        ip: str,
        alloc_uid: str,
        started: float,
    ) -> None:
        """Write ``status.network``; undo the allocation when the write is refused for good."""
        network = api.VMNetwork(
            ip=ip,
            prefix=layout.prefix,
            mac=mac_from_uid(vm.uid),
            mtu=layout.mtu,
            pool=layout.name,
            gateway=str(layout.gateway) if layout.gateway is not None else None,
        )
        name = api.allocation_name(layout.name, ip)
        current: Obj | None = obj
        if self.config.test_status_delay:
            time.sleep(self.config.test_status_delay)
        for _ in range(STATUS_ATTEMPTS):
            assert current is not None
            try:
                self._write_network(current, network)
            except kube.Conflict:
                current = self._reread(vm)
                outcome = self._after_conflict(vm, current, network)
                if outcome == "lost":
                    self._rollback(name, alloc_uid, vm, "VM changed: gone or addressed meanwhile")
                if outcome != "retry":
                    return
                continue
            except kube.NotFound:
                self._rollback(name, alloc_uid, vm, "VM deleted before its status was written")
                return
            except kube.KubeError as exc:
                self._after_failed_write(vm, network, name, alloc_uid, exc)
                return
            self._allocated(vm, obj, network, started)
            return
        raise kube.Conflict(f"status of VM {vm.key} kept changing; allocation {name} kept")

    def _write_network(self, obj: Obj, network: api.VMNetwork) -> None:
        status = dict(obj.get("status") or {})
        status["network"] = network.to_dict()
        status["conditions"], _ = with_condition(
            status.get("conditions"),
            condition(
                CONDITION_NETWORK,
                True,
                "Allocated",
                _allocated_message(network.ip, network.prefix, network.pool),
            ),
        )
        self.store.write_vm_status(obj, status)

    def _allocated(
        self, vm: api.VirtualMachine, obj: Obj, network: api.VMNetwork, started: float
    ) -> None:
        self.metrics.allocation_seconds.observe(time.monotonic() - started)
        with self._lock:
            for keys in self._waiting.values():
                keys.discard(vm.key)
        message = (
            f"{_allocated_message(network.ip, network.prefix, network.pool)}, MAC {network.mac}"
        )
        self.events.emit(obj, kind=api.VM_KIND, reason="Allocated", message=message)
        self.log.info(
            "allocated address", vm=vm.key, ip=network.ip, mac=network.mac, pool=network.pool
        )

    def _reread(self, vm: api.VirtualMachine) -> Obj | None:
        try:
            return self.store.get_vm(vm.namespace, vm.name)
        except kube.NotFound:
            return None

    def _after_conflict(
        self, vm: api.VirtualMachine, current: Obj | None, network: api.VMNetwork
    ) -> str:
        """After a 409, from the fresh VM: "retry" the write, "done" (it already holds
        this address), or "lost" (VM gone or addressed otherwise: undo ours)."""
        fresh = self._parse_vm(current) if current is not None else None
        if fresh is None or fresh.uid != vm.uid:
            return "lost"
        if fresh.network is None:
            return "retry"
        if (fresh.network.ip, fresh.network.pool) == (network.ip, network.pool):
            return "done"
        return "lost"

    def _after_failed_write(
        self,
        vm: api.VirtualMachine,
        network: api.VMNetwork,
        name: str,
        alloc_uid: str,
        error: kube.KubeError,
    ) -> None:
        """The write failed (5xx, timeout, refused): did it land? Undo only if surely not."""
        try:
            current = self._reread(vm)
        except kube.KubeError as exc:
            raise kube.Unavailable(
                f"failed to write status of VM {vm.key}: {error}; cannot tell whether it "
                f"landed ({exc}); keeping allocation {name} for the next pass"
            ) from exc
        fresh = self._parse_vm(current) if current is not None else None
        if fresh is not None and fresh.uid == vm.uid and fresh.network == network:
            return
        self._rollback(name, alloc_uid, vm, f"status write failed: {error}")
        raise error

    def _rollback(self, name: str, alloc_uid: str, vm: api.VirtualMachine, why: str) -> None:
        try:
            gone = kube.retry(
                lambda: self.store.delete_allocation(name, alloc_uid),
                what=f"delete allocation {name}",
                log=self.log,
                attempts=3,
                base=0.05,
            )
        except kube.KubeError as exc:
            self.metrics.error("rollback")
            self.log.warning(
                "failed to undo allocation; the VM adopts it or the sweeper frees it",
                vm=vm.key,
                allocation=name,
                error=str(exc),
            )
            return
        if gone:
            self._forget_local(name, alloc_uid)
        self.log.info("undid allocation", vm=vm.key, allocation=name, reason=why)

    def _forget_local(self, name: str, alloc_uid: str) -> None:
        held = self.index.get(name)
        if held is not None and held.object_uid == alloc_uid:
            self._forget_allocation(held)

    # Release and leak sweeping -------------------------------------------------

    def release(self, vm_uid: str) -> None:
        """Free every allocation of the deleted VM with UID ``vm_uid``."""
        for held in self.index.held_by(vm_uid):
            if self.store.delete_allocation(held.name, held.object_uid):
                self._forget_local(held.name, held.object_uid)
                self.metrics.releases.inc()
                self.log.info(
                    "released address of deleted VM",
                    vm=str(held.alloc.vm),
                    uid=vm_uid,
                    ip=held.alloc.ip,
                    pool=held.alloc.pool,
                )

    def sweep(self) -> int:
        """Free leaked allocations: list allocations FIRST, then VMs (see ipam.sweeper)."""
        allocations = []
        for obj in self.store.list_allocations().get("items") or []:
            try:
                allocations.append(held_from_obj(obj))
            except api.InvalidObject as exc:
                self.log.warning("sweeper skips malformed allocation", error=str(exc))
        if self.config.test_sweep_pause:
            time.sleep(self.config.test_sweep_pause)
        vms = [
            vm
            for vm in map(self._parse_vm, self.store.list_vms().get("items") or [])
            if vm is not None
        ]
        freed = 0
        for leak in find_leaks(allocations, vms, now=time.time(), grace=self.config.grace):
            if self.store.delete_allocation(leak.held.name, leak.held.object_uid):
                self._forget_local(leak.held.name, leak.held.object_uid)
                self.metrics.leaks.inc()
                freed += 1
                self.log.info(
                    "reclaimed leaked allocation",
                    allocation=leak.held.name,
                    ip=leak.held.alloc.ip,
                    reason=leak.reason,
                )
        return freed

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.config.sweep_interval):
            try:
                self.sweep()
            except kube.KubeError as exc:
                self.metrics.error("sweep")
                self.log.warning("leak sweep failed; next one in an interval", error=str(exc))

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.config.resync):
            for obj in self.vms.items():
                self.queue.add(("vm", object_key(obj)))
            for obj in self.pools.items():
                self.queue.add(("pool", object_key(obj)))

    # Pools ----------------------------------------------------------------------

    def sync_pool(self, name: str) -> None:
        """Publish the pool's usage and validity in its status and in the metrics."""
        obj = self.pools.get(name)
        if obj is None:
            self.metrics.drop_pool(name)
            return
        with self._lock:
            check = self._checks.get(name)
        taken, cooling = self.index.taken(name), self.cooldown.cooling(name)
        if check is not None and check.layout is not None:
            used = allocator.usage(check.layout, taken, cooling)
            size, allocated, free = used.size, used.allocated, used.free
            ready = condition(CONDITION_POOL_READY, True, "Valid", f"{free} of {size} free")
        else:
            size, allocated, free = 0, len(taken), 0
            reason = check.reason if check else "not validated yet"
            ready = condition(
                CONDITION_POOL_READY, False, (check.code if check else "") or "Invalid", reason
            )
        self.metrics.set_pool(name, size=size, allocated=allocated, free=free)
        self._write_pool_status(obj, size, allocated, free, ready)

    def _write_pool_status(
        self, obj: Obj, size: int, allocated: int, free: int, ready: Obj
    ) -> None:
        old = dict(obj.get("status") or {})
        conditions, changed = with_condition(old.get("conditions"), ready)
        # The CRD's integers are int64; an IPv6 /64 holds more than that.
        counts = {
            "size": min(size, INT64_MAX),
            "allocated": allocated,
            "free": min(free, INT64_MAX),
        }
        if not changed and all(old.get(k) == v for k, v in counts.items()):
            return
        self.store.write_pool_status(obj, {**old, **counts, "conditions": conditions})
        if changed and ready["status"] == "False":
            self.events.emit(
                obj,
                kind=api.POOL_KIND,
                reason=ready["reason"],
                message=ready["message"],
                warning=True,
            )
            self.log.warning("pool refused", pool=object_key(obj), reason=ready["message"])


def _allocated_message(ip: str, prefix: int, pool: str) -> str:
    return f"{ip}/{prefix} from pool {pool}"
