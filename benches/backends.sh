#!/usr/bin/env bash
# Authorize throughput with the PostgreSQL store against the SQLite store, in
# the same run: one release `keygate serve` on a SQLite file and one on a
# throwaway PostgreSQL cluster (initdb into a temp dir, as in the tests), the
# same key kind on each, wrk on GET /v1/authorize, alternating between the two
# over ROUNDS rounds. The hot path answers from memory, so the two should
# match; the figure checks that nothing of the backend leaks into it.
#
#   benches/backends.sh
#
# Env: DURATION (10s), CONNECTIONS (32), THREADS (2), ROUNDS (3).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}

command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || { echo "error: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
cargo build --quiet --release -p keygate-server
BIN="$ROOT/target/release/keygate"

WORK=$(mktemp -d /tmp/keygate-backends.XXXXXX)
chmod 755 "$WORK" # the postgres user must reach its data directory
PIDS=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# A throwaway PostgreSQL on a free port.
mkdir -p "$WORK/pg"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$WORK/pg"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -A trust -U postgres -E UTF8 --locale=C --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
    -o "-p $PORT -k $WORK/pg -c listen_addresses=127.0.0.1" start >/dev/null
as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres keygate
URL="postgres://postgres@127.0.0.1:$PORT/keygate"

mint() { # DB PEPPER -> token
    "$BIN" mint --db "$1" --pepper-file "$2" --name load --scope devboxes:read |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["key_secret"])'
}
serve() { # NAME DB PEPPER -> sets ADDR
    "$BIN" serve --listen 127.0.0.1:0 --db "$2" --pepper-file "$3" 2> "$WORK/$1.log" &
    PIDS+=($!)
    ADDR=
    for _ in $(seq 100); do
        ADDR=$(sed -n 's/^listening on //p' "$WORK/$1.log")
        [ -n "$ADDR" ] && return 0
        sleep 0.1
    done
    echo "error: $1 did not start:" >&2; cat "$WORK/$1.log" >&2; exit 1
}

TOKEN_SQLITE=$(mint "$WORK/keygate.db" "$WORK/sqlite.pepper")
serve sqlite "$WORK/keygate.db" "$WORK/sqlite.pepper"; ADDR_SQLITE=$ADDR
TOKEN_PG=$(mint "$URL" "$WORK/pg.pepper")
serve postgres "$URL" "$WORK/pg.pepper"; ADDR_PG=$ADDR

path="/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ"
for pair in "$ADDR_SQLITE $TOKEN_SQLITE" "$ADDR_PG $TOKEN_PG"; do
    set -- $pair
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $2" "http://$1$path")
    [ "$code" = 204 ] || { echo "error: authorize on $1 answered $code, expected 204" >&2; exit 1; }
done

run() { # NAME ADDR TOKEN [DURATION] -> "rps p99"
    local out
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${4:-$DURATION}" --latency \
        -H "Authorization: Bearer $3" "http://$2$path")
    if echo "$out" | grep -q 'Non-2xx'; then echo "error: $1 got non-2xx answers" >&2; echo "$out" >&2; exit 1; fi
    echo "$(echo "$out" | awk '/^Requests\/sec:/ {print $2}') $(echo "$out" | awk '$1 == "99%" {print $2}')"
}

run sqlite "$ADDR_SQLITE" "$TOKEN_SQLITE" 2s >/dev/null
run postgres "$ADDR_PG" "$TOKEN_PG" 2s >/dev/null
for round in $(seq "$ROUNDS"); do
    read -r rps p99 < <(run sqlite "$ADDR_SQLITE" "$TOKEN_SQLITE")
    echo "round $round sqlite:   $rps req/s, p99 $p99"; echo "$rps $p99" >> "$WORK/sqlite.runs"
    read -r rps p99 < <(run postgres "$ADDR_PG" "$TOKEN_PG")
    echo "round $round postgres: $rps req/s, p99 $p99"; echo "$rps $p99" >> "$WORK/postgres.runs"
done
median() { sort -n -k1,1 "$1" | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}'; }
read -r med_s p99_s < <(median "$WORK/sqlite.runs")
read -r med_p p99_p < <(median "$WORK/postgres.runs")
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS rounds alternating, $(nproc) cores shared by wrk and both servers"
printf '%-20s %12s %10s\n' "backend (median)" "req/s" p99
printf '%-20s %12s %10s\n' sqlite "$med_s" "$p99_s"
printf '%-20s %12s %10s\n' postgres "$med_p" "$p99_p"
awk -v p="$med_p" -v s="$med_s" 'BEGIN {printf "postgres/sqlite req/s: %.1f%%\n", 100 * p / s}'
