"""``vmoverlay-lab down`` / ``status`` and the gate's clean-up on SIGTERM, as root.

Scenarios:
- ``down --run ID`` removes the namespaces of a run whose process died and
  leaves a live run's namespaces alone; ``status --json`` lists the dead run as a
  leftover before and not after;
- the lab temp dirs of dead runs are found, those of live runs and anything not
  named like a lab dir are not;
- ``down --run`` with an unknown run id says "no run ..." and with a live
  run "still running (pid N)", exit 2 both, and removes nothing;
- the gate stopped by SIGTERM in the middle of its migrations exits 143 and
  leaves no namespace, pid file, process or temp dir of its run behind;
- a real Ctrl-C (SIGINT to the gate's whole process group, children included)
  in the middle of the migrations: exit 130, "interrupted", no traceback from
  any process, no "the lab failed", and nothing of the run left behind;
- bad arguments are refused with exit code 2 before anything is created.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from e2e.lab import down, status
from e2e.netns import STATE_DIR, RunNamespaces, list_namespaces
from tests.fixtures.netns import require_root_netns

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]

CRASHING_RUN = """
import os
from e2e.netns import RunNamespaces
run = RunNamespaces()
run.add("crashed")
print(run.run_id, flush=True)
os._exit(0)  # no close(): what a crash leaves behind
"""


def test_down_removes_only_dead_runs(
    netns: RunNamespaces, capsys: pytest.CaptureFixture[str]
) -> None:
    live = netns.add("alive")
    out = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN], cwd=ROOT, capture_output=True, text=True, check=True
    )
    dead_id = out.stdout.strip()
    dead = f"vmo-{dead_id}-crashed"
    assert dead in list_namespaces()
    assert dead_id in status.collect()["leftovers"]

    assert down.main(["--run", dead_id]) == 0
    assert f"removed {dead}" in capsys.readouterr().out
    assert dead not in list_namespaces()
    assert live in list_namespaces()
    assert not (STATE_DIR / f"{dead_id}.pid").exists()
    assert dead_id not in status.collect()["leftovers"]
    assert netns.run_id not in status.collect()["leftovers"]


def test_down_refuses_unknown_and_live_runs(
    netns: RunNamespaces, capsys: pytest.CaptureFixture[str]
) -> None:
    live = netns.add("alive")
    assert down.main(["--run", "zzzzzz"]) == 2
    err = capsys.readouterr().err
    assert "no run zzzzzz" in err
    assert down.main(["--run", netns.run_id]) == 2
    captured = capsys.readouterr()
    assert f"run {netns.run_id} is still running (pid " in captured.err
    assert "removed" not in captured.out
    assert live in list_namespaces()


def _interrupt_gate(sig: signal.Signals, *, group: bool, log_dir: Path | None) -> tuple[int, str]:
    """Start the gate, send ``sig`` after its first migration; its exit code and stderr."""
    require_root_netns()
    argv = [sys.executable, "-m", "e2e.cli", "gate", "--vms", "1", "--migrations", "3"]
    argv += ["--clients", "2"] + (["--log-dir", str(log_dir)] if log_dir else [])
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=group,  # its own process group, as a terminal's foreground job
    )
    assert proc.stderr is not None
    run_id, lines = None, []
    try:
        for line in proc.stderr:
            lines.append(line)
            found = re.search(r"run ([0-9a-f]{6}):", line)
            run_id = run_id or (found.group(1) if found else None)
            if "migration 1/3" in line:
                break
        assert run_id, "".join(lines)
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines) + rest
    assert not [n for n in list_namespaces() if n.startswith(f"vmo-{run_id}-")], text
    assert not (STATE_DIR / f"{run_id}.pid").exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"vmo-{run_id}-*")), text
    time.sleep(0.5)
    leftover = subprocess.run(["pgrep", "-f", f"vmo-{run_id}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
    return proc.returncode, text


def test_gate_interrupted_by_ctrl_c() -> None:
    code, text = _interrupt_gate(signal.SIGINT, group=True, log_dir=None)
    assert code == 130, text
    assert "interrupted (SIGINT)" in text, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "the lab failed" not in text and "logs" not in text, text


def test_gate_cleans_up_on_sigterm(tmp_path: Path) -> None:
    code, text = _interrupt_gate(signal.SIGTERM, group=False, log_dir=tmp_path / "logs")
    assert code == 143, text
    assert "interrupted (SIGTERM)" in text and "Traceback" not in text, text


def test_gate_refuses_bad_arguments() -> None:
    argv = [sys.executable, "-m", "e2e.cli", "gate", "--nodes", "1"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--nodes 1: must be 2 to 244" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_down_finds_only_dead_lab_temp_dirs(netns: RunNamespaces, tmp_path: Path) -> None:
    dead = tmp_path / "vmo-abcdef-lab-x1"
    dead_vm = tmp_path / "vmo-abcdef-vm1-x2"
    live = tmp_path / f"vmo-{netns.run_id}-lab-x3"
    foreign = tmp_path / "vmo-labapi-x4"
    for path in (dead, dead_vm, live, foreign):
        path.mkdir()
    assert down.dead_lab_dirs(tmp_path) == [dead, dead_vm]
    assert down.dead_lab_dirs(tmp_path, only="123456") == []
