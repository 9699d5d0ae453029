"""The agent's command line stops in bounded time and refuses bad flags up front.

Scenarios:
- a stop signal that lands while the main thread holds a lock of the agent's own
  Events (the reconcile loop inside ``Event.wait``) still stops the agent: the
  handler took that lock itself before, and the process hung until SIGKILL;
- StopSignals hands each signal to its callback in a helper thread and restores the
  previous handlers when closed;
- the metrics server stops even if it was never started (``shutdown()`` waited forever);
- ``run --metrics-addr nonsense`` / ``127.0.0.1:99999`` exits 2 with the message and
  reads no kubeconfig first (the kubeconfig given does not exist); ``check`` with the
  same flag reports it without a traceback (its own exit code, 3);
- root: an agent with ``--underlay-interface nosuch0`` retries with a logged back-off
  and exits 0 on SIGTERM (and on SIGINT), whenever in its retry cycle the signal lands.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from e2e.netns import RunNamespaces
from vmoverlay.metrics import HealthServer, parse_listen
from vmoverlay.signals import StopSignals
from vxlan_manager.cli import EXIT_CONFIG, main

from .cluster import Cluster
from .topo import wait_for

ROOT = Path(__file__).resolve().parents[2]

# The agent as cli.run wires it, with the main thread holding the condition lock of
# the Event the reconcile loop waits on at the moment SIGTERM arrives.
HELD_LOCK_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from kubernetes import client as k8s
    from vmoverlay.logs import get_logger, setup_logging
    from vmoverlay.signals import StopSignals
    from vxlan_manager.agent import Agent
    from vxlan_manager.cli import StopRequest
    from vxlan_manager.config import AgentConfig

    setup_logging(fmt="json", level="info")
    cfg = AgentConfig(node="a", state_dir=sys.argv[1])
    agent = Agent(cfg, client=k8s.ApiClient())
    stop = StopRequest(get_logger("test"))
    signals = StopSignals(stop).install()
    stop.attach(agent)
    with agent._wake._cond:  # as inside Event.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)  # the handler runs here, in this thread, the lock held
    print("stopped" if agent._stop.wait(5) else "not stopped", flush=True)
    signals.close()
    """
)


def test_stop_signal_while_main_thread_holds_a_lock(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", HELD_LOCK_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,  # a deadlock shows as this timing out (it did before the fix)
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "stopped", proc.stderr
    assert "stopping; the data plane stays up" in proc.stderr + proc.stdout


def test_stop_signals_calls_back_in_another_thread_and_restores() -> None:
    got: list[tuple[signal.Signals, str]] = []
    called = threading.Event()

    def on_signal(sig: signal.Signals) -> None:
        got.append((sig, threading.current_thread().name))
        called.set()

    before = signal.getsignal(signal.SIGINT)
    signals = StopSignals(on_signal, [signal.SIGINT]).install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert called.wait(5)
    finally:
        signals.close()
    assert got == [(signal.SIGINT, "stop-signals")]
    assert signal.getsignal(signal.SIGINT) is before


def test_health_server_stop_without_start() -> None:
    server = HealthServer(CollectorRegistry(), "127.0.0.1:0")
    stopper = threading.Thread(target=server.stop, daemon=True)
    stopper.start()
    stopper.join(10)  # hang detection: before the fix stop() never returned
    assert not stopper.is_alive()


def test_parse_listen_port_range() -> None:
    assert parse_listen("127.0.0.1:65535") == ("127.0.0.1", 65535)
    with pytest.raises(ValueError, match="port 99999 is out of range 0..65535"):
        parse_listen("127.0.0.1:99999")
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_listen("127.0.0.1:\uff19")  # a non-ASCII digit: int() would take it


@pytest.mark.parametrize("addr", ["nonsense", "127.0.0.1:99999"])
def test_run_refuses_bad_metrics_address_before_kubeconfig(
    addr: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-kubeconfig"
    code = main(
        ["run", "--node", "a", "--kubeconfig", str(missing), "--metrics-addr", addr]
        + ["--state-dir", str(tmp_path), "--log-format", "json"]
    )
    out = capsys.readouterr()
    assert code == EXIT_CONFIG
    lines = [json.loads(x) for x in (out.err + out.out).splitlines() if x.startswith("{")]
    assert [x["msg"] for x in lines] == ["invalid configuration"], lines
    assert "metrics_addr" in lines[0]["error"] and addr in lines[0]["error"]
    assert "Traceback" not in out.err


def test_check_reports_bad_metrics_address(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--node", "a", "--metrics-addr", "127.0.0.1:99999"])
    out = capsys.readouterr()
    assert code == 3
    assert "metrics_addr" in out.err and "99999" in out.err
    assert "Traceback" not in out.err


@pytest.fixture
def cluster(netns: RunNamespaces, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(netns, tmp_path, ("na",))
    try:
        c.put_node("na", c.nodes["na"].ip)
        yield c
    finally:
        c.close()


@pytest.mark.root
@pytest.mark.slow
def test_bogus_underlay_interface_retries_and_stops(cluster: Cluster) -> None:
    # The signal lands at different points of the retry cycle (before, during and
    # between the back-off waits); every run must end by itself, with 0.
    for i, (sig, after) in enumerate(
        [(signal.SIGTERM, 0.0), (signal.SIGTERM, 0.4), (signal.SIGINT, 0.9), (signal.SIGTERM, 1.7)]
    ):
        name = f"agent-na-{i}.log"
        proc = cluster.start_agent("na", "--underlay-interface", "nosuch0", log_name=name)

        def failed_once(name: str = name, proc: subprocess.Popen[bytes] = proc) -> bool:
            assert proc.poll() is None, (cluster.tmp / name).read_text()[-2000:]
            return "reconcile failed" in (cluster.tmp / name).read_text()

        wait_for(failed_once, timeout=20, interval=0.05, what="first reconcile failure")
        time.sleep(after)
        cluster.agents.pop("na")
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            pytest.fail(f"agent did not stop on {sig.name} {after}s after its first failure")
        text = (cluster.tmp / name).read_text()
        assert code == 0, text[-2000:]
        lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
        fails = [x for x in lines if x["msg"] == "reconcile failed, will retry"]
        assert "nosuch0 does not exist" in fails[0]["error"] and "retry_in" in fails[0]
        assert any(x["msg"] == "stopping; the data plane stays up" for x in lines)
