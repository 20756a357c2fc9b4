//! `examples/runloop.routes`: it parses, and a representative request of
//! every family gets the decision the file argues for.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use keygate::route::MatchedBy;
use keygate::{Access, Decision, Resource, RouteTable};

const RUNLOOP: &str = include_str!("../examples/runloop.routes");

fn table() -> RouteTable {
    RUNLOOP.parse().expect("examples/runloop.routes parses")
}

fn decide(t: &RouteTable, method: &str, path: &str) -> String {
    t.lookup(method, path)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
        .decision()
        .to_string()
}

#[test]
fn every_family_has_its_resource() {
    let t = table();
    let cases: &[(&str, &str, &str)] = &[
        // devboxes, including executions, logs, tunnels, files
        ("GET", "/v1/devboxes", "devboxes:read"),
        ("POST", "/v1/devboxes", "devboxes:write"),
        ("GET", "/v1/devboxes/dbx_1", "devboxes:read"),
        ("POST", "/v1/devboxes/dbx_1/execute", "devboxes:write"),
        ("POST", "/v1/devboxes/dbx_1/execute_async", "devboxes:write"),
        ("POST", "/v1/devboxes/dbx_1/shutdown", "devboxes:write"),
        ("GET", "/v1/devboxes/dbx_1/logs", "devboxes:read"),
        (
            "GET",
            "/v1/devboxes/dbx_1/executions/exe_1",
            "devboxes:read",
        ),
        (
            "GET",
            "/v1/devboxes/dbx_1/executions/exe_1/stream_stdout_updates",
            "devboxes:read",
        ),
        (
            "POST",
            "/v1/devboxes/dbx_1/executions/exe_1/kill",
            "devboxes:write",
        ),
        ("POST", "/v1/devboxes/dbx_1/enable_tunnel", "devboxes:write"),
        ("POST", "/v1/devboxes/dbx_1/upload_file", "devboxes:write"),
        (
            "POST",
            "/v1/devboxes/dbx_1/write_file_contents",
            "devboxes:write",
        ),
        ("POST", "/v1/devboxes/dbx_1/snapshot_disk", "devboxes:write"),
        // the POSTs that read
        (
            "POST",
            "/v1/devboxes/dbx_1/read_file_contents",
            "devboxes:read",
        ),
        ("POST", "/v1/devboxes/dbx_1/download_file", "devboxes:read"),
        (
            "POST",
            "/v1/devboxes/dbx_1/executions/exe_1/wait_for_status",
            "devboxes:read",
        ),
        (
            "POST",
            "/v1/scenarios/runs/run_1/download_logs",
            "scenarios:read",
        ),
        ("POST", "/v1/blueprints/preview", "blueprints:read"),
        // snapshots
        ("GET", "/v1/devboxes/disk_snapshots", "snapshots:read"),
        (
            "GET",
            "/v1/devboxes/disk_snapshots/snp_1/status",
            "snapshots:read",
        ),
        (
            "POST",
            "/v1/devboxes/disk_snapshots/snp_1",
            "snapshots:write",
        ),
        (
            "POST",
            "/v1/devboxes/disk_snapshots/snp_1/delete",
            "snapshots:write",
        ),
        // blueprints
        ("GET", "/v1/blueprints/bpt_1/logs", "blueprints:read"),
        ("POST", "/v1/blueprints", "blueprints:write"),
        ("POST", "/v1/blueprints/bpt_1/delete", "blueprints:write"),
        // benchmarks, runs, jobs
        ("GET", "/v1/benchmarks/list_public", "benchmarks:read"),
        ("POST", "/v1/benchmarks/start_run", "benchmarks:write"),
        (
            "GET",
            "/v1/benchmark_runs/bmr_1/scenario_runs",
            "benchmarks:read",
        ),
        (
            "POST",
            "/v1/benchmark_runs/bmr_1/cancel",
            "benchmarks:write",
        ),
        ("GET", "/v1/benchmark_jobs", "benchmarks:read"),
        ("POST", "/v1/benchmark_jobs", "benchmarks:write"),
        // scenarios
        ("GET", "/v1/scenarios/scn_1", "scenarios:read"),
        ("POST", "/v1/scenarios/start_run", "scenarios:write"),
        ("POST", "/v1/scenarios/runs/run_1/score", "scenarios:write"),
        ("GET", "/v1/scenarios/scorers", "scenarios:read"),
        // repo_connections
        (
            "GET",
            "/v1/repositories/repo_1/inspections",
            "repo_connections:read",
        ),
        (
            "POST",
            "/v1/repositories/repo_1/refresh",
            "repo_connections:write",
        ),
        // agents
        ("GET", "/v1/agents/devbox_counts", "agents:read"),
        ("POST", "/v1/agents/agt_1/delete", "agents:write"),
        // objects
        ("GET", "/v1/objects/obj_1/download", "objects:read"),
        ("POST", "/v1/objects/obj_1/complete", "objects:write"),
        // account
        ("GET", "/v1/accounts/me", "account:read"),
        ("POST", "/v1/apikeys", "account:write"),
        ("POST", "/v1/restricted_keys", "account:write"),
        ("GET", "/v1/keys", "account:read"),
        ("POST", "/v1/keys/key_1/rotate", "account:write"),
        ("DELETE", "/v1/keys/key_1", "account:write"),
        ("GET", "/v1/events", "account:read"),
        // public
        ("GET", "/healthz", "public"),
        ("HEAD", "/healthz", "public"),
        // HEAD follows GET
        ("HEAD", "/v1/objects/obj_1", "objects:read"),
        // outside the nine: denied
        ("GET", "/v1/secrets/GITHUB_TOKEN", "deny"),
        ("POST", "/v1/secrets", "deny"),
        ("POST", "/v1/network-policies/np_1", "deny"),
        ("GET", "/v1/gateway-configs", "deny"),
        ("GET", "/v1/mcp-configs/m_1", "deny"),
        ("POST", "/v1/axons/ax_1/sql/query", "deny"),
        ("GET", "/pty/session", "deny"),
        // unlisted paths and methods: denied
        ("GET", "/v1/unknown", "deny"),
        ("DELETE", "/v1/devboxes/dbx_1", "deny"),
        ("PUT", "/v1/objects/obj_1", "deny"),
        ("GET", "/v2/devboxes", "deny"),
        ("GET", "/", "deny"),
    ];
    for (method, path, want) in cases {
        assert_eq!(decide(&t, method, path), *want, "{method} {path}");
    }
}

#[test]
fn every_resource_is_reachable_for_read_and_write() {
    let t = table();
    for resource in Resource::ALL {
        for access in [Access::Read, Access::Write] {
            assert!(
                t.rules()
                    .any(|r| r.decision() == Decision::Scope(resource, access)),
                "{resource}:{access}"
            );
        }
    }
}

#[test]
fn unmatched_is_nothing_and_not_a_default() {
    let t = table();
    assert!(t.default_decision().is_none());
    let m = t.lookup("GET", "/v1/nope").unwrap();
    assert_eq!(m.matched_by(), MatchedBy::Nothing);
}

#[test]
fn path_confusion_is_refused() {
    let t = table();
    for path in [
        "/v1/devboxes/..%2Faccounts/me",
        "/v1/devboxes/%2e%2e/secrets",
        "/v1/devboxes/../secrets",
        "/v1//secrets",
        "/v1/secrets;x/y",
        "/v1/devboxes%2Fdisk_snapshots",
        "/v1/devboxes/dbx_1%00/read_file_contents",
    ] {
        assert_eq!(
            t.lookup("GET", path).map_err(|e| e.http_status()),
            Err(400),
            "{path}"
        );
    }
}

/// Each of the seven named methods finds its own rule, ahead of a `*` rule
/// for the same path; any other method finds only the `*` rule.
#[test]
fn every_named_method_finds_its_own_rule() {
    let t: RouteTable = "GET     /m  devboxes:read\n\
                         HEAD    /m  agents:read\n\
                         POST    /m  devboxes:write\n\
                         PUT     /m  agents:write\n\
                         PATCH   /m  blueprints:write\n\
                         DELETE  /m  snapshots:write\n\
                         OPTIONS /m  public\n\
                         *       /m  deny\n"
        .parse()
        .unwrap();
    for (method, want) in [
        ("GET", "devboxes:read"),
        ("HEAD", "agents:read"),
        ("POST", "devboxes:write"),
        ("PUT", "agents:write"),
        ("PATCH", "blueprints:write"),
        ("DELETE", "snapshots:write"),
        ("OPTIONS", "public"),
        ("PROPFIND", "deny"),
        ("put", "deny"),
    ] {
        assert_eq!(decide(&t, method, "/m"), want, "{method}");
    }
}

/// The table's and its rules' accessors report what the text says.
#[test]
fn table_and_rule_accessors() {
    let t: RouteTable = "# comment\nGET /a/{id} devboxes:read\n\nPOST /b/** deny\ndefault public\n"
        .parse()
        .unwrap();
    assert_eq!(t.len(), 2);
    assert!(!t.is_empty());
    assert_eq!(t.default_decision(), Some((Decision::Public, 5)));
    let rules: Vec<String> = t.rules().map(|r| r.to_string()).collect();
    assert_eq!(rules, ["GET /a/{id} devboxes:read", "POST /b/** deny"]);
    let patterns: Vec<&str> = t.rules().map(|r| r.pattern()).collect();
    assert_eq!(patterns, ["/a/{id}", "/b/**"]);
    let lines: Vec<u32> = t.rules().map(|r| r.line()).collect();
    assert_eq!(lines, [2, 4]);
    assert_eq!(
        t.rules().next().map(|r| r.decision()),
        Some(Decision::Scope(Resource::Devboxes, Access::Read))
    );

    let empty: RouteTable = "# nothing\n".parse().unwrap();
    assert_eq!(empty.len(), 0);
    assert!(empty.is_empty());
    assert_eq!(empty.default_decision(), None);
    let only_default: RouteTable = "default deny".parse().unwrap();
    assert!(only_default.is_empty());
    assert_eq!(only_default.default_decision(), Some((Decision::Deny, 1)));
}

/// `explain` names the winner and says why each other candidate lost.
#[test]
fn explain_says_why_each_candidate_lost() {
    let t: RouteTable = "GET /v1/devboxes/{id} devboxes:read\n\
                         GET /v1/devboxes/dbx_1 devboxes:write\n\
                         GET /v1/** objects:read\n\
                         GET /v1/devboxes/{id}/** agents:read\n\
                         *   /v1/devboxes/dbx_1 deny\n"
        .parse()
        .unwrap();
    let text = t.explain("GET", "/v1/devboxes/dbx_1").unwrap().to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "request:  GET /v1/devboxes/dbx_1");
    assert_eq!(
        lines[1],
        "decision: devboxes:write (line 2: GET /v1/devboxes/dbx_1 devboxes:write)"
    );
    let why: Vec<(&str, &str)> = lines[2..]
        .iter()
        .map(|l| {
            // `  line NNNN: ` (13 bytes), the rule padded to 64, a space.
            let (rule, why) = l.split_at(78);
            (rule.trim(), why.trim())
        })
        .collect();
    assert_eq!(
        why,
        [
            (
                "line    2: GET /v1/devboxes/dbx_1 devboxes:write",
                "wins: the most specific match"
            ),
            (
                "line    5: * /v1/devboxes/dbx_1 deny",
                "equally specific path; the request's own method beats `*`"
            ),
            (
                "line    1: GET /v1/devboxes/{id} devboxes:read",
                "loses at segment 3 (`dbx_1`): a literal beats a `{…}`/`*` segment"
            ),
            (
                "line    4: GET /v1/devboxes/{id}/** agents:read",
                "loses at segment 3 (`dbx_1`): a literal beats a `{…}`/`*` segment"
            ),
            (
                "line    3: GET /v1/** objects:read",
                "loses at segment 2 (`devboxes`): a literal beats `**`"
            ),
        ]
    );
    // An exact end beats a trailing `**`.
    let t: RouteTable = "GET /a/** deny\nGET /a public\n".parse().unwrap();
    let text = t.explain("GET", "/a").unwrap().to_string();
    assert!(
        text.contains("loses at segment 2 (past the end of the path): an exact end beats `**`"),
        "{text}"
    );
}

/// For `HEAD`, a `GET` rule stands in ahead of a `*` rule, and `explain`
/// says so.
#[test]
fn explain_names_get_standing_in_for_head() {
    let t: RouteTable = "GET /a devboxes:read\n* /a deny\n".parse().unwrap();
    assert_eq!(decide(&t, "HEAD", "/a"), "devboxes:read");
    let text = t.explain("HEAD", "/a").unwrap().to_string();
    assert!(
        text.contains("equally specific path; `GET` standing in for `HEAD` beats `*`"),
        "{text}"
    );
}

/// A pattern has at most 64 segments: 64 parse, 65 do not.
#[test]
fn patterns_have_at_most_64_segments() {
    let pattern = |n: usize| "/s".repeat(n);
    let t: RouteTable = format!("GET {} public", pattern(64)).parse().unwrap();
    assert_eq!(decide(&t, "GET", &pattern(64)), "public");
    let err = format!("GET {} public", pattern(65))
        .parse::<RouteTable>()
        .unwrap_err();
    assert!(err.to_string().contains("at most 64 segments"), "{err}");
}
