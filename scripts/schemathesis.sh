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
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/keygate"

. "$ROOT/scripts/lib.sh"
keygate_work
TOKEN=$(keygate_mint "$BIN" --name schemathesis)
keygate_serve 10 "$BIN"

SEED_ARGS=()
[ -n "$SEED" ] && SEED_ARGS=(--seed "$SEED")
status=0
# Two passes, each with its own standard key. The lifecycle operations that
# end a key (revoke, roll, self-revocation) may end the very key the run
# authenticates with; they run second, so every other operation is tested
# with a live key.
DESTRUCTIVE='^(revokeKey|rollKey|selfRevoke)$'
# From the temp dir: schemathesis keeps a crash cache (.schemathesis/) in its
# working directory, which does not belong in the repo.
cd "$WORK"
"$VENV/bin/schemathesis" --config-file "$ROOT/scripts/schemathesis.toml" run \
    "http://$ADDR/openapi.yaml" --url "http://$ADDR" \
    -H "Authorization: Bearer $TOKEN" --exclude-operation-id-regex "$DESTRUCTIVE" \
    --checks all --max-examples "$EXAMPLES" "${SEED_ARGS[@]}" || status=$?
TOKEN2=$(keygate_mint "$BIN" --name schemathesis-lifecycle)
"$VENV/bin/schemathesis" --config-file "$ROOT/scripts/schemathesis.toml" run \
    "http://$ADDR/openapi.yaml" --url "http://$ADDR" \
    -H "Authorization: Bearer $TOKEN2" --include-operation-id-regex "$DESTRUCTIVE" \
    --checks all --max-examples "$EXAMPLES" "${SEED_ARGS[@]}" || status=$?

if grep -qF -e "${TOKEN:20}" -e "${TOKEN2:20}" "$WORK/server.log"; then
    echo "error: the server log shows the token's secret" >&2
    status=1
fi
exit "$status"
