#!/usr/bin/env bash
# CI for the server: installs what its tests need on a fresh Debian machine
# (nginx, and schemathesis from PyPI in a venv), then runs the server's
# tests over real HTTP (nginx included: no skipping here) and schemathesis
# against the served /openapi.yaml.
#
#   scripts/ci-server.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "ci-server: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # RUNLEVEL=1: do not start the packaged nginx service on port 80.
    apt-get update -qq
    RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The nginx test must run in CI, never skip.
unset KEYGATE_SKIP_NGINX
cargo test -p keygate-server
scripts/schemathesis.sh
