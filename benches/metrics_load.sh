#!/usr/bin/env bash
# `/v1/authorize` req/s with metrics on (`--metrics-listen`, scraped every
# second as Prometheus would) against metrics off: two release keygate
# servers over loopback, each on its own database, loaded in turn with wrk,
# ROUNDS times; the medians' ratio is printed (issue 21's target: >= 97 %).
# Every answer must be a 204: any other is printed per run.
#
#   benches/metrics_load.sh
#
# Env: DURATION (5s per run), CONNECTIONS (32), THREADS (2), ROUNDS (7);
# PIN=1 (root) pins both servers to CPU 1 and wrk to CPU 0 (wrk under
# SCHED_FIFO, as benches/load.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-7}

command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --quiet --release -p keygate-server
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/keygate"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

SERVER_PREFIX=(); WRK_PREFIX=()
if [ "${PIN:-0}" = 1 ]; then
    SERVER_PREFIX=(taskset -c 1)
    WRK_PREFIX=(taskset -c 0 chrt -f 50)
fi

# start NAME [FLAGS...]: a server on $WORK/NAME.db; sets TOKEN_NAME and ADDR_NAME.
start() {
    local name=$1 i addr
    shift
    local db="$WORK/$name.db"
    local token
    token=$("$BIN" mint --db "$db" --name "$name" --scope devboxes:read |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["key_secret"])')
    : > "$WORK/$name.log"
    "${SERVER_PREFIX[@]}" "$BIN" serve --listen 127.0.0.1:0 --db "$db" "$@" 2> "$WORK/$name.log" &
    PIDS+=($!)
    for ((i = 0; i < 100; i++)); do
        addr=$(sed -n 's/^listening on //p' "$WORK/$name.log")
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "error: $name did not start" >&2; cat "$WORK/$name.log" >&2; exit 1; }
    printf -v "TOKEN_$name" '%s' "$token"
    printf -v "ADDR_$name" '%s' "$addr"
}
start off
start on --metrics-listen 127.0.0.1:0
METRICS=$(sed -n 's/^metrics listening on //p' "$WORK/on.log")
[ -n "$METRICS" ] || { echo "error: no metrics listener" >&2; exit 1; }
QUERY="/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ"

# A scrape a second, as Prometheus would, for the whole run.
( while sleep 1; do curl -sf -o /dev/null "http://$METRICS/metrics" || true; done ) &
PIDS+=($!)

run() {
    local name=$1 out addr token
    addr="ADDR_$name"; token="TOKEN_$name"
    out=$("${WRK_PREFIX[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" \
        -H "Authorization: Bearer ${!token}" "http://${!addr}$QUERY")
    echo "$out" | awk -v n="$name" '/Non-2xx/ {print n ": " $0}' >&2
    echo "$out" | awk '/^Requests\/sec:/ {print $2}'
}

DURATION=2s run off >/dev/null
DURATION=2s run on >/dev/null
for round in $(seq "$ROUNDS"); do
    # Alternate which goes first, so neither always follows the other.
    if [ $((round % 2)) = 1 ]; then f=$(run off); o=$(run on); else o=$(run on); f=$(run off); fi
    echo "round $round: metrics off $f req/s, on $o req/s"
    echo "$f" >> "$WORK/off"; echo "$o" >> "$WORK/on"
done
median() { sort -g "$1" | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
f=$(median "$WORK/off"); o=$(median "$WORK/on")
awk -v f="$f" -v o="$o" 'BEGIN {printf "medians: metrics off %.0f req/s, on %.0f req/s: %.1f %%\n", f, o, 100 * o / f}'
# The metrics saw the load: allowed decisions counted.
curl -sf "http://$METRICS/metrics" | awk '/^keygate_authorize_decisions_total\{outcome="allowed"\}/ {print "decisions counted (allowed): " $2}'
