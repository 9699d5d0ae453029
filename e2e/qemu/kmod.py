"""Kernel modules of the guest: which ``.ko`` files, and in which order to ``insmod`` them.

Debian's kernel package ships no ``modules.dep`` (``depmod`` makes it when the
package is installed, and this project never installs a kernel on the host),
so the dependency graph is read from the modules themselves: every ``.ko`` is
an ELF object whose ``.modinfo`` section holds ``depends=a,b``. That is the
same data ``depmod`` uses. :func:`load_order` turns it into an order where
every module comes after the modules it depends on (``virtio_ring`` before
``virtio`` before ``virtio_pci``...), so the guest's init needs no ``modprobe``.
"""

from __future__ import annotations

import lzma
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

# What a guest with one virtio-net NIC needs; their dependencies are added.
GUEST_MODULES = ("virtio_pci", "virtio_net")


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Module name -> file under ``lib/modules/<version>/kernel`` (``-`` read as ``_``)."""
    index: dict[str, Path] = {}
    for path in sorted(modules_dir.rglob("*.ko*")):
        name = path.name.split(".ko", 1)[0].replace("-", "_")
        index.setdefault(name, path)
    return index


def read_module(path: Path) -> bytes:
    """The ELF bytes of a module, ``.ko`` or ``.ko.xz``."""
    if path.name.endswith(".ko"):
        return path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    raise ValueError(f"unsupported module compression: {path.name} (only .ko and .ko.xz)")


def modinfo(elf: bytes) -> dict[str, str]:
    """The ``key=value`` pairs of an ELF64 module's ``.modinfo`` section."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ValueError("not an ELF64 object")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names_offset = sections[shstrndx][4]
    for sh_name, _type, _flags, _addr, offset, size in sections:
        end = elf.index(b"\0", names_offset + sh_name)
        if elf[names_offset + sh_name : end] == b".modinfo":
            pairs = elf[offset : offset + size].split(b"\0")
            fields = (p.decode(errors="replace").partition("=") for p in pairs if b"=" in p)
            return {key: value for key, _, value in fields}
    raise ValueError("no .modinfo section")


def depends(elf: bytes) -> list[str]:
    """The modules ``elf`` needs loaded first, from ``.modinfo``'s ``depends=``."""
    value = modinfo(elf).get("depends", "")
    return [name.replace("-", "_") for name in value.split(",") if name]


def load_order(wanted: Iterable[str], deps: Mapping[str, Iterable[str]]) -> list[str]:
    """``wanted`` and everything they depend on, each after its dependencies.

    Depth-first, dependencies in the order ``deps`` lists them, so the result is
    stable. Raises ``ValueError`` for a module ``deps`` does not know or a cycle.
    """
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in deps:
            via = f" (needed by {chain[-1]})" if chain else ""
            raise ValueError(f"module {name} not found in the kernel package{via}")
        visiting.add(name)
        for dep in deps[name]:
            visit(dep, (*chain, name))
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def resolve(modules_dir: Path, wanted: Iterable[str] = GUEST_MODULES) -> list[Path]:
    """The module files to load for ``wanted``, in load order."""
    index = module_index(modules_dir)
    deps: dict[str, list[str]] = {}
    pending = list(wanted)
    while pending:
        name = pending.pop()
        if name in deps or name not in index:
            continue
        deps[name] = depends(read_module(index[name]))
        pending.extend(deps[name])
    return [index[name] for name in load_order(wanted, deps)]
