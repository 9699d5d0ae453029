"""In-memory indexes the controller allocates from: who holds what, what cools down.

- :class:`AllocationIndex` mirrors the IPAllocation objects (from the watch,
  plus the ones this controller just created, before their watch event
  arrives), indexed by name, by pool address and by VM UID.
- :class:`CoolDown` remembers freed addresses until their cool-down ends, so
  a late packet for a deleted VM never reaches a new one.

Both are hints, never the source of truth: the API server's name uniqueness
decides who gets an address. A stale index costs an AlreadyExists and a
retry, never a duplicate.

# Limitation: the cool-down is held in memory. Every replica, leader or
# standby, watches every release, so a fail-over keeps the cool-downs; but a
# restart of every replica at once forgets the addresses freed in the last
# cool-down period, and one of them may be handed out at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import netaddr

from vmoverlay import api


@dataclass(frozen=True)
class Held:
    """One allocation as the index knows it."""

    alloc: api.IPAllocation
    object_uid: str
    created: float | None

    @property
    def name(self) -> str:
        return self.alloc.name

    @property
    def ip_int(self) -> int:
        return int(netaddr.IPAddress(self.alloc.ip))


def parse_time(text: str) -> float | None:
    """An RFC 3339 timestamp from the API as a UNIX time, or None."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def held_from_obj(obj: dict[str, Any]) -> Held:
    """Parse an IPAllocation object; :class:`vmoverlay.api.InvalidObject` if malformed."""
    alloc = api.IPAllocation.from_obj(obj)
    try:
        netaddr.IPAddress(alloc.ip)
    except (netaddr.AddrFormatError, ValueError) as exc:
        raise api.InvalidObject(f"IPAllocation {alloc.name} has a bad ip {alloc.ip!r}") from exc
    meta = obj.get("metadata") or {}
    return Held(alloc, str(meta.get("uid") or ""), parse_time(alloc.created))


class AllocationIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Held] = {}
        self._by_pool: dict[str, dict[int, str]] = {}
        self._by_vm: dict[str, set[str]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_name)

    def put(self, held: Held) -> None:
        with self._lock:
            self._drop_locked(held.name)
            self._by_name[held.name] = held
            self._by_pool.setdefault(held.alloc.pool, {})[held.ip_int] = held.name
            self._by_vm.setdefault(held.alloc.vm.uid, set()).add(held.name)

    def drop(self, name: str) -> Held | None:
        with self._lock:
            return self._drop_locked(name)

    def _drop_locked(self, name: str) -> Held | None:
        held = self._by_name.pop(name, None)
        if held is None:
            return None
        pool = self._by_pool.get(held.alloc.pool, {})
        if pool.get(held.ip_int) == name:
            del pool[held.ip_int]
        names = self._by_vm.get(held.alloc.vm.uid)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_vm[held.alloc.vm.uid]
        return held

    def get(self, name: str) -> Held | None:
        with self._lock:
            return self._by_name.get(name)

    def taken(self, pool: str) -> set[int]:
        with self._lock:
            return set(self._by_pool.get(pool, {}))

    def held_by(self, vm_uid: str) -> list[Held]:
        with self._lock:
            return [self._by_name[n] for n in sorted(self._by_vm.get(vm_uid, ()))]

    def doubly_held(self, pool: str) -> int:
        """How many allocations of ``pool`` belong to a VM that holds more than one.

        Two controllers can briefly give one VM two addresses; the loser undoes its
        allocation at once. Until then the pool looks fuller than it is.
        """
        with self._lock:
            names = self._by_pool.get(pool, {}).values()
            return sum(1 for n in names if len(self._by_vm[self._by_name[n].alloc.vm.uid]) > 1)

    def pools(self) -> set[str]:
        with self._lock:
            return {p for p, ips in self._by_pool.items() if ips}

    def all(self) -> list[Held]:
        with self._lock:
            return list(self._by_name.values())


class CoolDown:
    """Addresses freed recently, per pool, until ``seconds`` have passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._until: dict[tuple[str, int], float] = {}

    def freed(self, pool: str, ip: int, *, now: float | None = None) -> None:
        if self.seconds <= 0:
            return
        with self._lock:
            self._until[(pool, ip)] = (now or time.monotonic()) + self.seconds

    def cooling(self, pool: str, *, now: float | None = None) -> set[int]:
        now = now or time.monotonic()
        with self._lock:
            expired = [k for k, until in self._until.items() if until <= now]
            for key in expired:
                del self._until[key]
            return {ip for (p, ip) in self._until if p == pool}

    def next_expiry(self, pool: str, *, now: float | None = None) -> float | None:
        """Seconds until the first address of ``pool`` leaves its cool-down, or None."""
        now = now or time.monotonic()
        with self._lock:
            ends = [until for (p, _), until in self._until.items() if p == pool and until > now]
        return min(ends) - now if ends else None

    def forget(self, pools: Iterable[str]) -> None:
        keep = set(pools)
        with self._lock:
            self._until = {k: v for k, v in self._until.items() if k[0] in keep}
