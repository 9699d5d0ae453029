#!/bin/sh
# Build the self-contained CNI bundle: a Python interpreter, its standard
# library, vmoverlay and its dependencies, every shared library they load and
# the dynamic loader itself, in one relocatable directory.
#
# Why: kubelet (or Multus) runs /opt/cni/bin/vmoverlay on the host, outside any
# container, and a node may have no Python or an incompatible glibc. The bundle
# brings its own loader (lib/ld.so) and starts the interpreter through it with
# `--library-path`, so it needs nothing from the host but /bin/sh; programs the
# plugin may start (none today) would still see the host's own libraries,
# because --library-path, unlike LD_LIBRARY_PATH, is not inherited.
#
# Layout of DEST:
#   bin/python3          sh wrapper: exec lib/ld.so --library-path lib ... lib/python3.bin
#   lib/python3.bin      the interpreter binary
#   lib/ld.so            the dynamic loader (glibc >= 2.33: --argv0)
#   lib/*.so*            the interpreter's and extension modules' libraries
#   lib/pythonX.Y/       standard library, lib-dynload, site-packages
#   ID                   content hash; the bundle is installed as /opt/vmoverlay/cni/<ID>
#
# Usage: make-cni-bundle.sh PYTHON DEST [EXTRA_LIB...]
#   PYTHON     a venv's python holding vmoverlay and its dependencies
#   DEST       the bundle directory to create (must not exist)
#   EXTRA_LIB  libraries loaded with ctypes at run time (for example
#              libnftables.so.1), found with ldconfig and bundled with their
#              dependencies
set -eu

if [ $# -lt 2 ]; then
  echo "usage: $0 PYTHON DEST [EXTRA_LIB...]" >&2
  exit 2
fi
PY=$1
DEST=$2
shift 2
if [ -e "$DEST" ]; then
  echo "make-cni-bundle: $DEST exists; remove it or choose another directory" >&2
  exit 1
fi

query() { "$PY" -c "import os, sys, sysconfig; print($1)"; }
interpreter=$(query 'os.path.realpath(sys.executable)')
stdlib=$(query 'sysconfig.get_paths()["stdlib"]')
platstdlib=$(query 'sysconfig.get_paths()["platstdlib"]')
purelib=$(query 'sysconfig.get_paths()["purelib"]')
platlib=$(query 'sysconfig.get_paths()["platlib"]')
pyver=$(query 'f"python{sys.version_info[0]}.{sys.version_info[1]}"')
dynload=$(query 'os.path.dirname(__import__("_ssl").__file__)')

mkdir -p "$DEST/bin" "$DEST/lib/$pyver/site-packages" "$DEST/lib/$pyver/lib-dynload"
cp "$interpreter" "$DEST/lib/python3.bin"

# Standard library without what a CNI plugin never runs (tests, GUI, curses,
# installers) and without the base interpreter's own site-packages. Symbolic
# links are followed (-h): the bundle must not point back into the build host.
copy_tree() {
  (cd "$1" && tar -cf - \
    --exclude=./site-packages --exclude=./dist-packages --exclude=./test \
    --exclude=./idlelib --exclude=./tkinter --exclude=./turtledemo \
    --exclude=./ensurepip --exclude=./lib2to3 --exclude=./config-* \
    --exclude=__pycache__ --exclude='*.pyc' \
    --exclude=./pip --exclude='./pip-*' --exclude=./setuptools --exclude='./setuptools-*' \
    --exclude=./pkg_resources --exclude=./wheel --exclude='./wheel-*' \
    --exclude=./_distutils_hack --exclude=./distutils-precedence.pth \
    --exclude='./__editable__*' --exclude='./*.egg-link' \
    --exclude='_tkinter*' --exclude='_curses*' -h .) | (cd "$2" && tar -xf -)
}
copy_tree "$stdlib" "$DEST/lib/$pyver"
if [ "$platstdlib" != "$stdlib" ]; then copy_tree "$platstdlib" "$DEST/lib/$pyver"; fi
copy_tree "$dynload" "$DEST/lib/$pyver/lib-dynload"
copy_tree "$purelib" "$DEST/lib/$pyver/site-packages"
if [ "$platlib" != "$purelib" ]; then copy_tree "$platlib" "$DEST/lib/$pyver/site-packages"; fi

# Every shared library the interpreter, the extension modules and the extra
# libraries need, and the loader. A library ldd cannot find is an error now,
# not an ImportError on a node later.
for name in "$@"; do
  path=$(ldconfig -p | awk -v n="$name" '$1 == n { print $NF; exit }')
  if [ -z "$path" ]; then
    echo "make-cni-bundle: library $name not found (ldconfig -p); install it first" >&2
    exit 1
  fi
  cp -L "$path" "$DEST/lib/$name"
done

deps=$(mktemp)
trap 'rm -f "$deps"' EXIT
find "$DEST/lib" -type f \( -name '*.so' -o -name '*.so.*' -o -name python3.bin \) | while read -r elf; do
  if ! head -c 4 "$elf" | grep -q 'ELF'; then continue; fi
  out=$(ldd "$elf" 2>&1) || continue # a static object: nothing to bundle
  if echo "$out" | grep -q 'not found'; then
    echo "make-cni-bundle: $elf needs a library that is not installed:" >&2
    echo "$out" | grep 'not found' >&2
    exit 1
  fi
  echo "$out" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 ~ /ld-linux|ld64|ld-musl/ { print "LOADER " $1 }'
done >"$deps"
sort -u "$deps" | while read -r first second; do
  if [ "$first" = LOADER ]; then
    cp -L "$second" "$DEST/lib/ld.so"
    continue
  fi
  case "$first" in "$DEST"/*) continue ;; esac
  [ -e "$DEST/lib/$(basename "$first")" ] || cp -L "$first" "$DEST/lib/$(basename "$first")"
done
if [ ! -x "$DEST/lib/ld.so" ]; then
  echo "make-cni-bundle: found no dynamic loader for $interpreter" >&2
  exit 1
fi

cat >"$DEST/bin/python3" <<'EOF'
#!/bin/sh
# The vmoverlay CNI bundle's Python: the bundled interpreter, started by the
# bundled loader with the bundled libraries, so the host's own Python and glibc
# (if any) do not matter. Built by make-cni-bundle.sh.
B=$(cd "$(dirname "$0")/.." && pwd -P)
PYTHONHOME=$B
PYTHONNOUSERSITE=1
PYTHONDONTWRITEBYTECODE=1
export PYTHONHOME PYTHONNOUSERSITE PYTHONDONTWRITEBYTECODE
unset PYTHONPATH PYTHONSTARTUP PYTHONEXECUTABLE
exec "$B/lib/ld.so" --library-path "$B/lib" --argv0 "$B/bin/python3" "$B/lib/python3.bin" "$@"
EOF
chmod 755 "$DEST/bin/python3"

# Byte-compile now: the plugin starts on every CNI call, and the host copy is
# never written to (PYTHONDONTWRITEBYTECODE).
"$DEST/bin/python3" -m compileall -q -j 0 "$DEST/lib/$pyver" >/dev/null

# Refuse a bundle that cannot import the plugin (tests check a stand-in module).
check=${VMOVERLAY_BUNDLE_CHECK_MODULE:-cni.main}
"$DEST/bin/python3" -c "import $check" || {
  echo "make-cni-bundle: the bundle cannot import $check; see the error above" >&2
  exit 1
}

(cd "$DEST" && find . -type f ! -name ID -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum) |
  cut -c1-16 >"$DEST/ID"
echo "make-cni-bundle: built $DEST (ID $(cat "$DEST/ID"), $(du -sh "$DEST" | cut -f1))" >&2
