#!/usr/bin/env bash
# One mesh node of the demo, the same on a Vagrant VM and in a network namespace of
# `cargo xtask demo mesh` (which runs this script under `nsenter --net=…`).
#
#   node.sh up server STATE     the app (`Hello World!` on :80) + Portcullis terminating
#   node.sh up client STATE     a `sleep` workload in a cgroup + Portcullis capturing it
#   node.sh workload STATE CMD… run CMD as the client workload (inside its cgroup)
#   node.sh down STATE          stop everything, detach and unpin the kernel programs
#   node.sh bundle OUT SERVER_ADDR CLIENT_ADDR
#                               what both nodes get (run where the binary was built): OUT/certs
#                               (one mesh CA; hello, sleep, impostor), OUT/mesh.yaml with the
#                               addresses, and the story's strict.yaml and deny-admin.yaml
#
# STATE holds config/ (the mesh's Istio YAML, watched by the daemon) and certs/ (credential
# directories made by `portcullis certs --workload NAME=SPIFFE_ID …`). Environment:
#   PORTCULLIS     the binary (default: portcullis on PATH)
#   IFACES         server: interfaces whose ingress gets the in-kernel STRICT reset
#   IDENTITY       server: the credential it presents (default: hello)
#   PIN_DIR        bpffs directory of this node's programs (default: /sys/fs/bpf/portcullis)
#   ADMIN          admin listener (default: 127.0.0.1:15000)
#   CGROUP         client: the workload's cgroup v2 directory (default: <cgroup2>/portcullis-sleep)
#   NODE_CGROUP    when set, the node's own daemons run in this cgroup (a VM whose CGROUP covers
#                  the login sessions must keep the daemons out of it)
#   EXCLUDE_INBOUND_PORTS
#                  ports left outside the mesh (comma-separated; a VM's SSH), passed to
#                  --exclude-inbound-ports
set -euo pipefail

cmd=${1:?usage: node.sh up server|client STATE | workload STATE CMD… | down STATE}
shift
PORTCULLIS=${PORTCULLIS:-portcullis}
PIN_DIR=${PIN_DIR:-/sys/fs/bpf/portcullis}
ADMIN=${ADMIN:-127.0.0.1:15000}
cgroot=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
CGROUP=${CGROUP:-$cgroot/portcullis-sleep}

say() { echo "node.sh: $*" >&2; }

# Waits for NEEDLE in the daemon's log; on a timeout prints the log and fails.
wait_log() {
  local log=$1 needle=$2
  for _ in $(seq 1 300); do
    grep -q "$needle" "$log" 2>/dev/null && return 0
    sleep 0.1
  done
  say "'$needle' never appeared in $log:"; cat "$log" >&2; return 1
}

# Kills the process in pid file $1 (TERM, then KILL) and removes the file.
stop_pid() {
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# Starts the daemon on STATE's config with the extra arguments; waits for NEEDLE.
start_portcullis() {
  local state=$1 needle=$2; shift 2
  stop_pid "$state/run/portcullis.pid"
  : > "$state/portcullis.log"
  local exclude=()
  [ -z "${EXCLUDE_INBOUND_PORTS:-}" ] || exclude=(--exclude-inbound-ports "$EXCLUDE_INBOUND_PORTS")
  setsid "$PORTCULLIS" run -c "$state/config" --credentials "$state/certs" \
    --admin "$ADMIN" --pin-dir "$PIN_DIR" "${exclude[@]}" "$@" \
    >>"$state/portcullis.log" 2>&1 </dev/null &
  echo $! > "$state/run/portcullis.pid"
  wait_log "$state/portcullis.log" "$needle"
}

up() {
  local role=${1:?role: server or client} state=${2:?STATE directory}
  mkdir -p "$state/run"
  if [ -n "${NODE_CGROUP:-}" ]; then
    mkdir -p "$NODE_CGROUP"
    echo $$ > "$NODE_CGROUP/cgroup.procs"
  fi
  case $role in
    server)
      if [ ! -f "$state/run/app.pid" ]; then
        mkdir -p "$state/www"
        printf 'Hello World!' > "$state/www/index.html"
        setsid python3 -m http.server 80 --bind :: --directory "$state/www" \
          >"$state/app.log" 2>&1 </dev/null &
        echo $! > "$state/run/app.pid"
      fi
      local ifaces=()
      for i in ${IFACES:-}; do ifaces+=(--iface "$i"); done
      start_portcullis "$state" "mesh terminator listening" \
        --mesh-credential "${IDENTITY:-hello}" --workload hello "${ifaces[@]}"
      ;;
    client)
      if [ ! -d "$CGROUP" ]; then
        mkdir -p "$CGROUP"
        echo "$CGROUP" > "$state/run/made-cgroup"
      fi
      # A cgroup made here gets the workload itself: a process living in it, as a pod's would.
      # (A given one, like a VM's user.slice, already holds its workload: the login sessions.)
      if [ -f "$state/run/made-cgroup" ] && [ ! -f "$state/run/sleep.pid" ]; then
        setsid sh -c "echo \$\$ > '$CGROUP/cgroup.procs' && exec sleep infinity" </dev/null >/dev/null 2>&1 &
        echo $! > "$state/run/sleep.pid"
      fi
      start_portcullis "$state" "outbound capture installed" \
        --mesh-credential sleep --workload sleep --capture-cgroup "$CGROUP"
      ;;
    *) say "unknown role $role"; exit 2 ;;
  esac
  say "$role up ($(cat "$state/run/portcullis.pid"))"
}

workload() {
  local state=${1:?STATE directory}; shift
  echo $$ > "$CGROUP/cgroup.procs"
  exec "$@"
}

down() {
  local state=${1:?STATE directory}
  stop_pid "$state/run/portcullis.pid"
  stop_pid "$state/run/app.pid"
  stop_pid "$state/run/sleep.pid"
  "$PORTCULLIS" uninstall --pin-dir "$PIN_DIR" >/dev/null 2>&1 || true
  rm -rf "$PIN_DIR"
  if [ -f "$state/run/made-cgroup" ]; then
    local cg
    cg=$(cat "$state/run/made-cgroup")
    # Whatever still runs as the workload goes too, or the cgroup cannot be removed.
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$cg/cgroup.procs" 2>/dev/null || true
    for _ in $(seq 1 30); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
    rm -f "$state/run/made-cgroup"
  fi
}

bundle() {
  local out=${1:?OUT} server=${2:?SERVER_ADDR} client=${3:?CLIENT_ADDR} here
  here=$(dirname "$0")
  mkdir -p "$out"
  [ -d "$out/certs" ] || "$PORTCULLIS" certs --out "$out/certs" \
    --workload hello=spiffe://cluster.local/ns/default/sa/hello \
    --workload sleep=spiffe://cluster.local/ns/default/sa/sleep \
    --workload impostor=spiffe://cluster.local/ns/default/sa/impostor >/dev/null
  sed -e "s/SERVER_ADDR/$server/" -e "s/CLIENT_ADDR/$client/" "$here/mesh.yaml" > "$out/mesh.yaml"
  cp "$here/strict.yaml" "$here/deny-admin.yaml" "$out/"
}

case $cmd in
  up) up "$@" ;;
  bundle) bundle "$@" ;;
  workload) workload "$@" ;;
  down) down "$@" ;;
  *) say "unknown command $cmd"; exit 2 ;;
esac
