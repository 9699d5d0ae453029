#!/bin/busybox sh
# /init of the vmoverlay guest (busybox sh, PID 1). Built into the initramfs by
# e2e/qemu/image.py; its text is part of the image's cache key.
#
# The VM's network comes from the kernel command line, as written by
# e2e/qemu/vm.py from the VM's status.network:
#   vmoverlay.ip=198.19.0.5/16 vmoverlay.gw=198.19.0.1
#   vmoverlay.mac=0a:58:c6:13:00:05 vmoverlay.mtu=1450 vmoverlay.port=5432
# Every line goes to the serial console; the host waits for VMOVERLAY-READY and
# reports VMOVERLAY-FAILED lines as the reason a guest did not come up.

/bin/busybox --install -s /bin
export PATH=/bin
. /etc/vmoverlay.env

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
# Postgres' dynamic shared memory (posix) lives in /dev/shm.
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t tmpfs -o mode=1777 tmp /tmp
exec </dev/console >/dev/console 2>&1

say() { echo "vmoverlay-init: $*"; }
fail() {
  echo "VMOVERLAY-FAILED: $*"
  while true; do sleep 3600; done
}
arg() {
  for word in $(cat /proc/cmdline); do
    case "$word" in "$1="*) echo "${word#*=}"; return 0 ;; esac
  done
  return 1
}

IP=$(arg vmoverlay.ip) || fail "no vmoverlay.ip= on the kernel command line"
MAC=$(arg vmoverlay.mac) || fail "no vmoverlay.mac= on the kernel command line"
MTU=$(arg vmoverlay.mtu) || MTU=1500
PORT=$(arg vmoverlay.port) || PORT=5432
GW=$(arg vmoverlay.gw) || GW=""
ADDR=${IP%/*}

# IPv4 only: no link-local address, no DAD, router or MLD chatter on the overlay.
sysctl -qw net.ipv6.conf.all.disable_ipv6=1
sysctl -qw net.ipv6.conf.default.disable_ipv6=1

for module in $(cat /modules/order); do
  insmod "/modules/$module.ko" || fail "insmod $module"
done

# The NIC is the interface with the VM's MAC (QEMU's -device virtio-net-pci,mac=).
DEV=""
tries=0
while [ -z "$DEV" ]; do
  for path in /sys/class/net/*; do
    [ "$(cat "$path/address")" = "$MAC" ] && DEV=${path##*/}
  done
  tries=$((tries + 1))
  [ -n "$DEV" ] || [ "$tries" -lt 100 ] || fail "no NIC with MAC $MAC: $(ls /sys/class/net)"
  [ -n "$DEV" ] || sleep 0.1
done
ip link set lo up
ip link set "$DEV" mtu "$MTU" up || fail "set $DEV mtu $MTU up"
ip addr add "$IP" dev "$DEV" || fail "add $IP to $DEV"
if [ -n "$GW" ]; then
  ip route add default via "$GW" dev "$DEV" || fail "add default route via $GW"
fi
say "network $DEV mac $MAC ip $IP mtu $MTU"

# A datagram echo on port 7, as the lab's namespace VMs have (e2e/lab/echo.py),
# for the gate's 10 ms probe: Debian's essential perl, core socket calls only.
/usr/bin/perl -e 'socket(S, 2, 2, 17) or die "echo socket: $!";
  bind(S, pack("Snx12", 2, 7)) or die "echo bind: $!";
  while (defined(my $peer = recv(S, my $data, 2048, 0))) { send(S, $data, 0, $peer) }' &

mkdir -p /run/postgresql
chown postgres:postgres /run/postgresql
su postgres -s /bin/sh -c "exec $PGBIN/postgres -D $PGDATA -c listen_addresses=$ADDR -c port=$PORT" &
POSTGRES=$!

tries=0
until [ "$(sed -n 8p "$PGDATA/postmaster.pid" 2>/dev/null | tr -d ' ')" = "ready" ]; do
  kill -0 "$POSTGRES" 2>/dev/null || fail "postgres exited while starting"
  tries=$((tries + 1))
  [ "$tries" -lt 1200 ] || fail "postgres not ready after 120 s"
  sleep 0.1
done
echo "VMOVERLAY-READY ip=$IP mac=$MAC port=$PORT"

# PID 1 must not exit; it reaps orphans and says so if Postgres dies.
wait "$POSTGRES"
echo "VMOVERLAY-FAILED: postgres exited ($?)"
while true; do wait; sleep 1; done
