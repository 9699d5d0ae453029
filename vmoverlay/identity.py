"""A VM's stable MAC address, derived from its UID.

The same UID always gives the same MAC, on every node and after every
migration, so no component has to store it to agree on it. The first octet
has the locally-administered bit set and the multicast bit clear, so the
address never collides with a vendor-assigned MAC and is always unicast.
"""

from __future__ import annotations

import hashlib

# Second hex digit 2, 6, a or e marks a locally administered unicast MAC; we keep
# a fixed first octet so operators recognise vmoverlay's VM MACs at a glance.
VM_MAC_PREFIX = 0x0A
PORT_MAC_PREFIX = 0x0E


def mac_from_uid(uid: str, *, prefix: int = VM_MAC_PREFIX) -> str:
    """Return the VM's MAC for ``uid``, as lower-case colon-separated hex.

    >>> mac_from_uid("5f3c0c1e-0000-4000-8000-000000000001")
    '0a:cf:8f:2d:a6:25'
    """
    if not uid:
        raise ValueError("cannot derive a MAC from an empty UID")
    if prefix & 0x01 or not prefix & 0x02:
        raise ValueError(f"prefix {prefix:#04x} is not a locally administered unicast octet")
    digest = hashlib.sha256(uid.encode()).digest()
    octets = [prefix, *digest[:5]]
    return ":".join(f"{b:02x}" for b in octets)


def is_local_unicast(mac: str) -> bool:
    first = int(mac.split(":")[0], 16)
    return bool(first & 0x02) and not first & 0x01
