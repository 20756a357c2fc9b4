#!/usr/bin/env python3
# The time of a 404 for an unknown id against another tenant's id, as one
# tenant sees it (SECURITY.md, BENCHMARKS.md). Usage:
#   cargo build --release -p keygate-server
#   python3 scripts/bench-scoped-404.py target/release/keygate 2000
# (2000 other keys in the table; 400 requests of each kind, interleaved.)
import subprocess, re, json, time, http.client, statistics, os, sys, tempfile
d = tempfile.mkdtemp()
log = open(d+"/log", "w")
p = subprocess.Popen([sys.argv[1], "serve", "--listen", "127.0.0.1:0", "--db", d+"/k.db", "--attenuate"], stderr=log, text=True, env=dict(os.environ, KEYGATE_LOG="warn"))
port=None
while port is None:
    time.sleep(0.1)
    m = re.search(r"listening on 127.0.0.1:(\d+)", open(d+"/log").read())
    if m: port=int(m.group(1))
admin = open(d+"/k.db.bootstrap-key").read().strip()
c = http.client.HTTPConnection("127.0.0.1", port)
def req(method, path, tok, body=None):
    c.request(method, path, body=body, headers={"Authorization": "Bearer "+tok, "Content-Type":"application/json"})
    r = c.getresponse(); data = r.read(); return r.status, data
scopes = '{"scopes":[{"resource_type":"RESOURCE_TYPE_ACCOUNT","access_level":"ACCESS_LEVEL_WRITE"}]}'
A = json.loads(req("POST","/v1/restricted_keys",admin,scopes)[1])
B = json.loads(req("POST","/v1/restricted_keys",admin,scopes)[1])
a_child = json.loads(req("POST","/v1/restricted_keys",A["key_secret"],scopes)[1])
req("POST","/v1/restricted_keys",B["key_secret"],scopes)
for i in range(int(sys.argv[2])):
    req("POST","/v1/apikeys",admin,"{}")
unknown = "zzzzzzzzzzzzzzzz"
res = {"unknown":[], "other":[]}
for i in range(400):
    for name, kid in (("unknown", unknown), ("other", a_child["id"])):
        t=time.perf_counter(); s,_=req("GET","/v1/keys/"+kid,B["key_secret"]); res[name].append(time.perf_counter()-t)
        assert s==404, s
for k,v in res.items():
    v.sort(); print(k, "median %.1f us, p10 %.1f us" % (statistics.median(v)*1e6, v[len(v)//10]*1e6))
p.terminate()
