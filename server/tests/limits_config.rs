//! The configuration plane of per-key rate limits and credits, over real
//! HTTP against the real binary: limits on create (both endpoints), in
//! every key view, replaced by `PATCH /v1/keys/{id}` for a whole meter,
//! balances changed by `POST /v1/keys/{id}/credits`, the rules of who may
//! change whose limits (never its own), a server restart, and two
//! instances on one PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const MAX_CREDITS: u64 = (1 << 53) - 1;

/// A restricted key body with account write and objects write, and `extra`
/// fields (`,"rate_limit":…`).
fn admin_body(extra: &str) -> String {
    format!(
        r#"{{"name":"tenant","scopes":[
        {{"resource_type":"RESOURCE_TYPE_ACCOUNT","access_level":"ACCESS_LEVEL_WRITE"}},
        {{"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_WRITE"}}]{extra}}}"#
    )
}

const READER: &str = r#"{"name":"reader","scopes":[
    {"resource_type":"RESOURCE_TYPE_ACCOUNT","access_level":"ACCESS_LEVEL_READ"},
    {"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_READ"}]}"#;

const RATE: &str = r#""rate_limit":{"limit":100,"period_ms":1000}"#;
const CREDITS: &str =
    r#""credits":{"remaining":5000,"refill":{"amount":5000,"interval_ms":2592000000}}"#;

fn ok(r: Resp) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn restricted(server: &Server, caller: &str, body: &str) -> Value {
    ok(server.authed("POST", "/v1/restricted_keys", caller, Some(body)))
}

fn standard(server: &Server, caller: &str, body: &str) -> Value {
    ok(server.authed("POST", "/v1/apikeys", caller, Some(body)))
}

fn secret(v: &Value) -> String {
    v["key_secret"].as_str().unwrap().to_owned()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn get(server: &Server, caller: &str, id: &str) -> Value {
    ok(server.authed("GET", &format!("/v1/keys/{id}"), caller, None))
}

fn patch(server: &Server, caller: &str, id: &str, body: &str) -> Resp {
    server.authed("PATCH", &format!("/v1/keys/{id}"), caller, Some(body))
}

fn credits(server: &Server, caller: &str, id: &str, body: &str) -> Resp {
    server.authed(
        "POST",
        &format!("/v1/keys/{id}/credits"),
        caller,
        Some(body),
    )
}

fn roll(server: &Server, caller: &str, id: &str, overlap_ms: u64) -> Value {
    ok(server.authed(
        "POST",
        &format!("/v1/keys/{id}/roll"),
        caller,
        Some(&format!(r#"{{"overlap_ms":{overlap_ms}}}"#)),
    ))
}

fn rate_of(limit: u64, period_ms: u64) -> Value {
    json!({"limit": limit, "period_ms": period_ms})
}

fn credits_config() -> Value {
    json!({"remaining": 5000, "refill": {"amount": 5000, "interval_ms": 2_592_000_000u64}})
}

/// Both create endpoints take limits; their answers, the key's view and
/// the list show them; a key without them shows nulls.
fn create_with_limits(server: &Server, admin: &str) -> (Value, Value) {
    let s = standard(
        server,
        admin,
        &format!(r#"{{"name":"metered",{RATE},{CREDITS}}}"#),
    );
    assert_eq!(
        fields(&s),
        [
            "credits",
            "expires_at_ms",
            "id",
            "key_secret",
            "name",
            "rate_limit"
        ]
    );
    assert_eq!(s["rate_limit"], rate_of(100, 1000));
    assert_eq!(s["credits"], credits_config());
    let r = restricted(server, admin, &admin_body(&format!(",{RATE}")));
    assert_eq!(r["rate_limit"], rate_of(100, 1000));
    assert!(r["credits"].is_null());
    let view = get(server, admin, &id(&s));
    assert_eq!(view["rate_limit"], rate_of(100, 1000));
    assert_eq!(view["credits"], credits_config());
    let view = get(server, admin, &id(&r));
    assert_eq!(view["rate_limit"], rate_of(100, 1000));
    assert!(view["credits"].is_null());
    let plain = standard(server, admin, "{}");
    assert!(plain["rate_limit"].is_null() && plain["credits"].is_null());
    let view = get(server, admin, &id(&plain));
    assert!(view["rate_limit"].is_null() && view["credits"].is_null());
    let list = ok(server.authed("GET", "/v1/keys?limit=100", admin, None));
    let listed = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == s["id"])
        .unwrap();
    assert_eq!(listed["credits"], credits_config());
    (s, r)
}

/// Bad values: a 400 problem whose detail names the field.
fn bad_values_name_their_field(server: &Server, admin: &str, target: &str) {
    let cases = [
        (
            r#""rate_limit":{"limit":0,"period_ms":1000}"#,
            "rate_limit.limit",
        ),
        (
            r#""rate_limit":{"limit":2000000,"period_ms":1000}"#,
            "rate_limit.limit",
        ),
        (
            r#""rate_limit":{"limit":1,"period_ms":0}"#,
            "rate_limit.period_ms",
        ),
        (
            r#""rate_limit":{"limit":1,"period_ms":2678400001}"#,
            "rate_limit.period_ms",
        ),
        (r#""credits":{"remaining":-1}"#, "credits.remaining"),
        (
            r#""credits":{"remaining":9007199254740992}"#,
            "credits.remaining",
        ),
        (
            r#""credits":{"remaining":1,"refill":{"amount":-1,"interval_ms":1000}}"#,
            "credits.refill.amount",
        ),
        (
            r#""credits":{"remaining":1,"refill":{"amount":1,"interval_ms":999}}"#,
            "credits.refill.interval_ms",
        ),
    ];
    for (field, name) in cases {
        let r = server.authed("POST", "/v1/apikeys", admin, Some(&format!("{{{field}}}")));
        let d = r.problem(400);
        assert!(d.contains(name), "apikeys {field}: {d}");
        let r = server.authed(
            "POST",
            "/v1/restricted_keys",
            admin,
            Some(&admin_body(&format!(",{field}"))),
        );
        let d = r.problem(400);
        assert!(d.contains(name), "restricted_keys {field}: {d}");
        let d = patch(server, admin, target, &format!("{{{field}}}")).problem(400);
        assert!(d.contains(name), "PATCH {field}: {d}");
    }
    for (body, needle) in [
        ("{}", "changes nothing"),
        ("", "changes nothing"),
        (r#"{"rate_limit":null,"name":"x"}"#, "unknown field `name`"),
        (r#"{"rate_limit":5}"#, "`rate_limit`"),
        (
            r#"{"rate_limit":{"limit":"5","period_ms":1000}}"#,
            "`rate_limit.limit`",
        ),
        (
            r#"{"credits":{"remaining":1,"refill":{"amount":1}}}"#,
            "`credits.refill.interval_ms`",
        ),
        ("[]", "a JSON object"),
    ] {
        let d = patch(server, admin, target, body).problem(400);
        assert!(d.contains(needle), "PATCH {body}: {d}");
    }
    let d = patch(server, admin, "not-an-id", r#"{"rate_limit":null}"#).problem(400);
    assert!(d.contains("`id`"), "{d}");
    // Nothing changed meanwhile.
    let view = get(server, admin, target);
    assert_eq!(view["rate_limit"], rate_of(100, 1000));
}

/// PATCH replaces (each field on its own), removes (null), keeps (absent),
/// answers the target's view, and logs one event.
fn patch_replaces_removes_and_keeps(server: &Server, admin: &str, target: &str) {
    let v = ok(patch(
        server,
        admin,
        target,
        r#"{"rate_limit":{"limit":5,"period_ms":250}}"#,
    ));
    assert_eq!(v["id"], target);
    assert_eq!(v["rate_limit"], rate_of(5, 250));
    assert_eq!(v["credits"], credits_config(), "absent: unchanged");
    assert_eq!(
        fields(&v),
        [
            "created_at_ms",
            "creator_id",
            "credits",
            "expires_at_ms",
            "id",
            "kind",
            "last_used_at_ms",
            "name",
            "rate_limit",
            "scopes"
        ]
    );
    let v = ok(patch(server, admin, target, r#"{"credits":null}"#));
    assert!(v["credits"].is_null());
    assert_eq!(v["rate_limit"], rate_of(5, 250));
    let v = ok(patch(
        server,
        admin,
        target,
        r#"{"rate_limit":null,"credits":{"remaining":10}}"#,
    ));
    assert!(v["rate_limit"].is_null());
    assert_eq!(v["credits"], json!({"remaining": 10, "refill": null}));
    assert_eq!(get(server, admin, target), v);
    let events = ok(server.authed("GET", "/v1/events?limit=100", admin, None));
    let changes: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "limits_changed" && e["key_id"] == target)
        .collect();
    assert_eq!(changes.len(), 3, "{events}");
    assert_eq!(changes[0]["actor_id"], &admin[3..19]);
}

/// A PATCH changes every key of the meter: a roll family together; the
/// rolled (old) key is no target.
fn patch_on_a_roll_family(server: &Server, admin: &str) {
    let k = standard(server, admin, &format!(r#"{{"name":"fam",{RATE}}}"#));
    let k2 = roll(server, admin, &id(&k), 60_000);
    assert_eq!(
        k2["rate_limit"],
        rate_of(100, 1000),
        "a roll keeps the limits"
    );
    let v = ok(patch(
        server,
        admin,
        &id(&k2),
        r#"{"rate_limit":{"limit":7,"period_ms":1000}}"#,
    ));
    assert_eq!(v["rate_limit"], rate_of(7, 1000));
    for key in [&k, &k2] {
        assert_eq!(get(server, admin, &id(key))["rate_limit"], rate_of(7, 1000));
    }
    let d = patch(server, admin, &id(&k), r#"{"rate_limit":null}"#).problem(409);
    assert!(d.contains("was rolled"), "{d}");
    let d = credits(server, admin, &id(&k), r#"{"set":1}"#).problem(409);
    assert!(d.contains("was rolled"), "{d}");
    // A revoked key is unknown.
    let gone = standard(server, admin, "{}");
    let r = server.authed("DELETE", &format!("/v1/keys/{}", id(&gone)), admin, None);
    assert_eq!(r.status, 204);
    patch(server, admin, &id(&gone), r#"{"rate_limit":null}"#).problem(404);
    credits(server, admin, &id(&gone), r#"{"set":1}"#).problem(404);
}

/// Credits: set (0 to the maximum), add (negative too, the result clamped
/// at 0 and the maximum); a key
/// without credits is a 409; bad bodies name their field.
fn credits_set_add_clamp(server: &Server, admin: &str) {
    let k = standard(server, admin, "{}");
    let d = credits(server, admin, &id(&k), r#"{"set":5}"#).problem(409);
    assert_eq!(
        d,
        format!(
            "key `{}` has no credits; PATCH it with `credits` first",
            id(&k)
        )
    );
    ok(patch(
        server,
        admin,
        &id(&k),
        r#"{"credits":{"remaining":100}}"#,
    ));
    let balance = |body: &str| ok(credits(server, admin, &id(&k), body));
    assert_eq!(balance(r#"{"add":-30}"#), json!({"remaining": 70}));
    assert_eq!(balance(r#"{"set":7}"#), json!({"remaining": 7}));
    assert_eq!(balance(r#"{"add":-10}"#), json!({"remaining": 0}));
    assert_eq!(
        balance(r#"{"add":9223372036854775807}"#),
        json!({"remaining": MAX_CREDITS})
    );
    assert_eq!(
        balance(&format!(r#"{{"set":{MAX_CREDITS}}}"#)),
        json!({"remaining": MAX_CREDITS})
    );
    assert_eq!(balance(r#"{"set":0}"#), json!({"remaining": 0}));
    assert_eq!(balance(r#"{"add":12}"#), json!({"remaining": 12}));
    for (body, needle) in [
        ("{}", "exactly one of `set` or `add`"),
        ("", "exactly one of `set` or `add`"),
        (r#"{"set":1,"add":1}"#, "exactly one of `set` or `add`"),
        (r#"{"set":-1}"#, "`set`"),
        (r#"{"set":9007199254740992}"#, "`set`"),
        (r#"{"set":18446744073709551615}"#, "`set`"),
        (r#"{"set":1.5}"#, "`set`"),
        (r#"{"add":"1"}"#, "`add`"),
        (r#"{"add":9223372036854775808}"#, "`add`"),
        (r#"{"remaining":1}"#, "unknown field `remaining`"),
    ] {
        let d = credits(server, admin, &id(&k), body).problem(400);
        assert!(d.contains(needle), "{body}: {d}");
    }
    // The same credits again keep the balance; other credits start afresh.
    ok(patch(
        server,
        admin,
        &id(&k),
        r#"{"credits":{"remaining":100}}"#,
    ));
    assert_eq!(balance(r#"{"add":0}"#), json!({"remaining": 12}));
    ok(patch(
        server,
        admin,
        &id(&k),
        r#"{"credits":{"remaining":40}}"#,
    ));
    assert_eq!(balance(r#"{"add":0}"#), json!({"remaining": 40}));
    // Removed: a 409 again.
    ok(patch(server, admin, &id(&k), r#"{"credits":null}"#));
    credits(server, admin, &id(&k), r#"{"add":1}"#).problem(409);
}

/// A limited key mints only keys on its own meter: its children inherit
/// its limits, and a looser request is a 403.
fn a_limited_callers_children_inherit(server: &Server, admin: &str) -> Value {
    let l = restricted(server, admin, &admin_body(&format!(",{RATE},{CREDITS}")));
    let child = restricted(server, &secret(&l), &admin_body(""));
    assert_eq!(child["rate_limit"], rate_of(100, 1000));
    assert_eq!(child["credits"], credits_config());
    let same = restricted(
        server,
        &secret(&l),
        &admin_body(&format!(",{RATE},{CREDITS}")),
    );
    assert_eq!(same["rate_limit"], rate_of(100, 1000));
    for looser in [
        r#","rate_limit":{"limit":1000,"period_ms":1000}"#,
        r#","rate_limit":{"limit":100,"period_ms":1000}"#,
        r#","credits":{"remaining":1000000}"#,
    ] {
        let r = server.authed(
            "POST",
            "/v1/restricted_keys",
            &secret(&l),
            Some(&admin_body(looser)),
        );
        let d = r.problem(403);
        assert!(d.contains("share them"), "{looser}: {d}");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer error="insufficient_scope""#)
        );
        let r = server.authed(
            "POST",
            "/v1/apikeys",
            &secret(&l),
            Some(&format!("{{{}}}", &looser[1..])),
        );
        r.problem(403);
    }
    let view = get(server, admin, &id(&child));
    assert_eq!(view["credits"], credits_config());
    l
}

/// No key may change the limits of its own meter: itself, its roll family,
/// or the keys it shares a meter with (its children, minted while limited).
fn the_own_meter_rule(server: &Server, admin: &str, l: &Value) {
    let own = |caller: &str, target: &str| {
        let r = patch(server, caller, target, r#"{"rate_limit":null}"#);
        let d = r.problem(403);
        assert_eq!(d, "a key may not change its own limits");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer error="insufficient_scope""#)
        );
        let d = credits(server, caller, target, r#"{"add":1000}"#).problem(403);
        assert_eq!(d, "a key may not change its own limits");
    };
    own(&secret(l), &id(l));
    let child = restricted(server, &secret(l), &admin_body(""));
    own(&secret(l), &id(&child));
    own(&secret(&child), &id(l));
    let l2 = roll(server, admin, &id(l), 60_000);
    own(&secret(&l2), &id(&l2));
    own(&secret(&l2), &id(l));
    own(&secret(&l2), &id(&child));
    // Still limited.
    assert_eq!(
        get(server, admin, &id(&l2))["rate_limit"],
        rate_of(100, 1000)
    );
    // Another key may: the admin lifts it for the whole meter.
    let v = ok(patch(server, admin, &id(&l2), r#"{"rate_limit":null}"#));
    assert!(v["rate_limit"].is_null());
    assert!(get(server, admin, &id(&child))["rate_limit"].is_null());
    assert_eq!(
        ok(credits(server, admin, &id(&child), r#"{"set":3}"#)),
        json!({"remaining": 3})
    );
}

/// Who may call at all: a key (401 without), with `account:write` (403
/// with only `account:read`).
fn callers_need_account_write(server: &Server, admin: &str, target: &str) {
    for (method, path, body) in [
        (
            "PATCH",
            format!("/v1/keys/{target}"),
            r#"{"rate_limit":null}"#,
        ),
        ("POST", format!("/v1/keys/{target}/credits"), r#"{"set":1}"#),
    ] {
        let r = server.req(method, &path, &[], Some(body.as_bytes()));
        r.problem(401);
        let reader = restricted(server, admin, READER);
        let r = server.authed(method, &path, &secret(&reader), Some(body));
        let d = r.problem(403);
        assert!(d.contains("account"), "{d}");
        let unknown = path.replace(target, "0000000000000000");
        server
            .authed(method, &unknown, admin, Some(body))
            .problem(404);
    }
}

#[test]
fn the_configuration_plane_on_sqlite() {
    let dir = TempDir::new("limits");
    let server = Server::start(&dir.db(), &[]);
    let admin = server.token().to_owned();
    let (s, _) = create_with_limits(&server, &admin);
    bad_values_name_their_field(&server, &admin, &id(&s));
    patch_replaces_removes_and_keeps(&server, &admin, &id(&s));
    patch_on_a_roll_family(&server, &admin);
    credits_set_add_clamp(&server, &admin);
    let l = a_limited_callers_children_inherit(&server, &admin);
    the_own_meter_rule(&server, &admin, &l);
    callers_need_account_write(&server, &admin, &id(&s));
}

/// Under `--attenuate` a caller changes only its subtree's limits: another
/// tenant's key is a 404 with the unknown id's very body; a limited
/// tenant's own children share its meter (403).
#[test]
fn under_attenuate_only_the_subtree_and_never_the_own_meter() {
    let dir = TempDir::new("limits-att");
    let server = Server::start(&dir.db(), &["--attenuate"]);
    let admin = server.token().to_owned();
    let t1 = restricted(&server, &admin, &admin_body(""));
    let t2 = restricted(&server, &admin, &admin_body(""));
    let k1 = restricted(&server, &secret(&t1), &admin_body(&format!(",{RATE}")));
    let v = ok(patch(
        &server,
        &secret(&t1),
        &id(&k1),
        r#"{"credits":{"remaining":9}}"#,
    ));
    assert_eq!(v["credits"], json!({"remaining": 9, "refill": null}));
    assert_eq!(
        ok(credits(&server, &secret(&t1), &id(&k1), r#"{"add":1}"#)),
        json!({"remaining": 10})
    );
    for (method, path, body) in [
        (
            "PATCH",
            format!("/v1/keys/{}", id(&k1)),
            r#"{"rate_limit":null}"#,
        ),
        (
            "POST",
            format!("/v1/keys/{}/credits", id(&k1)),
            r#"{"set":1}"#,
        ),
    ] {
        let stranger = server.authed(method, &path, &secret(&t2), Some(body));
        let unknown = server.authed(
            method,
            &path.replace(&id(&k1), "0000000000000000"),
            &secret(&t2),
            Some(body),
        );
        stranger.problem(404);
        assert_eq!(stranger.text(), unknown.text());
        // Nor its own key, which is not in its subtree.
        server
            .authed(
                method,
                &path.replace(&id(&k1), &id(&t2)),
                &secret(&t2),
                Some(body),
            )
            .problem(404);
    }
    assert_eq!(
        get(&server, &admin, &id(&k1))["rate_limit"],
        rate_of(100, 1000)
    );
    // A limited tenant: its children are on its meter.
    let l = restricted(&server, &admin, &admin_body(&format!(",{RATE}")));
    let child = restricted(&server, &secret(&l), &admin_body(""));
    let d = patch(&server, &secret(&l), &id(&child), r#"{"rate_limit":null}"#).problem(403);
    assert_eq!(d, "a key may not change its own limits");
    // A child it mints after the admin lifted its limit has a meter of its
    // own, which it may limit.
    ok(patch(&server, &admin, &id(&l), r#"{"rate_limit":null}"#));
    let free = restricted(&server, &secret(&l), &admin_body(""));
    assert!(free["rate_limit"].is_null());
    let v = ok(patch(
        &server,
        &secret(&l),
        &id(&free),
        &format!("{{{RATE}}}"),
    ));
    assert_eq!(v["rate_limit"], rate_of(100, 1000));
}

/// Limits and balances are in the database: a restart serves them.
#[test]
fn limits_survive_a_restart() {
    let dir = TempDir::new("limits-restart");
    let mut server = Server::start(&dir.db(), &[]);
    let admin = server.token().to_owned();
    let k = standard(&server, &admin, &format!(r#"{{{RATE},{CREDITS}}}"#));
    let child_of = restricted(&server, &admin, &admin_body(&format!(",{RATE}")));
    let child = restricted(&server, &secret(&child_of), &admin_body(""));
    ok(patch(
        &server,
        &admin,
        &id(&k),
        r#"{"rate_limit":{"limit":3,"period_ms":60000}}"#,
    ));
    ok(credits(&server, &admin, &id(&k), r#"{"set":42}"#));
    let before = [
        get(&server, &admin, &id(&k)),
        get(&server, &admin, &id(&child)),
    ];
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    let server = Server::start(&dir.db(), &[]);
    let after = [
        get(&server, &admin, &id(&k)),
        get(&server, &admin, &id(&child)),
    ];
    assert_eq!(before, after);
    assert_eq!(after[0]["rate_limit"], rate_of(3, 60_000));
    assert_eq!(after[1]["rate_limit"], rate_of(100, 1000));
    // The balance too: adding nothing reads it back.
    assert_eq!(
        ok(credits(&server, &admin, &id(&k), r#"{"add":0}"#)),
        json!({"remaining": 42})
    );
    // The CLI reads the same.
    let (ok_, out, err) = cli(&dir.db(), &["get"], &[&id(&child), "--json"]);
    assert!(ok_, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rate_limit"], rate_of(100, 1000));
}

/// Two instances on one PostgreSQL: limits set on A are B's too.
#[test]
fn two_instances_on_postgres_share_the_configuration() {
    let pg = pg::TestPg::start();
    let dir = TempDir::new("limits-pg");
    let pepper = dir.0.join("pepper");
    let pepper_arg = pepper.to_str().unwrap().to_owned();
    let mut a = Server::start(Path::new(&pg.url()), &["--pepper-file", &pepper_arg]);
    a.bootstrap = take_bootstrap_file(&pepper);
    let b = Server::start(Path::new(&pg.url()), &["--pepper-file", &pepper_arg]);
    let admin = a.token().to_owned();
    b.wait_accepted(&admin);
    let (s, _) = create_with_limits(&a, &admin);
    assert_eq!(get(&b, &admin, &id(&s))["credits"], credits_config());
    let v = ok(patch(
        &a,
        &admin,
        &id(&s),
        r#"{"rate_limit":{"limit":9,"period_ms":1000}}"#,
    ));
    assert_eq!(get(&b, &admin, &id(&s)), v);
    ok(credits(&a, &admin, &id(&s), r#"{"set":77}"#));
    assert_eq!(
        ok(credits(&b, &admin, &id(&s), r#"{"add":-7}"#)),
        json!({"remaining": 70})
    );
    // The roll family and the own-meter rule on the shared store.
    patch_on_a_roll_family(&b, &admin);
    let l = a_limited_callers_children_inherit(&a, &admin);
    b.wait_accepted(&secret(&l));
    let d = patch(&b, &secret(&l), &id(&l), r#"{"rate_limit":null}"#).problem(403);
    assert_eq!(d, "a key may not change its own limits");
    // B's log shows A's change.
    let events = ok(b.authed("GET", "/v1/events?limit=100", &admin, None));
    assert!(events["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "limits_changed" && e["key_id"] == s["id"]));
}
