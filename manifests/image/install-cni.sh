#!/bin/sh
# Install the vmoverlay CNI plugin on this node (the agent's init container),
# and keep its API credentials fresh (the agent's cni-token container).
#
#   install-cni install
#       1. copy the bundle (make-cni-bundle.sh) to /opt/vmoverlay/cni/<ID> on
#          the host, unless that very bundle is there already;
#       2. check that the copy starts and imports the plugin;
#       3. write /opt/cni/bin/vmoverlay, a shim that execs the bundle's Python
#          on cni.main, atomically (a CNI call running now finishes on the old
#          bundle, the next one uses the new);
#       4. write the plugin's kubeconfig, CA and token under
#          /etc/cni/net.d/vmoverlay.d/ (mode 600; the token is the agent
#          ServiceAccount's, which the vmoverlay-cni ClusterRole is bound to);
#       5. remove bundles other than this one and the one the old shim used.
#   install-cni refresh-token [--every SECONDS]
#       copy a rotated token or CA to the host; with --every, keep doing so
#       until stopped (SIGTERM ends it at once, with exit status 0).
#   install-cni uninstall
#       remove the shim (only if it is ours), every bundle and the plugin's
#       kubeconfig, CA and token (manifests/uninstall/teardown.yaml runs it).
#
# Environment (defaults for the DaemonSet; tests point them elsewhere):
#   VMOVERLAY_HOST_ROOT     where the host's directories are mounted (/host)
#   VMOVERLAY_CNI_BUNDLE    the bundle in the image (/opt/vmoverlay/cni-bundle)
#   VMOVERLAY_SA_DIR        the ServiceAccount mount (/var/run/secrets/kubernetes.io/serviceaccount)
#   VMOVERLAY_API_SERVER    the API server URL for the plugin; default from
#                           KUBERNETES_SERVICE_HOST/PORT, as in-cluster clients do
set -eu

HOST=${VMOVERLAY_HOST_ROOT:-/host}
BUNDLE=${VMOVERLAY_CNI_BUNDLE:-/opt/vmoverlay/cni-bundle}
SA_DIR=${VMOVERLAY_SA_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}
# Paths as the host sees them (written into the shim and the kubeconfig).
BUNDLES=/opt/vmoverlay/cni
SHIM=/opt/cni/bin/vmoverlay
CONF=/etc/cni/net.d/vmoverlay.d

log() { echo "install-cni: $*" >&2; }
fail() {
  log "$*"
  exit 1
}

# Write stdin to FILE atomically (same directory, then rename) with MODE.
write_atomic() {
  file=$1
  mode=$2
  tmp="$file.tmp.$$"
  cat >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$file"
}

copy_if_changed() {
  src=$1
  dst=$2
  if [ ! -s "$src" ]; then fail "failed to read $src: missing or empty; is the ServiceAccount token mounted?"; fi
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then return 1; fi
  write_atomic "$dst" 600 <"$src"
  return 0
}

refresh_credentials() {
  mkdir -p "$HOST$CONF"
  chmod 700 "$HOST$CONF"
  changed=""
  if copy_if_changed "$SA_DIR/token" "$HOST$CONF/token"; then changed="token"; fi
  if copy_if_changed "$SA_DIR/ca.crt" "$HOST$CONF/ca.crt"; then changed="$changed ca.crt"; fi
  if [ -n "$changed" ]; then log "updated$(printf ' %s' $changed) in $CONF"; fi
}

api_server() {
  if [ -n "${VMOVERLAY_API_SERVER:-}" ]; then
    echo "$VMOVERLAY_API_SERVER"
    return
  fi
  host=${KUBERNETES_SERVICE_HOST:-}
  port=${KUBERNETES_SERVICE_PORT:-443}
  if [ -z "$host" ]; then
    fail "failed to find the API server: KUBERNETES_SERVICE_HOST is unset; set VMOVERLAY_API_SERVER"
  fi
  case "$host" in *:*) host="[$host]" ;; esac
  echo "https://$host:$port"
}

write_kubeconfig() {
  server=$(api_server)
  write_atomic "$HOST$CONF/vmoverlay.kubeconfig" 600 <<EOF
# Written by the vmoverlay agent's init container (install-cni); the CNI
# plugin /opt/cni/bin/vmoverlay reads it on every call. The token file is
# refreshed by the agent's cni-token container.
apiVersion: v1
kind: Config
clusters:
  - name: vmoverlay
    cluster:
      server: $server
      certificate-authority: $CONF/ca.crt
users:
  - name: vmoverlay-cni
    user:
      tokenFile: $CONF/token
contexts:
  - name: vmoverlay-cni
    context:
      cluster: vmoverlay
      user: vmoverlay-cni
current-context: vmoverlay-cni
EOF
}

install_bundle() {
  [ -s "$BUNDLE/ID" ] || fail "failed to read $BUNDLE/ID: the image has no CNI bundle"
  id=$(cat "$BUNDLE/ID")
  target="$HOST$BUNDLES/$id"
  mkdir -p "$HOST$BUNDLES"
  if [ -f "$target/ID" ] && [ "$(cat "$target/ID")" = "$id" ]; then
    log "bundle $id already on the host"
  else
    rm -rf "$target.tmp"
    cp -a "$BUNDLE" "$target.tmp"
    rm -rf "$target"
    mv "$target.tmp" "$target"
    log "copied bundle $id to $BUNDLES/$id"
  fi
  # The copy must start from where it is before the shim points at it.
  "$target/bin/python3" -c 'import cni.main' ||
    fail "failed to start the CNI bundle at $BUNDLES/$id; the shim is left unchanged"
  echo "$id"
}

# The bundle ID the current shim runs, if any.
current_shim_bundle() {
  [ -f "$HOST$SHIM" ] || return 0
  sed -n "s|^BUNDLE=$BUNDLES/\([0-9a-zA-Z]*\)\$|\1|p" "$HOST$SHIM"
}

write_shim() {
  id=$1
  mkdir -p "$HOST$(dirname "$SHIM")"
  write_atomic "$HOST$SHIM" 755 <<EOF
#!/bin/sh
# vmoverlay CNI plugin, installed by the vmoverlay agent's init container.
# Runs the plugin from its self-contained bundle (own Python, libraries and
# loader), so the node needs nothing but /bin/sh. Do not edit: rewritten on
# every agent start.
BUNDLE=$BUNDLES/$id
exec "\$BUNDLE/bin/python3" -m cni.main "\$@"
EOF
}

prune_bundles() {
  keep1=$1
  keep2=$2
  for dir in "$HOST$BUNDLES"/*; do
    [ -d "$dir" ] || continue
    name=$(basename "$dir")
    if [ "$name" = "$keep1" ] || [ "$name" = "$keep2" ]; then continue; fi
    rm -rf "$dir"
    log "removed old bundle $name"
  done
}

cmd_install() {
  previous=$(current_shim_bundle)
  id=$(install_bundle)
  write_shim "$id"
  refresh_credentials
  write_kubeconfig
  prune_bundles "$id" "$previous"
  log "installed $SHIM (bundle $id) and $CONF/vmoverlay.kubeconfig"
}

cmd_refresh_token() {
  every=""
  if [ "${1:-}" = "--every" ]; then every=${2:?--every needs a number of seconds}; fi
  if [ -n "$every" ]; then trap 'log "stopping"; exit 0' TERM INT; fi
  refresh_credentials
  [ -n "$every" ] || return 0
  while :; do
    # sleep in the background so SIGTERM is handled at once, not after it.
    sleep "$every" &
    wait $! || true
    refresh_credentials
  done
}

cmd_uninstall() {
  if [ -f "$HOST$SHIM" ]; then
    if grep -q "^BUNDLE=$BUNDLES/" "$HOST$SHIM"; then
      rm -f "$HOST$SHIM"
      log "removed $SHIM"
    else
      log "left $SHIM alone: it is not vmoverlay's shim"
    fi
  fi
  for dir in "$HOST$BUNDLES"/* "$HOST$CONF"/*; do
    [ -e "$dir" ] || continue
    rm -rf "$dir"
    log "removed ${dir#"$HOST"}"
  done
}

case "${1:-}" in
  install) cmd_install ;;
  uninstall) cmd_uninstall ;;
  refresh-token)
    shift
    cmd_refresh_token "$@"
    ;;
  *)
    echo "usage: $0 install | uninstall | refresh-token [--every SECONDS]" >&2
    exit 2
    ;;
esac
