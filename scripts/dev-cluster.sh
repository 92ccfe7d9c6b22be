#!/usr/bin/env bash
# A local multi-node imbroker for development: a private redis-server, N
# imserver nodes and the example chat service (webapi-example in external
# mode), each on a free loopback port, in the background, with logs in a
# temporary directory. It prints where everything is once all of it is
# ready, and stops all of it on Ctrl-C, SIGTERM or exit.
#
#   bash scripts/dev-cluster.sh [-n NODES] [-k]
#
# The Redis is private (its own port, no persistence), so an unrelated Redis
# on 6379 is never used or touched. Started in the background by another
# script, it ignores SIGINT, as every background job of a non-interactive
# shell does; stop it with SIGTERM then.
#
# shellcheck disable=SC2317 # cleanup runs from a trap, the checks through wait_ready "$@"
set -euo pipefail

usage() {
  cat <<'EOF'
usage: dev-cluster.sh [-n NODES] [-k]

Starts a private redis-server, NODES imserver nodes (default 2) and the
example chat service on free loopback ports, prints their URLs, and stops
them all on Ctrl-C.

  -n NODES  number of imserver nodes (1-20, default 2)
  -k        keep the temporary directory (logs, binaries) after stopping
EOF
}

die() {
  echo "dev-cluster.sh: $*" >&2
  exit 1
}

nodes=2
keep=0
while getopts ':n:kh' opt; do
  case $opt in
    n) nodes=$OPTARG ;;
    k) keep=1 ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ $# -gt 0 ] || ! [[ $nodes =~ ^[1-9][0-9]?$ ]] || [ "$nodes" -gt 20 ]; then
  usage >&2
  exit 2
fi

# Checked first, before anything is built or started.
command -v redis-server >/dev/null 2>&1 ||
  die "redis-server is not installed (on Debian: sudo apt-get install redis-server)"
command -v go >/dev/null 2>&1 || die "go is not installed"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Every child gets its own process group, so a Ctrl-C in the terminal
# reaches only this script, which then stops the children in order: the
# service, then the nodes (they clean their presence in Redis), then Redis.
set -m

# How long each part may take to become ready: generous, for a loaded box.
ready_timeout=60
# How long a stopping child may take before it is killed; above the nodes'
# -drain-timeout.
stop_timeout=20

tmp=$(mktemp -d "${TMPDIR:-/tmp}/imbroker-dev.XXXXXX")
logs=$tmp/logs
bin=$tmp/bin
mkdir -p "$logs" "$bin"

pids=()
names=()

# alive reports whether process $1 runs (an exited child that is not yet
# reaped is a zombie: it counts as gone).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# stop_children stops the children with the given indices: SIGTERM, then
# SIGKILL for any still running after stop_timeout.
stop_children() {
  local i deadline=$((SECONDS + stop_timeout))
  for i in "$@"; do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  for i in "$@"; do
    while alive "${pids[$i]}"; do
      if ((SECONDS >= deadline)); then
        echo "dev-cluster.sh: ${names[$i]} did not stop in ${stop_timeout}s; killing it" >&2
        kill -KILL "${pids[$i]}" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
    wait "${pids[$i]}" 2>/dev/null || true
  done
}

service_idx=""
node_idx=()
redis_idx=""
cleanup() {
  local rc=$?
  # A second Ctrl-C while stopping must not cut the cleanup short and leave
  # nodes or Redis behind: ignore INT/TERM from here on (the sleeps in
  # stop_children inherit that) and do not stop on the first error.
  set +e
  trap - EXIT
  trap '' INT TERM
  if [ -n "$service_idx" ]; then stop_children "$service_idx"; fi
  if [ ${#node_idx[@]} -gt 0 ]; then stop_children "${node_idx[@]}"; fi
  if [ -n "$redis_idx" ]; then stop_children "$redis_idx"; fi
  if [ "$keep" -eq 1 ]; then
    echo "dev-cluster.sh: logs and binaries kept in $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start runs a child in the background with its output in logs/$1.log and
# sets REPLY to its index.
start() {
  local name=$1
  shift
  "$@" >"$logs/$name.log" 2>&1 </dev/null &
  pids+=("$!")
  names+=("$name")
  REPLY=$((${#pids[@]} - 1))
}

# free_port sets REPLY to a loopback port nothing listens on and that this
# script has not handed out yet. Ports come from below the kernel's
# ephemeral range, so outgoing connections do not take them meanwhile.
used_ports=" "
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    if [[ $used_ports == *" $p "* ]]; then continue; fi
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      used_ports+="$p "
      REPLY=$p
      return
    fi
  done
}

# http_ok reports whether GET $2 on 127.0.0.1:$1 answers 200.
http_ok() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$2" "$1" >&3
    read -r -t 5 _ code _ <&3
    [ "$code" = 200 ]
  ) 2>/dev/null
}

# redis_ok reports whether the Redis on 127.0.0.1:$1 answers PING.
redis_ok() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'PING\r\n' >&3
    read -r -t 5 line <&3
    [ "${line%$'\r'}" = +PONG ]
  ) 2>/dev/null
}

# wait_ready waits until the check "$@" passes for child $1, and fails with
# the end of its log if the child exits or ready_timeout passes first.
wait_ready() {
  local i=$1 deadline=$((SECONDS + ready_timeout))
  shift
  until "$@"; do
    if ! alive "${pids[$i]}"; then
      echo "dev-cluster.sh: ${names[$i]} exited; the end of $logs/${names[$i]}.log:" >&2
      tail -n 20 "$logs/${names[$i]}.log" >&2 || true
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "dev-cluster.sh: ${names[$i]} not ready after ${ready_timeout}s; the end of $logs/${names[$i]}.log:" >&2
      tail -n 20 "$logs/${names[$i]}.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
}

echo "building imserver and webapi-example into $bin" >&2
go build -o "$bin/" ./imserver/cmd/imserver ./webapi-example

free_port
redis_port=$REPLY
redis_url=redis://127.0.0.1:$redis_port/0
start redis redis-server --port "$redis_port" --bind 127.0.0.1 \
  --save "" --appendonly no --dir "$tmp" --logfile ""
redis_idx=$REPLY
wait_ready "$redis_idx" redis_ok "$redis_port"

# The nodes must allow the page's origin, so its port is chosen first.
free_port
web_port=$REPLY
origins=127.0.0.1:$web_port,localhost:$web_port

ws_ports=()
admin_ports=()
for n in $(seq 1 "$nodes"); do
  free_port
  ws_ports+=("$REPLY")
  free_port
  admin_ports+=("$REPLY")
  start "node-$n" "$bin/imserver" \
    -node-id "node-$n" \
    -redis-url "$redis_url" \
    -listen "127.0.0.1:${ws_ports[-1]}" \
    -public-url "ws://127.0.0.1:${ws_ports[-1]}/ws" \
    -admin-listen "127.0.0.1:${admin_ports[-1]}" \
    -origins "$origins" \
    -drain-window 1s -drain-timeout 10s
  node_idx+=("$REPLY")
done
for n in $(seq 1 "$nodes"); do
  wait_ready "${node_idx[$((n - 1))]}" http_ok "${admin_ports[$((n - 1))]}" /readyz
done

admin_token=${WEBAPI_ADMIN_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
start webapi-example env \
  IM_REDIS_URL="$redis_url" \
  WEBAPI_ADDR="127.0.0.1:$web_port" \
  WEBAPI_ADMIN_TOKEN="$admin_token" \
  "$bin/webapi-example"
service_idx=$REPLY
wait_ready "$service_idx" http_ok "$web_port" /

cat <<EOF

imbroker dev cluster: $nodes imserver node(s), the example chat service and a private Redis.

  page      http://127.0.0.1:$web_port
EOF
for n in $(seq 1 "$nodes"); do
  printf '  %-9s ws://127.0.0.1:%s/ws  admin http://127.0.0.1:%s/metrics (and /healthz, /readyz)\n' \
    "node-$n" "${ws_ports[$((n - 1))]}" "${admin_ports[$((n - 1))]}"
done
cat <<EOF
  redis     $redis_url
  token     $admin_token (WEBAPI_ADMIN_TOKEN, for POST /api/admin/kick)
  logs      $logs

Inspect it with:

  IM_REDIS_URL=$redis_url go run ./imctl nodes

Ctrl-C stops everything.
EOF

# Runs until a signal arrives (the traps above stop everything) or a child
# exits by itself, which is reported with the end of its log.
wait -n "${pids[@]}" || true
for i in "${!pids[@]}"; do
  if ! alive "${pids[$i]}"; then
    echo "dev-cluster.sh: ${names[$i]} exited; the end of $logs/${names[$i]}.log:" >&2
    tail -n 20 "$logs/${names[$i]}.log" >&2 || true
  fi
done
exit 1
