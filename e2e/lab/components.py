"""Start the real components inside the lab's namespaces, each with its own log file.

- the lab API server (``vmoverlay-lab apiserver``) in the control-plane namespace,
  listening on the underlay (198.18.0.1), writing the kubeconfig every other
  component uses;
- the IPAM controller (``ipam-controller run --no-leader-elect``) beside it;
- one node agent (``vxlan-manager run``) per node namespace;
- the CNI plugin (``vmoverlay-cni``) is not a daemon: :mod:`e2e.lab.cni` runs it
  per pod, inside the node namespace, the way kubelet runs it on a node.

Commands come from the same virtualenv as the lab itself, so the lab always
tests the code of its own checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from e2e.netns import RunNamespaces

BIN_DIR = Path(sys.executable).parent
API_PORT = 6443
AGENT_METRICS_PORT = 9464
IPAM_METRICS_PORT = 9465


class ComponentError(RuntimeError):
    pass


def command(name: str) -> str:
    """The path of one of vmoverlay's commands, from this virtualenv first."""
    path = BIN_DIR / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise ComponentError(
            f"command {name} not found in {BIN_DIR} or PATH: run scripts/bootstrap.sh"
        )
    return found


@dataclass
class Component:
    name: str
    ns: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, run: RunNamespaces) -> None:
        with open(self.log_path, "ab") as log_file:
            self.proc = run.popen(
                self.ns,
                self.argv,
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM and return: :meth:`stop` then waits (many components stop at once)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 800) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def apiserver(ns: str, address: str, log_dir: Path, kubeconfig: Path) -> Component:
    argv = [command("vmoverlay-lab"), "apiserver", "--address", address, "--port", str(API_PORT)]
    argv += ["--kubeconfig-out", str(kubeconfig), "--log-format", "json"]
    return Component("apiserver", ns, argv, log_dir / "apiserver.log")


def wait_apiserver(component: Component, kubeconfig: Path, timeout: float = 30.0) -> None:
    """Wait for the server's ``kubeconfig PATH`` line (it writes the file before saying so)."""
    assert component.proc is not None and component.proc.stdout is not None
    lines: list[str] = []
    out = component.proc.stdout
    # A reader thread: select() on a buffered pipe misses lines already in the buffer.
    reader = threading.Thread(
        target=lambda: lines.extend(line.decode(errors="replace") for line in out),
        daemon=True,
    )
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.startswith("kubeconfig ") for line in list(lines)) and kubeconfig.exists():
            return
        if component.proc.poll() is not None:
            raise ComponentError(f"the lab API server exited: {component.log_tail()}")
        time.sleep(0.05)
    raise ComponentError(f"the lab API server did not start within {timeout:.0f}s")


def ipam(ns: str, kubeconfig: Path, log_dir: Path, underlay: str) -> Component:
    argv = [command("ipam-controller"), "run", "--kubeconfig", str(kubeconfig)]
    argv += ["--no-leader-elect", "--cluster-cidr", underlay, "--log-format", "json"]
    argv += ["--metrics-addr", f"127.0.0.1:{IPAM_METRICS_PORT}"]
    return Component("ipam", ns, argv, log_dir / "ipam.log")


def agent(
    ns: str, node: str, kubeconfig: Path, log_dir: Path, *, address: str, state_dir: Path
) -> Component:
    """One node agent; each has its own state dir (several agents share this machine)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    argv = [command("vxlan-manager"), "run", "--node", node, "--kubeconfig", str(kubeconfig)]
    argv += ["--underlay-address", address, "--state-dir", str(state_dir)]
    argv += ["--metrics-addr", f"127.0.0.1:{AGENT_METRICS_PORT}", "--log-format", "json"]
    return Component(f"agent-{node}", ns, argv, log_dir / f"agent-{node}.log")
