"""The pure allocator: which addresses a pool hands out and which one a VM gets.

Scenarios:
- an IPv4 /24 never hands out the network, broadcast or gateway address;
- /30, /31 (RFC 3021), /32 edges; IPv6 /64 (subnet-router and RFC 2526 anycast), /127, /128;
- exclusions (single addresses and CIDRs) are never handed out and shrink the size;
- the starting point is stable per UID and spread across UIDs;
- taken and cooling-down addresses are skipped; a full pool yields nothing;
- the exhausted message names the pool and the counts ("pool P exhausted: 6 of 6 in use");
- pool validation: invalid CIDR, host bits set, gateway outside the CIDR, exclusion outside,
  overlapping pools (the older one wins, C08), overlap with a cluster range (C08).
"""

from __future__ import annotations

import re

import netaddr
import pytest

from ipam import allocator
from ipam.allocator import PoolInvalid, build_layout, candidates, check_pools, choose_address
from vmoverlay import api


def pool(cidr: str, name: str = "p", gateway: str | None = None, *exclude: str) -> api.IPPool:
    return api.IPPool(name=name, cidr=cidr, gateway=gateway, exclude=tuple(exclude))


def every_address(layout: allocator.PoolLayout) -> list[str]:
    return [str(layout.address(i)) for i in range(layout.size)]


def ip(text: str) -> int:
    return int(netaddr.IPAddress(text))


def test_ipv4_24_skips_network_broadcast_and_gateway() -> None:
    layout = build_layout(pool("198.19.0.0/24", gateway="198.19.0.1"))
    addresses = every_address(layout)
    assert layout.size == 253
    assert "198.19.0.0" not in addresses
    assert "198.19.0.255" not in addresses
    assert "198.19.0.1" not in addresses
    assert addresses[0] == "198.19.0.2" and addresses[-1] == "198.19.0.254"
    assert layout.prefix == 24


@pytest.mark.parametrize(
    ("cidr", "expected"),
    [
        ("198.19.0.0/30", ["198.19.0.1", "198.19.0.2"]),
        ("198.19.0.0/31", ["198.19.0.0", "198.19.0.1"]),
        ("198.19.0.9/32", ["198.19.0.9"]),
        ("fd00::/127", ["fd00::", "fd00::1"]),
        ("fd00::9/128", ["fd00::9"]),
        ("fd00::/126", ["fd00::1", "fd00::2", "fd00::3"]),
    ],
)
def test_small_prefix_edges(cidr: str, expected: list[str]) -> None:
    assert every_address(build_layout(pool(cidr))) == expected


def test_ipv6_64_skips_subnet_router_and_reserved_anycast() -> None:
    layout = build_layout(pool("fd00:1::/64", gateway="fd00:1::1"))
    assert layout.size == 2**64 - 1 - 128 - 1
    assert not layout.allocatable(netaddr.IPAddress("fd00:1::"))
    assert not layout.allocatable(netaddr.IPAddress("fd00:1::1"))
    assert not layout.allocatable(netaddr.IPAddress("fd00:1::ffff:ffff:ffff:ffff"))
    assert not layout.allocatable(netaddr.IPAddress("fd00:1::ffff:ffff:ffff:ff80"))
    assert layout.allocatable(netaddr.IPAddress("fd00:1::ffff:ffff:ffff:ff7f"))
    chosen = choose_address(layout, set(), "uid-1")
    assert chosen is not None and netaddr.IPAddress(chosen) in layout.network


def test_exclusions_are_never_handed_out() -> None:
    layout = build_layout(pool("198.19.0.0/24", "p", "198.19.0.1", "198.19.0.128/25", "198.19.0.7"))
    addresses = set(every_address(layout))
    assert layout.size == 127 - 2  # .1-.127 less gateway and .7
    assert "198.19.0.7" not in addresses
    assert not any(netaddr.IPAddress(a) in netaddr.IPNetwork("198.19.0.128/25") for a in addresses)
    assert layout.allocatable(netaddr.IPAddress("198.19.0.127"))
    assert not layout.allocatable(netaddr.IPAddress("198.19.0.128"))


def test_start_point_is_stable_per_uid_and_spread() -> None:
    layout = build_layout(pool("198.19.0.0/16"))
    assert choose_address(layout, set(), "uid-a") == choose_address(layout, set(), "uid-a")
    firsts = {choose_address(layout, set(), f"uid-{i}") for i in range(200)}
    assert len(firsts) >= 195


def test_taken_and_cooling_addresses_are_skipped() -> None:
    layout = build_layout(pool("198.19.0.0/29"))
    blocked = {ip(f"198.19.0.{i}") for i in (1, 2, 3, 4, 5)}
    assert list(candidates(layout, blocked, "uid-x")) == ["198.19.0.6"]
    blocked.add(ip("198.19.0.6"))
    assert list(candidates(layout, blocked, "uid-x")) == []
    assert choose_address(layout, blocked, "uid-x") is None


def test_candidates_wrap_around_and_cover_the_pool_once() -> None:
    layout = build_layout(pool("198.19.0.0/28"))
    order = list(candidates(layout, set(), "uid-wrap"))
    assert sorted(order, key=ip) == every_address(layout)
    assert len(order) == 14


def test_blocked_addresses_outside_the_pool_do_not_count_as_taken() -> None:
    layout = build_layout(pool("198.19.0.0/30"))
    outside = {ip("198.19.9.1"), ip("198.19.9.2")}
    assert choose_address(layout, outside, "uid") in {"198.19.0.1", "198.19.0.2"}


def test_usage_and_exhausted_message() -> None:
    layout = build_layout(pool("198.19.0.0/29", name="small"))
    taken = {ip(f"198.19.0.{i}") for i in range(1, 7)}
    used = allocator.usage(layout, taken, cooling=set())
    assert (used.size, used.allocated, used.free) == (6, 6, 0)
    assert allocator.exhausted_message("small", used) == "pool small exhausted: 6 of 6 in use"
    taken.discard(ip("198.19.0.3"))
    used = allocator.usage(layout, taken, cooling={ip("198.19.0.3")})
    assert (used.allocated, used.free, used.available) == (5, 1, 0)
    assert "1 cooling down" in allocator.exhausted_message("small", used)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (pool("198.19.0.0/33"), "not a valid CIDR"),
        (pool("nonsense/24"), "not a valid CIDR"),
        (pool("198.19.0.0"), "not a CIDR"),
        (pool("198.19.0.5/24"), "host bits set; did you mean 198.19.0.0/24"),
        (pool("198.19.0.0/24", gateway="198.19.1.1"), "gateway 198.19.1.1 is outside"),
        (pool("198.19.0.0/24", gateway="fd00::1"), "is outside cidr"),
        (pool("198.19.0.0/24", "p", None, "198.20.0.0/24"), "exclude entry 198.20.0.0/24 is"),
        (pool("198.19.0.0/32", gateway="198.19.0.0"), "no usable address"),
        (pool("198.19.0.0/24", name="p" * 212), "pool name is 212 characters; at most 211"),
    ],
)
def test_invalid_pools_are_refused_with_a_reason(spec: api.IPPool, reason: str) -> None:
    with pytest.raises(PoolInvalid, match=reason.replace(".", r"\.")):
        build_layout(spec)
    check = check_pools([spec], [])[spec.name]
    assert reason in check.reason and check.code == "InvalidSpec"


def test_overlapping_pool_is_refused_and_the_older_keeps_serving() -> None:
    older = pool("198.19.0.0/24", name="older")
    newer = pool("198.19.0.128/25", name="newer")
    checks = check_pools([older, newer], [])
    assert checks["older"].usable
    assert not checks["newer"].usable
    assert checks["newer"].reason == (
        "cidr 198.19.0.128/25 overlaps pool older (198.19.0.0/24), which was there first"
    )


def test_disjoint_pools_and_other_families_are_accepted() -> None:
    checks = check_pools(
        [pool("198.19.0.0/24", name="a"), pool("198.19.1.0/24", name="b"), pool("fd00::/64")],
        [],
    )
    assert all(c.usable for c in checks.values())


def test_pool_overlapping_a_cluster_range_is_refused() -> None:
    checks = check_pools([pool("198.18.0.0/23", name="bad")], ["198.18.0.0/24"])
    assert checks["bad"].reason == "cidr 198.18.0.0/23 overlaps cluster range 198.18.0.0/24"
    # An invalid pool does not shadow a later valid one.
    checks = check_pools(
        [pool("198.19.0.0/16", name="x", gateway="1.2.3.4"), pool("198.19.0.0/24")], []
    )
    assert not checks["x"].usable and checks["p"].usable


@pytest.mark.parametrize(
    "address", ["fd00:19:0:1::", "::1", "fd00::7", "198.19.0.0", "::ffff:198.19.0.1"]
)
def test_allocation_names_are_valid_object_names(address: str) -> None:
    name = api.allocation_name("v6", address)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name
    assert api.allocation_name("v6", address.upper()) == name  # one name per address


def test_allocation_names_differ_for_every_address_of_a_small_v6_pool() -> None:
    layout = build_layout(pool("fd00:19::/120"))
    names = {api.allocation_name("p", str(layout.address(i))) for i in range(layout.size)}
    assert len(names) == layout.size
