# Shared by scripts/schemathesis.sh, benches/load.sh and benches/instructions.sh:
# a throwaway keygate server over a temporary database. Source it, then:
#
#   keygate_work                          # WORK=temp dir, removed (and the server stopped) on exit
#   TOKEN=$(keygate_mint "$BIN" --name x)  # mints into $WORK/keygate.db, prints the token
#   keygate_serve 10 [PREFIX...] "$BIN"    # `PREFIX... $BIN serve` on 127.0.0.1:0, logging to
#                                          # $WORK/server.log; sets SERVER_PID and ADDR
#                                          # (waits up to 10 s for `listening on ADDR`)

keygate_work() {
    WORK=$(mktemp -d)
    SERVER_PID=
    trap keygate_cleanup EXIT
}

keygate_cleanup() {
    if [ -n "${SERVER_PID:-}" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}

keygate_mint() {
    local bin=$1
    shift
    "$bin" mint --db "$WORK/keygate.db" "$@" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["key_secret"])'
}

keygate_serve() {
    local seconds=$1 i
    shift
    "$@" serve --listen 127.0.0.1:0 --db "$WORK/keygate.db" 2> "$WORK/server.log" &
    SERVER_PID=$!
    ADDR=
    for ((i = 0; i < seconds * 10; i++)); do
        ADDR=$(sed -n 's/^listening on //p' "$WORK/server.log")
        [ -n "$ADDR" ] && return 0
        sleep 0.1
    done
    echo "server did not start:" >&2
    cat "$WORK/server.log" >&2
    return 1
}
