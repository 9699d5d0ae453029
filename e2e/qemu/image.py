"""The guest image: a Debian kernel and an initramfs carrying busybox and the host's Postgres.

Built on demand from Debian packages only, and cached::

    image = ensure_image()            # builds once, then reuses
    image.kernel, image.initrd        # paths for QEMU's -kernel / -initrd

What goes in:

- the kernel from ``linux-image-amd64`` (its concrete ``linux-image-<abi>-amd64``
  package), fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``
  in a temporary directory: no kernel is ever installed on the host;
- the virtio modules a guest with one virtio-net NIC needs, in the order
  :mod:`e2e.qemu.kmod` reads from the modules' own dependency data;
- a ``newc`` cpio archive compressed with zstd (gzip where the host has no
  ``zstd``; both are built into Debian's kernel);
- ``busybox-static`` (installed with apt-get when missing) as every tool of the
  guest, and :file:`init.sh` beside this module as its ``/init``;
- ``/usr/bin/perl`` from ``perl-base`` (essential on Debian) for the guest's UDP
  echo responder on port 7, which the lab's datagram probe needs;
- the host's Postgres server (``bin/postgres``, ``lib/`` without the LLVM JIT,
  ``share/``) with the shared libraries ``ldd`` lists, and a data directory made
  by ``initdb`` (C locale; trust for 198.18.0.0/15 and the overlay pool only).

The cache directory is ``$VMOVERLAY_CACHE`` or ``~/.cache/vmoverlay``; an image
lives in ``guest-<key>/`` where the key hashes every input (package versions,
the init script, the Postgres major version, this builder's format). A second
build with the same inputs reuses it; a new kernel or Postgres package makes a
new one. Builds take a lock, so two test processes never build the same image
twice, and land by an atomic rename, so a crashed build leaves no half image.

The archive is deterministic (see :mod:`e2e.qemu.initramfs`) except for the
data directory, whose system identifier ``initdb`` draws at random.

Every step runs under a name (``resolve-packages``, ``download-kernel``...)
and a failure raises :class:`~e2e.qemu.errors.ImageBuildError` naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from e2e.qemu import kmod
from e2e.qemu.errors import ImageBuildError
from e2e.qemu.initramfs import Archive
from vmoverlay.logs import get_logger

log = get_logger("lab").bind(part="qemu-image")

# Bump when the image layout changes in a way the inputs below do not show.
IMAGE_FORMAT = 1
KERNEL_META = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
PERL_PACKAGE = "perl-base"
PERL = "/usr/bin/perl"
PG_MAJOR = 15
GUEST_PG_UID = 70
GUEST_PG_DATA = "/var/lib/postgresql/data"
INIT_SCRIPT = Path(__file__).with_name("init.sh")
HBA_NETWORKS = ("198.18.0.0/15", "198.19.0.0/16")

# Postgres settings of the guest: small memory, no JIT (its LLVM library alone
# would double the image), logs on the serial console through stderr.
POSTGRES_CONF = """
# vmoverlay guest settings (listen_addresses and port come from the kernel command line)
unix_socket_directories = '/run/postgresql'
shared_buffers = 32MB
max_connections = 100
dynamic_shared_memory_type = posix
jit = off
timezone = 'UTC'
log_timezone = 'UTC'
logging_collector = off
"""


@dataclass(frozen=True)
class ImageInputs:
    """Everything that decides the image's content; its hash is the cache key."""

    kernel_package: str
    kernel_version: str
    busybox_version: str
    perl_version: str
    postgres_version: str
    pg_major: int
    init_script: str
    postgres_conf: str
    compression: str = "gzip"
    image_format: int = IMAGE_FORMAT

    def key(self) -> str:
        blob = json.dumps(self.__dict__, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class GuestImage:
    """A built image: what QEMU boots, and where it came from."""

    directory: Path
    kernel: Path
    initrd: Path
    key: str
    kernel_version: str
    postgres_version: str
    reused: bool
    build_seconds: float


def cache_root() -> Path:
    env = os.environ.get("VMOVERLAY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vmoverlay"


def ensure_image(*, cache_dir: Path | None = None, pg_major: int = PG_MAJOR) -> GuestImage:
    """The cached image for the current inputs, built first if it is not there."""
    root = cache_dir or cache_root()
    started = time.monotonic()
    with _step("prepare-cache"):
        root.mkdir(parents=True, exist_ok=True)
    with _locked(root / "guest.lock"):
        inputs, directory, reused = _build_unless_cached(root, pg_major)
    image = GuestImage(
        directory=directory,
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        key=inputs.key(),
        kernel_version=inputs.kernel_version,
        postgres_version=inputs.postgres_version,
        reused=reused,
        build_seconds=round(time.monotonic() - started, 2),
    )
    log.info("guest image ready", key=image.key, reused=reused, seconds=image.build_seconds)
    return image


def _build_unless_cached(root: Path, pg_major: int) -> tuple[ImageInputs, Path, bool]:
    """(inputs, image directory, reused); builds when the directory is not complete."""
    inputs = resolve_inputs(pg_major)
    directory = root / f"guest-{inputs.key()}"
    if _complete(directory):
        return inputs, directory, True
    # Under the lock no build runs: a work directory left here is a killed build's.
    for stale in root.glob("vmo-image-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        _build(inputs, directory)
    except ImageBuildError as exc:
        if exc.step != "download-kernel":
            raise
        # Stale apt lists can name a kernel the mirror no longer has (a security
        # update replaced it): refresh them once and build what they name now.
        log.info("kernel download failed; apt-get update and retry", cause=exc.cause)
        with _step("download-kernel"):
            _run(["apt-get", "update", "-qq"])
        inputs = resolve_inputs(pg_major)
        directory = root / f"guest-{inputs.key()}"
        if _complete(directory):
            return inputs, directory, True
        _build(inputs, directory)
    return inputs, directory, False


def resolve_inputs(pg_major: int = PG_MAJOR) -> ImageInputs:
    """Read the versions that make up the image from apt and dpkg (no download)."""
    with _step("resolve-packages"):
        meta = _apt_show(KERNEL_META)
        kernel_package = kernel_package_from_depends(meta.get("Depends", ""))
        kernel_version = _apt_show(kernel_package)["Version"]
        postgres_version = _installed_version(f"postgresql-{pg_major}")
        if postgres_version is None:
            raise ImageBuildError(
                "resolve-packages",
                f"postgresql-{pg_major} is not installed on the host: apt-get install "
                f"postgresql-{pg_major} (scripts/bootstrap.sh installs it)",
            )
    with _step("busybox"):
        busybox_version = _ensure_busybox()
    with _step("perl"):
        perl_version = _installed_version(PERL_PACKAGE)
        if perl_version is None or not Path(PERL).exists():
            raise ValueError(f"{PERL} missing: Debian's {PERL_PACKAGE} is essential; reinstall it")
    return ImageInputs(
        kernel_package=kernel_package,
        kernel_version=kernel_version,
        busybox_version=busybox_version,
        perl_version=perl_version,
        postgres_version=postgres_version,
        pg_major=pg_major,
        init_script=INIT_SCRIPT.read_text(),
        compression="zstd" if shutil.which("zstd") else "gzip",
        postgres_conf=POSTGRES_CONF,
    )


def kernel_package_from_depends(depends: str) -> str:
    """``linux-image-6.1.0-57-amd64 (= 6.1.192-3)`` -> the concrete kernel package."""
    for alternative in re.split(r"[,|]", depends):
        name = alternative.strip().split(" ", 1)[0]
        if re.fullmatch(r"linux-image-[0-9][\w.+-]*-amd64(-unsigned)?", name):
            return name
    raise ValueError(
        f"no linux-image-<version>-amd64 package in {KERNEL_META}'s Depends: {depends!r}"
    )


def parse_ldd(output: str) -> set[str]:
    """The absolute library paths in ``ldd`` output (one or several files)."""
    paths: set[str] = set()
    for line in output.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0]
            if target.startswith("/"):
                paths.add(target)
            elif target == "not found":
                raise ValueError(f"missing shared library: {line}")
        elif line.startswith("/") and " (" in line:
            paths.add(line.split(" (", 1)[0])
    return paths


def pg_hba(networks: Sequence[str] = HBA_NETWORKS) -> str:
    lines = ["# vmoverlay guest: trust on the socket, the lab and the overlay pool only"]
    lines.append("local all all trust")
    lines += [f"host all all {net} trust" for net in networks]
    return "\n".join(lines) + "\n"


# --- build steps ---------------------------------------------------------------


def _build(inputs: ImageInputs, directory: Path) -> None:
    log.info(
        "building guest image",
        key=inputs.key(),
        kernel=f"{inputs.kernel_package}={inputs.kernel_version}",
        postgres=inputs.postgres_version,
        busybox=inputs.busybox_version,
    )
    with tempfile.TemporaryDirectory(prefix="vmo-image-", dir=directory.parent) as tmp:
        work = Path(tmp)
        kernel_root = _download_kernel(inputs, work)
        archive = Archive()
        _add_base(archive)
        _add_modules(archive, kernel_root)
        _add_postgres(archive, inputs.pg_major)
        out = work / "out"
        with _step("initramfs"):
            out.mkdir()
            _write_initramfs(archive, out / "initrd.img", inputs.compression)
        with _step("install-cache"):
            vmlinuz = next((kernel_root / "boot").glob("vmlinuz-*"))
            shutil.copyfile(vmlinuz, out / "vmlinuz")
            manifest = {**inputs.__dict__, "key": inputs.key(), "built": time.time()}
            (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            if directory.exists():
                shutil.rmtree(directory)
            out.rename(directory)


def _write_initramfs(archive: Archive, path: Path, compression: str) -> None:
    """Compress with zstd where the host has it, else gzip.

    Under TCG the guest unpacks zstd about twice as fast as gzip: about 1.5 s
    instead of 3 s of every boot.
    """
    if compression == "gzip":
        archive.write_gzip(path)
        return
    raw = path.with_suffix(".cpio")
    with raw.open("wb") as out:
        archive.write(out)
    _run(["zstd", "-q", "-6", "--rm", "-o", str(path), str(raw)])


def _download_kernel(inputs: ImageInputs, work: Path) -> Path:
    with _step("download-kernel"):
        debs = work / "debs"
        debs.mkdir()
        # Sandbox off: apt's _apt user cannot write into a root-only temp dir.
        _run(
            [
                "apt-get",
                "download",
                "-qq",
                "-o",
                "APT::Sandbox::User=root",
                f"{inputs.kernel_package}={inputs.kernel_version}",
            ],
            cwd=debs,
        )
        deb = next(debs.glob("*.deb"))
    with _step("extract-kernel"):
        root = work / "kernel"
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        deb.unlink()
        if not list((root / "boot").glob("vmlinuz-*")):
            raise ValueError(f"no boot/vmlinuz-* in {deb.name}")
    return root


def _add_base(archive: Archive) -> None:
    with _step("busybox"):
        busybox = shutil.which("busybox", path="/bin:/usr/bin")
        if busybox is None:
            raise ValueError(f"busybox not found after installing {BUSYBOX_PACKAGE}")
        archive.add_host_file(Path(busybox), "bin/busybox")
        archive.add_symlink("bin/sh", "busybox")
    with _step("init"):
        archive.add_file("init", INIT_SCRIPT.read_bytes(), mode=0o755)
        for name in ("proc", "sys", "dev", "run", "etc", "root", "var/lib/postgresql"):
            archive.add_dir(name)
        archive.add_dir("tmp", mode=0o1777)
        archive.add_char_device("dev/console", 5, 1)
        archive.add_char_device("dev/null", 1, 3, mode=0o666)
        uid = GUEST_PG_UID
        passwd = "root:x:0:0:root:/root:/bin/sh\n"
        passwd += f"postgres:x:{uid}:{uid}:PostgreSQL:/var/lib/postgresql:/bin/sh\n"
        archive.add_file("etc/passwd", passwd.encode())
        archive.add_file("etc/group", f"root:x:0:\npostgres:x:{uid}:\n".encode())
        # The host's merged-/usr links (/lib -> usr/lib), so ldd's paths resolve in the guest.
        for top in ("lib", "lib64"):
            host = Path("/") / top
            if host.is_symlink():
                archive.add_symlink(top, os.readlink(host))


def _add_modules(archive: Archive, kernel_root: Path) -> None:
    with _step("modules"):
        modules_dirs = sorted((kernel_root / "lib" / "modules").glob("*/kernel"))
        if not modules_dirs:
            modules_dirs = sorted((kernel_root / "usr" / "lib" / "modules").glob("*/kernel"))
        if not modules_dirs:
            raise ValueError("no lib/modules/<version>/kernel in the kernel package")
        files = kmod.resolve(modules_dirs[0])
        names = []
        for path in files:
            name = path.name.split(".ko", 1)[0].replace("-", "_")
            archive.add_file(f"modules/{name}.ko", kmod.read_module(path))
            names.append(name)
        archive.add_file("modules/order", ("\n".join(names) + "\n").encode())
        log.info("guest modules", order=",".join(names))


def _add_postgres(archive: Archive, pg_major: int) -> None:
    lib_dir = Path(f"/usr/lib/postgresql/{pg_major}")
    share_dir = Path(f"/usr/share/postgresql/{pg_major}")
    with _step("postgres-files"):
        server = lib_dir / "bin" / "postgres"
        if not server.exists():
            raise ValueError(f"{server} missing: apt-get install postgresql-{pg_major}")
        archive.add_host_file(server, str(server))
        archive.add_tree(lib_dir / "lib", str(lib_dir / "lib"), skip=_skip_pg_lib)
        archive.add_tree(share_dir, str(share_dir))
        archive.add_host_file(Path(PERL), PERL)
        elves = [server, Path(PERL), *sorted((lib_dir / "lib").glob("*.so"))]
        elves = [p for p in elves if not _skip_pg_lib(p)]
        libraries = parse_ldd(_run(["ldd", *map(str, elves)], check=False))
        for library in sorted(libraries):
            archive.add_host_file(Path(library), _guest_library_path(library))
        for zone in ("UTC", "Etc/UTC"):
            archive.add_host_file(Path("/usr/share/zoneinfo") / zone, f"usr/share/zoneinfo/{zone}")
        env = f"PGBIN={lib_dir / 'bin'}\nPGDATA={GUEST_PG_DATA}\n"
        archive.add_file("etc/vmoverlay.env", env.encode())
    with _step("initdb"), _initdb(lib_dir) as data:
        archive.add_tree(data, GUEST_PG_DATA, uid=GUEST_PG_UID, gid=GUEST_PG_UID)


def _skip_pg_lib(path: Path) -> bool:
    """No LLVM JIT (bitcode, llvmjit*.so) and no extension-build files in the guest."""
    return path.name in ("bitcode", "pgxs") or path.name.startswith("llvmjit")


def _guest_library_path(library: str) -> str:
    """A library at the real location of its directory, with the name ldd gave."""
    path = Path(library)
    return str(path.parent.resolve() / path.name)


@contextlib.contextmanager
def _initdb(lib_dir: Path) -> Iterator[Path]:
    """Make the data directory as the host's ``postgres`` user (initdb refuses root).

    In a temporary directory of its own under /tmp, since the cache may sit below
    a home directory the postgres user cannot enter.
    """
    with tempfile.TemporaryDirectory(prefix="vmo-initdb-") as tmp:
        parent = Path(tmp)
        parent.chmod(0o755)
        data = parent / "data"
        data.mkdir(mode=0o700)
        try:
            shutil.chown(data, user="postgres", group="postgres")
        except LookupError as exc:
            raise ImageBuildError(
                "initdb", "the host has no postgres user: apt-get install postgresql"
            ) from exc
        argv = [str(lib_dir / "bin" / "initdb"), "-D", str(data), "--locale=C"]
        argv += ["--encoding=UTF8", "--auth=trust", "--username=postgres", "--no-sync"]
        _run([*argv, "--no-instructions"], cwd=parent, user="postgres", group="postgres")
        (data / "pg_hba.conf").write_text(pg_hba())
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(POSTGRES_CONF)
        yield data


# --- helpers -------------------------------------------------------------------


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    """Run one build step; turn any failure into an ImageBuildError naming it."""
    log.debug("image build step", step=name)
    try:
        yield
    except ImageBuildError:
        raise
    except subprocess.CalledProcessError as exc:
        output = (exc.stderr or exc.stdout or "").strip()
        argv = " ".join(map(str, exc.cmd))
        raise ImageBuildError(name, f"{argv} exited {exc.returncode}: {output}") from exc
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise ImageBuildError(name, f"{type(exc).__name__}: {exc}") from exc


def _run(argv: list[str], *, check: bool = True, **kwargs: object) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
    return str(proc.stdout)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in ("vmlinuz", "initrd.img", "manifest.json"))


def _apt_show(package: str) -> dict[str, str]:
    """The candidate's control fields; runs ``apt-get update`` once if apt does not know it."""
    argv = ["apt-cache", "show", "--no-all-versions", package]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        log.info("apt does not know the package yet; running apt-get update", package=package)
        _run(["apt-get", "update", "-qq"])
        proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    return parse_control(proc.stdout)


def parse_control(text: str) -> dict[str, str]:
    """The first stanza of Debian control text as a dict (continuation lines joined)."""
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    if "Version" not in fields:
        raise ValueError(f"no Version in apt's answer: {text[:200]!r}")
    return fields


def _installed_version(package: str) -> str | None:
    argv = ["dpkg-query", "-W", "-f=${Status}\t${Version}", package]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    status, _, version = proc.stdout.partition("\t")
    installed = proc.returncode == 0 and status.split()[-1:] == ["installed"]
    return version if installed and version else None


def _ensure_busybox() -> str:
    version = _installed_version(BUSYBOX_PACKAGE)
    if version is None:
        log.info("installing the guest's busybox", package=BUSYBOX_PACKAGE)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", BUSYBOX_PACKAGE]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            _run(["apt-get", "update", "-qq"])
            _run(argv, env=env)
        version = _installed_version(BUSYBOX_PACKAGE)
    if version is None:
        raise ValueError(f"{BUSYBOX_PACKAGE} still not installed after apt-get install")
    return version
