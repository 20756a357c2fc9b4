#!/usr/bin/env python3
"""Prints the medians of the last `cargo bench` run as a Markdown table.

Criterion's console line shows the mean; this reads each bench's median
from target/criterion/<group>/<bench>/new/estimates.json, and the fastest
sample (per-iteration time of the quickest sample, the least disturbed by
other load) from sample.json. Ratios use the medians of the same run.

Usage: python3 benches/medians.py [target/criterion]
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")


def fmt(ns):
    if ns < 10:
        return f"{ns:.2f} ns"
    if ns < 1000:
        return f"{ns:.1f} ns"
    return f"{ns / 1000:.3f} µs"


rows = {}
for est in sorted(root.glob("**/new/estimates.json")):
    bench = json.loads((est.parent / "benchmark.json").read_text())["full_id"]
    data = json.loads(est.read_text())
    median = data["median"]["point_estimate"]
    sample = json.loads((est.parent / "sample.json").read_text())
    best = min(t / i for t, i in zip(sample["times"], sample["iters"]))
    rows[bench] = (median, best)

print("| bench | median | fastest sample |")
print("|---|---:|---:|")
for bench, (median, best) in rows.items():
    print(f"| `{bench}` | {fmt(median)} | {fmt(best)} |")

floor = rows.get("verify/floor_keyed_60B_eq")
one = rows.get("verify/authenticate_can/1")
if floor:
    print()
    print("| ratio | median | fastest sample |")
    print("|---|---:|---:|")
    for bench, (median, best) in rows.items():
        if bench.startswith("verify/") and "floor" not in bench:
            name = bench.removeprefix("verify/")
            print(f"| `{name}` / floor (60 B + eq) | {median / floor[0]:.2f}× | {best / floor[1]:.2f}× |")
    if one:
        for bench, (median, best) in rows.items():
            if bench.startswith("verify/authenticate_can/1M"):
                name = bench.removeprefix("verify/")
                print(f"| `{name}` / `authenticate_can/1` | {median / one[0]:.2f}× | {best / one[1]:.2f}× |")
