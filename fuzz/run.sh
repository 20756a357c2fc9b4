#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 20).
#
#   fuzz/run.sh [SECONDS]
#
# Builds all targets once, then runs them one after another. Uses the
# nightly toolchain with AddressSanitizer when rustup has one, otherwise
# stable with `--sanitizer none`. Exits non-zero if any target crashes,
# times out or runs out of memory; libFuzzer keeps the input under
# fuzz/artifacts/<target>/ and this script prints its path.
set -euo pipefail

secs="${1:-20}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
    build_flags=()
else
    fuzz=(cargo fuzz)
    build_flags=(--sanitizer none)
fi

# Per-target libFuzzer options: input size bound and dictionary.
opts_for() {
    case "$1" in
        token_parse) echo "-max_len=256" ;;
        authenticate) echo "-max_len=512" ;;
        create_request_json) echo "-max_len=4096 -dict=$here/dict/json.dict" ;;
        scope_text) echo "-max_len=1024 -dict=$here/dict/scopes.dict" ;;
        route_table_parse) echo "-max_len=4096 -dict=$here/dict/routes.dict" ;;
        route_lookup) echo "-max_len=1024 -dict=$here/dict/routes.dict" ;;
        *) echo "" ;;
    esac
}

echo "run.sh: ${fuzz[*]} build ${build_flags[*]}" >&2
"${fuzz[@]}" build "${build_flags[@]}"

mkdir -p "$here/logs"
failed=()
for target in $("${fuzz[@]}" list); do
    mkdir -p "$here/corpus/$target" "$here/artifacts/$target"
    log="$here/logs/$target.log"
    before="$(find "$here/artifacts/$target" -type f | sort)"
    echo "run.sh: $target for ${secs}s (log: fuzz/logs/$target.log)" >&2
    # shellcheck disable=SC2046
    if "${fuzz[@]}" run "${build_flags[@]}" "$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 $(opts_for "$target") >"$log" 2>&1; then
        execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
        echo "run.sh: $target ok, ${execs:-?} executions" >&2
    else
        failed+=("$target")
        tail -n 40 "$log" >&2
        after="$(find "$here/artifacts/$target" -type f | sort)"
        new="$(comm -13 <(echo "$before") <(echo "$after") || true)"
        echo "run.sh: $target FAILED; input kept at: ${new:-<see log>}" >&2
    fi
done

if ((${#failed[@]})); then
    echo "run.sh: failing targets: ${failed[*]}" >&2
    exit 1
fi
echo "run.sh: all targets ran ${secs}s without a finding" >&2
