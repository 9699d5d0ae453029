"""Pure address decisions: which addresses a pool hands out, which one a VM gets.

Nothing here talks to Kubernetes; the controller feeds in the pools and the
taken and cooling-down addresses it has seen, and gets back decisions.

- :func:`build_layout` turns an ``IPPool`` spec into a :class:`PoolLayout`: the
  sorted ranges of addresses the pool may hand out. Never the network address,
  the IPv4 broadcast address or the gateway; never an excluded address. Edges:
  an IPv4 /31 hands out both addresses (RFC 3021 point-to-point), a /32 or /128
  its single address, an IPv6 /127 both (RFC 6164). IPv6 has no broadcast, but
  the first address of a subnet is the subnet-router anycast address (RFC 4291)
  and the top 128 interface identifiers of a /64 or larger are reserved
  anycast addresses (RFC 2526): none of them is handed out.
- :func:`candidates` walks the layout from a starting point derived from a
  hash of the VM's UID, skipping taken and cooling-down addresses. Two
  controllers racing for *different* VMs start far apart and rarely try the
  same address; two controllers racing for the *same* VM try the same one, so
  the loser finds an allocation that already belongs to the VM and adopts it.
- :func:`check_pools` validates every pool together: invalid CIDR, gateway
  outside the CIDR, overlap with an older pool, overlap with a configured
  cluster range (pod, service or node network). Each refused pool gets one
  clear reason, and the controller hands out nothing from it.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import netaddr

from vmoverlay import api

# Larger than any IPv6 address as an integer: a sort key after every (first, last) range.
_MAX_INT = 1 << 129


class PoolInvalid(ValueError):
    """A pool spec the controller refuses to allocate from; the message says why."""


@dataclass(frozen=True)
class PoolLayout:
    """The addresses a pool may hand out, as sorted inclusive integer ranges."""

    name: str
    network: netaddr.IPNetwork
    gateway: netaddr.IPAddress | None
    ranges: tuple[tuple[int, int], ...]
    offsets: tuple[int, ...]
    size: int
    mtu: int = api.DEFAULT_MTU

    @property
    def version(self) -> int:
        return int(self.network.version)

    @property
    def prefix(self) -> int:
        return int(self.network.prefixlen)

    def address(self, index: int) -> netaddr.IPAddress:
        """The ``index``-th allocatable address (0 <= index < size)."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} outside pool {self.name} of size {self.size}")
        slot = bisect.bisect_right(self.offsets, index) - 1
        first, _ = self.ranges[slot]
        return netaddr.IPAddress(first + index - self.offsets[slot], self.version)

    def allocatable(self, ip: int | netaddr.IPAddress) -> bool:
        """Whether the pool may hand out ``ip``."""
        value = int(ip)
        if isinstance(ip, netaddr.IPAddress) and ip.version != self.version:
            return False
        slot = bisect.bisect_right(self.ranges, (value, _MAX_INT)) - 1
        if slot < 0:
            return False
        first, last = self.ranges[slot]
        return first <= value <= last

    def contains(self, ip: netaddr.IPAddress) -> bool:
        """Whether ``ip`` lies inside the pool's CIDR (allocatable or not)."""
        return bool(ip.version == self.version and ip in self.network)


def usable_bounds(network: netaddr.IPNetwork) -> tuple[int, int]:
    """First and last address of ``network`` a host may use (inclusive)."""
    first, last = int(network.first), int(network.last)
    if network.version == 4:
        if network.prefixlen <= 30:
            return first + 1, last - 1
        return first, last
    if network.prefixlen <= 64:
        return first + 1, last - 128
    if network.prefixlen <= 126:
        return first + 1, last
    return first, last


def parse_network(text: str, *, what: str) -> netaddr.IPNetwork:
    """A CIDR with no host bits set, or :class:`PoolInvalid` saying what is wrong."""
    if "/" not in text:
        raise PoolInvalid(f"{what} {text!r} is not a CIDR (want ADDRESS/PREFIX)")
    try:
        network = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
        raise PoolInvalid(f"{what} {text!r} is not a valid CIDR: {exc}") from exc
    if network.ip != network.network:
        raise PoolInvalid(f"{what} {text!r} has host bits set; did you mean {network.cidr}?")
    return network


def parse_address(text: str, *, what: str) -> netaddr.IPAddress:
    try:
        return netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
        raise PoolInvalid(f"{what} {text!r} is not a valid IP address: {exc}") from exc


# Object names are at most 253 characters; an allocation is "<pool>-<ip>" and
# the longest address part ("-" + 39 characters of IPv6 + two "0") takes 42.
MAX_POOL_NAME = 253 - 42


def build_layout(pool: api.IPPool) -> PoolLayout:
    """The allocatable addresses of ``pool``; :class:`PoolInvalid` if its spec is wrong."""
    if len(pool.name) > MAX_POOL_NAME:
        raise PoolInvalid(
            f"pool name is {len(pool.name)} characters; at most {MAX_POOL_NAME} leave room "
            "for the address in allocation names"
        )
    network = parse_network(pool.cidr, what="cidr")
    gateway = _parse_gateway(pool, network)
    first, last = usable_bounds(network)
    allowed = netaddr.IPSet(netaddr.IPRange(first, last) if first <= last else [])
    if gateway is not None:
        allowed.remove(gateway)
    for entry in pool.exclude:
        allowed -= netaddr.IPSet([_parse_exclusion(entry, network)])

    ranges = tuple((int(r.first), int(r.last)) for r in allowed.iter_ipranges())
    offsets, total = [], 0
    for lo, hi in ranges:
        offsets.append(total)
        total += hi - lo + 1
    if total == 0:
        raise PoolInvalid(f"cidr {network.cidr} has no usable address left after gateway/exclude")
    return PoolLayout(pool.name, network, gateway, ranges, tuple(offsets), total, pool.mtu)


def _parse_gateway(pool: api.IPPool, network: netaddr.IPNetwork) -> netaddr.IPAddress | None:
    if not pool.gateway:
        return None
    gateway = parse_address(pool.gateway, what="gateway")
    if gateway.version != network.version or gateway not in network:
        raise PoolInvalid(f"gateway {gateway} is outside cidr {network.cidr}")
    return gateway


def _parse_exclusion(entry: str, network: netaddr.IPNetwork) -> netaddr.IPNetwork:
    if "/" in entry:
        excluded = parse_network(entry, what="exclude entry")
    else:
        excluded = netaddr.IPNetwork(parse_address(entry, what="exclude entry"))
    if excluded.version != network.version or not _overlaps(excluded, network):
        raise PoolInvalid(f"exclude entry {entry} is outside cidr {network.cidr}")
    return excluded


def _overlaps(a: netaddr.IPNetwork, b: netaddr.IPNetwork) -> bool:
    return bool(a.version == b.version and a.first <= b.last and b.first <= a.last)


def start_index(seed: str, size: int) -> int:
    """A stable, well-spread starting index in ``[0, size)`` for the VM with UID ``seed``."""
    digest = hashlib.sha256(seed.encode()).digest()
    return int.from_bytes(digest[:8], "big") % size


def candidates(layout: PoolLayout, blocked: Collection[int], seed: str) -> Iterator[str]:
    """Free addresses of ``layout`` in the order a VM with UID ``seed`` should try them.

    ``blocked`` holds the integer values of taken and cooling-down addresses.
    The walk starts at :func:`start_index` and wraps around once; it yields
    nothing when every allocatable address is blocked.
    """
    size = layout.size
    # Counting is only needed when the pool may be full (blocked holds at least
    # ``size`` addresses); it spares a walk over every address of a full pool.
    if len(blocked) >= size and sum(1 for ip in blocked if layout.allocatable(ip)) >= size:
        return
    start = start_index(seed, size)
    for step in range(size):
        address = layout.address((start + step) % size)
        if int(address) not in blocked:
            yield str(address)


def choose_address(layout: PoolLayout, blocked: Collection[int], seed: str) -> str | None:
    """The first address :func:`candidates` offers, or None when the pool is full."""
    return next(candidates(layout, blocked, seed), None)


@dataclass(frozen=True)
class PoolUsage:
    size: int
    allocated: int
    cooling: int

    @property
    def free(self) -> int:
        return max(0, self.size - self.allocated)

    @property
    def available(self) -> int:
        """Free and not cooling down: what a new VM could get right now."""
        return max(0, self.size - self.allocated - self.cooling)


def usage(layout: PoolLayout, taken: Collection[int], cooling: Collection[int]) -> PoolUsage:
    """How many of the pool's allocatable addresses are taken and cooling down."""
    allocated = sum(1 for ip in taken if layout.allocatable(ip))
    cools = sum(1 for ip in cooling if ip not in taken and layout.allocatable(ip))
    return PoolUsage(layout.size, allocated, cools)


def exhausted_message(pool: str, used: PoolUsage) -> str:
    """The condition and Event text for a VM that gets no address from ``pool``."""
    text = f"pool {pool} exhausted: {used.allocated} of {used.size} in use"
    if used.cooling:
        text += f", {used.cooling} cooling down before reuse"
    return text


@dataclass(frozen=True)
class PoolCheck:
    """The outcome of validating one pool: a layout to allocate from, or a reason."""

    name: str
    layout: PoolLayout | None
    reason: str = ""
    code: str = ""  # InvalidSpec, Overlap or ClusterRangeOverlap when refused

    @property
    def usable(self) -> bool:
        return self.layout is not None


def check_pools(pools: Sequence[api.IPPool], cluster_cidrs: Sequence[str]) -> dict[str, PoolCheck]:
    """Validate ``pools`` together; earlier pools in the sequence take precedence.

    The caller passes pools oldest first, so a pool created later that
    overlaps an existing one is the one refused, and the existing pool keeps
    serving. ``cluster_cidrs`` are the cluster's own ranges (pod CIDR,
    service CIDR, node network): a pool overlapping any of them is refused.
    """
    reserved = [parse_network(c, what="cluster range") for c in cluster_cidrs]
    accepted: list[PoolLayout] = []
    out: dict[str, PoolCheck] = {}
    for pool in pools:
        try:
            layout = build_layout(pool)
        except PoolInvalid as exc:
            out[pool.name] = PoolCheck(pool.name, None, str(exc), "InvalidSpec")
            continue
        code, reason = _overlap_reason(layout, accepted, reserved)
        if reason:
            out[pool.name] = PoolCheck(pool.name, None, reason, code)
            continue
        accepted.append(layout)
        out[pool.name] = PoolCheck(pool.name, layout)
    return out


def _overlap_reason(
    layout: PoolLayout, accepted: Sequence[PoolLayout], reserved: Sequence[netaddr.IPNetwork]
) -> tuple[str, str]:
    for other in accepted:
        if _overlaps(layout.network, other.network):
            return "Overlap", (
                f"cidr {layout.network.cidr} overlaps pool {other.name} "
                f"({other.network.cidr}), which was there first"
            )
    for cluster in reserved:
        if _overlaps(layout.network, cluster):
            return "ClusterRangeOverlap", (
                f"cidr {layout.network.cidr} overlaps cluster range {cluster.cidr}"
            )
    return "", ""
