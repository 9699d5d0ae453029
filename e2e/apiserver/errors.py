"""API errors as the real API server reports them: a ``Status`` object with a reason and code.

Handlers raise :class:`ApiError`; the HTTP layer turns it into a JSON ``Status``
body with the same HTTP status. The constructors below produce the messages
and reasons the real server uses, so clients (and ``vmoverlay.kube.translate``)
see no difference. Names in messages follow the server's form: ``pods "x"``
for the core group, ``ippools.vmoverlay.io "x"`` for other groups.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer: HTTP ``code``, Status ``reason``, ``message`` and optional details."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 300 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def qualified(plural: str, group: str) -> str:
    """``pods`` or ``ippools.vmoverlay.io``: how the server names a resource in messages."""
    return f"{plural}.{group}" if group else plural


def _details(name: str, group: str, plural: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "kind": plural}
    if group:
        out["group"] = group
    return out


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{qualified(plural, group)} "{name}" not found',
        details=_details(name, group, plural),
    )


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified(plural, group)} "{name}" already exists',
        details=_details(name, group, plural),
    )


def conflict(plural: str, group: str, name: str, why: str | None = None) -> ApiError:
    why = (
        why
        or "the object has been modified; please apply your changes to the latest version and try again"
    )
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}',
        details=_details(name, group, plural),
    )


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid; ``causes`` are (field, reason type, message) like ``spec.cidr: Invalid value``."""
    kind_name = f"{kind}.{group}" if group else kind
    text = "; ".join(message for _, _, message in causes)
    if len(causes) > 1:
        text = f"[{', '.join(message for _, _, message in causes)}]"
    return ApiError(
        422,
        "Invalid",
        f'{kind_name} "{name}" is invalid: {text}',
        details={
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [
                {"reason": reason, "message": message, "field": field}
                for field, reason, message in causes
            ],
        },
    )


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)
BODY_TYPES = ("application/json", "application/yaml")


def unsupported_media_type(content_type: str, accepted: tuple[str, ...] = PATCH_TYPES) -> ApiError:
    """415; the lab server reads JSON and YAML bodies only (no protobuf)."""
    return ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)} (got {content_type})",
    )


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, "RequestEntityTooLarge", f"the request body is larger than the limit of {limit} bytes"
    )


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")
