"""The cheat sheet of a running lab: its namespaces and how to look inside them.

``vmoverlay-lab up`` prints it and stores it beside the run's pid file
(``/run/vmoverlay/<run id>.lab.json``) so ``vmoverlay-lab status`` can print it
again from another shell.

Every command on it works as printed, from any directory, as root: vmoverlay's
own command is given by its absolute path in this virtualenv (the venv need
not be activated), and a command whose tool is not installed says so.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from e2e.lab.components import ComponentError, command
from e2e.lab.lab import Lab
from e2e.netns import STATE_DIR


def describe(lab: Lab) -> dict[str, Any]:
    """What a person needs to find their way around a running lab."""
    return {
        "run_id": lab.run.run_id,
        "fabric": lab.fabric,
        "control_plane": lab.cp,
        "kubeconfig": str(lab.kubeconfig),
        "log_dir": str(lab.log_dir),
        "nodes": dict(lab.node_ns),
        "vms": {
            name: {"guest": vm.ns, "qemu_side": vm.qns, "ip": vm.ip, "mac": vm.network.mac}
            | {"node": vm.node, "runner": vm.runner_ns}
            for name, vm in lab.vms.items()
        },
        "client": {"ns": lab.client_ns, "ip": lab.client_ip, "node": lab.client_node},
        "lab_command": lab_command(),
        "kubectl": shutil.which("kubectl"),
        "psql": shutil.which("psql"),
    }


def lab_command() -> str:
    """``vmoverlay-lab`` as a command line that runs from anywhere without an activated venv."""
    try:
        return command("vmoverlay-lab")
    except ComponentError:
        return f"{sys.executable} -m e2e.cli"


def sheet_path(run_id: str) -> Path:
    return STATE_DIR / f"{run_id}.lab.json"


def save(lab: Lab) -> Path:
    path = sheet_path(lab.run.run_id)
    path.write_text(json.dumps(describe(lab), indent=2) + "\n")
    return path


def render(info: dict[str, Any]) -> str:
    cp = info["control_plane"]
    lines = [
        f"lab run {info['run_id']}",
        f"  control plane  {cp}  (API server http://198.18.0.1:6443, IPAM controller)",
        f"  fabric         {info['fabric']}  (underlay switch sw0)",
    ]
    for node, ns in info["nodes"].items():
        lines.append(f"  node {node:<9} {ns}")
    for name, vm in info["vms"].items():
        lines.append(
            f"  VM {name:<11} {vm['guest']}  ip {vm['ip']} mac {vm['mac']} on {vm['node']} "
            f"(QEMU side {vm['qemu_side']}, runner {vm['runner']})"
        )
    client = info["client"]
    lines.append(f"  client         {client['ns']}  ip {client['ip']} on {client['node']}")
    first_vm = next(iter(info["vms"].values()), None)
    node_ns = next(iter(info["nodes"].values()), "")
    lab_cmd = info.get("lab_command") or "vmoverlay-lab"
    kubectl = info.get("kubectl", "kubectl")
    lines += [
        "",
        "how to look around (as root; commands work as shown from any directory):",
        f"  ip netns exec {node_ns} bridge fdb show dev vmo-vx0     # a node's FDB entries",
        f"  ip netns exec {node_ns} ip -d link show vmo-vx0         # its VXLAN device",
        f"  KUBECONFIG={info['kubeconfig']} ip netns exec {cp} kubectl get vmovm -A  # kubectl"
        if kubectl
        else "  (kubectl is not installed: apt-get install kubectl to query the lab's API)",
        f"  {lab_cmd} check --run {info['run_id']}   # fabric health",
        f"  {lab_cmd} status   # this sheet again, from another shell",
    ]
    if first_vm:
        psql = (
            f"  ip netns exec {client['ns']} psql -h {first_vm['ip']} -U postgres   # a VM's Postgres"
            if info.get("psql", "psql")
            else "  (psql is not installed: apt-get install postgresql-client-15)"
        )
        lines += [
            psql,
            f"  ip netns exec {client['ns']} ping {first_vm['ip']}",
            f"  ip netns exec {first_vm['guest']} bash                     # a shell in a VM",
        ]
    lines.append(f"  logs: {info['log_dir']}")
    return "\n".join(lines)


def cheat_sheet(lab: Lab) -> str:
    return render(describe(lab))
