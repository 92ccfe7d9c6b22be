#!/usr/bin/env bash
# bench-history-script.sh [BASE_REV] [ROUNDS]: what Redis spends on one kept
# channel message (chan_kept.lua with history.lua prepended, as the store
# runs it), this tree's scripts against BASE_REV's, alternating, on a
# private redis-server. Prints Redis' own usec_per_call for EVALSHA (and
# INFO, which the epoch check calls) per run. redis-benchmark drives it: 4
# clients, 200,000 calls per run, one stream (its window keeps 100).
set -euo pipefail
base=${1:-758bbd7}
rounds=${2:-2}
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
port=$((10000 + RANDOM % 20000))
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --logfile "$dir/redis.log" --daemonize yes --pidfile "$dir/redis.pid"
trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null; rm -rf "$dir"' EXIT
cli=(redis-cli -p "$port")
until "${cli[@]}" ping >/dev/null 2>&1; do sleep 0.1; done
git show "$base:internal/store/lua/history.lua" >"$dir/base.lua"
cat "$dir/base.lua" internal/store/lua/chan_kept.lua >"$dir/base_script.lua"
cat internal/store/lua/history.lua internal/store/lua/chan_kept.lua >"$dir/this_script.lua"
sha_base=$("${cli[@]}" script load "$(cat "$dir/base_script.lua")")
sha_this=$("${cli[@]}" script load "$(cat "$dir/this_script.lua")")
frame='{"type":"channel","from":"alice","channel":"room","data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
for r in $(seq "$rounds"); do
  for v in base this; do
    sha_var=sha_$v
    "${cli[@]}" config resetstat >/dev/null
    rps=$(redis-benchmark -p "$port" -c 4 -n 200000 -q EVALSHA "${!sha_var}" 2 "st:$v" "meta:$v" topic "$frame" 100 60000 86400000 "EPOCH$v" PUBLISH 2>/dev/null | tr '\r' '\n' | tail -1 | grep -o '[0-9.]* requests per second')
    stats=$("${cli[@]}" info commandstats | grep -E '^cmdstat_(evalsha|info):' | sed -E 's/^cmdstat_([a-z]+):.*usec_per_call=([0-9.]+).*/\1 \2 us/' | tr '\r\n' '  ')
    echo "round $r $v ($([ $v = base ] && echo "$base" || echo tree)): $rps; per call: $stats"
  done
done
