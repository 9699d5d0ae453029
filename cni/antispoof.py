"""Per-port anti-spoofing (and the migration gate) in nftables' ``bridge`` family.

A VM port may only send frames from its VM's MAC, IPv4 from the VM's IP, ARP
that claims exactly the VM's MAC and IP, IPv6 from the VM's IPv6 address or a
link-local one, and RARP (QEMU's self-announce). Everything else it sends is
counted and dropped in the kernel before the bridge forwards it, so a VM cannot
take another VM's address.

Layout, all in one table this plugin owns (``bridge vmoverlay_cni``)::

    map ports  { type ifname : verdict }      # host port -> jump port-<port>
    set open   { type ifname; flags dynamic } # gated ports whose VM announced itself
    chain prerouting { type filter hook prerouting priority -200; iifname vmap @ports }
    chain port-<port> { ...rules of one port... }

Each port has its own chain and one map element, so DEL removes exactly its
own rules and nobody else's, and GC finds orphans by listing the chains. Every
change is one JSON transaction through libnftables (Debian's python3-nftables),
so a port is never half filtered.

Limitations: IPv6 neighbour advertisements are checked by source address only,
not by the target address they announce; the gate opens on any RARP from the
VM's MAC on that port, so a runner that forges one opens its own gate early
(the anti-spoofing rules still hold); pod-mode ports are never gated.

The migration gate (``vm-l2`` mode, migration-target pods): until switch-over
the target pod must not send any frame with the VM's MAC, or every bridge and
VTEP would learn the VM at the target while it still runs at the source. The
gate drops frames from the VM's MAC on that port until the VM announces itself
there: QEMU sends RARP from the guest's MAC exactly at switch-over (its
self-announce), the first RARP adds the port to ``@open`` and from then on the
port passes traffic. :func:`open_gate` opens it explicitly (for a VM started
with announce disabled).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cni import errors
from cni.errors import CNIError
from vmoverlay.logs import get_logger

log = get_logger("cni")

FAMILY = "bridge"
TABLE = "vmoverlay_cni"
PORTS_MAP = "ports"
OPEN_SET = "open"
BASE_CHAIN = "prerouting"
CHAIN_PREFIX = "port-"
ETHERTYPE_RARP = 0x8035

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PortPolicy:
    """What one VM port may send."""

    port: str
    mac: str
    ips: tuple[IPAddress, ...]
    anti_spoof: bool = True
    gate: bool = False

    @property
    def chain(self) -> str:
        return chain_name(self.port)


def chain_name(port: str) -> str:
    return f"{CHAIN_PREFIX}{port}"


def needs_chain(policy: PortPolicy) -> bool:
    return policy.anti_spoof or policy.gate


# ---------------------------------------------------------------- I/O: the edges


def ensure_port(policy: PortPolicy, *, reset_gate: bool) -> None:
    """Install (or replace) the port's chain and map element in one transaction.

    ``reset_gate`` forgets an earlier announce on this port name (a new link).
    """
    for attempt in (1, 2):
        state = table_state()
        if reset_gate and state is not None and policy.port in state.open:
            _run([_delete_open_element(policy.port)], what=f"reset the gate of port {policy.port}")
        # The kernel marks the gate set dynamic once a rule adds to it; adding it again
        # without that flag (which libnftables' JSON cannot express) fails, so only once.
        # A concurrent ADD may create it between our look and our write: look again.
        with_set = state is None or not state.has_open_set
        try:
            _run(
                port_commands(policy, with_open_set=with_set),
                what=f"install anti-spoofing rules for port {policy.port}",
            )
            break
        except CNIError as exc:
            if attempt == 2 or not with_set:
                raise
            log.warning("nftables table changed meanwhile, will retry", port=policy.port, error=exc)
    log.debug("port rules installed", port=policy.port, mac=policy.mac, gate=policy.gate)


def remove_port(port: str) -> None:
    """Remove the port's map element, chain and gate element; what is absent is fine."""
    state = table_state()
    if state is None:
        return
    commands: list[dict[str, Any]] = []
    if port in state.mapped:
        commands.append({"delete": {"element": _map_element(port)}})
    if chain_name(port) in state.chains:
        commands.append({"flush": {"chain": _chain(chain_name(port))}})
        commands.append({"delete": {"chain": _chain(chain_name(port))}})
    if port in state.open:
        commands.append(_delete_open_element(port))
    if commands:
        _run(commands, what=f"remove anti-spoofing rules of port {port}")
        log.debug("port rules removed", port=port)


def open_gate(port: str) -> None:
    """Let the port's VM traffic through now (switch-over without a RARP announce)."""
    _run(
        [{"add": {"element": {**_table(), "name": OPEN_SET, "elem": [port]}}}],
        what=f"open the migration gate of port {port}",
    )


@dataclass(frozen=True)
class TableState:
    chains: frozenset[str]
    mapped: frozenset[str]
    open: frozenset[str]
    has_open_set: bool = True

    @property
    def ports(self) -> frozenset[str]:
        """Every port with a chain or a map element."""
        names = {c[len(CHAIN_PREFIX) :] for c in self.chains if c.startswith(CHAIN_PREFIX)}
        return frozenset(names | self.mapped)


def table_state() -> TableState | None:
    """Chains, mapped ports and open gates in the table; None if the table does not exist.

    Without the nftables library no rule can have been installed, so there is
    nothing to find (and DEL and GC still succeed); installing rules fails instead.
    """
    try:
        nft = _nft()
    except CNIError as exc:
        log.warning("nftables library missing, no rules to look at", error=exc.details)
        return None
    rc, out, err = nft.json_cmd({"nftables": [{"list": {"tables": {"family": FAMILY}}}]})
    if rc != 0:
        raise CNIError(errors.FIREWALL_FAILURE, "failed to list nftables tables", err.strip())
    if not any(_obj(item, "table").get("name") == TABLE for item in _items(out)):
        return None
    rc, out, err = nft.json_cmd({"nftables": [{"list": {"table": _table_obj()}}]})
    if rc != 0:
        raise CNIError(errors.FIREWALL_FAILURE, f"failed to list nftables table {TABLE}", err)
    chains: set[str] = set()
    mapped: set[str] = set()
    opened: set[str] = set()
    has_open_set = False
    for item in _items(out):
        if "chain" in item:
            chains.add(str(item["chain"]["name"]))
        elif "map" in item and item["map"].get("name") == PORTS_MAP:
            mapped.update(str(e[0]) for e in item["map"].get("elem") or [])
        elif "set" in item and item["set"].get("name") == OPEN_SET:
            has_open_set = True
            opened.update(_element_name(e) for e in item["set"].get("elem") or [])
    return TableState(frozenset(chains), frozenset(mapped), frozenset(opened), has_open_set)


def list_open() -> frozenset[str]:
    state = table_state()
    return state.open if state else frozenset()


def port_problems(policy: PortPolicy) -> list[str]:
    """CHECK: what is missing of the port's rules (an empty list when all is in place)."""
    state = table_state()
    if state is None:
        return [f"nftables table {FAMILY} {TABLE} is missing"]
    problems = []
    if policy.chain not in state.chains:
        problems.append(f"chain {policy.chain} is missing")
    if policy.port not in state.mapped:
        problems.append(f"port {policy.port} is not in map {PORTS_MAP}")
    return problems


def _nft() -> Any:
    # Imported here: Debian's binding is linked into the venv by scripts/bootstrap.sh,
    # and commands that never touch nftables (VERSION, a bad config) must not need it.
    try:
        import nftables  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        raise CNIError(
            errors.FIREWALL_FAILURE,
            "failed to load the nftables library",
            f"{exc}: install Debian's python3-nftables (scripts/bootstrap.sh does)",
        ) from exc
    return nftables.Nftables()


def _run(commands: Sequence[dict[str, Any]], *, what: str) -> None:
    rc, _out, err = _nft().json_cmd({"nftables": list(commands)})
    if rc != 0:
        raise CNIError(
            errors.FIREWALL_FAILURE,
            f"failed to {what}",
            f"{str(err).strip()}; is the nftables bridge family available (nft list ruleset)?",
        )


def _items(out: Any) -> list[dict[str, Any]]:
    if not isinstance(out, dict):
        return []
    return [item for item in out.get("nftables") or [] if isinstance(item, dict)]


def _obj(item: dict[str, Any], key: str) -> dict[str, Any]:
    value = item.get(key)
    return value if isinstance(value, dict) else {}


def _element_name(elem: Any) -> str:
    # Elements of a dynamic set may come back wrapped with their timeout/expiry.
    if isinstance(elem, dict) and "elem" in elem:
        return str(elem["elem"].get("val"))
    return str(elem)


# ------------------------------------------------- pure: the JSON of the rules


def port_commands(policy: PortPolicy, *, with_open_set: bool = True) -> list[dict[str, Any]]:
    """The whole transaction that makes the table and this port's chain right.

    Repeatable: the table skeleton is added if absent (the base chain is flushed
    and refilled with its one rule in the same transaction), the port chain is
    flushed and refilled, the map element added.
    """
    chain = _chain(policy.chain)
    commands = [*skeleton_commands(with_open_set=with_open_set), {"add": {"chain": chain}}]
    commands.append({"flush": {"chain": chain}})
    for expr in port_rules(policy):
        commands.append({"add": {"rule": {**_table(), "chain": policy.chain, "expr": expr}}})
    commands.append({"add": {"element": _map_element(policy.port)}})
    return commands


def skeleton_commands(*, with_open_set: bool = True) -> list[dict[str, Any]]:
    base = {**_table(), "name": BASE_CHAIN}
    open_set = {"add": {"set": {**_table(), "name": OPEN_SET, "type": "ifname"}}}
    return [
        {"add": {"table": _table_obj()}},
        {"add": {"map": {**_table(), "name": PORTS_MAP, "type": "ifname", "map": "verdict"}}},
        *([open_set] if with_open_set else []),
        {
            "add": {
                "chain": {
                    **base,
                    "type": "filter",
                    "hook": "prerouting",
                    "prio": -200,
                    "policy": "accept",
                }
            }
        },
        {"flush": {"chain": base}},
        {
            "add": {
                "rule": {
                    **_table(),
                    "chain": BASE_CHAIN,
                    "expr": [{"vmap": {"key": _meta("iifname"), "data": f"@{PORTS_MAP}"}}],
                }
            }
        },
    ]


def port_rules(policy: PortPolicy) -> list[list[dict[str, Any]]]:
    """The rule expressions of one port's chain, in order."""
    rules: list[list[dict[str, Any]]] = []
    if policy.anti_spoof:
        rules.append([_match(_payload("ether", "saddr"), policy.mac, "!="), _counter(), _drop()])
    if policy.gate:
        # Limitation: any RARP from the VM's MAC opens the gate, also one the runner forges.
        from_vm = _match(_payload("ether", "saddr"), policy.mac)
        rarp = _match(_payload("ether", "type"), ETHERTYPE_RARP)
        add_open = {"set": {"op": "add", "elem": _meta("iifname"), "set": f"@{OPEN_SET}"}}
        rules.append([from_vm, rarp, add_open])
        rules.append([from_vm, _match(_meta("iifname"), f"@{OPEN_SET}", "!="), _counter(), _drop()])
    if policy.anti_spoof:
        rules.extend(_allowed_traffic(policy))
        rules.append([_counter(), _drop()])
    return rules


def _allowed_traffic(policy: PortPolicy) -> list[list[dict[str, Any]]]:
    rules: list[list[dict[str, Any]]] = []
    v4 = [str(ip) for ip in policy.ips if ip.version == 4]
    v6 = [str(ip) for ip in policy.ips if ip.version == 6]
    for ip in v4:
        rules.append(
            [
                _match(_payload("arp", "saddr ether"), policy.mac),
                _match(_payload("arp", "saddr ip"), ip),
                _accept(),
            ]
        )
        rules.append([_match(_payload("ip", "saddr"), ip), _accept()])
    # A DHCP client's DISCOVER/REQUEST comes from 0.0.0.0 (client port 68 only).
    rules.append(
        [
            _match(_payload("ip", "saddr"), "0.0.0.0"),
            _match(_payload("udp", "sport"), 68),
            _match(_payload("udp", "dport"), 67),
            _accept(),
        ]
    )
    # IPv6: the VM's own address, link-local (ND, MLD) and :: (duplicate address detection).
    # Limitation: the target address inside a neighbour advertisement is not checked.
    allowed6: list[Any] = [*v6, "::", {"prefix": {"addr": "fe80::", "len": 10}}]
    rules.append([_match(_payload("ip6", "saddr"), {"set": allowed6}), _accept()])
    rules.append([_match(_payload("ether", "type"), ETHERTYPE_RARP), _accept()])
    return rules


def _table() -> dict[str, str]:
    return {"family": FAMILY, "table": TABLE}


def _table_obj() -> dict[str, str]:
    return {"family": FAMILY, "name": TABLE}


def _chain(name: str) -> dict[str, str]:
    return {**_table(), "name": name}


def _map_element(port: str) -> dict[str, Any]:
    return {
        **_table(),
        "name": PORTS_MAP,
        "elem": [[port, {"jump": {"target": chain_name(port)}}]],
    }


def _delete_open_element(port: str) -> dict[str, Any]:
    return {"delete": {"element": {**_table(), "name": OPEN_SET, "elem": [port]}}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _counter() -> dict[str, Any]:
    return {"counter": {"packets": 0, "bytes": 0}}


def _drop() -> dict[str, Any]:
    return {"drop": None}


def _accept() -> dict[str, Any]:
    return {"accept": None}
