#!/usr/bin/env bash
# The library's public API, as cargo-public-api lists it (all features).
#
#   scripts/public-api.sh           # regenerate public-api.txt
#   scripts/public-api.sh --check   # CI: fail if the API differs from public-api.txt
#
# A change to the public surface is on purpose: regenerate, review the diff,
# commit it with the change. Needs a nightly toolchain (rustdoc JSON).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-public-api >/dev/null 2>&1; then
    echo "installing cargo-public-api" >&2
    cargo install --locked cargo-public-api
fi

listing() {
    cargo +nightly public-api --package keygate --all-features -ss 2>/dev/null
}

case ${1:-} in
--check)
    if ! diff -u public-api.txt <(listing); then
        echo "the public API changed: run scripts/public-api.sh and commit public-api.txt" >&2
        exit 1
    fi
    ;;
"")
    listing >public-api.txt
    echo "wrote public-api.txt ($(wc -l <public-api.txt) items)" >&2
    ;;
*)
    echo "usage: $0 [--check]" >&2
    exit 64
    ;;
esac
