#!/usr/bin/env bash
# Loads GET /v1/authorize and GET /healthz on one release keygate server,
# over loopback, with wrk; prints req/s and p99 for both and the ratio.
# Then the unknown-id flood: /v1/authorize with random, well-formed tokens
# of ids the server does not know (benches/unknown_tokens.py, every answer a
# 401), against the same route with the known key through the same wrk
# script (benches/tokens.lua), and the ratio of the two (target >= 90%).
#
#   benches/load.sh
#   FLOOD=0 benches/load.sh   # skip the flood
#
# Env: DURATION (10s per run), CONNECTIONS (32), THREADS (2), ROUNDS (3; the
# routes alternate, the best run of each counts). wrk and the server share
# the machine's cores, so the figures are relative, not absolute; the
# server's CPU time per request (from /proc) is less sensitive to other
# load on the machine than req/s.
# The server logs one line per request (to a temp file) as in production.
#
# PIN=1 (root): the server on CPU 1 and wrk on CPU 0, both SCHED_FIFO
# (`taskset` + `chrt -f 50`), so other jobs on a shared machine get out of
# the way; the server then runs one tokio worker on its one CPU.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}

command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --quiet --release -p keygate-server
BIN="$ROOT/target/release/keygate"

. "$ROOT/scripts/lib.sh"
keygate_work
TOKEN=$(keygate_mint "$BIN" --name load --scope devboxes:read)
SERVER_PREFIX=(); WRK_PREFIX=()
if [ "${PIN:-0}" = 1 ]; then
    SERVER_PREFIX=(taskset -c 1 chrt -f 50)
    WRK_PREFIX=(taskset -c 0 chrt -f 50)
fi
keygate_serve 10 "${SERVER_PREFIX[@]}" "$BIN"

HEALTHZ="http://$ADDR/healthz"
AUTHORIZE="http://$ADDR/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ"
AUTH_HEADER="Authorization: Bearer $TOKEN"

# Sanity: the key is accepted.
code=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH_HEADER" "$AUTHORIZE")
[ "$code" = 204 ] || { echo "error: authorize answered $code, expected 204" >&2; exit 1; }

# The server's CPU time so far, in clock ticks (utime + stime).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
TICKS=$(getconf CLK_TCK)

# run NAME URL [HEADER] -> prints "rps p99 server_cpu_us_per_request"
run() {
    local out t0 t1
    t0=$(cpu_ticks)
    if [ -n "${3:-}" ]; then
        out=$("${WRK_PREFIX[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "$3" "$2")
    else
        out=$("${WRK_PREFIX[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$2")
    fi
    t1=$(cpu_ticks)
    echo "$out" > "$WORK/wrk-$1-$RANDOM.txt"
    if echo "$out" | grep -q 'Non-2xx'; then
        echo "error: $1 got non-2xx answers:" >&2; echo "$out" >&2; exit 1
    fi
    local rps p99 n cpu
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$TICKS" -v n="$n" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
    echo "$rps $p99 $cpu"
}

# The flood's runs: wrk with benches/tokens.lua cycling through the tokens in
# file $2. $3 is the status every answer must have (204 or 401).
# run_tokens NAME FILE STATUS -> prints "rps p99 server_cpu_us_per_request"
run_tokens() {
    local out t0 t1 n bad
    t0=$(cpu_ticks)
    out=$(KEYGATE_TOKENS="$2" "${WRK_PREFIX[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" \
        --latency -s "$ROOT/benches/tokens.lua" "$AUTHORIZE")
    t1=$(cpu_ticks)
    echo "$out" > "$WORK/wrk-$1-$RANDOM.txt"
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    bad=$(echo "$out" | awk '/Non-2xx or 3xx responses:/ {print $5}')
    bad=${bad:-0}
    if { [ "$3" = 401 ] && [ "$bad" != "$n" ]; } || { [ "$3" != 401 ] && [ "$bad" != 0 ]; }; then
        echo "error: $1: $bad of $n answers were not 2xx, expected every answer $3:" >&2
        echo "$out" >&2; exit 1
    fi
    if echo "$out" | grep -q 'Socket errors'; then
        echo "error: $1: socket errors:" >&2; echo "$out" >&2; exit 1
    fi
    local rps p99 cpu
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$TICKS" -v n="$n" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
    echo "$rps $p99 $cpu"
}

# Warm up both routes.
DURATION=2s run warm-h "$HEALTHZ" >/dev/null
DURATION=2s run warm-a "$AUTHORIZE" "$AUTH_HEADER" >/dev/null

for round in $(seq "$ROUNDS"); do
    read -r rps p99 cpu < <(run healthz "$HEALTHZ")
    echo "round $round healthz:   $rps req/s, p99 $p99, server CPU $cpu us/request"
    echo "$rps $p99 $cpu" >> "$WORK/healthz.runs"
    read -r rps p99 cpu < <(run authorize "$AUTHORIZE" "$AUTH_HEADER")
    echo "round $round authorize: $rps req/s, p99 $p99, server CPU $cpu us/request"
    echo "$rps $p99 $cpu" >> "$WORK/authorize.runs"
done

# The run with the median req/s, and the best run, of each route.
median() { sort -n -k1,1 "$1" | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}'; }
best() { sort -n -k1,1 "$1" | tail -1; }
read -r med_h mp99_h mcpu_h < <(median "$WORK/healthz.runs")
read -r med_a mp99_a mcpu_a < <(median "$WORK/authorize.runs")
read -r best_h p99_h cpu_h < <(best "$WORK/healthz.runs")
read -r best_a p99_a cpu_a < <(best "$WORK/authorize.runs")

ratio() { awk -v a="$1" -v h="$2" 'BEGIN {printf "%.1f", 100 * a / h}'; }
echo
if [ "${PIN:-0}" = 1 ]; then
    echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS rounds, server pinned to CPU 1 and wrk to CPU 0 (SCHED_FIFO)"
else
    echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS rounds, $(nproc) cores shared by wrk and the server"
fi
printf '%-22s %12s %10s %22s\n' "route (run)" "req/s" p99 "server CPU us/request"
printf '%-22s %12s %10s %22s\n' "healthz (median)" "$med_h" "$mp99_h" "$mcpu_h"
printf '%-22s %12s %10s %22s\n' "authorize (median)" "$med_a" "$mp99_a" "$mcpu_a"
printf '%-22s %12s %10s %22s\n' "healthz (best)" "$best_h" "$p99_h" "$cpu_h"
printf '%-22s %12s %10s %22s\n' "authorize (best)" "$best_a" "$p99_a" "$cpu_a"
echo "authorize/healthz req/s: median $(ratio "$med_a" "$med_h")%, best $(ratio "$best_a" "$best_h")% (target >= 95%)"

if [ "${FLOOD:-1}" = 1 ]; then
    echo "$TOKEN" > "$WORK/known.tokens"
    python3 "$ROOT/benches/unknown_tokens.py" 100000 rk_ > "$WORK/unknown.tokens"
    # Sanity: an unknown token is well-formed (a 401 for invalid credentials,
    # not for a malformed token), and the known one passes.
    body=$(curl -s -H "Authorization: Bearer $(head -1 "$WORK/unknown.tokens")" "$AUTHORIZE")
    echo "$body" | grep -q 'unknown key or wrong secret' ||
        { echo "error: an unknown token got: $body" >&2; exit 1; }
    DURATION=2s run_tokens warm-u "$WORK/unknown.tokens" 401 >/dev/null
    for round in $(seq "$ROUNDS"); do
        read -r rps p99 cpu < <(run_tokens known "$WORK/known.tokens" 204)
        echo "round $round known id (lua):   $rps req/s, p99 $p99, server CPU $cpu us/request"
        echo "$rps $p99 $cpu" >> "$WORK/known.runs"
        read -r rps p99 cpu < <(run_tokens unknown "$WORK/unknown.tokens" 401)
        echo "round $round unknown ids (lua): $rps req/s, p99 $p99, server CPU $cpu us/request"
        echo "$rps $p99 $cpu" >> "$WORK/unknown.runs"
    done
    read -r med_k mp99_k mcpu_k < <(median "$WORK/known.runs")
    read -r med_u mp99_u mcpu_u < <(median "$WORK/unknown.runs")
    read -r best_k p99_k cpu_k < <(best "$WORK/known.runs")
    read -r best_u p99_u cpu_u < <(best "$WORK/unknown.runs")
    echo
    echo "unknown-id flood: 100 000 random well-formed rk_ tokens, cycled; benches/tokens.lua for both"
    printf '%-22s %12s %10s %22s\n' "route (run)" "req/s" p99 "server CPU us/request"
    printf '%-22s %12s %10s %22s\n' "known (median)" "$med_k" "$mp99_k" "$mcpu_k"
    printf '%-22s %12s %10s %22s\n' "unknown (median)" "$med_u" "$mp99_u" "$mcpu_u"
    printf '%-22s %12s %10s %22s\n' "known (best)" "$best_k" "$p99_k" "$cpu_k"
    printf '%-22s %12s %10s %22s\n' "unknown (best)" "$best_u" "$p99_u" "$cpu_u"
    echo "unknown/known req/s: median $(ratio "$med_u" "$med_k")%, best $(ratio "$best_u" "$best_k")% (target >= 90%)"
fi
if grep -qF "${TOKEN:20}" "$WORK/server.log"; then
    echo "error: the server log shows the token's secret" >&2; exit 1
fi
