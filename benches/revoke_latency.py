#!/usr/bin/env python3
"""Time from a CLI revocation to the running server's first refusal.

    benches/revoke_latency.py [--revokes 100] [--poll-ms 100] [--bin target/release/keygate]

Starts a throwaway `keygate serve` on 127.0.0.1:0 over a temporary database,
mints N keys over HTTP, then for each: checks the key is accepted, runs
`keygate revoke ID` on the same database (another process, as an operator
would), and from the moment that command exits (its transaction has
committed) polls `/v1/authorize` with the key until it answers 401. Prints
p50, p99 and max of those times, in milliseconds, and the poll interval.
The server learns of the revocation by reading the change log every
`--poll-ms`, so the expected figure is about half the interval, plus the
poll's own cost.
"""
import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--revokes", type=int, default=100)
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/keygate"))
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="keygate-revoke-")
    db = os.path.join(work, "keygate.db")
    server = subprocess.Popen(
        [args.bin, "serve", "--listen", "127.0.0.1:0", "--db", db,
         "--poll-ms", str(args.poll_ms)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "KEYGATE_LOG": "warn"},
    )
    try:
        addr = None
        for line in server.stderr:
            if line.startswith("listening on "):
                addr = line.split()[-1]
                break
        if addr is None:
            print("error: the server did not start", file=sys.stderr)
            return 1
        host, port = addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port))
        with open(db + ".bootstrap-key") as f:
            admin = f.read().strip()

        def call(method, path, token, body=None):
            conn.request(method, path, body=body,
                         headers={"Authorization": f"Bearer {token}"})
            r = conn.getresponse()
            return r.status, r.read()

        authorize = ("/v1/authorize?resource_type=RESOURCE_TYPE_OBJECTS"
                     "&access_level=ACCESS_LEVEL_READ")
        times = []
        for _ in range(args.revokes):
            status, body = call("POST", "/v1/apikeys", admin, b"{}")
            assert status == 200, body
            view = json.loads(body)
            token, key_id = view["key_secret"], view["id"]
            assert call("GET", authorize, token)[0] == 204
            subprocess.run([args.bin, "revoke", key_id, "--db", db], check=True,
                           stdout=subprocess.DEVNULL)
            committed = time.perf_counter()
            while True:
                status, _ = call("GET", authorize, token)
                if status == 401:
                    break
                assert status == 204, status
                if time.perf_counter() - committed > 5:
                    print("error: still accepted 5 s after the revocation", file=sys.stderr)
                    return 1
            times.append((time.perf_counter() - committed) * 1000)
        times.sort()
        pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
        print(f"revocations: {len(times)}, poll interval {args.poll_ms} ms")
        print(f"cli revoke -> first refusal (ms): p50 {pick(0.50):.1f}, "
              f"p99 {pick(0.99):.1f}, max {times[-1]:.1f}, min {times[0]:.1f}")
        return 0
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
