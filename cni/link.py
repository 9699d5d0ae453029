"""The veth pair that plugs a runner pod into the node's overlay bridge (pyroute2).

One attachment = one veth pair:

- host end ``vmo<12 hex>`` in the node's namespace, on the bridge, with the
  bridge's MTU. Its name is a hash of (container id, interface name), so DEL
  finds it with nothing but the runtime's environment, even when the
  container's namespace is gone. Its alias records the network, container id
  and interface (``vmoverlay-cni net=... if=... cid=...``) for GC.
- container end ``CNI_IFNAME`` in ``CNI_NETNS`` with the wanted MAC, MTU,
  addresses and default route. IPv6 address generation is off and IPv6
  addresses skip duplicate address detection, so bringing the interface up
  sends nothing: a migration's target pod stays silent until it is used.

The steps are ``ensure_*``: each leaves the kernel right whether or not an
earlier run did part of it, so a repeated ADD creates nothing twice.
"Exists" and "not found" are success by errno. ADD registers the undo of
everything it creates in a :class:`Rollback`, run when a later step fails.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni import errors
from cni.errors import CNIError
from vmoverlay.logs import get_logger

log = get_logger("cni")

HOST_PREFIX = "vmo"
ALIAS_PREFIX = "vmoverlay-cni"
IFA_F_NODAD = 0x02
ADDR_GEN_MODE_NONE = 1

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def host_port_name(container_id: str, ifname: str) -> str:
    """The host end's name: stable for (container, interface), 15 characters.

    >>> host_port_name("abc", "eth1")
    'vmo21fe19eff60a'
    """
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return f"{HOST_PREFIX}{digest[:12]}"


def port_alias(network: str, container_id: str, ifname: str) -> str:
    return f"{ALIAS_PREFIX} net={network} if={ifname} cid={container_id}"


def parse_alias(alias: str | None) -> tuple[str, str, str] | None:
    """(network, container id, ifname) from a host end's alias; None if not ours."""
    if not alias or not alias.startswith(ALIAS_PREFIX + " "):
        return None
    fields = dict(item.partition("=")[::2] for item in alias.split()[1:])
    if not {"net", "if", "cid"} <= fields.keys():
        return None
    return fields["net"], fields["cid"], fields["if"]


@dataclass(frozen=True)
class PortSpec:
    """What ADD wants for one attachment."""

    network: str
    container_id: str
    ifname: str
    netns: str
    bridge: str
    mac: str
    mtu: int
    """The container end's MTU (the host end gets the bridge's)."""
    addresses: tuple[IPInterface, ...] = ()
    gateway: IPAddress | None = None
    default_route: bool = True

    @property
    def host_name(self) -> str:
        return host_port_name(self.container_id, self.ifname)

    @property
    def alias(self) -> str:
        return port_alias(self.network, self.container_id, self.ifname)


@dataclass(frozen=True)
class Port:
    """What ADD made: enough for the result."""

    host_name: str
    host_mac: str
    ifname: str
    mac: str
    mtu: int
    created: bool


class Rollback:
    """A stack of undo steps; :meth:`run` unwinds them, :meth:`commit` forgets them."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, undo: Callable[[], None]) -> None:
        self._steps.append((what, undo))

    def commit(self) -> None:
        self._steps.clear()

    def run(self) -> list[str]:
        """Undo in reverse order; return what could not be undone."""
        failed = []
        while self._steps:
            what, undo = self._steps.pop()
            try:
                undo()
                log.info("rolled back", step=what)
            except (CNIError, NetlinkError, OSError) as exc:
                failed.append(f"{what}: {exc}")
        return failed


# ------------------------------------------------------------- node side


def bridge_mtu(bridge: str) -> int:
    """The bridge's MTU; error 11 when the bridge does not exist (yet)."""
    with IPRoute() as ipr, _netlink(f"look up bridge {bridge}"):
        links = ipr.link("get", ifname=bridge) if ipr.link_lookup(ifname=bridge) else []
    if not links:
        raise CNIError(
            errors.TRY_AGAIN_LATER,
            f"bridge {bridge} does not exist on this node",
            "the vxlan-manager agent creates it: is it running on this node?",
        )
    return int(links[0].get_attr("IFLA_MTU"))


def bridge_exists(bridge: str) -> bool:
    with IPRoute() as ipr, _netlink(f"look up bridge {bridge}"):
        return bool(ipr.link_lookup(ifname=bridge))


def attach_to_bridge(host_name: str, bridge: str) -> None:
    """Put the host end on the bridge and bring it up (the last step of ADD)."""
    with IPRoute() as ipr, _netlink(f"attach {host_name} to bridge {bridge}"):
        master = _index(ipr, bridge)
        index = _index(ipr, host_name)
        if master is None or index is None:
            missing = bridge if master is None else host_name
            raise CNIError(errors.LINK_FAILURE, f"failed to attach {host_name}: {missing} is gone")
        ipr.link("set", index=index, master=master)
        ipr.link("set", index=index, state="up")


def remove_port(host_name: str) -> bool:
    """Delete the host end (and with it the container end); True if it existed."""
    with IPRoute() as ipr, _netlink(f"delete link {host_name}"):
        index = _index(ipr, host_name)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
            return False
    log.info("port removed", port=host_name)
    return True


@dataclass(frozen=True)
class HostPort:
    host_name: str
    network: str
    container_id: str
    ifname: str


def list_ports() -> list[HostPort]:
    """Every host end this plugin made on the node (any network), from the aliases."""
    out = []
    with IPRoute() as ipr, _netlink("list links"):
        for link in ipr.link("dump"):
            parsed = parse_alias(link.get_attr("IFLA_IFALIAS"))
            if parsed:
                out.append(HostPort(link.get_attr("IFLA_IFNAME"), *parsed))
    return out


# ------------------------------------------------------------- ADD


def ensure_port(spec: PortSpec, bridge_mtu: int, rollback: Rollback) -> Port:
    """Make the veth pair right, container end configured; the host end not yet bridged."""
    check_netns(spec.netns)
    created = False
    with IPRoute() as host:
        index = _index(host, spec.host_name)
        if index is not None and not _peer_in_container(host, index, spec):
            log.warning("stale host port, recreating", port=spec.host_name, netns=spec.netns)
            remove_port(spec.host_name)
            index = None
        if index is None:
            index = _create_veth(host, spec, bridge_mtu)
            created = True
            rollback.push(f"delete link {spec.host_name}", lambda: _undo_port(spec.host_name))
        with _netlink(f"configure host end {spec.host_name}"):
            host.link("set", index=index, ifalias=spec.alias, mtu=bridge_mtu)
            _no_ipv6_autoconf(host, index)
            host_mac = str(host.link("get", index=index)[0].get_attr("IFLA_ADDRESS"))
    _configure_container(spec)
    return Port(spec.host_name, host_mac, spec.ifname, spec.mac, spec.mtu, created)


def _undo_port(host_name: str) -> None:
    remove_port(host_name)


def check_netns(path: str) -> None:
    if not os.path.exists(path):
        raise CNIError(
            errors.CONTAINER_UNKNOWN,
            f"network namespace {path} does not exist",
            "the container is gone or CNI_NETNS is wrong",
        )


def _create_veth(host: IPRoute, spec: PortSpec, bridge_mtu: int) -> int:
    with _container(spec.netns) as ns, _netlink(f"look up {spec.ifname} in {spec.netns}"):
        if ns.link_lookup(ifname=spec.ifname):
            raise CNIError(
                errors.LINK_FAILURE,
                f"failed to create {spec.ifname}: the container already has an interface "
                "of that name not made by this plugin",
                f"netns {spec.netns}; choose another interface name",
            )
    fd = os.open(spec.netns, os.O_RDONLY)
    try:
        with _netlink(f"create veth pair {spec.host_name}/{spec.ifname}"):
            peer = {"ifname": spec.ifname, "net_ns_fd": fd, "address": spec.mac, "mtu": spec.mtu}
            host.link("add", ifname=spec.host_name, kind="veth", mtu=bridge_mtu, peer=peer)
    finally:
        os.close(fd)
    index = _index(host, spec.host_name)
    if index is None:
        raise CNIError(errors.LINK_FAILURE, f"failed to find {spec.host_name} after creating it")
    log.info("veth pair created", port=spec.host_name, ifname=spec.ifname, mac=spec.mac)
    return index


def _peer_in_container(host: IPRoute, index: int, spec: PortSpec) -> bool:
    """Whether the host end's peer is ``spec.ifname`` in ``spec.netns``."""
    with _container(spec.netns) as ns, _netlink(f"look up {spec.ifname} in {spec.netns}"):
        found = ns.link_lookup(ifname=spec.ifname)
        if not found:
            return False
        link = ns.link("get", index=found[0])[0]
    return bool(link.get_attr("IFLA_LINK") == index)


def _configure_container(spec: PortSpec) -> None:
    with _container(spec.netns) as ns, _netlink(f"configure {spec.ifname} in {spec.netns}"):
        index = ns.link_lookup(ifname=spec.ifname)[0]
        ns.link("set", index=index, address=spec.mac, mtu=spec.mtu)
        _no_ipv6_autoconf(ns, index)
        ns.link("set", index=index, state="up")
        for address in spec.addresses:
            _ensure_address(ns, index, address)
        if spec.gateway is not None and spec.default_route:
            _ensure_default_route(ns, index, spec.gateway, spec.ifname)


def _ensure_address(ns: IPRoute, index: int, address: IPInterface) -> None:
    flags = IFA_F_NODAD if address.version == 6 else 0
    try:
        ns.addr(
            "add",
            index=index,
            address=str(address.ip),
            prefixlen=address.network.prefixlen,
            flags=flags,
        )
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def _ensure_default_route(ns: IPRoute, index: int, gateway: IPAddress, ifname: str) -> None:
    dst = "0.0.0.0/0" if gateway.version == 4 else "::/0"
    try:
        ns.route("add", dst=dst, gateway=str(gateway), oif=index)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
        current = _default_routes(ns, gateway.version)
        if (str(gateway), index) not in current:
            raise CNIError(
                errors.LINK_FAILURE,
                f"failed to add a default route via {gateway} dev {ifname}: "
                "the container already has another default route",
                f"existing (gateway, oif): {sorted(current, key=str)}; set "
                '"defaultRoute": false when this network is not the pod\'s primary one',
            ) from exc


def _default_routes(ns: IPRoute, version: int) -> set[tuple[str | None, int | None]]:
    family = 2 if version == 4 else 10
    out = set()
    for route in ns.route("dump", family=family):
        if route["dst_len"] == 0 and route.get_attr("RTA_TABLE") in (None, 254):
            out.add((route.get_attr("RTA_GATEWAY"), route.get_attr("RTA_OIF")))
    return out


def _no_ipv6_autoconf(ipr: IPRoute, index: int) -> None:
    """No link-local address, so no DAD, router or MLD solicitation leaves the port."""
    spec = {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", ADDR_GEN_MODE_NONE)]})]}
    try:
        ipr.link("set", index=index, af_spec=spec)
    except NetlinkError as exc:
        # No IPv6 in this kernel or namespace: nothing to keep quiet.
        if exc.code not in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
            raise


# ------------------------------------------------------------- CHECK


@dataclass(frozen=True)
class PortWant:
    ifname: str
    mac: str
    mtu: int
    addresses: tuple[IPInterface, ...] = ()
    gateway: IPAddress | None = None


@dataclass
class PortHave:
    host_exists: bool = False
    host_master: str | None = None
    host_up: bool = False
    container_exists: bool = False
    mac: str | None = None
    mtu: int | None = None
    up: bool = False
    addresses: set[str] = field(default_factory=set)
    gateways: set[str] = field(default_factory=set)


def port_drift(want: PortWant, have: PortHave, *, bridge: str, host_name: str) -> list[str]:
    """What differs between the wanted attachment and the kernel's, readable.

    >>> port_drift(PortWant("eth1", "0a:00:00:00:00:01", 1450), PortHave(), bridge="b",
    ...            host_name="vmo1")
    ['host end vmo1 is missing', 'eth1 is missing in the container']
    """
    out = []
    if not have.host_exists:
        out.append(f"host end {host_name} is missing")
    else:
        if have.host_master != bridge:
            out.append(
                f"host end {host_name} is on {have.host_master or 'no bridge'}, not {bridge}"
            )
        if not have.host_up:
            out.append(f"host end {host_name} is down")
    if not have.container_exists:
        out.append(f"{want.ifname} is missing in the container")
        return out
    if have.mac != want.mac:
        out.append(f"{want.ifname} MAC {have.mac} vs expected {want.mac}")
    if have.mtu != want.mtu:
        out.append(f"{want.ifname} MTU {have.mtu} vs expected {want.mtu}")
    if not have.up:
        out.append(f"{want.ifname} is down")
    for address in want.addresses:
        if str(address) not in have.addresses:
            out.append(f"{want.ifname} lacks address {address} (has {sorted(have.addresses)})")
    if want.gateway is not None and str(want.gateway) not in have.gateways:
        out.append(f"no default route via {want.gateway} on {want.ifname}")
    return out


def inspect_port(host_name: str, ifname: str, netns: str) -> PortHave:
    """The kernel's view of one attachment, for :func:`port_drift`."""
    have = PortHave()
    with IPRoute() as ipr, _netlink(f"inspect {host_name}"):
        index = _index(ipr, host_name)
        if index is not None:
            link = ipr.link("get", index=index)[0]
            have.host_exists = True
            have.host_up = link.get_attr("IFLA_OPERSTATE") != "DOWN" and bool(link["flags"] & 1)
            master = link.get_attr("IFLA_MASTER")
            if master:
                have.host_master = ipr.link("get", index=master)[0].get_attr("IFLA_IFNAME")
    check_netns(netns)
    with _container(netns) as ns, _netlink(f"inspect {ifname} in {netns}"):
        found = ns.link_lookup(ifname=ifname)
        if not found:
            return have
        link = ns.link("get", index=found[0])[0]
        have.container_exists = True
        have.mac = str(link.get_attr("IFLA_ADDRESS"))
        have.mtu = int(link.get_attr("IFLA_MTU"))
        have.up = bool(link["flags"] & 1)
        for addr in ns.addr("dump", index=found[0]):
            have.addresses.add(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}")
        for version in (4, 6):
            for gateway, oif in _default_routes(ns, version):
                if oif == found[0] and gateway:
                    have.gateways.add(str(gateway))
    return have


# ------------------------------------------------------------- helpers


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


@contextmanager
def _container(netns: str) -> Iterator[IPRoute]:
    """An IPRoute in the container's namespace; never creates one (flags=0)."""
    try:
        ipr = IPRoute(netns=netns, flags=0)
    except OSError as exc:
        raise CNIError(
            errors.CONTAINER_UNKNOWN,
            f"failed to enter network namespace {netns}",
            f"{exc}; is CNI_NETNS a network namespace path?",
        ) from exc
    try:
        yield ipr
    finally:
        ipr.close()


@contextmanager
def _netlink(what: str) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        raise CNIError(
            errors.LINK_FAILURE, f"failed to {what}", f"{os.strerror(exc.code)} ({exc})"
        ) from exc
