"""A gzip-compressed ``newc`` cpio archive, the format the Linux kernel unpacks as initramfs.

Written in Python rather than with ``cpio(1)`` for two reasons: the archive can
carry owners (the Postgres data directory belongs to the guest's ``postgres``
user) and device nodes (``/dev/console``) without the builder being those users
or calling ``mknod``; and the output is deterministic: entries in sorted order,
every mtime 0, gzip without a timestamp, so the same tree gives the same bytes.

Usage::

    archive = Archive()
    archive.add_dir("bin")
    archive.add_file("bin/busybox", Path("/bin/busybox").read_bytes(), mode=0o755)
    archive.add_symlink("bin/sh", "busybox")
    archive.add_tree(Path("/usr/share/postgresql/15"), "usr/share/postgresql/15")
    archive.write_gzip(Path("initrd.img"))
"""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member; ``mode`` carries the file type bits (``stat.S_IFREG`` ...)."""

    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    rdev: tuple[int, int] = (0, 0)


class Archive:
    """The members of an initramfs by guest path (relative, no leading slash)."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def _put(self, path: str, entry: Entry) -> None:
        name = normalize(path)
        parent = str(PurePosixPath(name).parent)
        if parent != "." and parent not in self.entries:
            self.add_dir(parent)
        self.entries[name] = entry

    def add_dir(self, path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self._put(path, Entry(stat.S_IFDIR | mode, uid=uid, gid=gid))

    def add_file(
        self, path: str, data: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> None:
        self._put(path, Entry(stat.S_IFREG | mode, data, uid=uid, gid=gid))

    def add_symlink(self, path: str, target: str) -> None:
        self._put(path, Entry(stat.S_IFLNK | 0o777, target.encode()))

    def add_char_device(self, path: str, major: int, minor: int, *, mode: int = 0o600) -> None:
        self._put(path, Entry(stat.S_IFCHR | mode, rdev=(major, minor)))

    def add_host_file(self, host: Path, path: str) -> None:
        """Copy ``host`` (following symlinks) to ``path`` with its permission bits."""
        st = host.stat()
        self.add_file(path, host.read_bytes(), mode=stat.S_IMODE(st.st_mode))

    def add_tree(
        self,
        host: Path,
        path: str,
        *,
        uid: int = 0,
        gid: int = 0,
        skip: Callable[[Path], bool] = lambda _p: False,
    ) -> None:
        """Copy the tree at ``host`` to ``path``: modes kept, symlinks as symlinks.

        ``uid``/``gid`` give every member its owner in the guest; ``skip(p)`` leaves
        out ``p`` (and, for a directory, all below it).
        """
        self.add_dir(path, mode=stat.S_IMODE(host.stat().st_mode), uid=uid, gid=gid)
        for child in sorted(host.iterdir()):
            if skip(child):
                continue
            guest = f"{path}/{child.name}"
            st = child.lstat()
            if stat.S_ISLNK(st.st_mode):
                self.add_symlink(guest, os.readlink(child))
            elif stat.S_ISDIR(st.st_mode):
                self.add_tree(child, guest, uid=uid, gid=gid, skip=skip)
            elif stat.S_ISREG(st.st_mode):
                mode = stat.S_IMODE(st.st_mode)
                self.add_file(guest, child.read_bytes(), mode=mode, uid=uid, gid=gid)

    def write(self, out: BinaryIO) -> None:
        """Write the uncompressed archive: sorted, so parents come before children."""
        for ino, name in enumerate(sorted(self.entries), start=1):
            out.write(encode_entry(name, self.entries[name], ino))
        out.write(encode_entry(TRAILER, Entry(0), 0))

    def write_gzip(self, path: Path, *, level: int = 6) -> None:
        with (
            path.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0) as out,
        ):
            self.write(out)  # type: ignore[arg-type]


def normalize(path: str) -> str:
    """``/usr//lib/`` -> ``usr/lib``: archive names are relative and clean."""
    name = str(PurePosixPath("/", path))[1:]
    if not name or ".." in PurePosixPath(name).parts:
        raise ValueError(f"invalid initramfs path {path!r}")
    return name


def encode_entry(name: str, entry: Entry, ino: int) -> bytes:
    """One ``newc`` member: header, NUL-terminated name and data, each padded to 4 bytes."""
    raw_name = name.encode() + b"\0"
    fields = (
        ino,
        entry.mode,
        entry.uid,
        entry.gid,
        2 if stat.S_ISDIR(entry.mode) else 1,
        0,  # mtime: fixed, so the archive is deterministic
        len(entry.data),
        0,
        0,
        entry.rdev[0],
        entry.rdev[1],
        len(raw_name),
        0,
    )
    header = NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)
    return _pad4(header + raw_name) + _pad4(entry.data)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)
