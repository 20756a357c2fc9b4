//! The route-table parser: never panics, errors point inside the input, and
//! every rule it accepts matches a request built from its own pattern, with
//! `lookup` and `explain` agreeing on the winner.
#![no_main]

use keygate::route::{MatchedBy, Method};
use keygate::RouteTable;
use libfuzzer_sys::fuzz_target;

/// A request path that the pattern matches: literals as written, `{x}`/`*`
/// as `v`, `**` as nothing.
fn concrete(pattern: &str) -> String {
    let mut path = String::new();
    for seg in pattern.split('/').skip(1) {
        match seg {
            "**" => {}
            "*" => path.push_str("/v"),
            s if s.starts_with('{') => path.push_str("/v"),
            s => {
                path.push('/');
                path.push_str(s);
            }
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

fn check(text: &str) {
    let table = match RouteTable::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let lines = text.lines().count().max(1) as u32;
            assert!(e.line() >= 1 && e.line() <= lines, "{e}");
            assert!(e.column() >= 1, "{e}");
            assert_eq!(e.http_status(), 400);
            // Quoted input is cut at 64 characters.
            assert!(e.to_string().chars().count() < 400, "{e}");
            return;
        }
    };
    // Rendering the rules back gives a table with the same rules.
    let mut rendered = String::new();
    for rule in table.rules() {
        rendered.push_str(&rule.to_string());
        rendered.push('\n');
    }
    if let Some((d, _)) = table.default_decision() {
        rendered.push_str(&format!("default {d}\n"));
    }
    let again = RouteTable::parse(&rendered).expect("rendered rules parse");
    assert_eq!(again.len(), table.len());

    for rule in table.rules().take(64) {
        let method = match rule.method() {
            Method::Any => "PROPFIND",
            m => m.as_str(),
        };
        let path = concrete(rule.pattern());
        let Ok(m) = table.lookup(method, &path) else {
            // Only a literal with text the path rules refuse (a non-ASCII
            // control character such as U+0085 is fine, `..`-like literals
            // are refused at parse time) can get here.
            continue;
        };
        // The rule itself matches, so some rule wins (this one or a more
        // specific one) and it is at least as specific.
        let MatchedBy::Rule(winner) = m.matched_by() else {
            panic!(
                "{method} {path}: rule line {} matches but nothing won",
                rule.line()
            );
        };
        let e = table
            .explain(method, &path)
            .expect("explain accepts what lookup accepts");
        assert_eq!(e.route(), m);
        assert_eq!(
            e.candidates().first().map(|c| c.rule.line()),
            Some(winner.line())
        );
        assert!(e.candidates().iter().any(|c| c.rule.line() == rule.line()));
        let m2 = again.lookup(method, &path).expect("same path");
        assert_eq!(m2.decision(), m.decision());
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(text) => check(text),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
