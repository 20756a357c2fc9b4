#!/usr/bin/env bash
# Cold start and memory of `keygate serve` with many keys (issue 20): for
# each backend and key count, a store filled with that many valid keys
# (`keygate bench-populate`), then RUNS starts of a release server on it,
# each timed from the exec to its `listening on ADDR` line (keyring loaded,
# follower caught up, listening); the process's RSS then. The `loaded keys`
# log line's `read_ms` (the store's snapshot) and `load_ms` (filling the
# keyring) split the start. With TOUCH_SECS > 0, one more start runs wrk on
# /v1/authorize over every key's token for that long (so last-used times and
# usage counts exist for as many keys as it made requests, up to all), and
# reads the RSS right after and again after the next flush.
#
#   benches/cold_start.sh
#   KEYS="100000 1000000" BACKENDS="sqlite postgres" RUNS=5 TOUCH_SECS=40 benches/cold_start.sh
#
# Env: KEYS ("100000 1000000"), BACKENDS ("sqlite postgres"), RUNS (3),
# TOUCH_SECS (0: skip), THREADS (2), CONNECTIONS (32), BIN, WORK_DIR (see
# benches/scale_lib.sh). The OS page cache is warm (the store was just
# written, and each run reads it): this is a restart's start, not a boot's.
set -euo pipefail

. "$(dirname "$0")/scale_lib.sh"
KEYS=${KEYS:-100000 1000000}
BACKENDS=${BACKENDS:-sqlite postgres}
RUNS=${RUNS:-3}
TOUCH_SECS=${TOUCH_SECS:-0}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}

echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $BIN" >&2
RESULTS="$WORK/results.jsonl"
for backend in $BACKENDS; do
    for n in $KEYS; do
        name="kg_${backend}_$n"
        t0=$(date +%s.%N)
        populate "$backend" "$name" "$n"
        echo "$backend $n: populated in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s" >&2
        for run in $(seq "$RUNS"); do
            out=$(python3 "$ROOT/benches/scale_server.py" cold --bin "$BIN" --db "$DB" \
                --pepper "$PEPPER" --log "$WORK/$name.serve.log")
            echo "$backend $n run $run: $out" >&2
            echo "{\"backend\": \"$backend\", \"n\": $n, \"run\": $run, \"cold\": $out}" >> "$RESULTS"
        done
        if [ "$TOUCH_SECS" -gt 0 ]; then
            out=$(python3 "$ROOT/benches/scale_server.py" cold --bin "$BIN" --db "$DB" \
                --pepper "$PEPPER" --log "$WORK/$name.touch.log" --tokens "$WORK/$name.tokens" \
                --touch-secs "$TOUCH_SECS" --threads "$THREADS" --connections "$CONNECTIONS")
            echo "$backend $n touched: $out" >&2
            echo "{\"backend\": \"$backend\", \"n\": $n, \"touched\": $out}" >> "$RESULTS"
        fi
        # The store is not needed any more: free the disk.
        [ "$backend" = sqlite ] && rm -f "$DB" "$DB-wal" "$DB-shm"
        [ "$backend" = postgres ] && as_pg "$PGBIN/dropdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$name"
    done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mib = lambda kib: kib / 1024
print("backend   keys      ready (median, runs)         read_ms  load_ms  RSS at ready")
for key in dict.fromkeys((r["backend"], r["n"]) for r in rows):
    cold = [r["cold"] for r in rows if (r["backend"], r["n"]) == key and "cold" in r]
    if not cold:
        continue
    ready = [c["ready_s"] for c in cold]
    med = lambda k: statistics.median(c[k] for c in cold)
    print(f"{key[0]:9} {key[1]:<9} {statistics.median(ready):6.2f} s ({', '.join(f'{x:.2f}' for x in ready)})"
          f"  {med('read_ms'):7.0f}  {med('load_ms'):7.0f}  {mib(med('rss_ready_kib')):7.1f} MiB")
for r in rows:
    if "touched" in r:
        t = r["touched"]
        w = t["touch"]
        print(f"{r['backend']:9} {r['n']:<9} touched: {w['requests']} requests ({w['rps']:.0f} req/s, "
              f"non-2xx {w['non2xx']}): RSS {mib(t['rss_ready_kib']):.1f} MiB at ready, "
              f"{mib(t['rss_touched_kib']):.1f} MiB after the load, "
              f"{mib(t['rss_after_flush_kib']):.1f} MiB after a flush; peak {mib(t['hwm_kib']):.1f} MiB")
EOF
