"""``python -m e2e.qemu``: build the guest image, probe KVM, or boot one guest by hand.

    python -m e2e.qemu image [--json]     build (or reuse) the cached image; print where
    python -m e2e.qemu accel              which acceleration QEMU would use, and why
    python -m e2e.qemu boot [--keep]      boot a guest in namespaces of its own, query its
                                          Postgres from a client namespace, stop

Exit codes: 0 done, 1 a QEMU-mode error (its message says what to do), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from e2e.netns import RunNamespaces
from e2e.qemu.errors import QemuError
from e2e.qemu.image import ensure_image
from e2e.qemu.vm import GuestNetwork, QemuVM, VMConfig, ensure_tap, resolve_accel
from vmoverlay.logs import add_logging_args, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.qemu", description=__doc__.split("\n")[0])
    add_logging_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image", help="build or reuse the guest image")
    image.add_argument("--json", action="store_true", help="print the image as JSON")
    sub.add_parser("accel", help="probe KVM (time-limited) and print tcg or kvm")
    boot = sub.add_parser("boot", help="boot one guest and query its Postgres")
    boot.add_argument("--ip", default="198.19.0.5", help="guest IP in 198.19.0.0/16")
    boot.add_argument("--mac", default="0a:58:c6:13:00:05")
    boot.add_argument("--keep", action="store_true", help="keep it running until Ctrl-C")
    args = parser.parse_args(argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    try:
        if args.command == "image":
            return _image(as_json=args.json)
        if args.command == "accel":
            print(resolve_accel(ensure_image().kernel))
            return 0
        return _boot(args.ip, args.mac, keep=args.keep)
    except QemuError as exc:
        print(f"vmoverlay qemu: {exc}", file=sys.stderr)
        return 1


def _image(*, as_json: bool) -> int:
    image = ensure_image()
    if as_json:
        fields = {**image.__dict__, "directory": str(image.directory)}
        fields.update(kernel=str(image.kernel), initrd=str(image.initrd))
        print(json.dumps(fields, indent=2))
    else:
        state = "reused" if image.reused else "built"
        print(f"guest image {image.key} ({state} in {image.build_seconds} s)")
        print(f"  kernel  {image.kernel}  (linux-image {image.kernel_version})")
        print(f"  initrd  {image.initrd}  (postgres {image.postgres_version})")
    return 0


def _boot(ip: str, mac: str, *, keep: bool) -> int:
    image = ensure_image()
    with RunNamespaces() as run, tempfile.TemporaryDirectory(prefix="vmo-boot-") as tmp:
        runner, client = run.add("runner"), run.add("client")
        run.check(runner, ["ip", "link", "add", "br0", "type", "bridge"])
        run.check(runner, ["ip", "link", "set", "br0", "up"])
        run.check(
            runner, ["ip", "link", "add", "up0", "type", "veth", "peer", "eth0", "netns", client]
        )
        run.check(runner, ["ip", "link", "set", "up0", "master", "br0", "up"])
        run.check(client, ["ip", "addr", "add", "198.19.255.254/16", "dev", "eth0"])
        run.check(client, ["ip", "link", "set", "eth0", "up"])
        ensure_tap(runner, "tap0", bridge="br0")
        config = VMConfig(name="guest", network=GuestNetwork(ip=ip, prefix=16, mac=mac))
        with QemuVM.start(config, image=image, netns=runner, tap="tap0", workdir=Path(tmp)) as vm:
            seconds = vm.wait_ready()
            sql = ["psql", "-h", ip, "-U", "postgres", "-Atc", "select version()"]
            print(f"guest ready in {seconds} s ({vm.accel}); from {client}:")
            print("  " + run.check(client, sql).strip())
            if keep:
                print(f"running; enter with: ip netns exec {client} psql -h {ip} -U postgres")
                print(f"serial log: {vm.serial_log}; Ctrl-C stops it")
                try:
                    while vm.alive():
                        time.sleep(1)
                except KeyboardInterrupt:
                    print("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
