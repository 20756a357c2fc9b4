#!/usr/bin/env bash
# Instruction counts of the hot path under callgrind: noise-free, unlike the
# wall clock on a shared machine. Each op runs 10 000 times inside
# `hot_path::counted` (see KEYGATE_COUNT in benches/hot_path.rs); only those
# calls are counted, and the count is divided by 10 000.
#
# Note: valgrind does not emulate AVX-512, so blake3 runs its SSE4.1
# compression here, not the AVX-512 one it picks natively.
#
# Usage: bash benches/callgrind.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo bench -p keygate --bench hot_path --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "hot_path" and m.get("executable"):
        print(m["executable"])')
out=$(mktemp -d)
declare -A ir
for op in can parse floor floor_eq floor_48_eq auth_1 auth_10k unknown_id wrong_secret expired; do
  KEYGATE_COUNT=$op valgrind --tool=callgrind --callgrind-out-file="$out/$op" \
    --toggle-collect='hot_path::counted*' "$bin" >/dev/null 2>&1
  total=$(grep -m1 '^summary:' "$out/$op" | awk '{print $2}')
  ir[$op]=$((total / 10000))
done
rm -r "$out"
printf '| op | instructions per call | / floor (60 B + eq) |\n|---|---:|---:|\n'
for op in can parse floor floor_eq floor_48_eq auth_1 auth_10k unknown_id wrong_secret expired; do
  printf '| `%s` | %d | %s |\n' "$op" "${ir[$op]}" \
    "$(python3 -c "print(f'{${ir[$op]} / ${ir[floor_eq]}:.2f}×')")"
done
