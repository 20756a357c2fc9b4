#!/usr/bin/env bash
# Loads GET /v1/authorize and GET /healthz on one release keygate server over
# HTTP/2 cleartext (prior knowledge), over loopback, with h2load (Debian's
# nghttp2-client); prints req/s, mean latency and server CPU per request for
# both, and the ratio. The HTTP/2 twin of benches/load.sh (wrk, HTTP/1.1).
#
#   benches/load_h2.sh
#
# Env: DURATION (10, seconds per run), CLIENTS (8 connections), STREAMS (8
# concurrent streams per connection), THREADS (2), ROUNDS (3; the routes
# alternate; the median run of each counts). h2load and the server share the
# machine's cores, so the figures are relative, not absolute. The server logs
# one line per request (to a temp file) as in production.
#
# PIN=1 (root): the server on CPU 1 and h2load on CPU 0, both SCHED_FIFO, as
# in benches/load.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
STREAMS=${STREAMS:-8}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}

command -v h2load >/dev/null || { echo "error: h2load is not installed (apt-get install nghttp2-client)" >&2; exit 1; }
cargo build --quiet --release -p keygate-server
BIN="$ROOT/target/release/keygate"

. "$ROOT/scripts/lib.sh"
keygate_work
TOKEN=$(keygate_mint "$BIN" --name load --scope devboxes:read)
SERVER_PREFIX=(); LOAD_PREFIX=()
if [ "${PIN:-0}" = 1 ]; then
    SERVER_PREFIX=(taskset -c 1 chrt -f 50)
    LOAD_PREFIX=(taskset -c 0 chrt -f 50)
fi
keygate_serve 10 "${SERVER_PREFIX[@]}" "$BIN"

HEALTHZ="http://$ADDR/healthz"
AUTHORIZE="http://$ADDR/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ"
AUTH_HEADER="authorization: Bearer $TOKEN"

# Sanity: the key is accepted over h2c.
code=$(curl -s --http2-prior-knowledge -o /dev/null -w '%{http_version} %{http_code}' -H "$AUTH_HEADER" "$AUTHORIZE")
[ "$code" = "2 204" ] || { echo "error: authorize over h2c answered '$code', expected '2 204'" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
TICKS=$(getconf CLK_TCK)

# run NAME URL [HEADER] -> prints "rps mean_latency server_cpu_us_per_request"
run() {
    local out t0 t1 args
    args=(-c"$CLIENTS" -m"$STREAMS" -t"$THREADS" -D"$DURATION")
    [ -n "${3:-}" ] && args+=(-H "$3")
    t0=$(cpu_ticks)
    out=$("${LOAD_PREFIX[@]}" h2load "${args[@]}" "$2")
    t1=$(cpu_ticks)
    echo "$out" > "$WORK/h2load-$1-$RANDOM.txt"
    # Every request must have succeeded with a 2xx, over HTTP/2.
    echo "$out" | grep -q 'Application protocol: h2c' ||
        { echo "error: $1 did not run over h2c:" >&2; echo "$out" >&2; exit 1; }
    local done ok
    done=$(echo "$out" | awk '/^requests:/ {print $8}')
    ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
    if [ -z "$done" ] || [ "$done" = 0 ] || [ "$ok" != "$done" ] ||
        ! echo "$out" | grep -q ' 0 failed, 0 errored, 0 timeout'; then
        echo "error: $1 had failed or non-2xx requests:" >&2; echo "$out" >&2; exit 1
    fi
    local rps mean cpu
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    mean=$(echo "$out" | awk '/^time for request:/ {print $6}')
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$TICKS" -v n="$done" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
    echo "$rps $mean $cpu"
}

# Warm up both routes.
DURATION=2 run warm-h "$HEALTHZ" >/dev/null
DURATION=2 run warm-a "$AUTHORIZE" "$AUTH_HEADER" >/dev/null

for round in $(seq "$ROUNDS"); do
    read -r rps mean cpu < <(run healthz "$HEALTHZ")
    echo "round $round healthz:   $rps req/s, mean $mean, server CPU $cpu us/request"
    echo "$rps $mean $cpu" >> "$WORK/healthz.runs"
    read -r rps mean cpu < <(run authorize "$AUTHORIZE" "$AUTH_HEADER")
    echo "round $round authorize: $rps req/s, mean $mean, server CPU $cpu us/request"
    echo "$rps $mean $cpu" >> "$WORK/authorize.runs"
done

median() { sort -n -k1,1 "$1" | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}'; }
median_cpu() { sort -n -k3,3 "$1" | awk '{a[NR] = $3} END {print a[int((NR + 1) / 2)]}'; }
read -r med_h mean_h _ < <(median "$WORK/healthz.runs")
read -r med_a mean_a _ < <(median "$WORK/authorize.runs")
cpu_h=$(median_cpu "$WORK/healthz.runs")
cpu_a=$(median_cpu "$WORK/authorize.runs")

ratio() { awk -v a="$1" -v h="$2" 'BEGIN {printf "%.1f", 100 * a / h}'; }
echo
if [ "${PIN:-0}" = 1 ]; then
    echo "h2load -c$CLIENTS -m$STREAMS -t$THREADS -D$DURATION (h2c), $ROUNDS rounds, server pinned to CPU 1 and h2load to CPU 0 (SCHED_FIFO)"
else
    echo "h2load -c$CLIENTS -m$STREAMS -t$THREADS -D$DURATION (h2c), $ROUNDS rounds, $(nproc) cores shared by h2load and the server"
fi
printf '%-22s %12s %12s %22s\n' "route (median)" "req/s" "mean" "server CPU us/request"
printf '%-22s %12s %12s %22s\n' "healthz" "$med_h" "$mean_h" "$cpu_h"
printf '%-22s %12s %12s %22s\n' "authorize" "$med_a" "$mean_a" "$cpu_a"
echo "authorize/healthz req/s (medians): $(ratio "$med_a" "$med_h")% (target >= 95%)"
echo "authorize/healthz server CPU per request (medians): $(ratio "$cpu_a" "$cpu_h")%"
if grep -qF "${TOKEN:20}" "$WORK/server.log"; then
    echo "error: the server log shows the token's secret" >&2; exit 1
fi
