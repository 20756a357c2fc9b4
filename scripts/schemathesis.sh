#!/usr/bin/env bash
# Runs schemathesis against a live keygate server's own /openapi.yaml.
#
#   scripts/schemathesis.sh            # bounded: 50 examples per operation
#
# Env: KEYGATE_ST_EXAMPLES (50), KEYGATE_ST_SEED (fixed, for a reproducible
# CI run; set it empty for a random seed), KEYGATE_ST_VENV (where to install
# schemathesis; target/schemathesis-venv). Exits non-zero on any failure,
# and if the server's log shows the token.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
EXAMPLES=${KEYGATE_ST_EXAMPLES:-50}
SEED=${KEYGATE_ST_SEED-20261126}
VENV=${KEYGATE_ST_VENV:-$ROOT/target/schemathesis-venv}

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --quiet -p keygate-server
BIN="$ROOT/target/debug/keygate"

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

TOKEN=$("$BIN" mint --db "$WORK/keygate.db" --name schemathesis \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key_secret"])')

"$BIN" serve --listen 127.0.0.1:0 --db "$WORK/keygate.db" 2> "$WORK/server.log" &
SERVER_PID=$!
ADDR=
for _ in $(seq 100); do
    ADDR=$(sed -n 's/^listening on //p' "$WORK/server.log")
    [ -n "$ADDR" ] && break
    sleep 0.1
done
[ -n "$ADDR" ] || { echo "server did not start:" >&2; cat "$WORK/server.log" >&2; exit 1; }

SEED_ARGS=()
[ -n "$SEED" ] && SEED_ARGS=(--seed "$SEED")
status=0
# From the temp dir: schemathesis keeps a crash cache (.schemathesis/) in its
# working directory, which does not belong in the repo.
cd "$WORK"
"$VENV/bin/schemathesis" --config-file "$ROOT/scripts/schemathesis.toml" run \
    "http://$ADDR/openapi.yaml" --url "http://$ADDR" \
    -H "Authorization: Bearer $TOKEN" \
    --checks all --max-examples "$EXAMPLES" "${SEED_ARGS[@]}" || status=$?

if grep -qF "${TOKEN:20}" "$WORK/server.log"; then
    echo "error: the server log shows the token's secret" >&2
    status=1
fi
exit "$status"
