"""Parse and validate what the runtime hands the plugin: environment and stdin.

Pure functions only: bytes and a mapping in, typed values or a
:class:`~cni.errors.CNIError` with the spec's code out. The order of checks
follows the spec so a runtime gets the most specific code:

1. ``CNI_COMMAND`` missing or unknown: 4 (invalid environment variables).
2. stdin is not a JSON object: 6 (failed to decode content).
3. ``cniVersion`` not one this plugin speaks: 1 (incompatible version).
4. a required field missing or of the wrong type: 7 (invalid network config);
   a field whose value is understood but not supported (``mode``): 2.
5. per command, the ``CNI_*`` variables it needs: 4.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni import errors
from cni.errors import CNIError

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
MODES = ("pod", "vm-l2")

DEFAULT_BRIDGE = "vmo-br0"
DEFAULT_TIMEOUT = 30.0
DEFAULT_LOG_FILE = "/var/log/vmoverlay-cni.log"
LOG_FILE_ENV = "VMOVERLAY_CNI_LOG_FILE"
VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"

_NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_CONTAINER_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


@dataclass(frozen=True)
class Attachment:
    """One (container, interface) pair, as GC's valid-attachments list names them."""

    container_id: str
    ifname: str


@dataclass(frozen=True)
class NetConf:
    """The network configuration from stdin, validated and with defaults applied."""

    cni_version: str
    name: str
    type: str
    bridge: str = DEFAULT_BRIDGE
    mtu: int | None = None
    kubeconfig: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    anti_spoof: bool = True
    mode: str = "pod"
    default_route: bool = True
    log_file: str | None = None
    log_level: str = "info"
    prev_result: dict[str, Any] | None = None
    valid_attachments: tuple[Attachment, ...] | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Env:
    """The ``CNI_*`` environment of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: str = ""

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def pod_uid(self) -> str:
        return self.args.get("K8S_POD_UID", "")


def parse_command(environ: Mapping[str, str]) -> str:
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(
            errors.INVALID_ENV,
            "CNI_COMMAND is not set",
            f"set CNI_COMMAND to one of {', '.join(COMMANDS)}",
        )
    if command not in COMMANDS:
        raise CNIError(
            errors.INVALID_ENV,
            f"unknown CNI_COMMAND {command!r}",
            f"this plugin supports {', '.join(COMMANDS)}",
        )
    return command


def parse_env(environ: Mapping[str, str]) -> Env:
    """The invocation's environment; checks what every command needs, nothing more."""
    command = parse_command(environ)
    env = Env(
        command=command,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns=environ.get("CNI_NETNS", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
        path=environ.get("CNI_PATH", ""),
    )
    if command in ("ADD", "DEL", "CHECK"):
        _require_attachment_env(env)
    if command in ("ADD", "CHECK") and not env.netns:
        raise CNIError(
            errors.INVALID_ENV,
            f"CNI_NETNS is not set: {command} needs the container's network namespace path",
        )
    return env


def _require_attachment_env(env: Env) -> None:
    if not env.container_id:
        raise CNIError(errors.INVALID_ENV, f"CNI_CONTAINERID is not set: {env.command} needs it")
    if not _CONTAINER_ID.match(env.container_id):
        raise CNIError(
            errors.INVALID_ENV,
            f"CNI_CONTAINERID {env.container_id!r} is not valid",
            "it may hold only letters, digits, '_', '.' and '-'",
        )
    if not env.ifname:
        raise CNIError(errors.INVALID_ENV, f"CNI_IFNAME is not set: {env.command} needs it")
    problem = interface_name_problem(env.ifname)
    if problem:
        raise CNIError(errors.INVALID_ENV, f"CNI_IFNAME {env.ifname!r} is not valid", problem)


def interface_name_problem(name: str) -> str:
    """Why ``name`` cannot be a Linux interface name, or "" when it can."""
    if len(name) > 15:
        return "interface names are at most 15 characters"
    if name in (".", ".."):
        return "'.' and '..' are not interface names"
    if any(c in name for c in "/:") or any(c.isspace() for c in name):
        return "interface names contain no '/', ':' or whitespace"
    return ""


def parse_cni_args(text: str) -> dict[str, str]:
    """``K8S_POD_NAMESPACE=db;K8S_POD_NAME=pg-0;IgnoreUnknown=1`` as a dict.

    >>> parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=pg-0")
    {'IgnoreUnknown': '1', 'K8S_POD_NAME': 'pg-0'}
    """
    out: dict[str, str] = {}
    for item in text.split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CNIError(
                errors.INVALID_ENV,
                f"CNI_ARGS item {item!r} is not KEY=VALUE",
                "CNI_ARGS is a ';'-separated list of KEY=VALUE pairs",
            )
        out[key.strip()] = value.strip()
    return out


def decode(data: bytes) -> dict[str, Any]:
    """stdin as a JSON object, or error 6."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CNIError(
            errors.DECODE_FAILURE,
            "failed to decode the network configuration on stdin",
            f"not valid JSON: {exc}",
        ) from exc
    if not isinstance(obj, dict):
        raise CNIError(
            errors.DECODE_FAILURE,
            "failed to decode the network configuration on stdin",
            f"expected a JSON object, got {type(obj).__name__}",
        )
    return obj


def check_version(raw: Mapping[str, Any]) -> str:
    """The config's ``cniVersion`` if this plugin speaks it, else error 1 (or 7 if absent)."""
    version = raw.get("cniVersion")
    if version is None or version == "":
        raise CNIError(errors.INVALID_CONFIG, "invalid network configuration: cniVersion missing")
    if not isinstance(version, str):
        raise CNIError(
            errors.INVALID_CONFIG,
            f"invalid network configuration: cniVersion must be a string, got {version!r}",
        )
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            errors.INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version}",
            f"this plugin supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    return version


def reply_version(raw: Mapping[str, Any] | None) -> str:
    """The ``cniVersion`` to put in a reply: the config's when supported, else the latest."""
    version = (raw or {}).get("cniVersion")
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS else LATEST_VERSION


def parse_netconf(raw: dict[str, Any]) -> NetConf:
    """Validate a decoded configuration (see the module docstring for the codes)."""
    version = check_version(raw)
    name = _field(raw, "name", str, required=True)
    if not _NETWORK_NAME.match(name):
        raise _invalid(f"name {name!r} is not a valid network name (letters, digits, _ . -)")
    plugin_type = _field(raw, "type", str, required=True)
    bridge = _field(raw, "bridge", str) or DEFAULT_BRIDGE
    if interface_name_problem(bridge):
        raise _invalid(f"bridge {bridge!r}: {interface_name_problem(bridge)}")
    mtu = _field(raw, "mtu", int)
    if mtu is not None and not 68 <= mtu <= 65535:
        raise _invalid(f"mtu {mtu} is out of range 68..65535")
    timeout = _field(raw, "timeout", float)
    if timeout is not None and timeout <= 0:
        raise _invalid(f"timeout {timeout} must be a positive number of seconds")
    mode = _field(raw, "mode", str) or "pod"
    if mode not in MODES:
        raise CNIError(
            errors.UNSUPPORTED_FIELD,
            f"unsupported field mode={mode!r}",
            f"mode is one of {', '.join(MODES)}",
        )
    log_level = _field(raw, "logLevel", str) or "info"
    if log_level not in ("debug", "info", "warning", "error"):
        raise _invalid(f"logLevel {log_level!r} is not one of debug, info, warning, error")
    prev = _field(raw, "prevResult", dict)
    anti_spoof = _field(raw, "antiSpoof", bool)
    default_route = _field(raw, "defaultRoute", bool)
    return NetConf(
        cni_version=version,
        name=name,
        type=plugin_type,
        bridge=bridge,
        mtu=mtu,
        kubeconfig=_field(raw, "kubeconfig", str) or None,
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        anti_spoof=True if anti_spoof is None else anti_spoof,
        mode=mode,
        default_route=True if default_route is None else default_route,
        log_file=_field(raw, "logFile", str) or None,
        log_level=log_level,
        prev_result=prev,
        valid_attachments=_valid_attachments(raw),
        raw=raw,
    )


def _invalid(msg: str) -> CNIError:
    return CNIError(errors.INVALID_CONFIG, f"invalid network configuration: {msg}")


def _field(raw: Mapping[str, Any], key: str, kind: type, *, required: bool = False) -> Any:
    value = raw.get(key)
    if value is None:
        if required:
            raise _invalid(f"required field {key!r} is missing")
        return None
    ok = isinstance(value, kind)
    if kind is int or kind is float:
        # JSON has one number type; bool is an int in Python but never a number here.
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and (kind is float or float(value).is_integer())
    if not ok:
        raise _invalid(f"field {key!r} must be {_KIND_NAMES[kind]}, got {json.dumps(value)}")
    if required and kind is str and not value:
        raise _invalid(f"required field {key!r} is empty")
    return kind(value) if kind in (int, float) else value


_KIND_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "an object",
    list: "a list",
}


def _valid_attachments(raw: Mapping[str, Any]) -> tuple[Attachment, ...] | None:
    items = raw.get(VALID_ATTACHMENTS_KEY)
    if items is None:
        return None
    if not isinstance(items, list):
        raise _invalid(f"{VALID_ATTACHMENTS_KEY} must be a list")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
            raise _invalid(f"{VALID_ATTACHMENTS_KEY} entry {json.dumps(item)} lacks containerID")
        out.append(Attachment(item["containerID"], str(item.get("ifname") or "")))
    return tuple(out)


def log_file(raw: Mapping[str, Any] | None, environ: Mapping[str, str]) -> str:
    """Where to log: the config's ``logFile``, else ``$VMOVERLAY_CNI_LOG_FILE``, else /var/log."""
    configured = (raw or {}).get("logFile")
    if isinstance(configured, str) and configured:
        return configured
    return environ.get(LOG_FILE_ENV) or DEFAULT_LOG_FILE
