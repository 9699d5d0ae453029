"""The QEMU guest mode's pure parts, without QEMU or root.

Scenarios:
- cpio newc members: header fields, 4-byte padding, owners and device nodes, sorted
  parents-first order, deterministic gzip output; busybox's cpio reads the archive back;
- archive paths are normalized and may not escape the root;
- kernel modules: `.modinfo` depends= is read from an ELF object; the load order puts
  every module after its dependencies (virtio_ring first), reports missing modules
  with who needs them, and refuses cycles;
- the concrete kernel package is found in linux-image-amd64's Depends;
- ldd output parsing, Debian control parsing, pg_hba lines;
- the cache key changes with any input and only then;
- the kernel command line and QEMU argv carry the VM's MAC, IP, MTU; a target
  differs from its source only by -incoming;
- query-migrate answers become figures, or MigrationError with QEMU's message;
- the QMP client negotiates, skips events, matches replies by id and raises
  QMPError for an error reply and for a closed socket;
- error messages say what to do; a failed build step names itself and its cause.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import socket
import stat
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from e2e.qemu import kmod
from e2e.qemu.errors import (
    GuestNotReadyError,
    ImageBuildError,
    MigrationError,
    QemuMissingError,
    QMPError,
)
from e2e.qemu.image import (
    GuestImage,
    ImageInputs,
    kernel_package_from_depends,
    parse_control,
    parse_ldd,
    pg_hba,
)
from e2e.qemu.initramfs import Archive, Entry, encode_entry, normalize
from e2e.qemu.migrate import parse_migration
from e2e.qemu.qmp import QMPClient
from e2e.qemu.vm import GuestNetwork, VMConfig, kernel_cmdline, qemu_argv

# --- initramfs ---------------------------------------------------------------


def _members(raw: bytes) -> list[tuple[str, list[int], bytes]]:
    """Read newc members back: (name, the 13 header fields, data)."""
    out = []
    pos = 0
    while True:
        assert raw[pos : pos + 6] == b"070701"
        fields = [int(raw[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_start = pos + 110
        name = raw[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        data = raw[data_start : data_start + filesize]
        pos = data_start + filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            assert pos == len(raw)
            return out
        out.append((name, fields, data))


def test_cpio_members_and_order() -> None:
    archive = Archive()
    archive.add_file("var/lib/pg/PG_VERSION", b"15\n", mode=0o600, uid=70, gid=70)
    archive.add_symlink("bin/sh", "busybox")
    archive.add_char_device("dev/console", 5, 1)
    buf = io.BytesIO()
    archive.write(buf)
    members = {name: (fields, data) for name, fields, data in _members(buf.getvalue())}
    names = [name for name, _, _ in _members(buf.getvalue())]

    assert names == sorted(names)
    assert names.index("var") < names.index("var/lib") < names.index("var/lib/pg/PG_VERSION")
    fields, data = members["var/lib/pg/PG_VERSION"]
    assert data == b"15\n"
    assert fields[1] == stat.S_IFREG | 0o600 and fields[2:4] == [70, 70]
    assert fields[5] == 0  # mtime
    fields, data = members["bin/sh"]
    assert stat.S_ISLNK(fields[1]) and data == b"busybox"
    fields, _ = members["dev/console"]
    assert stat.S_ISCHR(fields[1]) and fields[9:11] == [5, 1]
    assert stat.S_ISDIR(members["dev"][0][1])


def test_cpio_entry_padding() -> None:
    for name, size in (("a", 0), ("ab", 1), ("abc", 2), ("abcd", 3), ("abcde", 5)):
        raw = encode_entry(name, Entry(stat.S_IFREG | 0o644, b"x" * size), 1)
        assert len(raw) % 4 == 0
        header_and_name = 110 + len(name) + 1
        assert len(raw) == header_and_name + (-header_and_name % 4) + size + (-size % 4)


def test_cpio_gzip_is_deterministic(tmp_path: Path) -> None:
    def build(path: Path) -> bytes:
        archive = Archive()
        archive.add_file("etc/passwd", b"root:x:0:0::/:/bin/sh\n")
        archive.add_file("init", b"#!/bin/sh\n", mode=0o755)
        archive.write_gzip(path)
        return path.read_bytes()

    first, second = build(tmp_path / "a.gz"), build(tmp_path / "b.gz")
    assert first == second
    assert gzip.decompress(first).startswith(b"070701")


def test_cpio_read_back_by_busybox(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox not installed: apt-get install busybox-static")
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file").write_text("hello")
    (source / "link").symlink_to("sub/file")
    archive = Archive()
    archive.add_tree(source, "usr/share/x", skip=lambda p: p.name == "skipme")
    raw = io.BytesIO()
    archive.write(raw)
    listing = subprocess.run(
        [busybox, "cpio", "-t"], input=raw.getvalue(), capture_output=True, check=True
    ).stdout.decode()
    assert set(listing.split()) == {
        "usr",
        "usr/share",
        "usr/share/x",
        "usr/share/x/link",
        "usr/share/x/sub",
        "usr/share/x/sub/file",
    }


def test_archive_paths() -> None:
    assert normalize("/usr//lib/") == "usr/lib"
    for bad in ("", "/", "../etc", "usr/../../x"):
        with pytest.raises(ValueError, match="invalid initramfs path"):
            normalize(bad)


# --- kernel modules ----------------------------------------------------------


def _elf_with_modinfo(modinfo: bytes) -> bytes:
    """A minimal ELF64 object: null section, .modinfo, .shstrtab."""
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    data_offset = 64
    strtab_offset = data_offset + len(modinfo)
    shoff = strtab_offset + len(shstrtab)
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    sections = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    sections += struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, data_offset, len(modinfo), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, strtab_offset, len(shstrtab), 0, 0, 1, 0)
    return header + modinfo + shstrtab + sections


def test_modinfo_depends() -> None:
    elf = _elf_with_modinfo(b"license=GPL\0depends=virtio_ring,virtio,net-failover\0name=x\0")
    assert kmod.modinfo(elf)["license"] == "GPL"
    assert kmod.depends(elf) == ["virtio_ring", "virtio", "net_failover"]
    assert kmod.depends(_elf_with_modinfo(b"depends=\0")) == []
    with pytest.raises(ValueError, match="not an ELF64"):
        kmod.modinfo(b"MZ" + b"\0" * 100)


def test_resolve_reads_modules_from_a_tree(tmp_path: Path) -> None:
    drivers = tmp_path / "kernel" / "drivers"
    drivers.mkdir(parents=True)
    (drivers / "virtio_ring.ko").write_bytes(_elf_with_modinfo(b"depends=\0"))
    (drivers / "virtio.ko").write_bytes(_elf_with_modinfo(b"depends=virtio_ring\0"))
    (drivers / "virtio_net.ko").write_bytes(_elf_with_modinfo(b"depends=virtio_ring,virtio\0"))
    paths = kmod.resolve(tmp_path / "kernel", ["virtio_net"])
    assert [p.name for p in paths] == ["virtio_ring.ko", "virtio.ko", "virtio_net.ko"]


# The dependency data of Debian's 6.1 kernel for the guest's NIC.
DEBIAN_61 = {
    "virtio_net": ["virtio_ring", "virtio", "net_failover"],
    "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"],
    "virtio": ["virtio_ring"],
    "virtio_ring": [],
    "net_failover": ["failover"],
    "failover": [],
    "virtio_pci_legacy_dev": [],
    "virtio_pci_modern_dev": [],
}


def test_load_order_puts_dependencies_first() -> None:
    order = kmod.load_order(["virtio_pci", "virtio_net"], DEBIAN_61)
    assert order[0] == "virtio_ring"
    assert sorted(order) == sorted(DEBIAN_61)
    for module, deps in DEBIAN_61.items():
        assert all(order.index(dep) < order.index(module) for dep in deps)


def test_load_order_errors() -> None:
    with pytest.raises(ValueError, match="module failover not found.*needed by net_failover"):
        kmod.load_order(["net_failover"], {"net_failover": ["failover"]})
    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        kmod.load_order(["a"], {"a": ["b"], "b": ["a"]})


# --- image inputs ------------------------------------------------------------


def test_kernel_package_from_depends() -> None:
    depends = "linux-image-6.1.0-57-amd64 (= 6.1.192-3)"
    assert kernel_package_from_depends(depends) == "linux-image-6.1.0-57-amd64"
    signed = "linux-image-6.1.0-57-amd64-unsigned (= 6.1.192-3) | linux-image-6.1.0-57-amd64"
    assert kernel_package_from_depends(signed) == "linux-image-6.1.0-57-amd64-unsigned"
    with pytest.raises(ValueError, match="no linux-image"):
        kernel_package_from_depends("firmware-linux")


def test_parse_ldd() -> None:
    output = """/usr/lib/postgresql/15/bin/postgres:
\tlinux-vdso.so.1 (0x00007ffd)
\tlibxml2.so.2 => /lib/x86_64-linux-gnu/libxml2.so.2 (0x00007f1)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f3)
/usr/lib/postgresql/15/lib/plpgsql.so:
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)
"""
    assert parse_ldd(output) == {
        "/lib/x86_64-linux-gnu/libxml2.so.2",
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
    }
    with pytest.raises(ValueError, match="missing shared library"):
        parse_ldd("\tlibicu.so.72 => not found\n")


def test_parse_control() -> None:
    text = "Package: linux-image-amd64\nVersion: 6.1.192-3\nDescription: a\n more\n\nPackage: x\n"
    fields = parse_control(text)
    assert fields["Version"] == "6.1.192-3"
    assert fields["Description"] == "a\nmore"
    with pytest.raises(ValueError, match="no Version"):
        parse_control("Package: x\n")


def test_pg_hba_trusts_lab_ranges_only() -> None:
    lines = [line for line in pg_hba().splitlines() if line.startswith("host")]
    assert lines == ["host all all 198.18.0.0/15 trust", "host all all 198.19.0.0/16 trust"]


def test_cache_key_follows_inputs() -> None:
    base = ImageInputs(
        kernel_package="linux-image-6.1.0-57-amd64",
        kernel_version="6.1.192-3",
        busybox_version="1:1.35",
        perl_version="5.36",
        postgres_version="15.18",
        pg_major=15,
        init_script="init",
        postgres_conf="c",
    )
    assert base.key() == ImageInputs(**base.__dict__).key()
    for field, value in (
        ("kernel_version", "6.1.193-1"),
        ("init_script", "init2"),
        ("pg_major", 16),
    ):
        assert ImageInputs(**{**base.__dict__, field: value}).key() != base.key()


# --- QEMU command line -------------------------------------------------------

IMAGE = GuestImage(
    directory=Path("/c"),
    kernel=Path("/c/vmlinuz"),
    initrd=Path("/c/initrd.img"),
    key="k",
    kernel_version="6.1",
    postgres_version="15",
    reused=True,
    build_seconds=0.0,
)
CONFIG = VMConfig(
    name="pg-0",
    network=GuestNetwork(
        ip="198.19.0.5", prefix=16, mac="0A:58:C6:13:00:05", gateway="198.19.0.1", mtu=1450
    ),
)


def test_kernel_cmdline_carries_network() -> None:
    words = kernel_cmdline(CONFIG).split()
    assert "console=ttyS0" in words
    for word in (
        "vmoverlay.ip=198.19.0.5/16",
        "vmoverlay.mac=0a:58:c6:13:00:05",
        "vmoverlay.mtu=1450",
        "vmoverlay.gw=198.19.0.1",
        "vmoverlay.port=5432",
    ):
        assert word in words


def test_qemu_argv_source_and_target() -> None:
    kwargs: dict[str, Any] = {
        "accel": "tcg",
        "tap": "tap0",
        "qmp_socket": Path("/w/qmp.sock"),
        "serial_log": Path("/w/serial.log"),
    }
    source = qemu_argv("qemu", IMAGE, CONFIG, **kwargs)
    target = qemu_argv("qemu", IMAGE, CONFIG, incoming="unix:/w/m.sock", **kwargs)
    assert target == [*source, "-incoming", "unix:/w/m.sock"]
    joined = " ".join(source)
    assert "-machine pc,accel=tcg" in joined
    assert "tap,id=net0,ifname=tap0,script=no,downscript=no" in joined
    assert "virtio-net-pci,netdev=net0,mac=0a:58:c6:13:00:05" in joined
    assert "unix:/w/qmp.sock,server=on,wait=off" in joined


# --- migration figures -------------------------------------------------------


def test_parse_migration_completed() -> None:
    info = {
        "status": "completed",
        "total-time": 2300,
        "downtime": 8,
        "setup-time": 3,
        "ram": {"transferred": 300 << 20, "total": 512 << 20, "mbps": 900.5, "dirty-sync-count": 3},
    }
    result = parse_migration("pg-0", info, wall_seconds=2.41)
    assert (result.total_time_ms, result.downtime_ms) == (2300, 8)
    assert result.ram_transferred_bytes == 300 << 20
    assert result.as_dict()["wall_seconds"] == 2.41


def test_parse_migration_failed_carries_qemu_error() -> None:
    info = {"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"}
    with pytest.raises(MigrationError, match="status failed: Unable to write to socket"):
        parse_migration("pg-0", info, wall_seconds=1.0)


# --- QMP client --------------------------------------------------------------


def _fake_qemu(sock: socket.socket, replies: dict[str, Any]) -> None:
    """Answer like QEMU: greeting, then one reply per command, an event first."""
    with sock, sock.makefile("rwb") as stream:
        stream.write(b'{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}\r\n')
        stream.flush()
        for line in stream:
            request = json.loads(line)
            command = request["execute"]
            stream.write(b'{"event": "RESUME", "data": {}}\r\n')
            if command == "quit":
                return
            answer = replies.get(command, {"return": {}})
            stream.write(json.dumps({**answer, "id": request["id"]}).encode() + b"\r\n")
            stream.flush()


def test_qmp_client_round_trip() -> None:
    ours, theirs = socket.socketpair()
    replies = {
        "query-status": {"return": {"status": "running", "running": True}},
        "migrate": {"error": {"class": "GenericError", "desc": "no such socket"}},
    }
    server = threading.Thread(target=_fake_qemu, args=(theirs, replies), daemon=True)
    server.start()
    qmp = QMPClient(ours, timeout=5.0)
    qmp._negotiate()
    assert qmp.greeting["version"]["qemu"]["major"] == 7
    assert qmp.status() == "running"
    assert any(event["event"] == "RESUME" for event in qmp.events)
    with pytest.raises(QMPError, match="migrate: GenericError: no such socket"):
        qmp.migrate("unix:/nowhere")
    qmp.quit()  # the fake closes without answering, as QEMU may
    with pytest.raises(QMPError, match="SocketClosed|SocketError"):
        qmp.status()
    qmp.close()
    server.join(timeout=5)


def test_qmp_connect_gives_up_on_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(QMPError, match="connect: SocketError"):
        QMPClient.connect(tmp_path / "none.sock", timeout=0.2)


# --- error messages ----------------------------------------------------------


def test_error_messages_say_what_to_do() -> None:
    missing = str(QemuMissingError("qemu-system-x86_64", "qemu-system-x86"))
    assert "apt-get install --no-install-recommends qemu-system-x86" in missing
    assert "VMOVERLAY_EXTRA_APT" in missing
    not_ready = str(GuestNotReadyError("pg-0", "no marker within 5 s", ["line 1", "Kernel panic"]))
    assert "failed to boot guest pg-0: no marker" in not_ready
    assert not_ready.endswith("    line 1\n    Kernel panic")


def test_build_steps_name_themselves_on_failure() -> None:
    from e2e.qemu import image

    failure = subprocess.CalledProcessError(
        100, ["apt-get", "download", "x"], "", "E: 404 Not Found"
    )
    with pytest.raises(ImageBuildError) as caught, image._step("download-kernel"):
        raise failure
    assert caught.value.step == "download-kernel"
    assert str(caught.value) == (
        "failed to build the guest image at step 'download-kernel': "
        "apt-get download x exited 100: E: 404 Not Found"
    )
    with pytest.raises(ImageBuildError, match="at step 'initramfs': OSError: disk full"):
        with image._step("initramfs"):
            raise OSError("disk full")
