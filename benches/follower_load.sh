#!/usr/bin/env bash
# The follower's throughput at many keys under full authorize load (issue
# 20): a store of KEYS valid keys (`keygate bench-populate`), of which
# ROUNDS + 1 are parents of BURST children each; one release `keygate serve`
# on it with `--metrics-listen`. Each round: wrk on /v1/authorize over the
# plain keys' tokens for DURATION with nothing else (idle), then again while,
# DELAY seconds in, `keygate revoke --cascade PARENT` (the CLI, another
# process) writes BURST + 1 revocations in one transaction; the follower's
# applied seq is read from /metrics every SCRAPE_MS until it reaches the
# store's head. Reported: the CLI's write time, the time from its exit to
# the last change applied, changes per second over that, and wrk's req/s and
# p99 during the burst's window against idle. A last burst with no load.
#
#   benches/follower_load.sh
#   BACKENDS=postgres KEYS=1000000 BURST=100000 ROUNDS=3 benches/follower_load.sh
#
# Env: KEYS (1000000, parents and children included), BURST (100000), ROUNDS
# (3), BACKENDS ("sqlite postgres"), DURATION (10s), DELAY (2), SCRAPE_MS
# (5), THREADS (2), CONNECTIONS (32), BIN, WORK_DIR (see benches/scale_lib.sh).
set -euo pipefail

. "$(dirname "$0")/scale_lib.sh"
KEYS=${KEYS:-1000000}
BURST=${BURST:-100000}
ROUNDS=${ROUNDS:-3}
BACKENDS=${BACKENDS:-sqlite postgres}
DURATION=${DURATION:-10s}
DELAY=${DELAY:-2}
SCRAPE_MS=${SCRAPE_MS:-5}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
FAMILIES=$((ROUNDS + 1))
PLAIN=$((KEYS - FAMILIES * (BURST + 1)))
[ "$PLAIN" -gt 0 ] || { echo "error: KEYS must exceed (ROUNDS + 1) * (BURST + 1)" >&2; exit 1; }

echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $BIN" >&2
RESULTS="$WORK/results.jsonl"
for backend in $BACKENDS; do
    name="kg_follow_$backend"
    populate "$backend" "$name" "$PLAIN" --families "$FAMILIES" --children "$BURST"
    out=$(python3 "$ROOT/benches/scale_server.py" follower --bin "$BIN" --db "$DB" \
        --pepper "$PEPPER" --log "$WORK/$name.serve.log" --tokens "$WORK/$name.tokens" \
        --parents "$WORK/$name.parents" --rounds "$ROUNDS" --duration "$DURATION" \
        --delay "$DELAY" --scrape-ms "$SCRAPE_MS" --threads "$THREADS" --connections "$CONNECTIONS")
    echo "{\"backend\": \"$backend\", \"keys\": $KEYS, \"follower\": $out}" >> "$RESULTS"
    [ "$backend" = sqlite ] && rm -f "$DB" "$DB-wal" "$DB-shm"
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
med = statistics.median
for line in open(sys.argv[1]):
    r = json.loads(line)
    f = r["follower"]
    rounds = f["rounds"]
    print(f"{r['backend']}, {r['keys']} keys, RSS at the end {f['rss_kib'] / 1024:.1f} MiB")
    print("round  changes  CLI      applied   window   changes/s  flush in burst | idle req/s  p99 ms  flush s | burst req/s  p99 ms  flush s")
    rate = lambda a: a["rate_per_s"] or 0
    for x in rounds:
        a, i, b = x["apply"], x["idle"], x["burst"]
        print(f"{x['round']:5}  {a['changes']:7}  {a['cli_s']:5.2f} s  {a['done_s']:6.2f} s  {a['window_s']:5.2f} s"
              f"  {rate(a):9}  {a['flush_s']:5.2f} s        | {i['rps']:10.0f}  {i['p99_ms']:6.2f}  {i['flush_s']:7.2f} |"
              f" {b['rps']:11.0f}  {b['p99_ms']:6.2f}  {b['flush_s']:7.2f}"
              + (f"  (non-2xx {i['non2xx']}/{b['non2xx']})" if i['non2xx'] or b['non2xx'] else ""))
    m = lambda k, part: med(x[part][k] for x in rounds)
    mr = med(rate(x["apply"]) for x in rounds)
    print(f"median {m('changes', 'apply'):7.0f}  {m('cli_s', 'apply'):5.2f} s  {m('done_s', 'apply'):6.2f} s"
          f"  {m('window_s', 'apply'):5.2f} s  {mr:9.0f}  {m('flush_s', 'apply'):5.2f} s        |"
          f" {m('rps', 'idle'):10.0f}  {m('p99_ms', 'idle'):6.2f}  {m('flush_s', 'idle'):7.2f} |"
          f" {m('rps', 'burst'):11.0f}  {m('p99_ms', 'burst'):6.2f}  {m('flush_s', 'burst'):7.2f}")
    print(f"burst/idle req/s {m('rps', 'burst') / m('rps', 'idle'):.1%}, p99 {m('p99_ms', 'burst') / m('p99_ms', 'idle'):.2f}x")
    q = f.get("quiet")
    if q:
        print(f"no load: {q['changes']} changes, CLI {q['cli_s']:.2f} s, all applied {q['done_s']:.2f} s "
              f"after its start, window {q['window_s']:.2f} s: {q['rate_per_s']} changes/s, flush {q['flush_s']:.2f} s")
EOF
