#!/usr/bin/env bash
# Server instructions per request, /v1/authorize vs /healthz, counted by
# valgrind's callgrind: unlike req/s, the count does not depend on what else
# the machine is doing, so it shows what authorizing costs the server.
#
#   benches/instructions.sh
#
# The release server runs under callgrind with instrumentation on; each route
# is warmed, then loaded with wrk for LOAD_SECONDS (5) while callgrind counts; the
# server's log lines give the number of requests in each window.
# Needs valgrind and wrk (Debian packages). H2=1 loads over h2c with h2load
# (nghttp2-client) instead of wrk.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECONDS_PER_ROUTE=${LOAD_SECONDS:-5}
for tool in valgrind callgrind_control wrk; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done
cargo build --quiet --release -p keygate-server
# KEYGATE_BIN: another build to count (e.g. an older release), for comparisons.
BIN="${KEYGATE_BIN:-$ROOT/target/release/keygate}"

. "$ROOT/scripts/lib.sh"
keygate_work
TOKEN=$(keygate_mint "$BIN" --name load --scope devboxes:read)
keygate_serve 60 valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$BIN"

HEALTHZ="http://$ADDR/healthz"
AUTHORIZE="http://$ADDR/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ"
AUTH_HEADER="Authorization: Bearer $TOKEN"

load() { # NAME SECONDS URL [HEADER]
    if [ "${H2:-0}" = 1 ]; then # HTTP/2 cleartext (prior knowledge), 4 connections of 4 streams
        if [ -n "${4:-}" ]; then h2load -c4 -m4 -t1 -D"$2" -H "$4" "$3" >/dev/null; else h2load -c4 -m4 -t1 -D"$2" "$3" >/dev/null; fi
    elif [ -n "${4:-}" ]; then wrk -t1 -c4 -d"$2"s -H "$4" "$3" >/dev/null; else wrk -t1 -c4 -d"$2"s "$3" >/dev/null; fi
}
count() { grep -c "path=$1 status=$2" "$WORK/server.log" || true; }

# measure NAME PATH STATUS URL [HEADER] -> instructions per request
measure() {
    load "$1" 1 "$4" "${5:-}"
    callgrind_control -z "$SERVER_PID" >/dev/null
    local n0 n1
    n0=$(count "$2" "$3")
    load "$1" "$SECONDS_PER_ROUTE" "$4" "${5:-}"
    sleep 0.5
    n1=$(count "$2" "$3")
    callgrind_control -d "$1" "$SERVER_PID" >/dev/null
    local file total
    file=$(ls -t "$WORK"/cg.out.* | head -1)
    total=$(awk '/^totals:/ {print $2}' "$file")
    awk -v t="$total" -v n=$((n1 - n0)) -v name="$1" \
        'BEGIN {printf "%-10s %8d requests %14d instructions %8.0f per request\n", name, n, t, t / n}'
    echo "$total $((n1 - n0))" > "$WORK/$1.count"
    # KEEP=DIR keeps the dumps, for callgrind_annotate.
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$file" "$KEEP/$1.callgrind"; fi
}

measure healthz /healthz 200 "$HEALTHZ"
measure authorize /v1/authorize 204 "$AUTHORIZE" "$AUTH_HEADER"
read -r th nh < "$WORK/healthz.count"
read -r ta na < "$WORK/authorize.count"
awk -v th="$th" -v nh="$nh" -v ta="$ta" -v na="$na" \
    'BEGIN {printf "healthz/authorize instructions per request: %.1f%%\n", 100 * (th / nh) / (ta / na)}'
