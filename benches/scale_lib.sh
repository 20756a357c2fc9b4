# Sourced by benches/cold_start.sh and benches/follower_load.sh: the release
# build, a throwaway PostgreSQL cluster, and stores filled with N valid keys
# by the hidden `keygate bench-populate` (server/src/cli/populate.rs).
#
# Env: BIN (a keygate binary to measure; default: build the release one, in
# $CARGO_TARGET_DIR or target/), WORK_DIR (where the stores go; default a new
# directory under /tmp, removed at exit).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${BIN:-}" ]; then
    cargo build --quiet --release -p keygate-server --manifest-path "$ROOT/Cargo.toml"
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/keygate"
fi
[ -x "$BIN" ] || { echo "error: no keygate binary at $BIN" >&2; exit 1; }
command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install wrk)" >&2; exit 1; }

WORK=$(mktemp -d "${WORK_DIR:-/tmp}/keygate-scale.XXXXXX")
chmod 755 "$WORK" # the postgres user must reach its data directory
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PG_PORT=
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
scale_cleanup() {
    [ -n "$PG_PORT" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1
    rm -rf "$WORK"
}
trap scale_cleanup EXIT

# A throwaway PostgreSQL on a free port, default settings (initdb --no-sync
# only speeds up initdb itself).
start_pg() {
    [ -x "$PGBIN/initdb" ] || { echo "error: PostgreSQL is not installed" >&2; exit 1; }
    mkdir -p "$WORK/pg"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$WORK/pg"
    PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -A trust -U postgres -E UTF8 --locale=C --no-sync >/dev/null
    as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
        -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1" start >/dev/null
}

# populate BACKEND NAME KEYS [bench-populate flags...]: a new store named
# NAME holding KEYS plain keys (and whatever the flags add); sets DB and
# PEPPER, writes the tokens to $WORK/NAME.tokens and the parents' ids (if
# any) to $WORK/NAME.parents.
populate() {
    local backend=$1 name=$2 keys=$3
    shift 3
    case "$backend" in
        sqlite) DB="$WORK/$name.db" ;;
        postgres)
            [ -n "$PG_PORT" ] || start_pg
            as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$name"
            DB="postgres://postgres@127.0.0.1:$PG_PORT/$name" ;;
        *) echo "error: unknown backend $backend" >&2; exit 1 ;;
    esac
    PEPPER="$WORK/$name.pepper"
    "$BIN" bench-populate --db "$DB" --pepper-file "$PEPPER" --keys "$keys" \
        --tokens "$WORK/$name.tokens" "$@" > "$WORK/$name.parents"
    if [ "$backend" = postgres ]; then
        # What autovacuum would do soon after: the planner's statistics and
        # the visibility map, so the first start reads as later ones do.
        as_pg "$PGBIN/vacuumdb" -q -z -h 127.0.0.1 -p "$PG_PORT" -U postgres "$name"
    fi
}
