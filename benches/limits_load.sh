#!/usr/bin/env bash
# `/v1/authorize` req/s for a key with a rate limit and credits against an
# unlimited key, on one release keygate server over loopback, with wrk; the
# two alternate ROUNDS times and the medians' ratio is printed (issue 19's
# target: >= 90 %). The limited key's limits are never reached (10^6 per
# 10 ms, the largest balance), so every answer is a 204 that went through
# both checks and carries the limit fields; any other answer is printed per
# run, and the run fails if the limited key was refused at all (a credit
# lease that ran dry, or a rate limit refusing below its rate).
#
#   benches/limits_load.sh
#
# Env: DURATION (5s per run), CONNECTIONS (32), THREADS (2), ROUNDS (5);
# PIN=1 (root) pins the server to CPU 1 and wrk to CPU 0 (wrk under
# SCHED_FIFO, as benches/load.sh; the server not: under SCHED_FIFO on one CPU
# its saturated workers would starve its own blocking threads, SQLite's
# among them, and with them the credit lease's writes).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-5}

command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --quiet --release -p keygate-server
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/keygate"

. "$ROOT/scripts/lib.sh"
keygate_work
ADMIN=$(keygate_mint "$BIN" --name admin)
FREE=$(keygate_mint "$BIN" --name unlimited --scope devboxes:read)
SERVER_PREFIX=(); WRK_PREFIX=()
if [ "${PIN:-0}" = 1 ]; then
    SERVER_PREFIX=(taskset -c 1)
    WRK_PREFIX=(taskset -c 0 chrt -f 50)
fi
keygate_serve 10 "${SERVER_PREFIX[@]}" "$BIN"
AUTHORIZE="http://$ADDR/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ"
LIMITED=$(curl -sf -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"scopes":[{"resource_type":"RESOURCE_TYPE_DEVBOXES","access_level":"ACCESS_LEVEL_READ"}],
         "rate_limit":{"limit":1000000,"period_ms":10},"credits":{"remaining":9007199254740991}}' \
    "http://$ADDR/v1/restricted_keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key_secret"])')

# Sanity: both keys pass, and only the limited one carries limit fields.
curl -s -D - -o /dev/null -H "Authorization: Bearer $LIMITED" "$AUTHORIZE" | grep -qi '^ratelimit:' ||
    { echo "error: the limited key's answer has no RateLimit field" >&2; exit 1; }
for t in "$FREE" "$LIMITED"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $t" "$AUTHORIZE")
    [ "$code" = 204 ] || { echo "error: authorize answered $code, expected 204" >&2; exit 1; }
done

run() {
    local out
    out=$("${WRK_PREFIX[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -H "Authorization: Bearer $2" "$AUTHORIZE")
    echo "$out" | awk -v n="$1" '/Non-2xx/ {print n ": " $0}' >&2
    echo "$out" | awk '/^Requests\/sec:/ {print $2}'
}

DURATION=2s run warm "$FREE" >/dev/null
DURATION=2s run warm "$LIMITED" >/dev/null
for round in $(seq "$ROUNDS"); do
    f=$(run unlimited "$FREE"); l=$(run limited "$LIMITED")
    echo "round $round: unlimited $f req/s, limited $l req/s"
    echo "$f" >> "$WORK/free"; echo "$l" >> "$WORK/limited"
done
median() { sort -g "$1" | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
f=$(median "$WORK/free"); l=$(median "$WORK/limited")
awk -v f="$f" -v l="$l" 'BEGIN {printf "medians: unlimited %.0f req/s, limited %.0f req/s: %.1f %%\n", f, l, 100 * l / f}'
# Every limited request, warm-ups included, was allowed: the usage counts.
LIMITED_ID=$(curl -sf -H "Authorization: Bearer $LIMITED" "$AUTHORIZE" -D - -o /dev/null |
    awk -F': ' 'tolower($1) == "x-keygate-key-id" {print $2}' | tr -d '\r')
sleep 11 # the usage counts are flushed every 10 s
curl -sf -H "Authorization: Bearer $ADMIN" "http://$ADDR/v1/keys/$LIMITED_ID/usage" |
    python3 -c 'import json,sys
b = json.load(sys.stdin)["buckets"]
refused = {k: sum(x[k] for x in b) for k in ("forbidden", "rate_limited", "credits_exhausted")}
print("limited key: %d allowed, refused %s" % (sum(x["allowed"] for x in b), refused))
sys.exit(1 if any(refused.values()) else 0)'
