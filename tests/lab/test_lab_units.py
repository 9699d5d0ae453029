"""Pure parts of the lab and its gate, no namespaces needed.

Scenarios:
- the migration plan goes round-robin, moves each VM twice in a row, and returns
  a VM to its first node; clients are spread evenly over VMs;
- pgbench output: progress lines (with and without failures, with rate lag),
  the summary, aborted clients and connection failures; a stall counts every
  client as broken;
- the datagram blackout: none lost, one run of losses, losses at the window's
  end; the client stall from query completions; windows between migrations;
- the summary passes only without broken connections, failed transactions and
  with stalls within the bound; percentiles; the table and JUnit XML;
- QEMU's RARP announcement frame and its round schedule;
- the minimal Postgres protocol decoding (data rows, errors);
- preflight: not root and missing Postgres binaries are reported with the fix,
  and the gate exits 2 with them, without a traceback.
- arguments: every bad value of every gate flag (negative pause, rate, spacing,
  NaN, a stall bound below the pause, a no-progress bound under 1 s, no
  migrations, more nodes than the underlay /24 holds, too many VMs or too few
  clients) is refused with its own flag and range named, exit 2, before
  anything starts; ``--spacing 0`` is accepted; ``up`` checks the same;
- output paths: ``--json``/``--junit`` in a missing directory or naming a
  directory, ``--log-dir`` under /proc or naming a file are refused with exit
  2 and nothing is created; a JSON file that cannot be written after a PASS is
  an error line and exit 1, never a traceback, the table still printed;
- interruption: SIGINT exits 130 and SIGTERM 143 with "interrupted", also when a
  child saw the Ctrl-C first and the lab failed because of it; the probe
  ignores the terminal's SIGINT (no traceback, still gives its result when its
  stdin closes) and ends quietly on SIGTERM;
- logs: a lab's temp dir goes entirely unless its logs are kept and there are
  logs; only a log dir with files is ever pointed at; the gate keeps (and
  names) them after a lab failure or a FAIL verdict, never after a pass or an
  interruption, which says "interrupted" instead of "the lab failed";
- the cheat sheet names vmoverlay-lab by an absolute path that exists.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from e2e.lab import announce, pgwire, report
from e2e.lab.pgbench import PgbenchResult, parse_line, run_argv
from e2e.lab.plan import plan_migrations, split_clients
from e2e.lab.report import MigrationEvent, ProbeData, Totals


def test_plan_round_robin_back_to_back_and_return() -> None:
    plan = plan_migrations(["vm1", "vm2"], {"vm1": "n1", "vm2": "n2"}, ["n1", "n2", "n3"], 6)
    assert plan[:2] == [("vm1", "n1", "n2"), ("vm1", "n2", "n3")]
    assert plan[2:4] == [("vm2", "n2", "n3"), ("vm2", "n3", "n1")]
    assert ("vm1", "n3", "n1") in plan  # back on its first node
    where = {"vm1": "n1", "vm2": "n2"}
    for vm, source, target in plan:
        assert source == where[vm] and target != source
        where[vm] = target
    with pytest.raises(ValueError):
        plan_migrations(["vm1"], {"vm1": "n1"}, ["n1"], 1)


def test_plan_chains_each_vm_from_where_it_is() -> None:
    plan = plan_migrations(["vm1"], {"vm1": "n2"}, ["n1", "n2", "n3"], 4)
    assert plan == [
        ("vm1", "n2", "n3"),
        ("vm1", "n3", "n1"),
        ("vm1", "n1", "n2"),
        ("vm1", "n2", "n3"),
    ]


def test_split_clients() -> None:
    assert split_clients(16, 2) == [8, 8]
    assert split_clients(5, 3) == [2, 2, 1]
    assert sum(split_clients(32, 3)) == 32


def test_pgbench_progress_and_summary() -> None:
    result = PgbenchResult(clients=4)
    parse_line(
        result,
        1.0,
        "progress: 1733300000.123 s, 199.0 tps, lat 2.1 ms stddev 1.0, 0 failed, lag 0.3 ms stddev 0.2",
    )
    parse_line(
        result, 2.0, "progress: 1733300001.123 s, 150.5 tps, lat 2.1 ms stddev 1.0, 3 failed"
    )
    parse_line(result, 3.0, "number of transactions actually processed: 1234")
    parse_line(result, 3.0, "number of failed transactions: 3 (0.243%)")
    assert result.progress == [(1.0, 199.0, 0), (2.0, 150.5, 3)]
    assert result.transactions == 1234
    assert result.failed_transactions == 3
    assert result.summary_seen
    assert result.broken_connections == 0


def test_pgbench_aborted_clients_and_connection_failures() -> None:
    result = PgbenchResult(clients=4)
    parse_line(
        result,
        5.0,
        "pgbench: error: client 2 aborted in command 4 (SQL) of script 0; perhaps the backend died while processing",
    )
    parse_line(result, 5.1, "pgbench: error: client 2 aborted in command 5 (SQL) of script 0")
    parse_line(
        result,
        5.2,
        'pgbench: error: connection to server at "198.19.0.5", port 5432 failed: timeout expired',
    )
    assert result.aborted_clients == {2}
    assert result.connect_failures == 1
    assert result.broken_connections == 2
    assert [t for t, _ in result.events] == [5.0, 5.1, 5.2]
    result.stalled = True
    assert result.broken_connections == 4


def test_pgbench_command_line_bounds_dead_paths() -> None:
    argv = run_argv("198.19.0.5", clients=4, seconds=20, rate=100, bound_ms=10000)
    assert argv[:3] == ["pgbench", "-n", "-c"]
    assert "--max-tries=1" in argv and "--failures-detailed" in argv
    assert "-R" in argv
    conninfo = argv[-1]
    assert "tcp_user_timeout=10000" in conninfo and "host=198.19.0.5" in conninfo


def _probe(sent: list[float], answered: set[int], queries: list[float]) -> ProbeData:
    return ProbeData(
        interval=0.01,
        udp_sent=sent,
        udp_recv=[(i, t + 0.001) for i, t in enumerate(sent) if i in answered],
        queries=[(t - 0.001, t) for t in queries],
        breaks=[],
    )


def test_blackout_none_lost() -> None:
    sent = [i * 0.01 for i in range(100)]
    probe = _probe(sent, set(range(100)), [])
    assert report.blackout(probe, 0.0, 1.0) == (0.0, 0)


def test_blackout_one_run_of_losses() -> None:
    sent = [i * 0.01 for i in range(100)]
    answered = set(range(100)) - set(range(30, 41))  # 11 probes lost: 0.30 .. 0.40
    black, lost = report.blackout(_probe(sent, answered, []), 0.0, 1.0)
    assert lost == 11
    assert black == pytest.approx(0.11)  # first lost 0.30 -> first answered again 0.41


def test_blackout_runs_to_window_end() -> None:
    sent = [i * 0.01 for i in range(100)]
    answered = set(range(90))
    black, lost = report.blackout(_probe(sent, answered, []), 0.0, 1.0)
    assert lost == 10
    assert black == pytest.approx(0.1)


def test_stall_from_query_completions() -> None:
    done = [i * 0.01 for i in range(50)] + [0.75 + i * 0.01 for i in range(20)]
    probe = _probe([], set(), done)
    assert report.stall(probe, 0.0, 1.0) == pytest.approx(0.75 - 0.49 - 0.01)
    assert report.stall(_probe([], set(), []), 0.0, 1.0) == pytest.approx(1.0)
    broke = _probe([], set(), [i * 0.01 for i in range(30)])  # silent after 0.29
    assert report.stall(broke, 0.0, 1.0) == pytest.approx(1.0 - 0.29 - 0.01)


def _event(index: int, freeze: float, pause: float = 0.1) -> MigrationEvent:
    return MigrationEvent(
        index=index,
        vm="vm1",
        source="n1",
        target="n2",
        pause_ms=100,
        freeze=freeze,
        resume=freeze + pause,
        prepare_ms=500.0,
        status_ms=20.0,
    )


def test_analyse_attributes_to_windows() -> None:
    sent = [i * 0.01 for i in range(400)]
    answered = set(range(400)) - set(range(100, 112)) - set(range(300, 310))
    done = [t for i, t in enumerate(sent) if i in answered]
    probe = _probe(sent, answered, done)
    probe.breaks.append((3.05, "the server closed the connection"))
    events = [_event(1, 1.0), _event(2, 3.0)]
    results = report.analyse(events, [probe], [1.5], [(1.2, 2), (3.5, 0)], end=4.0)
    first, second = results
    assert first.probe_loss == 12 and second.probe_loss == 10
    assert first.blackout_ms == pytest.approx(120.0)
    assert first.extra_blackout_ms == pytest.approx(20.0)
    assert second.extra_blackout_ms == 0.0
    assert first.broken_connections == 1 and second.broken_connections == 1
    assert first.failed_transactions == 2 and second.failed_transactions == 0
    assert second.errors == ["the server closed the connection"]


def _summary(broken: int = 0, failed: int = 0, max_stall: float | None = None) -> dict:
    events = [_event(1, 1.0)]
    sent = [i * 0.01 for i in range(300)]
    answered = set(range(300)) - set(range(100, 110))
    probe = _probe(sent, answered, [t for i, t in enumerate(sent) if i in answered])
    results = report.analyse(events, [probe], [], [], end=3.0)
    totals = Totals(
        clients=4,
        transactions=1000,
        failed_transactions=failed,
        broken_connections=broken,
        planned_migrations=1,
    )
    return report.summary(results, totals, max_stall_ms=max_stall, settings={"nodes": 3})


def test_summary_verdicts() -> None:
    good = _summary()
    assert good["passed"] and good["reasons"] == []
    for key in (
        "migrations",
        "clients",
        "transactions",
        "failed_transactions",
        "broken_connections",
        "max_stall_ms",
        "max_blackout_ms",
        "max_extra_blackout_ms",
        "per_migration",
    ):
        assert key in good
    assert not _summary(broken=1)["passed"]
    assert not _summary(failed=2)["passed"]
    stalled = _summary(max_stall=10)
    assert not stalled["passed"] and "stall" in stalled["reasons"][0]


def test_table_and_junit() -> None:
    doc = _summary(broken=1)
    text = report.table(doc)
    header = text.splitlines()[0]
    assert header.split() == ["#", "VM", "from", "to", "pause", "blackout", "extra", "stall"] + [
        "loss",
        "broken",
        "failed",
    ]
    assert len(header) < 100
    assert "verdict: FAIL" in text
    root = ET.fromstring(report.junit(doc, duration_s=12.0))
    assert root.tag == "testsuite" and root.get("tests") == "2" and root.get("failures") == "1"
    assert report.percentile([5, 1, 3, 2, 4], 50) == 3
    assert report.percentile([], 99) == 0.0


def test_rarp_frame_and_schedule() -> None:
    frame = announce.rarp_frame("0a:11:22:33:44:55")
    assert len(frame) == 60
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == bytes.fromhex("0a1122334455")
    assert struct.unpack("!H", frame[12:14])[0] == 0x8035
    assert struct.unpack("!H", frame[20:22])[0] == 3  # reverse request
    assert announce.announce_delays() == [0.0, 0.05, 0.2, 0.45, 0.8]


def test_pgwire_decoding() -> None:
    row = struct.pack("!H", 2) + struct.pack("!i", 1) + b"1" + struct.pack("!i", -1)
    assert pgwire._data_row(row) == ["1", None]
    err = b"SERROR\0C57P01\0Mterminating connection\0\0"
    assert pgwire._error_text(err) == "57P01 terminating connection"


def test_preflight_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from e2e.lab import preflight

    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(preflight, "PG_BIN", tmp_path / "no-postgres")
    found = preflight.problems()
    assert any("not root" in line and "sudo make lab" in line for line in found)
    assert any("apt-get install postgresql-15" in line for line in found)


def test_gate_reports_missing_prerequisites_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from e2e.lab import gate

    monkeypatch.setattr(gate.preflight, "problems", lambda: ["not root: run it as root"])
    assert gate.main(["--vms", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot run the lab" in err and "not root" in err and "Traceback" not in err


# --- arguments, output paths, interruption, logs, cheat sheet ---------------------------


def _gate_args(*extra: str) -> list[str]:
    return ["--vms", "1", "--clients", "2", *extra]


@pytest.mark.parametrize(
    ("argv", "flag", "allowed"),
    [
        (["--nodes", "100000"], "--nodes 100000", "2 to 244"),
        (["--nodes", "1"], "--nodes 1", "2 to 244"),
        (["--vms", "1000"], "--vms 1000", "1 to 64"),
        (["--vms", "2", "--clients", "1000"], "--clients 1000", "at most 380"),
        (["--vms", "4", "--clients", "2"], "--clients 2", "at least --vms (4)"),
        (["--migrations", "0"], "--migrations 0", "1 or more"),
        (["--pause-ms", "-5"], "--pause-ms -5", "0 or more"),
        (["--pause-ms", "10000"], "--pause-ms 10000", "below --no-progress-ms"),
        (["--rate", "-1"], "--rate -1", "0 (unlimited) or more"),
        (["--spacing", "-1"], "--spacing -1", "0 or more seconds"),
        (["--spacing", "nan"], "--spacing nan", "0 or more seconds"),
        (["--max-stall-ms", "-1"], "--max-stall-ms -1", "above --pause-ms (100)"),
        (["--max-stall-ms", "100"], "--max-stall-ms 100", "above --pause-ms (100)"),
        (["--no-progress-ms", "0"], "--no-progress-ms 0", "1000 or more"),
    ],
)
def test_gate_refuses_each_bad_value_naming_its_flag(
    argv: list[str], flag: str, allowed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from e2e.lab import gate

    with pytest.raises(SystemExit) as exit_info:
        gate.parse_args(["--vms", "1", "--clients", "2", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err  # one problem, one line: the flag at fault and no other
    assert flag in lines[0] and allowed in lines[0]
    assert "Traceback" not in err


def test_gate_accepts_defaults_and_zero_spacing() -> None:
    from e2e.lab import gate
    from e2e.lab.lab import node_address

    args = gate.parse_args(["--spacing", "0", "--rate", "0", "--pause-ms", "0", "--nodes", "244"])
    assert args.spacing == 0 and args.nodes == 244
    assert gate.parse_args([]).migrations == 6
    from e2e.lab.limits import max_nodes

    assert node_address(max_nodes()) == "198.18.0.254"


def test_up_refuses_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    from e2e.lab import up

    with pytest.raises(SystemExit) as exit_info:
        up.main(["--nodes", "100000", "--vms", "0", "--log-dir", "/proc/nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--nodes 100000: must be 2 to 244" in err
    assert "--vms 0: must be 1 to 64" in err
    assert "--log-dir /proc/nope" in err


def test_output_paths_checked_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from e2e.lab import gate
    from e2e.lab.limits import output_problems

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    before = sorted(tmp_path.iterdir())
    found = output_problems(
        json_path=tmp_path / "missing" / "x.json",
        junit_path=tmp_path,
        log_dir=a_file,
    )
    assert len(found) == 3
    assert found[0].startswith("--json ") and "does not exist" in found[0]
    assert found[1].startswith("--junit ") and "is a directory" in found[1]
    assert found[2].startswith("--log-dir ") and "not a directory" in found[2]
    assert (
        output_problems(
            json_path=tmp_path / "x.json",
            junit_path=tmp_path / "x.xml",
            log_dir=tmp_path / "new" / "logs",
        )
        == []
    )
    assert sorted(tmp_path.iterdir()) == before  # the checks created nothing

    for argv in (
        ["--json", "/nonexistent/dir/x.json"],
        ["--junit", "/nonexistent/dir/x.xml"],
        ["--log-dir", "/proc/nope"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            gate.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"error: {argv[0]} {argv[1]}" in err and "Traceback" not in err
    assert not Path("/proc/nope").exists()


def _fake_doc(passed: bool = True) -> dict[str, object]:
    per = report.analyse([], [], [], [], 0.0)
    totals = Totals(
        clients=2,
        transactions=10,
        failed_transactions=0,
        broken_connections=0,
        planned_migrations=1,
    )
    doc: dict[str, object] = report.summary(per, totals, max_stall_ms=None, settings={})
    doc["duration_s"] = 1.0
    doc["passed"] = passed
    return doc


def _quiet_gate(monkeypatch: pytest.MonkeyPatch, run: object) -> object:
    from e2e.lab import gate

    monkeypatch.setattr(gate.preflight, "problems", lambda: [])
    monkeypatch.setattr(gate, "_raise_on_signals", lambda: None)
    monkeypatch.setattr(gate.Gate, "run", run)
    return gate


def test_unwritable_output_after_a_pass_is_an_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()

    def run(_self: object) -> dict[str, object]:
        out.rmdir()  # the directory goes while the gate runs
        return _fake_doc()

    gate = _quiet_gate(monkeypatch, run)
    junit = tmp_path / "j.xml"
    code = gate.main(["--json", str(out / "x.json"), "--junit", str(junit)])  # type: ignore[attr-defined]
    captured = capsys.readouterr()
    assert code == 1
    assert "failed to write the JSON summary" in captured.err and "--json" in captured.err
    assert "(PASS) stands" in captured.err and "Traceback" not in captured.err
    assert "verdict" in captured.out.lower() or captured.out.strip()  # the table was printed
    assert ET.fromstring(junit.read_text()) is not None  # the other output was still written


@pytest.mark.parametrize(("signum", "code"), [(2, 130), (15, 143)])
def test_interrupted_exit_codes(
    signum: int, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from e2e.lab.gate import Interrupted

    def run(_self: object) -> dict[str, object]:
        raise Interrupted(signum)

    gate = _quiet_gate(monkeypatch, run)
    assert gate.main(_gate_args()) == code  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert "interrupted" in err and "failed" not in err


def test_a_child_seeing_ctrl_c_first_is_still_an_interruption(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from e2e.lab.probe import ProbeError

    def run(_self: object) -> dict[str, object]:
        gate._received.append(2)  # type: ignore[attr-defined]  # the handler ran meanwhile
        raise ProbeError("the probe for 198.19.0.5 gave no result")

    gate = _quiet_gate(monkeypatch, run)
    monkeypatch.setattr(gate, "_received", [])
    assert gate.main(_gate_args()) == 130  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert "interrupted (SIGINT)" in err and "the lab failed" not in err


def _start_probe() -> subprocess.Popen[str]:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the probe records breaks, that is fine
    argv = [sys.executable, "-m", "e2e.lab.probe", "--host", "127.0.0.1"]
    argv += ["--pg-port", str(port), "--udp-port", str(port), "--bound", "1"]
    proc = subprocess.Popen(
        argv,
        cwd=Path(__file__).resolve().parents[2],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # break events may come first: nothing listens on the port
        if json.loads(line)["event"] == "ready":
            return proc
    raise AssertionError(f"the probe never got ready: {proc.stderr.read() if proc.stderr else ''}")


def test_probe_ignores_the_terminals_sigint_and_ends_quietly_on_sigterm() -> None:
    proc = _start_probe()
    try:
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)  # still running: the gate decides when it stops
        out, err = proc.communicate(input="", timeout=30)
        assert proc.returncode == 0 and "Traceback" not in err
        assert '"event": "result"' in out

        proc = _start_probe()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143 and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_lab_temp_dir_keeps_only_logs_that_exist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from e2e.lab.lab import Lab, LabConfig, has_files

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def new_lab() -> Lab:
        return Lab(LabConfig(), SimpleNamespace(run_id="abc123"))  # type: ignore[arg-type]

    lab = new_lab()  # failed before it wrote a log: nothing to point at, nothing kept
    assert not has_files(lab.log_dir)
    assert lab._remove_tmp(keep_logs=True) is None
    assert list(tmp_path.iterdir()) == []

    lab = new_lab()  # failed with logs: only the logs stay, and that is where they are
    (lab.log_dir / "agent-n1.log").write_text("boom\n")
    (lab._tmp / "kubeconfig").write_text("x")
    assert lab._remove_tmp(keep_logs=True) == lab.log_dir
    assert [p.name for p in lab._tmp.iterdir()] == ["logs"]
    shutil.rmtree(lab._tmp)

    lab = new_lab()  # passed or interrupted: everything goes
    (lab.log_dir / "agent-n1.log").write_text("fine\n")
    assert lab._remove_tmp(keep_logs=False) is None
    assert list(tmp_path.iterdir()) == []


def test_cheat_sheet_commands_run_as_printed() -> None:
    from e2e.lab import sheet

    info = {
        "run_id": "abc123",
        "fabric": "vmo-abc123-fabric",
        "control_plane": "vmo-abc123-cp",
        "kubeconfig": "/tmp/k",
        "log_dir": "/tmp/logs",
        "nodes": {"n1": "vmo-abc123-n1"},
        "vms": {},
        "client": {"ns": "vmo-abc123-cl", "ip": "198.19.0.9", "node": "n1"},
        "lab_command": sheet.lab_command(),
        "kubectl": None,
        "psql": None,
    }
    text = sheet.render(info)
    command = info["lab_command"]
    assert Path(str(command)).is_absolute() and Path(str(command)).exists()
    assert f"  {command} check --run abc123" in text
    assert not [line for line in text.splitlines() if line.lstrip().startswith("vmoverlay-lab ")]
    assert "kubectl is not installed" in text


class _FakeLab:
    """Stands in for Lab in Gate.run: records how it was closed."""

    logs: Path | None = None
    fail_start: bool = False

    def __init__(self, config: object, run: object, progress: object) -> None:
        self.closed_with: bool | None = None

    def start(self) -> None:
        if self.fail_start:
            from e2e.lab.lab import LabError

            raise LabError("failed to add address 198.18.0.256")

    def close(self, *, keep_logs: bool = False) -> Path | None:
        self.closed_with = keep_logs
        return self.logs if keep_logs else None


@pytest.mark.parametrize(
    ("case", "logs", "kept", "said"),
    [
        ("interrupted", "/tmp/l", False, None),
        ("lab failed with logs", "/tmp/l", True, "the lab failed; its logs are in /tmp/l"),
        ("lab failed without logs", None, True, None),
        ("verdict FAIL", "/tmp/l", True, "the gate failed; its logs are in /tmp/l"),
        ("passed", "/tmp/l", False, None),
    ],
)
def test_gate_keeps_and_names_logs_only_when_they_matter(
    case: str,
    logs: str | None,
    kept: bool,
    said: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import contextlib

    from e2e.lab import gate

    messages: list[str] = []
    labs: list[_FakeLab] = []

    class Lab(_FakeLab):
        fail_start = case.startswith("lab failed")

        def __init__(self, *a: object) -> None:
            super().__init__(*a)
            self.logs = Path(logs) if logs else None
            labs.append(self)

    def measure(_self: object, _lab: object) -> dict[str, object]:
        if case == "interrupted":
            raise gate.Interrupted(signal.SIGINT)
        return _fake_doc(passed=case == "passed")

    monkeypatch.setattr(gate, "RunNamespaces", contextlib.nullcontext)
    monkeypatch.setattr(gate, "lab_class", lambda _mode: Lab)
    monkeypatch.setattr(gate.Gate, "measure", measure)
    monkeypatch.setattr(gate.signal, "signal", lambda *_a: None)
    the_gate = gate.Gate(gate.parse_args(_gate_args()), messages.append)  # type: ignore[arg-type]
    with contextlib.suppress(gate.Interrupted, gate.LabError):
        the_gate.run()
    assert labs[0].closed_with is kept
    pointed = [m for m in messages if "logs are in" in m]
    assert pointed == ([said] if said else []), messages
    if case == "interrupted":
        assert "interrupted: removing the lab" in messages
