//! Rate limits and credits on the gateway's decision, over real HTTP:
//! `/v1/authorize` in its fixed-scope form and in forward-auth by a route
//! table with `cost=N`. The order of checks (401, 403, then 429 for the
//! rate limit, then 429 for the credits), the 429 documents, `Retry-After`,
//! and the `RateLimit-Policy`/`RateLimit`/`Keygate-Credits-Remaining` fields.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

/// A restricted key with `scopes` and the extension fields `extra` (JSON
/// members, without braces), minted through the HTTP API.
fn create(server: &Server, scope: &str, extra: &str) -> (String, String) {
    let body = format!(
        r#"{{"scopes":[{{"resource_type":"RESOURCE_TYPE_{scope}","access_level":"ACCESS_LEVEL_WRITE"}}]{extra}}}"#
    );
    let resp = server.authed("POST", "/v1/restricted_keys", server.token(), Some(&body));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key_secret"].as_str().unwrap().to_owned(),
    )
}

fn authorize_cost(server: &Server, token: &str, cost: &str) -> Resp {
    server.authed(
        "GET",
        &format!("/v1/authorize?resource_type=RESOURCE_TYPE_OBJECTS&access_level=ACCESS_LEVEL_READ{cost}"),
        token,
        None,
    )
}

/// A 429 problem of `kind`; returns the response for its headers.
fn too_many(resp: &Resp, kind: &str) {
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    let v = resp.json();
    assert_eq!(v["type"], format!("urn:keygate:problem:{kind}"));
    assert_eq!(v["status"], 429);
    assert_eq!(v["title"], "Too Many Requests");
}

#[test]
fn a_rate_limit_allows_its_burst_then_429_with_retry_after() {
    let dir = TempDir::new("limits-rate");
    let server = Server::start(&dir.db(), &[]);
    let (_, token) = create(
        &server,
        "OBJECTS",
        r#","rate_limit":{"limit":3,"period_ms":60000}"#,
    );
    for left in ["2", "1", "0"] {
        let resp = server.authorize(&token, "OBJECTS", "READ");
        assert_eq!(resp.status, 204);
        assert_eq!(resp.header("ratelimit-policy"), Some(r#""rate";q=3;w=60"#));
        let rate = resp.header("ratelimit").unwrap();
        assert!(
            rate.starts_with(&format!(r#""rate";r={left};t="#)),
            "{rate}"
        );
        assert_eq!(resp.header("keygate-credits-remaining"), None);
    }
    let resp = server.authorize(&token, "OBJECTS", "READ");
    too_many(&resp, "rate-limited");
    // One request drains in 20 s.
    let wait: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((19..=20).contains(&wait), "{wait}");
    assert!(resp
        .header("ratelimit")
        .unwrap()
        .starts_with(r#""rate";r=0;"#));
    // A scope the key lacks is 403 before any limit, and spends nothing.
    assert_eq!(server.authorize(&token, "DEVBOXES", "READ").status, 403);
    // A probe (cost 0) is refused too while the limit is reached.
    too_many(&authorize_cost(&server, &token, "&cost=0"), "rate-limited");
}

#[test]
fn credits_are_spent_by_cost_and_refused_whole() {
    let dir = TempDir::new("limits-credits");
    let server = Server::start(&dir.db(), &[]);
    let (_, token) = create(&server, "OBJECTS", r#","credits":{"remaining":5}"#);
    // A probe spends nothing.
    let resp = authorize_cost(&server, &token, "&cost=0");
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("keygate-credits-remaining"), Some("5"));
    let resp = authorize_cost(&server, &token, "&cost=3");
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("keygate-credits-remaining"), Some("2"));
    assert_eq!(resp.header("ratelimit"), None);
    // 3 more than the 2 left: refused whole, nothing spent, no refill to wait for.
    let resp = authorize_cost(&server, &token, "&cost=3");
    too_many(&resp, "credits-exhausted");
    assert_eq!(resp.header("retry-after"), None);
    assert_eq!(resp.header("keygate-credits-remaining"), Some("2"));
    assert_eq!(authorize_cost(&server, &token, "&cost=2").status, 204);
    too_many(&authorize_cost(&server, &token, ""), "credits-exhausted");
    // A bad cost is 400, naming the parameter.
    for bad in ["&cost=-1", "&cost=x", "&cost=1&cost=1", "&cost=4294967296"] {
        let detail = authorize_cost(&server, &token, bad).problem(400);
        assert!(detail.contains("`cost`"), "{bad}: {detail}");
    }
    // The order of checks: no key 401, another scope 403, both before 429.
    assert_eq!(
        server
            .req(
                "GET",
                "/v1/authorize?resource_type=RESOURCE_TYPE_OBJECTS&access_level=ACCESS_LEVEL_READ",
                &[],
                None
            )
            .status,
        401
    );
    assert_eq!(server.authorize(&token, "AGENTS", "READ").status, 403);
}

#[test]
fn refusals_are_counted_by_kind_in_the_keys_usage() {
    let dir = TempDir::new("limits-usage");
    let server = Server::start(&dir.db(), &[]);
    let (id, token) = create(
        &server,
        "OBJECTS",
        r#","rate_limit":{"limit":2,"period_ms":600000},"credits":{"remaining":1}"#,
    );
    assert_eq!(server.authorize(&token, "OBJECTS", "READ").status, 204);
    too_many(
        &server.authorize(&token, "OBJECTS", "READ"),
        "credits-exhausted",
    );
    for _ in 0..3 {
        too_many(&server.authorize(&token, "OBJECTS", "READ"), "rate-limited");
    }
    assert_eq!(server.authorize(&token, "AGENTS", "READ").status, 403);
    let usage = server.authed(
        "GET",
        &format!("/v1/keys/{id}/usage?bucket=day"),
        server.token(),
        None,
    );
    assert_eq!(usage.status, 200, "{}", usage.text());
    let buckets = usage.json()["buckets"].as_array().unwrap().clone();
    let sum = |field: &str| {
        buckets
            .iter()
            .map(|b| b[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        (
            sum("allowed"),
            sum("forbidden"),
            sum("rate_limited"),
            sum("credits_exhausted")
        ),
        (1, 1, 3, 1)
    );
}

#[test]
fn a_rate_limited_request_spends_no_credits_and_a_refill_says_when() {
    let dir = TempDir::new("limits-both");
    let server = Server::start(&dir.db(), &[]);
    let (_, token) = create(
        &server,
        "OBJECTS",
        r#","rate_limit":{"limit":1,"period_ms":600000},"credits":{"remaining":10,"refill":{"amount":1,"interval_ms":3600000}}"#,
    );
    assert_eq!(server.authorize(&token, "OBJECTS", "READ").status, 204);
    for _ in 0..5 {
        let resp = server.authorize(&token, "OBJECTS", "READ");
        too_many(&resp, "rate-limited");
        assert_eq!(resp.header("keygate-credits-remaining"), Some("9"));
    }
    // A cost above the limit never passes: no Retry-After.
    let resp = authorize_cost(&server, &token, "&cost=2");
    too_many(&resp, "rate-limited");
    assert_eq!(resp.header("retry-after"), None);

    let (_, spender) = create(
        &server,
        "OBJECTS",
        r#","credits":{"remaining":1,"refill":{"amount":4,"interval_ms":3600000}}"#,
    );
    assert_eq!(server.authorize(&spender, "OBJECTS", "READ").status, 204);
    let resp = server.authorize(&spender, "OBJECTS", "READ");
    too_many(&resp, "credits-exhausted");
    // The next refill is within the hour of the key's creation.
    let wait: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((3_500..=3_600).contains(&wait), "{wait}");
}

#[test]
fn unlimited_keys_carry_no_limit_fields() {
    let dir = TempDir::new("limits-none");
    let server = Server::start(&dir.db(), &[]);
    let (_, token) = create(&server, "OBJECTS", "");
    for _ in 0..20 {
        let resp = authorize_cost(&server, &token, "&cost=1000");
        assert_eq!(resp.status, 204);
        assert_eq!(resp.header("ratelimit"), None);
        assert_eq!(resp.header("keygate-credits-remaining"), None);
    }
}

#[test]
fn forward_auth_spends_the_routes_cost() {
    let dir = TempDir::new("limits-routes");
    let routes = dir.0.join("t.routes");
    std::fs::write(
        &routes,
        "POST /v1/objects/**  objects:write cost=5\nGET /v1/objects/** objects:read\nGET /healthz public\n",
    )
    .unwrap();
    let server = Server::start(&dir.db(), &["--routes", routes.to_str().unwrap()]);
    let (_, token) = create(&server, "OBJECTS", r#","credits":{"remaining":11}"#);
    let forward = |method: &str, uri: &str| {
        let auth = format!("Bearer {token}");
        server.req(
            "GET",
            "/v1/authorize",
            &[
                ("X-Original-Method", method),
                ("X-Original-URI", uri),
                ("Authorization", &auth),
            ],
            None,
        )
    };
    let resp = forward("POST", "/v1/objects/a");
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("keygate-credits-remaining"), Some("6"));
    assert_eq!(
        forward("POST", "/v1/objects/b").header("keygate-credits-remaining"),
        Some("1")
    );
    too_many(&forward("POST", "/v1/objects/c"), "credits-exhausted");
    // A cheaper route still passes with what is left.
    assert_eq!(forward("GET", "/v1/objects/c").status, 204);
    too_many(&forward("GET", "/v1/objects/c"), "credits-exhausted");
    // A public route is no key's request: it spends nothing.
    assert_eq!(forward("GET", "/healthz").status, 204);
}
