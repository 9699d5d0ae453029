"""The ADD result in the spec's shape for the requested version, and back (CHECK).

Pure functions. The result lists the host end (no sandbox) and the container
end (with its sandbox), the addresses with the index of the interface that
carries them, and the default route. 0.4.0 results carry ``version`` on each
address; 1.1.0 results carry the interface MTU.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from cni import errors
from cni.errors import CNIError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HOST_INDEX, CONTAINER_INDEX = 0, 1


@dataclass(frozen=True)
class Attached:
    """What ADD set up, as the result reports it."""

    host_name: str
    host_mac: str
    ifname: str
    mac: str
    mtu: int
    sandbox: str
    addresses: tuple[IPInterface, ...] = ()
    gateway: IPAddress | None = None
    default_route: bool = False


def build(version: str, attached: Attached) -> dict[str, Any]:
    """The result object for ``version`` (one of config.SUPPORTED_VERSIONS)."""
    container: dict[str, Any] = {
        "name": attached.ifname,
        "mac": attached.mac,
        "sandbox": attached.sandbox,
    }
    if version == "1.1.0":
        container["mtu"] = attached.mtu
    ips = []
    for address in attached.addresses:
        entry: dict[str, Any] = {"address": str(address), "interface": CONTAINER_INDEX}
        if attached.gateway is not None and attached.gateway.version == address.version:
            entry["gateway"] = str(attached.gateway)
        if version == "0.4.0":
            entry["version"] = str(address.version)
        ips.append(entry)
    routes = []
    if attached.gateway is not None and attached.default_route:
        dst = "0.0.0.0/0" if attached.gateway.version == 4 else "::/0"
        routes.append({"dst": dst, "gw": str(attached.gateway)})
    return {
        "cniVersion": version,
        "interfaces": [{"name": attached.host_name, "mac": attached.host_mac}, container],
        "ips": ips,
        "routes": routes,
        "dns": {},
    }


@dataclass(frozen=True)
class Expected:
    """What CHECK compares with the kernel, read from ``prevResult``."""

    mac: str
    mtu: int | None
    addresses: tuple[IPInterface, ...]
    gateway: IPAddress | None


def expected_from(prev: dict[str, Any], ifname: str) -> Expected:
    """The container interface named ``ifname`` in a previous result; error 7 if absent."""
    interfaces = prev.get("interfaces") or []
    index = next(
        (
            i
            for i, iface in enumerate(interfaces)
            if isinstance(iface, dict) and iface.get("name") == ifname and iface.get("sandbox")
        ),
        None,
    )
    if index is None:
        raise CNIError(
            errors.INVALID_CONFIG,
            f"invalid network configuration: prevResult has no container interface {ifname}",
        )
    iface = interfaces[index]
    try:
        addresses = tuple(
            ipaddress.ip_interface(ip["address"])
            for ip in prev.get("ips") or []
            if ip.get("interface") == index
        )
        gateway = None
        for route in prev.get("routes") or []:
            if route.get("dst") in ("0.0.0.0/0", "::/0") and route.get("gw"):
                gateway = ipaddress.ip_address(route["gw"])
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CNIError(
            errors.INVALID_CONFIG, "invalid network configuration: malformed prevResult", str(exc)
        ) from exc
    mtu = iface.get("mtu")
    return Expected(
        mac=str(iface.get("mac") or "").lower(),
        mtu=int(mtu) if isinstance(mtu, int) else None,
        addresses=addresses,
        gateway=gateway,
    )
