"""``vmoverlay-lab apiserver`` as a process: arguments, start-up, stop, crash safety.

Scenarios:
- an address outside 127.0.0.0/8 and 198.18.0.0/15 is refused with exit code 2
  and a message naming the allowed ranges;
- every numeric flag out of its range (--port -1/65536/70000, --history 0/-5,
  --bookmark-interval 0/-1/nan/inf) or not a number is refused up front with exit
  code 2 and a message naming the flag, never a traceback;
- --data-dir whose parent is missing, and --kubeconfig-out in a missing
  directory, are refused with exit code 2 and nothing is created; a --data-dir
  that is a regular file is refused naming the data dir (not the address); a
  --data-dir whose parent exists is created (only its last part); a data dir
  holding a file that is not a database fails with exit code 1 naming the file;
- SIGTERM while clients hold open watch streams (one read to its end, some
  kubernetes Watch loops that re-watch at once) exits 0 within seconds, and the
  streams end cleanly;
- with --port 0 it prints the URL with the chosen port and writes a working
  kubeconfig; SIGTERM and SIGINT stop it with exit code 0;
- with --data-dir and no --kubeconfig-out the kubeconfig goes to DIR/kubeconfig;
- a port already in use fails with exit code 1 and says so;
- --data-dir: every write the server acknowledged before a SIGKILL is there after
  a restart (writes race the kill);
- after a restart, a dependent whose owner vanished while the server was down
  (a crash between deleting an owner and collecting it) is collected.
"""

from __future__ import annotations

import http.client
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from tests.fixtures.apiserver import ROOT, LabApi, start_lab_api
from vmoverlay.kube import load_client


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "e2e.cli", "apiserver", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "address", ["0.0.0.0", "10.0.0.1", "192.168.1.1", "198.20.0.1", "::1", "x"]
)
def test_refuses_addresses_outside_the_lab(address: str) -> None:
    result = run_cli("--address", address)
    assert result.returncode == 2
    assert "127.0.0.0/8" in result.stderr and "198.18.0.0/15" in result.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--port", "70000"], "--port"),
        (["--port", "65536"], "--port"),
        (["--port", "-1"], "--port"),
        (["--port", "x"], "--port"),
        (["--port", "0", "--history", "-5"], "--history"),
        (["--history", "0"], "--history"),
        (["--bookmark-interval", "0"], "--bookmark-interval"),
        (["--bookmark-interval", "-1"], "--bookmark-interval"),
        (["--bookmark-interval", "nan"], "--bookmark-interval"),
        (["--bookmark-interval", "inf"], "--bookmark-interval"),
    ],
)
def test_refuses_numbers_out_of_range(args: list[str], flag: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert f"argument {flag}:" in result.stderr
    assert "Traceback" not in result.stderr and "serving" not in result.stdout


def test_refuses_missing_parents_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    result = run_cli("--data-dir", str(missing / "data"))
    assert result.returncode == 2
    assert f"data dir {missing / 'data'}" in result.stderr and "parent" in result.stderr
    result = run_cli("--kubeconfig-out", str(missing / "kc"))
    assert result.returncode == 2
    assert f"kubeconfig {missing / 'kc'}" in result.stderr and "does not exist" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("not a directory\n")
    result = run_cli("--port", "0", "--data-dir", str(file))
    assert result.returncode == 2
    assert f"data dir {file}" in result.stderr and "not a directory" in result.stderr
    assert "failed to start on" not in result.stderr and "Traceback" not in result.stderr


def test_data_dir_with_a_broken_database(tmp_path: Path) -> None:
    (tmp_path / "objects.sqlite3").write_bytes(b"not a database, " * 16)
    result = run_cli("--port", "0", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert f"data dir {tmp_path} ({tmp_path / 'objects.sqlite3'})" in result.stderr
    assert "not a database" in result.stderr and "Traceback" not in result.stderr


def test_data_dir_is_created_when_its_parent_exists(tmp_path: Path) -> None:
    with start_lab_api(tmp_path, data_dir=tmp_path / "fresh", crds=False) as lab:
        assert lab.data_dir is not None and (lab.data_dir / "objects.sqlite3").is_file()


def test_sigterm_ends_open_watches_and_exits_promptly(tmp_path: Path) -> None:
    with start_lab_api(tmp_path, crds=False) as lab:
        assert lab._proc is not None
        proc = lab._proc
        host, port = lab.url.removeprefix("http://").split(":")
        raw = http.client.HTTPConnection(host, int(port), timeout=30)
        raw.request("GET", "/api/v1/namespaces?watch=true")
        stream = raw.getresponse()
        assert stream.status == 200
        ended: list[bytes] = []
        reader = threading.Thread(target=lambda: ended.append(stream.read()), daemon=True)
        reader.start()
        core = k8s.CoreV1Api(lab.client())
        watchers = [watch.Watch() for _ in range(3)]

        def follow(w: watch.Watch) -> None:
            try:
                for _ in w.stream(core.list_namespace):
                    pass
            except (ApiException, HTTPError, OSError):
                return  # the server is gone: expected once it stopped

        threads = [threading.Thread(target=follow, args=(w,), daemon=True) for w in watchers]
        for t in threads:
            t.start()
        while lab.stats()["watches"] < 4:
            time.sleep(0.05)
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.monotonic() - started
        print(f"exit {code} {took:.2f}s after SIGTERM with 4 open watches")
        assert code == 0
        # Without ending the watches it took 10 s or more (aiohttp's grace is 60 s).
        assert took < 5
        reader.join(timeout=10)
        assert ended, "the raw watch stream did not end"
        assert b'"type":"ADDED"' in ended[0]  # the stream ended cleanly, with its events
        for w in watchers:
            w.stop()
        raw.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_port_zero_kubeconfig_and_clean_stop(tmp_path: Path, sig: signal.Signals) -> None:
    kubeconfig = tmp_path / "kc"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "e2e.cli",
            "apiserver",
            "--port",
            "0",
            "--kubeconfig-out",
            str(kubeconfig),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[0] == "serving" and first[1].startswith("http://127.0.0.1:")
        assert int(first[1].rsplit(":", 1)[1]) > 0
        assert proc.stdout.readline().split() == ["kubeconfig", str(kubeconfig)]
        names = [
            n.metadata.name
            for n in k8s.CoreV1Api(load_client(str(kubeconfig))).list_namespace().items
        ]
        assert "default" in names
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_in_use() -> None:
    with start_lab_api(mode="thread", data_dir=False, crds=False) as lab:
        result = run_cli("--port", str(lab.port))
    assert result.returncode == 1
    assert "failed to start" in result.stderr


def test_acknowledged_writes_survive_kill() -> None:
    with start_lab_api(mode="process", crds=False) as lab:
        core = k8s.CoreV1Api(lab.client())
        acked: list[str] = []

        def writer() -> None:
            for i in range(2000):
                try:
                    core.create_namespaced_config_map("default", {"metadata": {"name": f"w-{i}"}})
                except (ApiException, HTTPError, OSError):
                    return
                acked.append(f"w-{i}")

        thread = threading.Thread(target=writer)
        thread.start()
        while len(acked) < 50:
            thread.join(timeout=0.01)
        lab.kill()
        thread.join(timeout=30)
        lab.start()
        stored = {
            c.metadata.name
            for c in k8s.CoreV1Api(lab.client()).list_namespaced_config_map("default").items
        }
        assert acked and set(acked) <= stored


def test_restart_collects_dependents_of_vanished_owners(lab_api: LabApi) -> None:
    core = k8s.CoreV1Api(lab_api.client())
    owner = core.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "dep", "ownerReferences": [ref]}}
    )
    lab_api.stop()
    assert lab_api.data_dir is not None
    with sqlite3.connect(lab_api.data_dir / "objects.sqlite3") as db:
        db.execute("DELETE FROM objects WHERE name = 'owner'")
    lab_api.start()
    core = k8s.CoreV1Api(lab_api.client())
    names = {c.metadata.name for c in core.list_namespaced_config_map("default").items}
    assert "owner" not in names and "dep" not in names


def test_data_dir_gets_the_kubeconfig(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2e.cli", "apiserver", "--data-dir", str(tmp_path / "d")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("serving http://127.0.0.1:")
        assert proc.stdout.readline().split() == ["kubeconfig", str(tmp_path / "d" / "kubeconfig")]
        client = load_client(str(tmp_path / "d" / "kubeconfig"))
        assert k8s.CoreV1Api(client).read_namespace("default").metadata.name == "default"
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
