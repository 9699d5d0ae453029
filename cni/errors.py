"""The CNI error a runtime can parse: a code, a message and details.

Every failure the plugin reports is a :class:`CNIError`. ``cni.main`` catches it
at the one top-level place and prints it as the spec's error object::

    {"cniVersion": "1.1.0", "code": 7, "msg": "...", "details": "..."}

Codes 1-99 are the spec's well-known ones (50-99 for STATUS); 100 and up are
vmoverlay's own. A runtime retries on 11 ("try again later"); the lab and the
tests compare codes, never messages.
"""

from __future__ import annotations

from typing import Any

# The spec's well-known codes.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
# STATUS: the plugin cannot serve ADD (here: the node's bridge does not exist).
PLUGIN_NOT_AVAILABLE = 50

# vmoverlay's own codes.
INTERNAL = 100
"""An unexpected failure: a bug, or an environment the plugin does not know."""
NOT_A_VM_POD = 101
"""The pod names no VirtualMachine (annotation or owner), or does not exist."""
VM_NOT_FOUND = 102
"""The VirtualMachine the pod names does not exist."""
KUBE_API = 103
"""The Kubernetes API refused a request (forbidden, invalid); retrying will not help."""
LINK_FAILURE = 104
"""A netlink operation on the veth pair, its addresses or routes failed."""
FIREWALL_FAILURE = 105
"""Installing or removing the port's nftables rules failed."""
DRIFT = 106
"""CHECK: the attachment differs from what ADD set up."""
CLEANUP_INCOMPLETE = 107
"""DEL or GC could not remove everything; the details list what is left."""


class CNIError(Exception):
    """A failure to report to the runtime as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg
