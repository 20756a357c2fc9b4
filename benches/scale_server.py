#!/usr/bin/env python3
"""The measuring half of benches/cold_start.sh and benches/follower_load.sh.

They make the store (benches/scale_lib.sh) and call this once per run; it
starts `keygate serve` on that store, measures, stops it, and prints one
JSON object on stdout. It reads only what any keygate prints or serves:
the `listening on ADDR` line, the `loaded keys` log line, the process's
/proc status, wrk's output and the metrics endpoint's
`keygate_follower_applied_seq` / `keygate_follower_store_seq`, so it runs
unchanged on a new keyring.

  scale_server.py cold --bin B --db DB --pepper P [--touch-secs S --tokens F]
  scale_server.py follower --bin B --db DB --pepper P --tokens F --parents F2 ...
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

AUTHORIZE = "/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ"
LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scale_tokens.lua")


def rss_kib(pid):
    """VmRSS and VmHWM of `pid`, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


class Server:
    """A `keygate serve` on 127.0.0.1:0, its stderr going to the file `log`
    (the server logs a line per request: read by no one during a run)."""

    def __init__(self, bin, db, pepper, log, metrics=False):
        cmd = [bin, "serve", "--listen", "127.0.0.1:0", "--db", db, "--pepper-file", pepper]
        if metrics:
            cmd += ["--metrics-listen", "127.0.0.1:0"]
        env = dict(os.environ, KEYGATE_LOG=os.environ.get("KEYGATE_LOG", "info"))
        self.log = log
        self.addr = self.metrics = None
        self.loaded = {}
        with open(log, "w") as err:
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(cmd, stderr=err, stdout=subprocess.DEVNULL, env=env)

    def wait_ready(self, timeout=600):
        """Polls the log every 2 ms for `listening on ADDR`; returns the
        seconds from the exec to the poll that saw it."""
        with open(self.log) as f:
            text = ""
            while time.monotonic() - self.t0 < timeout:
                text += f.read()
                m = re.search(r"^listening on (\S+)$", text, re.M)
                if m:
                    self.t_ready = time.monotonic()
                    self.addr = m.group(1)
                    break
                if self.proc.poll() is not None:
                    break
                time.sleep(0.002)
        if self.addr is None:
            self.stop()
            sys.exit(f"error: the server did not start; see {self.log}")
        m = re.search(r"^metrics listening on (\S+)$", text, re.M)
        self.metrics = m.group(1) if m else None
        line = next((l for l in text.splitlines() if "loaded keys" in l), "")
        self.loaded = dict(re.findall(r"(\w+)=(\S+)", line))
        return self.t_ready - self.t0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(300)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wrk(addr, tokens, duration, threads, connections, prefix=()):
    """Runs wrk on /v1/authorize with the tokens of `tokens`; returns req/s,
    p99 (ms), requests and non-2xx answers."""
    env = dict(os.environ, KEYGATE_TOKENS=tokens, WRK_THREADS=str(threads))
    out = subprocess.run(list(prefix) + ["wrk", f"-t{threads}", f"-c{connections}",
                                         f"-d{duration}", "--latency", "-s", LUA,
                                         f"http://{addr}{AUTHORIZE}"],
                         env=env, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale, "requests": requests,
            "non2xx": int(bad.group(1)) if bad else 0}


def check_token(addr, tokens):
    with open(tokens) as f:
        token = f.readline().strip()
    req = urllib.request.Request(f"http://{addr}{AUTHORIZE}",
                                 headers={"Authorization": f"Bearer {token}"})
    code = urllib.request.urlopen(req, timeout=10).status
    if code != 204:
        sys.exit(f"error: authorize answered {code} for a populated key, expected 204")


def cold(args):
    server = Server(args.bin, args.db, args.pepper, args.log)
    try:
        measure_cold(args, server)
    finally:
        server.stop()


def measure_cold(args, server):
    ready_s = server.wait_ready()
    out = {"ready_s": round(ready_s, 3),
           "keys": int(server.loaded.get("keys", 0)),
           "read_ms": int(server.loaded.get("read_ms", -1)),
           "load_ms": int(server.loaded.get("load_ms", -1)),
           "rss_ready_kib": rss_kib(server.proc.pid)["VmRSS"]}
    if args.touch_secs:
        check_token(server.addr, args.tokens)
        w = wrk(server.addr, args.tokens, f"{args.touch_secs}s", args.threads, args.connections)
        out["touch"] = w
        out["rss_touched_kib"] = rss_kib(server.proc.pid)["VmRSS"]
        # The last uses and counts are written every 10 s (and kept since).
        time.sleep(args.after_secs)
        out["rss_after_flush_kib"] = rss_kib(server.proc.pid)["VmRSS"]
    out["hwm_kib"] = rss_kib(server.proc.pid)["VmHWM"]
    print(json.dumps(out))


class Scraper:
    """Reads the follower's progress and the flushes' time from /metrics."""

    def __init__(self, metrics):
        self.url = f"http://{metrics}/metrics"

    def read(self):
        text = urllib.request.urlopen(self.url, timeout=10).read().decode()

        def value(name):
            m = re.search(rf"^{re.escape(name)} ([\d.e+-]+)$", text, re.M)
            return float(m.group(1)) if m else 0.0

        flush = sum(value(f'keygate_flush_duration_seconds_sum{{kind="{k}"}}')
                    for k in ("last_used", "usage"))
        return {"applied": int(value("keygate_follower_applied_seq")),
                "head": int(value("keygate_follower_store_seq")),
                "flush_s": flush,
                "flushes": int(value('keygate_flushes_total{kind="last_used"}'))}


def burst(args, scraper, parent):
    """Revokes `parent` with --cascade through the CLI (another process),
    reading the follower's applied seq every --scrape-ms meanwhile, until
    the CLI has exited and the follower has applied the store's head.

    The follower may apply changes before the CLI exits (its commit comes
    before it closes), so the rate is taken between the first read that
    saw the applied seq move and the read that saw it reach the head, over
    the changes applied in between (the first batch or so is left out)."""
    start = scraper.read()
    t_start = time.monotonic()
    cli = subprocess.Popen([args.bin, "revoke", "--db", args.db, "--pepper-file", args.pepper,
                            "--cascade", parent], stdout=subprocess.DEVNULL)
    first = t_cli = None
    while True:
        seen = scraper.read()
        now = time.monotonic()
        if first is None and seen["applied"] > start["applied"]:
            first, first_applied = now, seen["applied"]
        if t_cli is None and cli.poll() is not None:
            t_cli = now
            if cli.returncode != 0:
                sys.exit(f"error: keygate revoke failed ({cli.returncode})")
        if t_cli is not None and seen["head"] > start["head"] and seen["applied"] >= seen["head"]:
            break
        if now - t_start > 300:
            sys.exit("error: the follower did not apply the burst within 300 s")
        time.sleep(args.scrape_ms / 1000)
    window = now - first
    moved = seen["applied"] - first_applied
    return {"changes": seen["head"] - start["head"], "cli_s": round(t_cli - t_start, 3),
            "first_s": round(first - t_start, 3), "done_s": round(now - t_start, 3),
            "after_cli_s": round(now - t_cli, 3), "window_s": round(window, 3),
            "rate_per_s": round(moved / window) if window > 0 and moved > 0 else None,
            "flush_s": round(seen["flush_s"] - start["flush_s"], 3),
            "flushes": seen["flushes"] - start["flushes"]}


def follower(args):
    with open(args.parents) as f:
        parents = [line.split()[1] for line in f if line.startswith("parent ")]
    server = Server(args.bin, args.db, args.pepper, args.log, metrics=True)
    try:
        measure_follower(args, server, parents)
    finally:
        server.stop()


def measure_follower(args, server, parents):
    server.wait_ready()
    check_token(server.addr, args.tokens)
    scraper = Scraper(server.metrics)
    rounds = []
    for r, parent in enumerate(parents[: args.rounds]):
        s0 = scraper.read()
        idle = wrk(server.addr, args.tokens, args.duration, args.threads, args.connections)
        s1 = scraper.read()
        idle["flush_s"] = round(s1["flush_s"] - s0["flush_s"], 3)
        result = {}

        def load():
            result["wrk"] = wrk(server.addr, args.tokens, args.duration, args.threads,
                                args.connections)

        t = threading.Thread(target=load)
        t.start()
        time.sleep(args.delay)
        applied = burst(args, scraper, parent)
        t.join()
        result["wrk"]["flush_s"] = round(scraper.read()["flush_s"] - s1["flush_s"], 3)
        row = {"round": r + 1, "idle": idle, "burst": result["wrk"], "apply": applied}
        print(json.dumps(row), file=sys.stderr)
        rounds.append(row)
    # The same burst with no load, for comparison.
    quiet = None
    if len(parents) > args.rounds:
        quiet = burst(args, scraper, parents[args.rounds])
    out = {"rounds": rounds, "quiet": quiet,
           "rss_kib": rss_kib(server.proc.pid)["VmRSS"]}
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["cold", "follower"])
    p.add_argument("--bin", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--pepper", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--tokens")
    p.add_argument("--parents")
    p.add_argument("--touch-secs", type=int, default=0)
    p.add_argument("--after-secs", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", default="10s")
    p.add_argument("--delay", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scrape-ms", type=int, default=5)
    args = p.parse_args()
    # A SIGTERM (the calling script interrupted) stops the server too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    {"cold": cold, "follower": follower}[args.mode](args)


if __name__ == "__main__":
    main()
