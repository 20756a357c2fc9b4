#!/usr/bin/env bash
# Instruction counts of `RouteTable::lookup` on the Runloop table under
# callgrind (noise-free, unlike the wall clock on a shared machine). Each op
# runs 10 000 times inside `routes::counted` (KEYGATE_COUNT in
# benches/routes.rs); the count is divided by 10 000.
#
# Usage: bash benches/callgrind_routes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo bench -p keygate --bench routes --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "routes" and m.get("executable"):
        print(m["executable"])')
out=$(mktemp -d)
printf '| lookup | instructions per call |\n|---|---:|\n'
for op in hit hit_deep miss encoded refused; do
  KEYGATE_COUNT=$op valgrind --tool=callgrind --callgrind-out-file="$out/$op" \
    --toggle-collect='routes::counted*' "$bin" >/dev/null 2>&1
  total=$(grep -m1 '^summary:' "$out/$op" | awk '{print $2}')
  printf '| `%s` | %d |\n' "$op" $((total / 10000))
done
rm -r "$out"
