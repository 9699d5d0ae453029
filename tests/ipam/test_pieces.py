"""The controller's pure pieces: work queue, indexes, cool-down, leak decisions, conditions.

Scenarios:
- a key queued twice while waiting is handed out once; a key added while a worker
  holds it is handed out again only after ``done``, never to two workers at once;
- ``add_after`` and ``retry`` hand a key out later, back-off grows per key and resets;
- the allocation index tracks taken addresses per pool and allocations per VM UID;
- the cool-down blocks a freed address until it expires and reports the next expiry;
- the leak sweeper's decision (C02): matched by UID never by name, never younger
  than the grace period, a VM recorded with another address loses its stray allocation,
  a live VM's allocation is never freed;
- conditions keep lastTransitionTime while the status does not flip, and report changes.
"""

from __future__ import annotations

import threading

import netaddr

from ipam.state import AllocationIndex, CoolDown, Held, held_from_obj
from ipam.store import allocation_body, condition, with_condition
from ipam.sweeper import find_leaks
from ipam.workqueue import WorkQueue
from vmoverlay import api


def held(pool: str, ip: str, vm_uid: str, *, name: str = "db-0", created: float = 0.0) -> Held:
    obj = allocation_body(pool, ip, api.ObjectRef("db", name, vm_uid))
    obj["metadata"]["uid"] = f"obj-{pool}-{ip}"
    h = held_from_obj(obj)
    return Held(h.alloc, h.object_uid, created)


def vm(name: str, uid: str, ip: str | None = None, pool: str = "p") -> api.VirtualMachine:
    status = {}
    if ip:
        status["network"] = {"ip": ip, "prefix": 24, "mac": "0a:00:00:00:00:01", "pool": pool}
    return api.VirtualMachine.from_obj(
        {"metadata": {"namespace": "db", "name": name, "uid": uid}, "status": status}
    )


def test_queue_dedups_waiting_keys() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("a")
    q.add("b")
    assert q.get(timeout=0) == "a"
    assert q.get(timeout=0) == "b"
    assert q.get(timeout=0) is None


def test_queue_never_hands_one_key_to_two_workers() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add("a")
    assert q.get(timeout=0) is None, "a key being processed must not be handed out again"
    q.done("a")
    assert q.get(timeout=0) == "a"
    q.done("a")
    assert q.get(timeout=0) is None


def test_queue_add_after_and_retry_back_off() -> None:
    q: WorkQueue[str] = WorkQueue(base_delay=0.01, max_delay=0.04)
    q.add_after("later", 0.05)
    assert q.get(timeout=0) is None
    assert q.get(timeout=2) == "later"
    q.done("later")
    delays = [q.retry("k") for _ in range(4)]
    assert delays == [0.01, 0.02, 0.04, 0.04]
    q.forget("k")
    assert q.retry("k") == 0.01


def test_queue_shutdown_wakes_waiting_workers() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    q.shutdown()
    worker.join(timeout=5)
    assert got == [None]


def test_index_tracks_pool_addresses_and_vm_uids() -> None:
    index = AllocationIndex()
    a, b = held("p", "198.19.0.5", "u1"), held("p", "198.19.0.6", "u2")
    index.put(a)
    index.put(b)
    assert index.taken("p") == {int(netaddr.IPAddress("198.19.0.5")), a.ip_int + 1}
    assert [h.name for h in index.held_by("u1")] == ["p-198-19-0-5"]
    assert index.drop(a.name) == a
    assert index.taken("p") == {b.ip_int}
    assert index.held_by("u1") == []
    assert index.pools() == {"p"}


def test_cooldown_blocks_until_expiry() -> None:
    cool = CoolDown(60)
    cool.freed("p", 5, now=100.0)
    assert cool.cooling("p", now=130.0) == {5}
    assert cool.cooling("other", now=130.0) == set()
    assert cool.next_expiry("p", now=130.0) == 30.0
    assert cool.cooling("p", now=161.0) == set()
    assert cool.next_expiry("p", now=161.0) is None
    off = CoolDown(0)
    off.freed("p", 5)
    assert off.cooling("p") == set()


def test_sweeper_frees_only_gone_uids_older_than_grace() -> None:
    allocs = [
        held("p", "198.19.0.5", "old-uid", created=0.0),  # db-0 deleted and re-created
        held("p", "198.19.0.6", "new-uid", created=0.0),  # the new db-0: alive
        held("p", "198.19.0.7", "gone-young", name="db-1", created=95.0),  # within grace
        held("p", "198.19.0.8", "live-no-status", name="db-2", created=0.0),
    ]
    vms = [vm("db-0", "new-uid", "198.19.0.6"), vm("db-2", "live-no-status")]
    leaks = find_leaks(allocs, vms, now=100.0, grace=10.0)
    assert [leak.held.alloc.ip for leak in leaks] == ["198.19.0.5"]
    assert "old-uid" in leaks[0].reason


def test_sweeper_frees_a_stray_allocation_of_a_vm_addressed_otherwise() -> None:
    allocs = [held("p", "198.19.0.5", "u"), held("p", "198.19.0.9", "u")]
    leaks = find_leaks(allocs, [vm("db-0", "u", "198.19.0.5")], now=100.0, grace=10.0)
    assert [leak.held.alloc.ip for leak in leaks] == ["198.19.0.9"]


def test_sweeper_never_frees_an_allocation_without_creation_time() -> None:
    h = held("p", "198.19.0.5", "gone")
    unknown_age = Held(h.alloc, h.object_uid, None)
    assert find_leaks([unknown_age], [], now=1e9, grace=1.0) == []


def test_condition_transition_time_moves_only_on_flip() -> None:
    first, changed = with_condition(None, condition("NetworkReady", False, "PoolExhausted", "m"))
    assert changed and first[0]["lastTransitionTime"]
    stamp = "2000-01-01T00:00:00Z"
    first[0]["lastTransitionTime"] = stamp
    same, changed = with_condition(first, condition("NetworkReady", False, "PoolExhausted", "m"))
    assert not changed and same[0]["lastTransitionTime"] == stamp
    other, changed = with_condition(first, condition("NetworkReady", False, "PoolExhausted", "n"))
    assert changed and other[0]["lastTransitionTime"] == stamp
    flipped, changed = with_condition(first, condition("NetworkReady", True, "Allocated", "ok"))
    assert changed and flipped[0]["lastTransitionTime"] != stamp
    assert len(flipped) == 1


def test_index_counts_addresses_of_vms_holding_two() -> None:
    index = AllocationIndex()
    index.put(held("p", "198.19.0.5", "u1"))
    index.put(held("p", "198.19.0.6", "u1"))
    index.put(held("p", "198.19.0.7", "u2"))
    assert index.doubly_held("p") == 2
    index.drop("p-198-19-0-6")
    assert index.doubly_held("p") == 0
