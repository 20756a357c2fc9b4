#!/usr/bin/env bash
# Conformance with Runloop's official client libraries, against a real
# `keygate serve` on 127.0.0.1:
#
#   Python      runloop-api-client 3.0.0   (scripts/sdk/python_conformance.py, HTTP/1.1)
#   TypeScript  @runloop/api-client 1.32.0 (scripts/sdk/ts/conformance.mjs, h2c and HTTP/1.1)
#
#   scripts/sdk.sh
#
# Installs what it needs: the Python SDK into a venv (KEYGATE_SDK_VENV,
# default target/sdk-venv) with pip, the TypeScript SDK with `npm ci` from
# scripts/sdk/ts/package-lock.json; python3-venv, nodejs and npm with apt
# when missing and running as root. A missing runtime or SDK is a failure,
# never a skip. Exits non-zero if any check fails.
set -euo pipefail

PY_SDK_VERSION=3.0.0
TS_SDK_VERSION=1.32.0
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=${KEYGATE_SDK_VENV:-$ROOT/target/sdk-venv}
TS_DIR=$ROOT/scripts/sdk/ts

fail() { echo "error: $*" >&2; exit 1; }

# The runtimes.
need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "missing ${need_apt[*]}: install them (the SDK conformance tests need them)"
    echo "installing: ${need_apt[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || fail "node $(node --version) is too old; the TypeScript SDK needs 18 or later"

# The SDKs, pinned.
if ! "$VENV/bin/python" -c "import sys, runloop_api_client as r; sys.exit(r.__version__ != '$PY_SDK_VERSION')" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/sdk/requirements.txt
fi
"$VENV/bin/python" -c "import sys, runloop_api_client as r; sys.exit(r.__version__ != '$PY_SDK_VERSION')" ||
    fail "runloop-api-client $PY_SDK_VERSION is not installed in $VENV"
installed_ts=$(node -p "require('$TS_DIR/node_modules/@runloop/api-client/package.json').version" 2>/dev/null || true)
if [ "$installed_ts" != "$TS_SDK_VERSION" ] || [ ! -x "$TS_DIR/node_modules/.bin/tsc" ]; then
    (cd "$TS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi
installed_ts=$(node -p "require('$TS_DIR/node_modules/@runloop/api-client/package.json').version")
[ "$installed_ts" = "$TS_SDK_VERSION" ] || fail "@runloop/api-client is $installed_ts, expected $TS_SDK_VERSION"
# The TypeScript checks are type-checked against the SDK's own declarations.
(cd "$TS_DIR" && node_modules/.bin/tsc -p .)

cargo build --quiet -p keygate-server
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/keygate"

. "$ROOT/scripts/lib.sh"
keygate_work
ADMIN=$(keygate_mint "$BIN" --name sdk-admin)
# Restricted, without ACCOUNT write: minting with it must be a typed 403.
RESTRICTED=$(keygate_mint "$BIN" --name sdk-no-account --scope devboxes:write --scope objects:read)
# Per-connection debug lines name each connection's protocol.
export KEYGATE_LOG=info,keygate::http::listen=debug
keygate_serve 10 "$BIN"
export KEYGATE_URL="http://$ADDR" KEYGATE_ADMIN_KEY="$ADMIN" KEYGATE_RESTRICTED_KEY="$RESTRICTED"

status=0
"$VENV/bin/python" scripts/sdk/python_conformance.py || status=1
node "$TS_DIR/conformance.mjs" || status=1

# A graceful stop (exit 0), then the log: the TypeScript SDK's default
# transport did reach the server over HTTP/2, the others over HTTP/1.1, and
# no secret was logged.
kill -TERM "$SERVER_PID"
server_status=0
wait "$SERVER_PID" || server_status=$?
SERVER_PID=
[ "$server_status" = 0 ] || { echo "error: the server exited with $server_status on SIGTERM" >&2; status=1; }
for proto in HTTP/2.0 HTTP/1.1; do
    n=$(grep -c "connection closed protocol=Some($proto)" "$WORK/server.log" || true)
    echo "server: $n $proto connection(s)"
    [ "$n" -ge 1 ] || { echo "error: no $proto connection in the server log" >&2; status=1; }
done
for secret in "$ADMIN" "$RESTRICTED"; do
    if grep -qF "${secret:20}" "$WORK/server.log"; then
        echo "error: the server log shows a key's secret" >&2
        status=1
    fi
done
[ "$status" = 0 ] && echo "sdk conformance: ok"
exit "$status"
