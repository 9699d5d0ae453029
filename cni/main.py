"""``vmoverlay-cni``: the CNI plugin that plugs a VM's runner pod into the overlay.

Installed on nodes as ``/opt/cni/bin/vmoverlay`` (the console script
``vmoverlay-cni``); the runtime runs it in the node's network namespace with
the ``CNI_*`` environment and the network configuration on stdin, as the CNI
spec (0.4.0, 1.0.0, 1.1.0) says. stdout carries exactly one JSON object, the
result or the error, or nothing where the spec wants nothing; logs go to
stderr and to a file.

Network configuration (stdin)::

    {
      "cniVersion": "1.1.0",            required: 0.4.0, 1.0.0 or 1.1.0 (else code 1)
      "name": "vmoverlay",              required (code 7 when missing)
      "type": "vmoverlay",              required
      "bridge": "vmo-br0",              the node's overlay bridge (made by vxlan-manager)
      "mtu": 1450,                      container end MTU; default: the bridge's MTU
      "kubeconfig": "/etc/cni/net.d/vmoverlay.kubeconfig",
                                        default: $KUBECONFIG, else in-cluster
      "timeout": 30,                    seconds ADD waits for the VM's status.network
      "antiSpoof": true,                nftables drops frames not from the VM's MAC/IP
      "mode": "pod",                    "pod": the interface has the VM's MAC and IP;
                                        "vm-l2": a silent L2 port with its own MAC and no
                                        IP, bridged by the runner to the guest's tap
      "defaultRoute": true,             pod mode: default route via the pool gateway
      "logFile": "/var/log/vmoverlay-cni.log",
                                        default: $VMOVERLAY_CNI_LOG_FILE, else that path
      "logLevel": "info"
    }

Environment: ``CNI_COMMAND`` (ADD, DEL, CHECK, VERSION, STATUS, GC),
``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, and ``CNI_ARGS`` with
``K8S_POD_NAMESPACE`` and ``K8S_POD_NAME`` (ADD finds the pod's VM through the
pod's annotation ``vmoverlay.io/vm`` or its VirtualMachine owner). A runner pod
annotated ``vmoverlay.io/migration-target`` is a live migration's target: in
``vm-l2`` mode its port drops frames from the VM's MAC until the guest
announces itself (QEMU's RARP at switch-over).

Error codes: the spec's (1 incompatible version, 2 unsupported field value, 3
container/netns unknown, 4 invalid environment, 6 undecodable config, 7
invalid config, 11 try again later, 50 bridge missing on STATUS) and
vmoverlay's own from 100 (see ``cni.errors``). Exit status 1 on any error.

The behaviour each command promises is in ``cni.plugin``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from cni import config, errors, plugin
from cni.errors import CNIError
from vmoverlay.logs import get_logger, setup_logging

log = get_logger("cni")


def main() -> int:
    result_fd = _reserve_stdout()
    environ = os.environ
    raw: dict[str, Any] | None = None
    data = b"" if sys.stdin.isatty() else sys.stdin.buffer.read()
    _setup_logging(_lenient_decode(data), environ)
    try:
        command = config.parse_command(environ)
        if command == "VERSION":
            _emit(result_fd, version_reply(data))
            return 0
        raw = config.decode(data)
        conf = config.parse_netconf(raw)
        env = config.parse_env(environ)
        log.debug("invoked", command=env.command, container=env.container_id, netns=env.netns)
        output = plugin.run(conf, env)
        if output is not None:
            _emit(result_fd, output)
        return 0
    except CNIError as exc:
        log.error("command failed", code=exc.code, error=exc.msg, details=exc.details)
        _emit(result_fd, exc.to_dict(config.reply_version(raw)))
        return 1
    except Exception as exc:  # the one top-level place that reports what nothing else caught
        log.exception("unexpected failure")
        error = CNIError(errors.INTERNAL, f"internal error: {type(exc).__name__}", str(exc))
        _emit(result_fd, error.to_dict(config.reply_version(raw)))
        return 1


def version_reply(data: bytes) -> dict[str, Any]:
    """VERSION: the versions this plugin speaks; stdin may be empty or just cniVersion."""
    return {
        "cniVersion": config.reply_version(_lenient_decode(data)),
        "supportedVersions": list(config.SUPPORTED_VERSIONS),
    }


def _lenient_decode(data: bytes) -> dict[str, Any]:
    """stdin as an object where possible, else {}: for log set-up and VERSION only."""
    try:
        raw = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (UnicodeDecodeError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _reserve_stdout() -> int:
    """Keep the real stdout for the one result; point fd 1 and sys.stdout at stderr.

    Whatever a library prints, from Python or C, then lands in the log, never
    in the result a runtime parses.
    """
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return result_fd


def _emit(fd: int, obj: dict[str, Any]) -> None:
    data = (json.dumps(obj, indent=2) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def _setup_logging(raw: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    level = raw.get("logLevel") if isinstance(raw.get("logLevel"), str) else None
    path = config.log_file(raw, environ)
    try:
        setup_logging(stream=sys.stderr, fmt="json", level=level, logfile=path)
    except (OSError, ValueError) as exc:
        setup_logging(stream=sys.stderr, fmt="json")
        log.warning("cannot log to file, logging to stderr only", path=path, error=str(exc))


if __name__ == "__main__":
    sys.exit(main())
