"""The node agent's configuration: defaults < config file < environment < flags.

A cluster mounts a ConfigMap as a YAML (or JSON) file; the lab and operators
pass flags; the DaemonSet sets ``VMOVERLAY_*`` environment variables. Each
source only overrides the keys it sets, so a flag always wins.

Everything that can be checked without the kernel or the API is checked here,
with an error naming the offending key and what to do (:class:`ConfigError`).
The underlay address and the MTU may stay unset: the agent resolves them at
start from the node's own Node object and the interface that holds its address
(:func:`resolve_underlay` makes that choice, purely, from what the kernel has).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from vmoverlay.metrics import parse_listen

DEFAULT_VNI = 4242
DEFAULT_PORT = 4789
DEFAULT_DEVICE = "vmo-vx0"
DEFAULT_BRIDGE = "vmo-br0"
DEFAULT_METRICS_ADDR = "127.0.0.1:9464"
DEFAULT_RESYNC = 60.0
DEFAULT_STATE_DIR = "/run/vmoverlay"

# VXLAN encapsulation overhead: outer IP + UDP (8) + VXLAN (8) + inner Ethernet (14).
OVERHEAD = {4: 20 + 8 + 8 + 14, 6: 40 + 8 + 8 + 14}
MIN_MTU, MAX_MTU = 1280, 65535
MAX_VNI = (1 << 24) - 1
IFNAMSIZ = 15

# Environment variable -> config key. Booleans take 1/0, true/false, yes/no, on/off.
ENV_KEYS = {
    "VMOVERLAY_NODE_NAME": "node",
    "NODE_NAME": "node",
    "VMOVERLAY_VNI": "vni",
    "VMOVERLAY_PORT": "port",
    "VMOVERLAY_DEVICE": "device",
    "VMOVERLAY_BRIDGE": "bridge",
    "VMOVERLAY_UNDERLAY_ADDRESS": "underlay_address",
    "VMOVERLAY_UNDERLAY_INTERFACE": "underlay_interface",
    "VMOVERLAY_MTU": "mtu",
    "VMOVERLAY_LEARNING": "learning",
    "VMOVERLAY_RESYNC_PERIOD": "resync_period",
    "VMOVERLAY_METRICS_ADDR": "metrics_addr",
    "VMOVERLAY_STATE_DIR": "state_dir",
    "VMOVERLAY_ANNOUNCE": "announce",
    "KUBECONFIG": "kubeconfig",
}


def netns_id() -> int:
    """The inode of this process's network namespace (``/proc/self/ns/net``)."""
    return os.stat("/proc/self/ns/net").st_ino


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class AgentConfig:
    node: str = ""
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT
    device: str = DEFAULT_DEVICE
    bridge: str = DEFAULT_BRIDGE
    underlay_address: str | None = None
    underlay_interface: str | None = None
    mtu: int | None = None
    learning: bool = False
    resync_period: float = DEFAULT_RESYNC
    metrics_addr: str = DEFAULT_METRICS_ADDR
    kubeconfig: str | None = None
    state_dir: str = DEFAULT_STATE_DIR
    announce: bool = True

    @property
    def state_file(self) -> Path:
        """``<state dir>/agent-<node>-<netns id>.json``.

        The network namespace's inode keeps two agents apart that share a file
        system but not a network (lab runs side by side with the same node
        names); it is stable for the namespace's life, so restarts find the file.
        """
        return Path(self.state_dir) / f"agent-{self.node}-{netns_id()}.json"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(
    *,
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> AgentConfig:
    """Merge the sources (flags win) and validate; raise :class:`ConfigError`."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or env.get("VMOVERLAY_CONFIG")
    if path:
        values.update(_read_file(path))
    from_env: dict[str, str] = {}
    for var, key in ENV_KEYS.items():  # the first variable named for a key wins
        if env.get(var) and key not in from_env:
            from_env[key] = env[var]
    values.update(from_env)
    values.update({k: v for k, v in flags.items() if v is not None})
    return validate(_coerce(values))


def _read_file(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"failed to read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"failed to parse config file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    known = {f.name for f in fields(AgentConfig)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        norm = str(key).replace("-", "_")
        if norm not in known:
            raise ConfigError(
                f"config file {path}: unknown key {key!r}; known keys: {', '.join(sorted(known))}"
            )
        out[norm] = value
    return out


def _coerce(values: dict[str, Any]) -> AgentConfig:
    types = {f.name: f.type for f in fields(AgentConfig)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        kind = str(types[key])
        try:
            if value is None:
                out[key] = None
            elif "bool" in kind:
                out[key] = _bool(value)
            elif "int" in kind:
                out[key] = int(value)
            elif "float" in kind:
                out[key] = float(value)
            else:
                out[key] = str(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {value!r} is not a valid {kind}") from exc
    return AgentConfig(**out)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean")


def validate(cfg: AgentConfig) -> AgentConfig:
    """Check every value; return the config with addresses normalised."""
    if not cfg.node:
        raise ConfigError("node name is missing: pass --node NAME or set VMOVERLAY_NODE_NAME")
    if not 1 <= cfg.vni <= MAX_VNI:
        raise ConfigError(f"vni {cfg.vni} is out of range: use 1..{MAX_VNI}")
    if not 1 <= cfg.port <= 65535:
        raise ConfigError(f"port {cfg.port} is out of range: use 1..65535")
    for key in ("device", "bridge", "underlay_interface"):
        name = getattr(cfg, key)
        if key == "underlay_interface" and name is None:
            continue
        if not name or len(name) > IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
            raise ConfigError(
                f"{key} name {name!r} is not a valid interface name (1-15 chars, no / or space)"
            )
    if cfg.device == cfg.bridge:
        raise ConfigError(f"device and bridge must differ; both are {cfg.device!r}")
    if cfg.mtu is not None and not MIN_MTU <= cfg.mtu <= MAX_MTU:
        raise ConfigError(f"mtu {cfg.mtu} is out of range: use {MIN_MTU}..{MAX_MTU}")
    if cfg.resync_period <= 0:
        raise ConfigError(f"resync period {cfg.resync_period} must be positive (seconds)")
    try:
        parse_listen(cfg.metrics_addr)
    except ValueError as exc:
        raise ConfigError(f"metrics_addr: {exc}") from exc
    address = cfg.underlay_address
    if address is not None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError as exc:
            raise ConfigError(f"underlay address {address!r} is not an IP address") from exc
    return replace(cfg, underlay_address=address)


@dataclass(frozen=True)
class InterfaceInfo:
    """What :func:`resolve_underlay` needs to know of one kernel interface."""

    name: str
    index: int
    mtu: int
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Underlay:
    address: str
    interface: str
    family: int  # 4 or 6
    interface_mtu: int
    mtu: int  # the overlay MTU: configured, or interface MTU minus overhead


def resolve_underlay(
    cfg: AgentConfig, *, node_vtep: str | None, interfaces: Iterable[InterfaceInfo]
) -> Underlay:
    """Pick the underlay address and interface and the overlay MTU.

    Address: ``--underlay-address``, else the first global address of
    ``--underlay-interface``, else the node's VTEP (annotation or InternalIP).
    The interface is the one holding that address.
    """
    ifaces = list(interfaces)
    address = cfg.underlay_address
    if address is None and cfg.underlay_interface:
        iface = next((i for i in ifaces if i.name == cfg.underlay_interface), None)
        if iface is None:
            raise ConfigError(
                f"underlay interface {cfg.underlay_interface} does not exist: waiting for it "
                "to appear; if it never will, fix --underlay-interface"
            )
        usable = [a for a in iface.addresses if not ipaddress.ip_address(a).is_link_local]
        if not usable:
            raise ConfigError(
                f"underlay interface {iface.name} has no global address: give it one "
                "or pass --underlay-address"
            )
        address = usable[0]
    if address is None:
        address = node_vtep
    if address is None:
        raise ConfigError(
            f"no underlay address: node {cfg.node} has no InternalIP nor "
            "vmoverlay.io/vtep-ip annotation; pass --underlay-address or --underlay-interface"
        )
    ip = ipaddress.ip_address(address)
    holder = next(
        (i for i in ifaces if any(ip == ipaddress.ip_address(a) for a in i.addresses)), None
    )
    if holder is None:
        raise ConfigError(
            f"underlay address {address} is on no interface of this node: "
            "check --underlay-address or the node's InternalIP"
        )
    if cfg.underlay_interface and holder.name != cfg.underlay_interface:
        raise ConfigError(
            f"underlay address {address} is on {holder.name}, not on {cfg.underlay_interface}"
        )
    family = ip.version
    mtu = cfg.mtu if cfg.mtu is not None else holder.mtu - OVERHEAD[family]
    if mtu < MIN_MTU and cfg.mtu is None:
        raise ConfigError(
            f"underlay {holder.name} MTU {holder.mtu} leaves {mtu} for the overlay, below "
            f"{MIN_MTU}: raise the underlay MTU or set --mtu"
        )
    return Underlay(str(ip), holder.name, family, holder.mtu, mtu)
