"""Fault injection for reliability tests: off unless a test turns it on.

Three faults, set through ``POST /_lab/faults`` (see :mod:`e2e.apiserver.admin`):

- ``failWrites``: the next N writes (create, update, patch, delete), optionally
  only of one resource (plural) or only some verbs, fail with a chosen HTTP
  code and the Status reason that code has on a real server (500
  InternalError, 503 ServiceUnavailable, 429 TooManyRequests, 504 Timeout,
  409 Conflict...). The write does not happen.
- ``delayMs``: every API request (not the admin ones) waits this long first.
- cutting watches (``POST /_lab/faults/cut-watches``): every open watch stream
  ends at once, as when a real API server restarts or a load balancer drops
  idle streams; clients must re-watch from their last resourceVersion. With
  ``?mode=reset`` the connections are dropped mid-stream instead, as a network
  failure would, and the official client raises a ProtocolError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from e2e.apiserver.errors import ApiError

REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")


class FaultSpecError(ValueError):
    """A fault request that does not make sense."""


@dataclass
class Faults:
    fail_writes: int = 0
    fail_code: int = 500
    fail_resource: str | None = None
    fail_verbs: tuple[str, ...] = WRITE_VERBS
    delay_ms: float = 0.0
    injected: int = 0

    def write_failure(self, verb: str, plural: str) -> ApiError | None:
        """The error to answer this write with, or None; counts the failure down."""
        if self.fail_writes <= 0 or verb not in self.fail_verbs:
            return None
        if self.fail_resource and self.fail_resource != plural:
            return None
        self.fail_writes -= 1
        self.injected += 1
        reason = REASONS.get(self.fail_code, "InternalError")
        return ApiError(
            self.fail_code,
            reason,
            f"injected fault: {verb} {plural} failed with {self.fail_code} {reason} "
            "(lab API server fault injection)",
        )

    def update(self, spec: dict[str, Any]) -> None:
        """Apply ``{"failWrites": {"count", "code", "resource", "verbs"}, "delayMs"}``."""
        fail = spec.get("failWrites")
        if fail is not None:
            if not isinstance(fail, dict):
                raise FaultSpecError("failWrites must be an object {count, code, resource, verbs}")
            code = int(fail.get("code", 500))
            if not 400 <= code <= 599:
                raise FaultSpecError(f"failWrites.code {code} is not an HTTP error code")
            verbs = tuple(fail.get("verbs") or WRITE_VERBS)
            unknown = set(verbs) - set(WRITE_VERBS)
            if unknown:
                raise FaultSpecError(f"failWrites.verbs has unknown verbs {sorted(unknown)}")
            self.fail_writes = int(fail.get("count", 1))
            self.fail_code = code
            self.fail_resource = fail.get("resource") or None
            self.fail_verbs = verbs
        if "delayMs" in spec:
            delay = float(spec["delayMs"])
            if delay < 0 or delay > 60000:
                raise FaultSpecError("delayMs must be between 0 and 60000")
            self.delay_ms = delay

    def reset(self) -> None:
        self.fail_writes, self.fail_code, self.fail_resource = 0, 500, None
        self.fail_verbs, self.delay_ms = WRITE_VERBS, 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "failWrites": {
                "count": self.fail_writes,
                "code": self.fail_code,
                "resource": self.fail_resource,
                "verbs": list(self.fail_verbs),
            },
            "delayMs": self.delay_ms,
            "injected": self.injected,
        }
