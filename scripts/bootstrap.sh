#!/usr/bin/env bash
# Bring a fresh Debian/Ubuntu machine to the point where `make test` and
# `make lab` run: the Debian packages the lab and tests use, and a .venv with
# vmoverlay installed editable with its test extra. Idempotent and quick when
# everything is already there.
set -euo pipefail

cd "$(dirname "$0")/.."

# Debian packages: what the lab and the tests run (Postgres and pgbench in lab
# VMs, iperf3 for the throughput bench, nftables for CNI anti-spoofing;
# qemu-system-x86 and busybox-static for the real guests of tests/qemu and the
# gate's --mode qemu: about 8 s to install, the guest kernel itself is fetched
# on first use by e2e/qemu/image.py with apt-get download, never installed).
APT_PACKAGES=(iproute2 postgresql postgresql-client iperf3 iputils-ping nftables python3-nftables
  qemu-system-x86 busybox-static zstd)
if [ -n "${VMOVERLAY_EXTRA_APT:-}" ]; then
  read -r -a extra <<<"$VMOVERLAY_EXTRA_APT"
  APT_PACKAGES+=("${extra[@]}")
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "vmoverlay: this needs root: the lab and the tests create network namespaces," >&2
  echo "           VXLAN devices and bridges (inside namespaces only). Run it as root," >&2
  echo "           for example: sudo make ${MAKE_TARGET:-test}" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "vmoverlay: missing packages ${missing[*]} and no apt-get to install them;" >&2
    echo "           install them with your distribution's package manager." >&2
    exit 1
  fi
  echo "vmoverlay: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "vmoverlay: needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1)." >&2
  echo "           Set PYTHON=/path/to/python3.11 and run again." >&2
  exit 1
fi

stamp=.venv/.bootstrap-stamp
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "vmoverlay: preparing .venv (vmoverlay editable, with its test extra)" >&2
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" >"$stamp"
fi

# Debian's nftables binding lives in the system Python's dist-packages; make the
# one module visible to the venv without pulling in the rest of dist-packages.
nft_src=/usr/lib/python3/dist-packages/nftables
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d "$nft_src" ] && [ ! -e "$site/nftables" ]; then
  ln -s "$nft_src" "$site/nftables"
fi
