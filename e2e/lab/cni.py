"""Run the CNI plugin for a pod the way kubelet does, inside the node's namespace.

The plugin gets the CNI 1.0 environment (``CNI_COMMAND``, ``CNI_CONTAINERID``,
``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS`` with the pod's namespace and name,
``CNI_PATH``) and its network configuration on stdin; it answers a result or a
spec error object on stdout. A failed ADD is raised with the plugin's own
message; DEL errors are raised too, and callers decide whether they matter.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.lab.components import BIN_DIR, command
from e2e.netns import NETNS_DIR

MODE_POD = "pod"
MODE_VM_L2 = "vm-l2"


class CNIError(RuntimeError):
    pass


@dataclass(frozen=True)
class PodAttachment:
    """One pod's attachment: who, where, and which interface."""

    node_ns: str
    pod_ns: str
    k8s_namespace: str
    pod_name: str
    container_id: str
    ifname: str
    mode: str


def network_config(kubeconfig: Path, mode: str, log_file: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "vmoverlay",
        "type": "vmoverlay",
        "bridge": "vmo-br0",
        "kubeconfig": str(kubeconfig),
        "timeout": 10,
        "mode": mode,
        "logFile": str(log_file),
    }


def invoke(
    verb: str, att: PodAttachment, *, kubeconfig: Path, log_file: Path, timeout: float = 30.0
) -> tuple[dict[str, Any], float]:
    """Run the plugin once; return its JSON answer and how long it took."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": verb,
        "CNI_CONTAINERID": att.container_id,
        "CNI_NETNS": str(NETNS_DIR / att.pod_ns),
        "CNI_IFNAME": att.ifname,
        "CNI_ARGS": (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={att.k8s_namespace};K8S_POD_NAME={att.pod_name}"
        ),
        "CNI_PATH": str(BIN_DIR),
    }
    config = json.dumps(network_config(kubeconfig, att.mode, log_file))
    started = time.monotonic()
    try:
        proc = subprocess.run(
            ["ip", "netns", "exec", att.node_ns, command("vmoverlay-cni")],
            input=config,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CNIError(f"CNI {verb} for pod {att.pod_name} took over {timeout:.0f}s") from exc
    took = time.monotonic() - started
    answer: dict[str, Any] = {}
    if proc.stdout.strip():
        try:
            answer = json.loads(proc.stdout)
        except ValueError as exc:
            raise CNIError(
                f"CNI {verb} for pod {att.pod_name} printed no JSON: {proc.stdout[:300]!r}"
            ) from exc
    if proc.returncode != 0:
        msg = answer.get("msg") or proc.stderr.strip()[-300:]
        details = answer.get("details") or ""
        raise CNIError(
            f"CNI {verb} for pod {att.pod_name} on {att.node_ns} failed "
            f"(code {answer.get('code')}): {msg} {details}".strip()
        )
    return answer, took
