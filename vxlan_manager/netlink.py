"""The kernel edge: devices, FDB entries and neighbours through pyroute2's IPRoute.

Works in whatever network namespace the process runs in (the host network in
a cluster, a node namespace in the lab) or in the namespace of the IPRoute it
is handed (tests). Rules this module keeps:

- Every step is an ``ensure_*``: "already exists" and "not found" are success,
  decided by errno constants, so two agents racing on one node, or an agent
  killed half-way and restarted, converge instead of failing.
- Every dump goes through :func:`dump`, which retries a dump the kernel marks
  interrupted (``NLM_F_DUMP_INTR``) or that fails with EINTR/EBUSY/EAGAIN.
- Before creating anything, :meth:`Kernel.check_coexistence` looks at every
  VXLAN device: one on our UDP port with our VNI (the kernel refuses a second
  at create), or one on our port in the other receive mode (the kernel
  refuses only when the second is set up) is a :class:`Collision` naming it.
- Our own device with a wrong attribute is repaired in place where the kernel
  allows it (local address, MTU, learning, master) and recreated where it
  does not (VNI, port, mode); each wrong attribute is logged first.
- FDB entries are only ever changed on our VXLAN device, and only ``self``
  entries (the VXLAN device's own table, not the bridge's). Devices we create
  carry the alias :data:`OWNER_ALIAS`, so ``teardown`` knows them.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_DUMP_INTR
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from vmoverlay.logs import StructLogger, get_logger
from vxlan_manager.config import InterfaceInfo
from vxlan_manager.desired import (
    BridgeSpec,
    Difference,
    FdbEntry,
    FdbPlan,
    NeighEntry,
    SetPlan,
    VxlanSpec,
    diff_device,
)

OWNER_ALIAS = "vmoverlay:vxlan-manager"
NUD_STATIC = ndmsg.states["permanent"] | ndmsg.states["noarp"]
NTF_SELF = ndmsg.flags["self"]
NTF_MASTER = ndmsg.flags["master"]
NUD_PERMANENT = ndmsg.states["permanent"]
RETRY_DUMP_ERRNOS = (errno.EINTR, errno.EBUSY, errno.EAGAIN)
EXISTS = (errno.EEXIST,)
GONE = (errno.ENOENT, errno.ENODEV, errno.ESRCH)
# A changelink the kernel cannot do on a live device; recreate instead.
NOT_IN_PLACE = (errno.EOPNOTSUPP, errno.EINVAL, errno.EBUSY, errno.EADDRINUSE)

log = get_logger("vxlan-manager")
T = TypeVar("T")


class NetlinkFailure(RuntimeError):
    """A kernel operation failed; the message says which and why."""


class Collision(RuntimeError):
    """The configuration would collide with another device; nothing was created."""


def dump(
    fn: Callable[..., Any],
    *args: Any,
    what: str,
    extract: Callable[[Any], T | None] = lambda m: m,
    attempts: int = 5,
    **kwargs: Any,
) -> list[T]:
    """Run a netlink dump, retrying while the kernel reports it interrupted.

    ``extract`` turns each message into what the caller keeps (None: skip it),
    as the messages stream in, so a dump of thousands of entries never holds
    thousands of parsed messages at once.
    """
    for attempt in range(1, attempts + 1):
        out: list[T] = []
        interrupted = False
        try:
            for msg in fn(*args, **kwargs):
                interrupted = interrupted or bool(msg["header"]["flags"] & NLM_F_DUMP_INTR)
                value = extract(msg)
                if value is not None:
                    out.append(value)
        except NetlinkDumpInterrupted:
            interrupted = True
        except NetlinkError as exc:
            if exc.code not in RETRY_DUMP_ERRNOS:
                raise NetlinkFailure(f"failed to dump {what}: {exc}") from exc
            interrupted = True
        if not interrupted:
            return out
        log.debug(
            "netlink dump interrupted, will retry", what=what, attempt=f"{attempt}/{attempts}"
        )
        time.sleep(0.005 * attempt)
    raise NetlinkFailure(f"failed to dump {what}: interrupted {attempts} times in a row")


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    mtu: int
    master: int | None
    up: bool
    alias: str | None
    vxlan: VxlanSpec | None  # parsed attributes when kind == "vxlan"


def _parse_link(msg: Any, names: dict[int, str]) -> Link:
    kind = msg.get(("linkinfo", "kind"))
    master = msg.get_attr("IFLA_MASTER")
    name = msg.get_attr("IFLA_IFNAME")
    mtu = int(msg.get_attr("IFLA_MTU") or 0)
    vxlan = None
    if kind == "vxlan":
        data = msg.get(("linkinfo", "data"))
        local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6") or ""
        vxlan = VxlanSpec(
            name=name,
            vni=int(data.get_attr("IFLA_VXLAN_ID") or 0),
            port=int(data.get_attr("IFLA_VXLAN_PORT") or 0),
            local=str(ipaddress.ip_address(local)) if local else "",
            mtu=mtu,
            learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
            master=names.get(master) if master else None,
            external=bool(data.get_attr("IFLA_VXLAN_COLLECT_METADATA")),
        )
    return Link(
        index=int(msg["index"]),
        name=name,
        kind=kind,
        mtu=mtu,
        master=int(master) if master else None,
        up=bool(msg["flags"] & 1),
        alias=msg.get_attr("IFLA_IFALIAS"),
        vxlan=vxlan,
    )


def _fail(verb: str, obj: str, exc: NetlinkError, hint: str = "") -> NetlinkFailure:
    text = f"failed to {verb} {obj}: {exc.args[1] if len(exc.args) > 1 else exc}"
    return NetlinkFailure(f"{text}; {hint}" if hint else text)


class Kernel:
    """One namespace's links, FDB and neighbours, through one IPRoute socket.

    Not thread-safe: the agent uses it from its reconcile thread only.
    """

    def __init__(self, ipr: IPRoute | None = None, *, logger: StructLogger | None = None) -> None:
        self.ipr = ipr if ipr is not None else IPRoute()
        self.log = logger or log

    def close(self) -> None:
        self.ipr.close()

    # ------------------------------------------------------------ reading

    def links(self) -> list[Link]:
        msgs: list[Any] = dump(self.ipr.get_links, what="links")
        names = {int(m["index"]): m.get_attr("IFLA_IFNAME") for m in msgs}
        return [_parse_link(m, names) for m in msgs]

    def link(self, name: str) -> Link | None:
        try:
            msgs = self.ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code in GONE:
                return None
            raise _fail("read", f"link {name}", exc) from exc
        msg = msgs[0]
        master = msg.get_attr("IFLA_MASTER")
        names = {int(msg["index"]): name}
        if master:
            names[int(master)] = self._name_of(int(master))
        return _parse_link(msg, names)

    def _name_of(self, index: int) -> str:
        try:
            return str(self.ipr.link("get", index=index)[0].get_attr("IFLA_IFNAME"))
        except NetlinkError as exc:
            if exc.code in GONE:
                return f"#{index}"
            raise _fail("read", f"link #{index}", exc) from exc

    def interfaces(self) -> list[InterfaceInfo]:
        """Every link with its addresses, for choosing the underlay."""
        addrs: dict[int, list[str]] = {}
        msgs: list[Any] = dump(self.ipr.get_addr, what="addresses")
        for msg in msgs:
            addrs.setdefault(int(msg["index"]), []).append(str(msg.get_attr("IFA_ADDRESS")))
        return [
            InterfaceInfo(link.name, link.index, link.mtu, tuple(addrs.get(link.index, ())))
            for link in self.links()
        ]

    def networks(self, index: int) -> list[str]:
        """The networks of the addresses on link ``index`` (``198.19.0.0/16``...)."""
        out = []
        msgs: list[Any] = dump(self.ipr.get_addr, what="addresses", index=index)
        for msg in msgs:
            net = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            if not net.ip.is_link_local:
                out.append(str(net.network))
        return out

    # ------------------------------------------------------------ devices

    def check_coexistence(self, spec: VxlanSpec, bridge: BridgeSpec) -> None:
        """Raise :class:`Collision` if creating/repairing our devices would clash."""
        for link in self.links():
            if link.name == spec.name:
                if link.kind != "vxlan":
                    raise Collision(
                        f"device {spec.name} exists and is a {link.kind or 'plain'} link, not "
                        f"VXLAN: remove it or choose another name with --device"
                    )
                continue
            if link.name == bridge.name and link.kind != "bridge":
                raise Collision(
                    f"device {bridge.name} exists and is a {link.kind or 'plain'} link, not a "
                    f"bridge: remove it or choose another name with --bridge"
                )
            other = link.vxlan
            if other is None or other.port != spec.port:
                continue
            if other.vni == spec.vni:
                raise Collision(
                    f"VNI {spec.vni} on UDP port {spec.port} is already used by VXLAN device "
                    f"{link.name}: choose another --vni or --port (nothing was created)"
                )
            if other.external != spec.external:
                mode = "external (collect-metadata)" if other.external else "classic"
                raise Collision(
                    f"VXLAN device {link.name} uses UDP port {spec.port} in {mode} mode; the "
                    f"kernel would refuse to bring {spec.name} up on it: choose another --port "
                    f"(nothing was created)"
                )

    def ensure_bridge(self, spec: BridgeSpec) -> Link:
        link = self.link(spec.name)
        if link is None:
            self.log.info("creating bridge", device=spec.name, mtu=spec.mtu)
            try:
                self.ipr.link("add", ifname=spec.name, kind="bridge", mtu=spec.mtu)
                self._set(spec.name, "mark", ifalias=OWNER_ALIAS, index=self._index(spec.name))
            except NetlinkError as exc:
                if exc.code not in EXISTS:
                    raise _fail("create", f"bridge {spec.name}", exc) from exc
            link = self._must_link(spec.name)
        if link.kind != "bridge":
            raise Collision(
                f"device {spec.name} exists and is not a bridge: remove it or use --bridge"
            )
        if link.mtu != spec.mtu:
            self.log.warning(
                "device drift, repairing",
                device=spec.name,
                attribute="mtu",
                difference=f"mtu {link.mtu} vs {spec.mtu}",
                how="in place",
            )
            self._set(spec.name, "set the MTU of", index=link.index, mtu=spec.mtu)
        if not link.up:
            self._set(spec.name, "bring up", index=link.index, state="up")
        return self._must_link(spec.name)

    def ensure_vxlan(self, spec: VxlanSpec) -> tuple[Link, list[Difference]]:
        """Create or repair our VXLAN device; return it and what was repaired."""
        master = self._must_link(spec.master) if spec.master else None
        link = self.link(spec.name)
        if link is None:
            self._create_vxlan(spec, master)
            link = self._must_link(spec.name)
        assert link.vxlan is not None
        diffs = diff_device(spec, link.vxlan)
        for diff in diffs:
            self.log.warning(
                "device drift, repairing",
                device=spec.name,
                attribute=diff.attribute,
                difference=str(diff),
                how="in place" if diff.in_place else "recreate",
            )
        if diffs and all(d.in_place for d in diffs):
            try:
                self._repair_in_place(spec, link, diffs, master)
            except NetlinkFailure as exc:
                self.log.warning(
                    "in-place repair refused, recreating", device=spec.name, error=str(exc)
                )
                diffs = [*diffs, Difference("in-place repair", "refused", "recreate", False)]
        if any(not d.in_place for d in diffs):
            self._delete_link(spec.name)
            self._create_vxlan(spec, master)
        link = self._must_link(spec.name)
        if not link.up:
            self._set(spec.name, "bring up", index=link.index, state="up")
            link = self._must_link(spec.name)
        return link, diffs

    def _create_vxlan(self, spec: VxlanSpec, master: Link | None) -> None:
        family = ipaddress.ip_address(spec.local).version
        attrs: dict[str, Any] = {
            "ifname": spec.name,
            "kind": "vxlan",
            "vxlan_id": spec.vni,
            "vxlan_port": spec.port,
            "vxlan_learning": int(spec.learning),
            "mtu": spec.mtu,
            ("vxlan_local" if family == 4 else "vxlan_local6"): spec.local,
        }
        if master is not None:
            attrs["master"] = master.index
        self.log.info(
            "creating VXLAN device",
            device=spec.name,
            vni=spec.vni,
            port=spec.port,
            local=spec.local,
            mtu=spec.mtu,
        )
        try:
            self.ipr.link("add", **attrs)
        except NetlinkError as exc:
            if exc.code in EXISTS and self.link(spec.name) is not None:
                return  # another agent made it a moment ago; the caller checks it
            raise _fail(
                "create",
                f"VXLAN device {spec.name} (VNI {spec.vni}, port {spec.port})",
                exc,
                "another VXLAN device may use this VNI and port",
            ) from exc
        self._set(spec.name, "mark", index=self._index(spec.name), ifalias=OWNER_ALIAS)

    def _repair_in_place(
        self, spec: VxlanSpec, link: Link, diffs: list[Difference], master: Link | None
    ) -> None:
        attrs = {d.attribute for d in diffs}
        if attrs & {"local", "learning"}:
            family = ipaddress.ip_address(spec.local).version
            self._set(
                spec.name,
                "change",
                index=link.index,
                kind="vxlan",
                vxlan_id=spec.vni,
                vxlan_learning=int(spec.learning),
                **{("vxlan_local" if family == 4 else "vxlan_local6"): spec.local},
            )
        if "mtu" in attrs:
            self._set(spec.name, "set the MTU of", index=link.index, mtu=spec.mtu)
        if "master" in attrs:
            self._set(spec.name, "attach", index=link.index, master=master.index if master else 0)

    def ensure_port_mtus(self, bridge: Link, mtu: int) -> list[str]:
        """Give every port of ``bridge`` the overlay MTU; return the ports changed."""
        changed = []
        for link in self.links():
            if link.master == bridge.index and link.mtu != mtu:
                self.log.info(
                    "setting bridge port MTU", device=link.name, old_mtu=link.mtu, mtu=mtu
                )
                self._set(link.name, "set the MTU of", index=link.index, mtu=mtu)
                changed.append(link.name)
        return changed

    def delete_owned_link(self, name: str, *, recorded: bool = False) -> bool:
        """Delete ``name`` if we own it (our alias, or ``recorded`` in our state)."""
        link = self.link(name)
        if link is None:
            return False
        if link.alias != OWNER_ALIAS and not recorded:
            self.log.warning("leaving device we do not own", device=name, alias=link.alias)
            return False
        self._delete_link(name)
        return True

    def _delete_link(self, name: str) -> None:
        self.log.info("deleting device", device=name)
        try:
            self.ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code not in GONE:
                raise _fail("delete", f"device {name}", exc) from exc

    def _set(self, name: str, verb: str, **attrs: Any) -> None:
        self.log.debug(
            "netlink link set", device=name, **{k: v for k, v in attrs.items() if k != "index"}
        )
        try:
            self.ipr.link("set", **attrs)
        except NetlinkError as exc:
            raise _fail(verb, f"device {name}", exc) from exc

    def _index(self, name: str) -> int:
        return self._must_link(name).index

    def _must_link(self, name: str) -> Link:
        link = self.link(name)
        if link is None:
            raise NetlinkFailure(
                f"failed to find device {name}: it vanished (deleted by someone else?)"
            )
        return link

    # ------------------------------------------------------------ FDB

    def fdb_entries(self, index: int) -> set[FdbEntry]:
        """The static ``self`` entries with a remote on the VXLAN device ``index``."""

        def extract(msg: Any) -> FdbEntry | None:
            if msg["ifindex"] != index or not msg["flags"] & NTF_SELF:
                return None
            dst = msg.get_attr("NDA_DST")
            if not dst or not msg["state"] & NUD_PERMANENT:
                return None
            return FdbEntry(str(msg.get_attr("NDA_LLADDR")).lower(), str(ipaddress.ip_address(dst)))

        return set(dump(self.ipr.fdb, "dump", ifindex=index, what="FDB", extract=extract))

    def forget_learned(self, index: int, mac: str) -> bool:
        """Drop the bridge's *learned* entry for ``mac`` behind port ``index`` (our VXLAN).

        When a VM arrives here, the local bridge still sends its frames to the old
        node until the VM speaks; without the entry it floods, and the VM's port
        answers. Only the entry behind our VXLAN port is removed; the bridge has no
        static entry for a VM MAC there (we never make one).
        """
        self.log.debug("netlink fdb", command="del", mac=mac, table="bridge")
        try:
            self.ipr.neigh(
                "del", family=socket.AF_BRIDGE, ifindex=index, lladdr=mac, flags=NTF_MASTER
            )
        except NetlinkError as exc:
            if exc.code in GONE:
                return False
            raise _fail("remove", f"learnt bridge entry {mac}", exc) from exc
        return True

    def apply_fdb(self, index: int, plan: FdbPlan) -> None:
        """Removals last, so a peer's traffic always has somewhere to go."""
        for entry in plan.add:
            self._fdb("append" if entry.kind == "flood" else "replace", index, entry)
        for _old, new in plan.replace:
            self._fdb("replace", index, new)
        for entry in plan.remove:
            self._fdb("del", index, entry)

    def _fdb(self, command: str, index: int, entry: FdbEntry) -> None:
        self.log.debug("netlink fdb", command=command, mac=entry.mac, dst=entry.dst)
        try:
            self.ipr.neigh(
                command,
                family=socket.AF_BRIDGE,
                ifindex=index,
                lladdr=entry.mac,
                dst=entry.dst,
                state=NUD_STATIC,
                flags=NTF_SELF,
            )
        except NetlinkError as exc:
            if command == "del" and exc.code in GONE:
                return
            if command != "del" and exc.code in EXISTS:
                return
            verb = {"append": "add", "replace": "replace", "del": "remove"}[command]
            raise _fail(verb, f"FDB entry {entry}", exc) from exc

    # ------------------------------------------------------------ neighbours

    def neighbours(self, index: int) -> set[NeighEntry]:
        """The permanent neighbour entries on link ``index``."""

        def extract(msg: Any) -> NeighEntry | None:
            if msg["ifindex"] != index or msg["family"] not in (socket.AF_INET, socket.AF_INET6):
                return None
            mac = msg.get_attr("NDA_LLADDR")
            if not mac or not msg["state"] & NUD_PERMANENT:
                return None
            return NeighEntry(str(ipaddress.ip_address(msg.get_attr("NDA_DST"))), str(mac).lower())

        return set(dump(self.ipr.neigh, "dump", ifindex=index, what="neighbours", extract=extract))

    def apply_neighbours(self, index: int, plan: SetPlan) -> None:
        for entry in plan.add:
            self._neigh("replace", index, entry)
        for entry in plan.remove:
            self._neigh("del", index, entry)

    def _neigh(self, command: str, index: int, entry: NeighEntry) -> None:
        self.log.debug("netlink neigh", command=command, ip=entry.ip, mac=entry.mac)
        try:
            self.ipr.neigh(
                command,
                ifindex=index,
                dst=entry.ip,
                lladdr=entry.mac,
                state=ndmsg.states["permanent"],
            )
        except NetlinkError as exc:
            if command == "del" and exc.code in GONE:
                return
            raise _fail(
                "set" if command != "del" else "remove", f"neighbour {entry.ip}", exc
            ) from exc


def remove_entries(kernel: Kernel, index: int, entries: Iterable[FdbEntry]) -> None:
    """Remove FDB entries (teardown helper); missing ones are fine."""
    kernel.apply_fdb(index, FdbPlan(remove=tuple(entries)))
