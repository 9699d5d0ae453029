"""The CNI installer (init container) and bundle: what lands on a node, and that it runs there.

Scenarios (install-cni.sh against a fake host root in a temp dir; no root needed):
- install copies the bundle to /opt/vmoverlay/cni/<ID>, writes the
  /opt/cni/bin/vmoverlay shim (mode 755) that execs the bundle's Python on
  cni.main, and a kubeconfig + CA + token (mode 600, directory 700) that the
  Kubernetes client loads, reading the token from the token file;
- a second install of the same bundle copies nothing; an upgrade switches the
  shim and keeps the previous bundle (a CNI call may still run on it), a third
  removes the oldest;
- a bundle that does not start is refused and the old shim stays;
- refresh-token copies a rotated token, leaves an unchanged one alone, and in
  --every mode stops at once with status 0 on SIGTERM;
- uninstall removes the shim, every bundle and the credentials, but leaves a
  shim at /opt/cni/bin/vmoverlay that is not ours;
- a missing token, or no API server address, fails with a message saying what to do;
  an IPv6 API server address is bracketed;
Scenario (root, slow): make-cni-bundle.sh builds a bundle of the real plugin,
  and the installed shim answers CNI VERSION in a mount namespace where the
  build machine's Python (standard library, libpython, site-packages) is hidden.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.manifests.rendered import MANIFESTS

INSTALL = MANIFESTS / "image" / "install-cni.sh"
MAKE_BUNDLE = MANIFESTS / "image" / "make-cni-bundle.sh"


class Node:
    """A fake node: host directories, an image bundle and a ServiceAccount mount."""

    def __init__(self, root: Path) -> None:
        self.host = root / "host"
        self.sa = root / "sa"
        self.images = root / "images"
        for d in (self.host / "opt/cni/bin", self.sa, self.images):
            d.mkdir(parents=True)
        (self.sa / "token").write_text("token-1")
        (self.sa / "ca.crt").write_text("CA-1")

    def bundle(self, bundle_id: str, *, works: bool = True) -> Path:
        path = self.images / bundle_id
        (path / "bin").mkdir(parents=True)
        (path / "ID").write_text(bundle_id + "\n")
        python = path / "bin" / "python3"
        python.write_text(
            "#!/bin/sh\nexit 0\n" if works else "#!/bin/sh\necho broken >&2\nexit 1\n"
        )
        python.chmod(0o755)
        return path

    def env(self, bundle: Path, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ["PATH"],
            "VMOVERLAY_HOST_ROOT": str(self.host),
            "VMOVERLAY_CNI_BUNDLE": str(bundle),
            "VMOVERLAY_SA_DIR": str(self.sa),
            "KUBERNETES_SERVICE_HOST": "198.18.0.1",
            "KUBERNETES_SERVICE_PORT": "6443",
        }
        env.update(extra)
        return env

    def run(self, bundle: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(INSTALL), *args],
            env=self.env(bundle, **extra),
            capture_output=True,
            text=True,
            timeout=60,
        )

    @property
    def shim(self) -> Path:
        return self.host / "opt/cni/bin/vmoverlay"

    @property
    def conf(self) -> Path:
        return self.host / "etc/cni/net.d/vmoverlay.d"

    def bundles(self) -> set[str]:
        return {p.name for p in (self.host / "opt/vmoverlay/cni").iterdir()}


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_writes_shim_bundle_and_credentials(node: Node) -> None:
    proc = node.run(node.bundle("aaaa1111"), "install")
    assert proc.returncode == 0, proc.stderr
    assert node.bundles() == {"aaaa1111"}
    shim = node.shim.read_text()
    assert "BUNDLE=/opt/vmoverlay/cni/aaaa1111\n" in shim
    assert 'exec "$BUNDLE/bin/python3" -m cni.main "$@"' in shim
    assert _mode(node.shim) == 0o755
    assert _mode(node.conf) == 0o700
    for name in ("token", "ca.crt", "vmoverlay.kubeconfig"):
        assert _mode(node.conf / name) == 0o600, name
    assert (node.conf / "token").read_text() == "token-1"
    assert not list(node.host.rglob("*.tmp*")), "temporary files left behind"


def test_kubeconfig_loads_and_reads_the_token_file(node: Node) -> None:
    assert node.run(node.bundle("aaaa1111"), "install").returncode == 0
    text = (node.conf / "vmoverlay.kubeconfig").read_text()
    # The kubeconfig names host paths; point them at the fake host to load it here.
    local = node.host / "local.kubeconfig"
    local.write_text(text.replace("/etc/cni/net.d/vmoverlay.d", str(node.conf)))
    cfg = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(local), client_configuration=cfg)
    assert cfg.host == "https://198.18.0.1:6443"
    assert cfg.api_key["BearerToken"] == "Bearer token-1"
    assert cfg.ssl_ca_cert == str(node.conf / "ca.crt")


def test_reinstall_and_upgrade_keep_the_previous_bundle(node: Node) -> None:
    first = node.bundle("aaaa1111")
    assert node.run(first, "install").returncode == 0
    inode = (node.host / "opt/vmoverlay/cni/aaaa1111/ID").stat().st_ino
    again = node.run(first, "install")
    assert again.returncode == 0 and "already on the host" in again.stderr
    assert (node.host / "opt/vmoverlay/cni/aaaa1111/ID").stat().st_ino == inode

    assert node.run(node.bundle("bbbb2222"), "install").returncode == 0
    assert "cni/bbbb2222\n" in node.shim.read_text()
    assert node.bundles() == {"aaaa1111", "bbbb2222"}

    assert node.run(node.bundle("cccc3333"), "install").returncode == 0
    assert node.bundles() == {"bbbb2222", "cccc3333"}


def test_a_bundle_that_does_not_start_leaves_the_old_shim(node: Node) -> None:
    assert node.run(node.bundle("aaaa1111"), "install").returncode == 0
    before = node.shim.read_text()
    proc = node.run(node.bundle("dddd4444", works=False), "install")
    assert proc.returncode != 0
    assert "failed to start the CNI bundle" in proc.stderr and "broken" in proc.stderr
    assert node.shim.read_text() == before


def test_refresh_token_copies_only_a_changed_token(node: Node) -> None:
    bundle = node.bundle("aaaa1111")
    assert node.run(bundle, "install").returncode == 0
    inode = (node.conf / "token").stat().st_ino
    quiet = node.run(bundle, "refresh-token")
    assert quiet.returncode == 0 and "updated" not in quiet.stderr
    assert (node.conf / "token").stat().st_ino == inode

    (node.sa / "token").write_text("token-2")
    proc = node.run(bundle, "refresh-token")
    assert proc.returncode == 0 and "updated token" in proc.stderr
    assert (node.conf / "token").read_text() == "token-2"


def test_refresh_loop_stops_on_sigterm(node: Node) -> None:
    bundle = node.bundle("aaaa1111")
    proc = subprocess.Popen(
        ["sh", str(INSTALL), "refresh-token", "--every", "3600"],
        env=node.env(bundle),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "updated token" in proc.stderr.readline()  # first refresh done: now sleeping
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_uninstall_removes_only_what_is_ours(node: Node) -> None:
    bundle = node.bundle("aaaa1111")
    assert node.run(bundle, "install").returncode == 0
    proc = node.run(bundle, "uninstall")
    assert proc.returncode == 0, proc.stderr
    assert not node.shim.exists() and not node.bundles() and not list(node.conf.iterdir())

    node.shim.write_text("#!/bin/sh\nexec /usr/local/bin/someone-elses-plugin\n")
    proc = node.run(bundle, "uninstall")
    assert proc.returncode == 0 and "not vmoverlay's shim" in proc.stderr
    assert node.shim.exists()


def test_missing_token_and_missing_api_server_say_what_to_do(node: Node) -> None:
    bundle = node.bundle("aaaa1111")
    (node.sa / "token").unlink()
    proc = node.run(bundle, "install")
    assert proc.returncode != 0 and "ServiceAccount token mounted" in proc.stderr

    (node.sa / "token").write_text("token-1")
    proc = node.run(bundle, "install", KUBERNETES_SERVICE_HOST="")
    assert proc.returncode != 0 and "set VMOVERLAY_API_SERVER" in proc.stderr


def test_ipv6_api_server_is_bracketed(node: Node) -> None:
    proc = node.run(node.bundle("aaaa1111"), "install", KUBERNETES_SERVICE_HOST="fd00:198:18::1")
    assert proc.returncode == 0, proc.stderr
    assert (
        "server: https://[fd00:198:18::1]:6443\n"
        in (node.conf / "vmoverlay.kubeconfig").read_text()
    )


# ---------------------------------------------------------------- the real bundle (root)


def _plugin_modules() -> dict[str, Path]:
    """Top-level modules ``import cni.main`` loads from the repository or site-packages."""
    code = (
        "import json, sys, cni.main\n"
        "print(json.dumps({n: getattr(m, '__file__', None) for n, m in sys.modules.items()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    stdlib = Path(sys.base_prefix)
    found: dict[str, Path] = {}
    for name, file in json.loads(out).items():
        if "." in name or not file:
            continue
        path = Path(file)
        if path.is_relative_to(stdlib) and "site-packages" not in path.parts:
            continue
        found[name] = path.parent if path.name == "__init__.py" else path
    return found


@pytest.mark.root
@pytest.mark.slow
def test_bundle_runs_the_plugin_without_the_build_machines_python(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace: run the suite as root (make test)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    for path in _plugin_modules().values():
        (site / path.name).symlink_to(path)  # make-cni-bundle follows links: copies land
    extra = []
    nft = Path("/usr/lib/python3/dist-packages/nftables")
    if nft.is_dir():
        (site / "nftables").symlink_to(nft)
        extra = ["libnftables.so.1"]
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["sh", str(MAKE_BUNDLE), str(venv / "bin" / "python"), str(bundle), *extra],
        check=True,
        capture_output=True,
        timeout=300,
    )
    node = Node(tmp_path / "node")
    assert node.run(bundle, "install").returncode == 0

    hidden = [Path(sys.base_prefix) / "lib", Path(sys.prefix), Path("/usr/lib/python3")]
    hide = " && ".join(f"mount -t tmpfs vmo-hidden {p}" for p in hidden if p.is_dir())
    script = (
        f"mount -t tmpfs vmo-opt /opt && mkdir -p /opt/vmoverlay /opt/cni/bin"
        f" && mount --bind {node.host}/opt/vmoverlay /opt/vmoverlay"
        f" && mount --bind {node.host}/opt/cni/bin /opt/cni/bin && {hide}"
        f" && cd / && CNI_COMMAND=VERSION /opt/cni/bin/vmoverlay </dev/null"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "1.0.0" in json.loads(proc.stdout)["supportedVersions"]
    if extra:
        check = subprocess.run(
            [str(bundle / "bin" / "python3"), "-c", "import nftables; nftables.Nftables()"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stderr
