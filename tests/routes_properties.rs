//! Laws of `RouteTable`, checked with proptest against a naive model:
//!
//! * `lookup` agrees with a reference matcher that tries every rule and
//!   keeps the most specific, written here from the rules in the docs;
//! * precedence never depends on line order;
//! * a path that any plausible backend would resolve into a denied route is
//!   never allowed (it is refused with 400, or denied).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use keygate::route::{MatchedBy, Method};
use keygate::{Decision, RouteTable};
use proptest::prelude::*;

/// A pattern segment of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(&'static str),
    /// `{x}` or `*`, as written (both mean one segment).
    One(&'static str),
}

#[derive(Clone, Debug)]
struct ModelRule {
    method: &'static str,
    segs: Vec<Seg>,
    rest: bool,
    decision: &'static str,
}

impl ModelRule {
    fn pattern(&self) -> String {
        let mut p = String::new();
        for s in &self.segs {
            p.push('/');
            p.push_str(match s {
                Seg::Lit(l) => l,
                Seg::One(o) => o,
            });
        }
        if self.rest {
            p.push_str("/**");
        }
        if p.is_empty() {
            p.push('/');
        }
        p
    }

    /// The shape two rules tie on: method, literals, one-segment positions, `**`.
    fn shape(&self) -> (String, Vec<Option<&'static str>>, bool) {
        let segs = self
            .segs
            .iter()
            .map(|s| match s {
                Seg::Lit(l) => Some(*l),
                Seg::One(_) => None,
            })
            .collect();
        (self.method.to_owned(), segs, self.rest)
    }
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        3 => prop::sample::select(vec!["a", "b", "c"]).prop_map(Seg::Lit),
        2 => prop::sample::select(vec!["{id}", "*", "{x}"]).prop_map(Seg::One),
    ]
}

fn rule() -> impl Strategy<Value = ModelRule> {
    (
        prop::sample::select(vec!["GET", "HEAD", "POST", "*"]),
        prop::collection::vec(seg(), 0..4),
        any::<bool>(),
        prop::sample::select(vec![
            "devboxes:read",
            "devboxes:write",
            "objects:read",
            "public",
            "deny",
        ]),
    )
        .prop_map(|(method, segs, rest, decision)| ModelRule {
            method,
            segs,
            rest,
            decision,
        })
}

/// Rules without ties (a later rule with an earlier one's shape is dropped).
fn rules() -> impl Strategy<Value = Vec<ModelRule>> {
    prop::collection::vec(rule(), 0..12).prop_map(|rules| {
        let mut kept: Vec<ModelRule> = Vec::new();
        for r in rules {
            if !kept.iter().any(|k| k.shape() == r.shape()) {
                kept.push(r);
            }
        }
        kept
    })
}

fn render(rules: &[ModelRule], default: Option<&str>) -> String {
    let mut text = String::from("# generated\n");
    for r in rules {
        text.push_str(&format!("{} {} {}\n", r.method, r.pattern(), r.decision));
    }
    if let Some(d) = default {
        text.push_str(&format!("default {d}\n"));
    }
    text
}

/// A request path from a small alphabet, some segments percent-encoded.
fn path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "c", "d", "%61", "%62", "ab"]),
            0..6,
        ),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(segs, slash, query)| {
            let mut p = String::new();
            for s in &segs {
                p.push('/');
                p.push_str(s);
            }
            if p.is_empty() || slash {
                p.push('/');
            }
            if query {
                p.push_str("?q=/../x");
            }
            p
        })
}

fn naive_decode(s: &str) -> String {
    s.replace("%61", "a").replace("%62", "b")
}

/// The reference matcher: each rule's rank string (literal 4, one 3, exact
/// end 2, `**` 1) and method tier (own 3, GET for HEAD 2, `*` 1); the
/// greatest wins. Returns the winner's index, or None.
fn reference(rules: &[ModelRule], method: &str, path: &str) -> Option<usize> {
    let path = path.split('?').next().unwrap();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(naive_decode)
        .collect();
    let mut best: Option<((Vec<u8>, u8), usize)> = None;
    for (i, r) in rules.iter().enumerate() {
        let tier = match (r.method, method) {
            ("*", _) => 1,
            (a, b) if a == b => 3,
            ("GET", "HEAD") => 2,
            _ => continue,
        };
        let mut ranks = Vec::new();
        let mut ok = true;
        for (j, s) in r.segs.iter().enumerate() {
            match (s, segs.get(j)) {
                (Seg::Lit(l), Some(p)) if l == p => ranks.push(4),
                (Seg::One(_), Some(_)) => ranks.push(3),
                _ => ok = false,
            }
        }
        if !ok {
            continue;
        }
        if r.rest {
            ranks.push(1);
        } else if segs.len() == r.segs.len() {
            ranks.push(2);
        } else {
            continue;
        }
        let key = (ranks, tier);
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, i));
        }
    }
    best.map(|(_, i)| i)
}

fn rule_line(m: MatchedBy<'_>) -> Option<u32> {
    match m {
        MatchedBy::Rule(r) => Some(r.line()),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn lookup_agrees_with_the_reference(
        rules in rules(),
        default in prop::option::of(prop::sample::select(vec!["public", "objects:read"])),
        requests in prop::collection::vec(
            (prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "PROPFIND"]), path()),
            1..16,
        ),
    ) {
        let text = render(&rules, default);
        let table: RouteTable = text.parse().unwrap();
        for (method, path) in &requests {
            let got = table.lookup(method, path).unwrap();
            match reference(&rules, method, path) {
                Some(i) => {
                    // Line 1 is the comment.
                    prop_assert_eq!(rule_line(got.matched_by()), Some(i as u32 + 2), "{} {}\n{}", method, path, text);
                    prop_assert_eq!(got.decision().to_string(), rules[i].decision);
                }
                None => {
                    let want = default.unwrap_or("deny");
                    prop_assert_eq!(got.decision().to_string(), want, "{} {}\n{}", method, path, text);
                    prop_assert!(rule_line(got.matched_by()).is_none());
                }
            }
            // `explain` agrees with `lookup` on the winner.
            let e = table.explain(method, path).unwrap();
            prop_assert_eq!(e.route(), got);
            prop_assert_eq!(e.candidates().first().map(|c| c.rule.line()), rule_line(got.matched_by()));
        }
    }

    #[test]
    fn ties_are_parse_errors_naming_both_lines(rules in rules(), pick in any::<prop::sample::Index>(), one in prop::sample::select(vec!["{id}", "*", "{y}"])) {
        prop_assume!(!rules.is_empty());
        let i = pick.index(rules.len());
        // The same shape again, with another spelling of one-segment parts
        // and another decision: a tie.
        let mut twin = rules[i].clone();
        for s in &mut twin.segs {
            if let Seg::One(o) = s {
                *o = one;
            }
        }
        twin.decision = if twin.decision == "deny" { "public" } else { "deny" };
        let mut all = rules.clone();
        all.push(twin);
        let err = render(&all, None).parse::<RouteTable>().unwrap_err();
        prop_assert_eq!(err.line(), all.len() as u32 + 1);
        let first_line = format!("line {}", i + 2);
        prop_assert!(err.to_string().contains(&first_line), "{}", err);
    }

    #[test]
    fn precedence_never_depends_on_line_order(
        (rules, shuffled) in rules().prop_flat_map(|r| (Just(r.clone()), Just(r).prop_shuffle())),
        requests in prop::collection::vec(
            (prop::sample::select(vec!["GET", "HEAD", "POST", "DELETE"]), path()),
            1..16,
        ),
    ) {
        let a: RouteTable = render(&rules, None).parse().unwrap();
        let b: RouteTable = render(&shuffled, None).parse().unwrap();
        for (method, path) in &requests {
            let (x, y) = (a.lookup(method, path).unwrap(), b.lookup(method, path).unwrap());
            prop_assert_eq!(x.decision(), y.decision());
            let rule = |m: MatchedBy<'_>| match m {
                MatchedBy::Rule(r) => Some((r.method(), r.pattern().to_owned())),
                _ => None,
            };
            prop_assert_eq!(rule(x.matched_by()), rule(y.matched_by()));
        }
    }
}

// ---- path confusion ---------------------------------------------------------

/// Hostile segments: dots, encoded slashes and backslashes, path parameters,
/// encoded letters, NUL, double encoding, empty segments.
fn hostile_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "internal",
        "%69nternal",
        "intern%61l",
        "x",
        "v1",
        "..",
        ".",
        "%2e",
        "%2E%2e",
        ".%2e",
        "..%2F",
        "%2F",
        "%2f",
        "%5C",
        "\\",
        ";a=b",
        "%3B",
        "%00",
        "%252F",
        "%25",
        "",
        "%",
        "%zz",
        "a%2Finternal",
        "%FF",
        "internal;x",
        "Internal",
        "%3F",
        "internal%3Fx",
        "internal%3fx=1",
        "internal%23frag",
        "%23",
    ]);
    (prop::collection::vec(piece, 0..7), any::<bool>()).prop_map(|(pieces, slash)| {
        let mut p = String::new();
        for s in pieces {
            p.push('/');
            p.push_str(s);
        }
        if p.is_empty() || slash {
            p.push('/');
        }
        p
    })
}

fn percent_decode_once(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = h.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// How various backends might read a path: decode once or twice (before
/// splitting, and before cutting off a decoded `?` query or `#` fragment),
/// treat `\` as `/`, strip `;params`, cut at NUL, merge `//`, resolve `.`
/// and `..`. Returns every reading's segments.
fn backend_readings(path: &str) -> Vec<Vec<String>> {
    let path = path.split('?').next().unwrap();
    let once = String::from_utf8_lossy(&percent_decode_once(path)).into_owned();
    let twice = String::from_utf8_lossy(&percent_decode_once(&once)).into_owned();
    let cut = |s: &str| s.split(['?', '#']).next().unwrap().to_owned();
    let (once_cut, twice_cut) = (cut(&once), cut(&twice));
    let mut readings = Vec::new();
    for decoded in [path.to_owned(), once, twice, once_cut, twice_cut] {
        for backslash in [false, true] {
            for params in [false, true] {
                let mut s = decoded.split('\0').next().unwrap().to_owned();
                if backslash {
                    s = s.replace('\\', "/");
                }
                let mut out: Vec<String> = Vec::new();
                for seg in s.split('/') {
                    let seg = if params {
                        seg.split(';').next().unwrap()
                    } else {
                        seg
                    };
                    match seg {
                        "" | "." => {}
                        ".." => {
                            out.pop();
                        }
                        _ => out.push(seg.to_owned()),
                    }
                }
                readings.push(out);
            }
        }
    }
    readings
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn a_path_that_resolves_into_a_denied_route_is_never_allowed(path in hostile_path()) {
        let table: RouteTable = "\
            *   /internal/**   deny\n\
            GET /**            objects:read\n\
            GET /x/{id}        public\n\
            default public\n"
            .parse()
            .unwrap();
        let reaches_internal = backend_readings(&path)
            .iter()
            .any(|r| r.first().map(String::as_str) == Some("internal"));
        match table.lookup("GET", &path) {
            Err(e) => prop_assert_eq!(e.http_status(), 400),
            Ok(m) => {
                if reaches_internal {
                    prop_assert_eq!(m.decision(), Decision::Deny, "{} reaches /internal but was allowed", path);
                }
            }
        }
    }

    #[test]
    fn canonical_paths_are_fixed_points(path in hostile_path()) {
        // What lookup accepts, it accepts again in canonical (decoded) form,
        // with the same decision.
        let table: RouteTable = "* /internal/** deny\nGET /** objects:read".parse().unwrap();
        if let Ok(c) = keygate::route::CanonicalPath::new(path.as_bytes()) {
            let text = c.to_string();
            let again = keygate::route::CanonicalPath::new(text.as_bytes());
            // Decoding may reveal a `%` or `?` only if it was encoded, which
            // the rules refuse (`%25`) or keep inside the segment (`%3F`).
            if let Ok(again) = again {
                prop_assert_eq!(again.to_string(), text.clone());
                prop_assert_eq!(
                    table.lookup("GET", &path).unwrap().decision(),
                    table.lookup("GET", &text).unwrap().decision()
                );
            }
        }
    }
}

#[test]
fn method_tiers_are_what_the_docs_say() {
    let table: RouteTable = "* /a deny\nGET /a public\nHEAD /b deny\nGET /b public"
        .parse()
        .unwrap();
    assert_eq!(
        table.lookup("GET", "/a").unwrap().decision(),
        Decision::Public
    );
    assert_eq!(
        table.lookup("HEAD", "/a").unwrap().decision(),
        Decision::Public
    );
    assert_eq!(
        table.lookup("POST", "/a").unwrap().decision(),
        Decision::Deny
    );
    assert_eq!(
        table.lookup("HEAD", "/b").unwrap().decision(),
        Decision::Deny
    );
    assert_eq!(Method::Any.to_string(), "*");
}

#[test]
fn an_encoded_query_or_fragment_cannot_dodge_a_rule() {
    // A backend that decodes, then splits off the query or fragment, serves
    // `/v1/admin` for each of these; here each once matched no rule and fell
    // to the default.
    let table: RouteTable = "GET /v1/admin account:write\ndefault public"
        .parse()
        .unwrap();
    for path in [
        "/v1/admin%3Fx",
        "/v1/admin%3fx=1",
        "/v1/admin%23frag",
        "/v1/admin%3F",
        "/v1/admin%23",
    ] {
        let err = table.lookup("GET", path).unwrap_err();
        assert_eq!(err.http_status(), 400, "{path}");
        assert!(
            matches!(
                err,
                keygate::PathError::EncodedQuery { at: 9 }
                    | keygate::PathError::EncodedFragment { at: 9 }
            ),
            "{path}: {err:?}"
        );
        assert!(table.explain("GET", path).is_err(), "{path}");
    }
    // The path itself, and a real query, still match the rule.
    for path in ["/v1/admin", "/v1/admin?x=%3F%23", "/v1/admin/"] {
        assert_eq!(
            table.lookup("GET", path).unwrap().decision().to_string(),
            "account:write",
            "{path}"
        );
    }
}
