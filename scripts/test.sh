#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every test
# of the workspace (unit, integration, property, doc, and the server's real-HTTP tests).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
# tests/h2.rs checks h2c with `curl --http2-prior-knowledge` too.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v caddy >/dev/null 2>&1 || [ -x /usr/bin/caddy ] || need_apt+=(caddy)
# PostgreSQL server binaries (initdb, pg_ctl) for the PostgreSQL store's tests;
# each test runs its own throwaway cluster (server/tests/support/pg.rs).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# Prometheus and promtool for the metrics test (server/tests/prometheus.rs).
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || need_apt+=(prometheus)
# Chromium and ChromeDriver for the console's browser tests (server/tests/console.rs).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${need_apt[*]}" >&2
    apt-get update -qq >/dev/null
    # RUNLEVEL=1: do not start the packaged nginx, caddy, postgresql or
    # prometheus services (nginx and caddy would take port 80); the tests run
    # their own.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
      apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "missing ${need_apt[*]}: install it (the nginx, Caddy, PostgreSQL, Prometheus and console tests need them)" >&2
    exit 1
  fi
fi

# The nginx and Caddy end-to-end tests never skip here.
unset KEYGATE_SKIP_NGINX KEYGATE_SKIP_CADDY
cargo test --workspace --all-features
