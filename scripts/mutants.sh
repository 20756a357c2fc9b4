#!/usr/bin/env bash
# Mutation testing with cargo-mutants: how strong are the tests?
#
#   scripts/mutants.sh                      # every mutant of the library (about 25 min unloaded)
#   scripts/mutants.sh src/scope.rs src/keyring   # only these files / directories
#   scripts/mutants.sh --list               # list the mutants; checks that .cargo/mutants.toml parses
#   scripts/mutants.sh --fast src/token.rs  # unit + integration tests only, no doctests
#   scripts/mutants.sh --server server/src/http/keys.rs   # the server's pure logic (its unit tests)
#   scripts/mutants.sh --daily              # CI: one library module chosen by the day, 5 min budget
#
# The library runs use all features and `cargo test`'s default targets: unit,
# integration and doc tests. The per-mutant test timeout is 4x the baseline
# (proptest cases vary in run time), at least 60 s. Exclusions for
# equivalent mutants live in .cargo/mutants.toml, each with its reason.
#
# Output: cargo-mutants' own files in $MUTANTS_OUT (default mutants.out/:
# caught.txt, missed.txt, timeout.txt, unviable.txt, outcomes.json) plus
# summary.txt with the counts, which the README's "Mutation testing" section quotes.
# Exit status: 0 when no mutant was missed, 2 when some were (cargo-mutants' code).
#
# Environment: JOBS (default 1: the CI machine has 2 shared cores),
# MUTANTS_OUT, MUTANTS_TARGET_DIR (a target dir kept between runs so that the
# dependencies build once; default target/mutants), MUTANTS_BUDGET (seconds, --daily only).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-mutants >/dev/null 2>&1; then
    echo "installing cargo-mutants 27" >&2
    cargo install cargo-mutants --locked --version '^27'
fi

package=keygate
# Passed to both `cargo test --no-run` and `cargo test`, so that only these
# targets are built for each mutant.
test_args=()
list=0
daily=0
files=()
while [ $# -gt 0 ]; do
    case $1 in
    --list) list=1 ;;
    --fast) test_args=(--lib --tests) ;;
    --server)
        package=keygate-server
        # Unit tests only: the real-process tests take seconds per mutant.
        test_args=(--bins)
        ;;
    --daily) daily=1 ;;
    -h | --help)
        sed -n '2,23p' "$0"
        exit 0
        ;;
    -*)
        echo "unknown option $1" >&2
        exit 64
        ;;
    *) files+=("$1") ;;
    esac
    shift
done

if [ "$daily" = 1 ]; then
    # One module a day, in a fixed order, so a week covers the library.
    # A directory stands for its files and its parent module (src/limit: src/limit.rs too).
    modules=(src/scope.rs src/token.rs src/error.rs src/wire.rs src/mint.rs src/key.rs
        src/secret.rs src/keyring src/feed.rs src/roll.rs src/lineage.rs src/tower.rs src/time.rs
        src/route src/limit src/testing.rs)
    # Every library source file must be in the list, or it would never be tested.
    for f in src/*.rs src/*/*.rs; do
        case $f in src/lib.rs) continue ;; esac
        covered=0
        for m in "${modules[@]}"; do
            case $f in "$m" | "$m".rs | "$m"/*) covered=1 ;; esac
        done
        if [ "$covered" = 0 ]; then
            echo "scripts/mutants.sh: $f is in no module of --daily's list" >&2
            exit 64
        fi
    done
    day=$((10#$(date -u +%j)))
    files=("${modules[$((day % ${#modules[@]}))]}")
    test_args=(--lib --tests)
    echo "mutants of the day: ${files[*]}" >&2
fi

args=(mutants --package "$package" --all-features
    --timeout-multiplier 4 --minimum-test-timeout 60
    --jobs "${JOBS:-1}" --output "${MUTANTS_OUT:-.}")
for a in "${test_args[@]}"; do
    args+=("--cargo-arg=$a")
done
for f in "${files[@]}"; do
    if [ -d "$f" ]; then
        args+=(--file "$f/**/*.rs" --file "$f.rs")
    else
        args+=(--file "$f")
    fi
done

if [ "$list" = 1 ]; then
    cargo "${args[@]}" --list
    exit 0
fi

export CARGO_TARGET_DIR=${MUTANTS_TARGET_DIR:-$PWD/target/mutants}
out=${MUTANTS_OUT:-.}/mutants.out
status=0
if [ "$daily" = 1 ]; then
    # SIGINT: cargo-mutants stops cleanly and keeps what it has found so far.
    # Build the dependencies first, outside the budget.
    cargo test --package "$package" --all-features --no-run "${test_args[@]}" >/dev/null
    timeout --signal=INT "${MUTANTS_BUDGET:-300}" cargo "${args[@]}" || status=$?
    if [ "$status" = 124 ]; then
        echo "budget of ${MUTANTS_BUDGET:-300} s used up; the mutants tested so far are below" >&2
        status=0
    fi
else
    cargo "${args[@]}" || status=$?
fi

count() { if [ -f "$out/$1.txt" ]; then grep -c . "$out/$1.txt" || true; else echo 0; fi; }
caught=$(count caught)
missed=$(count missed)
timeouts=$(count timeout)
unviable=$(count unviable)
{
    echo "cargo-mutants $(cargo mutants --version | awk '{print $2}') on $(date -u +%F), package $package"
    echo "files: ${files[*]:-all}; tests: cargo test ${test_args[*]:-(all targets and doctests)}"
    echo "mutants:  $((caught + missed + timeouts + unviable))"
    echo "caught:   $caught"
    echo "missed:   $missed"
    echo "timeouts: $timeouts"
    echo "unviable: $unviable"
} >"$out/summary.txt"
cat "$out/summary.txt"
if [ "$missed" != 0 ]; then
    echo "missed mutants (kill each with a test, or exclude it in .cargo/mutants.toml with a reason):" >&2
    cat "$out/missed.txt" >&2
    [ "$status" = 0 ] && status=2
fi
exit "$status"
