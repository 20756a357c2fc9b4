//! Route tables in the server: `keygate serve --routes FILE`, forward-auth
//! on `/v1/authorize`, and the `keygate routes check|explain` commands.
//!
//! Forward-auth: a gateway asks `GET /v1/authorize` with the original
//! request's `Authorization` header and its method and URI in
//! `X-Forwarded-Method` + `X-Forwarded-Uri` (Caddy `forward_auth`, Traefik
//! `ForwardAuth`) or `X-Original-Method` + `X-Original-URI` (nginx
//! `auth_request`, set in its config). The table decides; a 204 names the
//! key (`X-Keygate-Key-Id`, `-` on a public route), its kind, the decision
//! (`X-Keygate-Decision`) and the deciding line (`X-Keygate-Rule`).
//! Without forwarded headers, `?resource_type=&access_level=` keeps the
//! fixed-scope form; with a table, forwarded headers win over that query.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::{Extension, Router};
use keygate::route::MatchedBy;
use keygate::system_now_ms;
use keygate::tower::{authorize_route, problem, Authenticate};
use keygate::RouteTable;

/// The loaded table, in the request extensions of every route.
#[derive(Clone, Debug)]
pub struct Routes(pub Arc<RouteTable>);

/// The 204's header with the key id (the same as the fixed-scope form's).
static KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
/// The 204's header with the key kind.
static KEY_KIND: HeaderName = HeaderName::from_static("x-keygate-key-kind");
/// The 204's header with the matched decision: `devboxes:read`, `public`.
static DECISION: HeaderName = HeaderName::from_static("x-keygate-decision");
/// The 204's header with the deciding line: a number, or `default`.
static RULE: HeaderName = HeaderName::from_static("x-keygate-rule");

/// The header pairs that carry the original method and URI. Named once, as
/// `HeaderName`s: a lookup by `&str` parses and validates the name on every
/// request (about 400 instructions for each of the four, measured under
/// callgrind on `/v1/authorize`).
static FORWARDED: (HeaderName, HeaderName) = (
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-forwarded-uri"),
);
static ORIGINAL: (HeaderName, HeaderName) = (
    HeaderName::from_static("x-original-method"),
    HeaderName::from_static("x-original-uri"),
);

/// `keygate routes ...`.
#[derive(clap::Subcommand, Debug)]
pub enum RoutesCommand {
    /// Validate a route table; print its rule count, or the parse error.
    Check {
        /// The table file.
        file: PathBuf,
    },
    /// Print the rule that wins for METHOD PATH, and why the others lose.
    Explain {
        /// The table file.
        file: PathBuf,
        /// The request method, e.g. `POST`.
        method: String,
        /// The request path as sent, e.g. `/v1/devboxes/dbx_1/execute`.
        path: String,
    },
}

/// Reads and parses a table; the error names the file.
pub fn load(path: &Path) -> Result<RouteTable, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read route table `{}`: {e}", path.display()))?;
    text.parse()
        .map_err(|e| format!("route table `{}`: {e}", path.display()))
}

/// Runs `keygate routes ...`.
pub fn run(command: &RoutesCommand) -> Result<(), String> {
    match command {
        RoutesCommand::Check { file } => {
            let table = load(file)?;
            let default = match table.default_decision() {
                Some((d, line)) => format!("`{d}` (line {line})"),
                None => String::from("deny (no `default` line)"),
            };
            println!(
                "ok: `{}` has {} rules; unmatched requests: {default}",
                file.display(),
                table.len()
            );
            Ok(())
        }
        RoutesCommand::Explain { file, method, path } => {
            let table = load(file)?;
            let explanation = table
                .explain(method, path)
                .map_err(|e| format!("{e} (answered with 400)"))?;
            print!("{explanation}");
            Ok(())
        }
    }
}

/// Adds the table, if any, to every request's extensions.
pub fn with_routes(router: Router, table: Option<RouteTable>) -> Router {
    match table {
        Some(table) => router.layer(Extension(Routes(Arc::new(table)))),
        None => router,
    }
}

/// The one value of header `name`: `Ok(None)` if absent, `Err` if repeated.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h [u8]>, String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(format!("header `{name}` appears more than once"));
    }
    Ok(first.map(HeaderValue::as_bytes))
}

/// The original request's method and URI, as header bytes.
type MethodAndUri<'h> = (&'h [u8], &'h [u8]);

/// The original method and URI, from exactly one of the two header pairs.
fn original(headers: &HeaderMap) -> Result<Option<MethodAndUri<'_>>, String> {
    // Most requests carry none of the four: one pass over the few names a
    // request has is cheaper than four hashed lookups.
    let named = [&FORWARDED.0, &FORWARDED.1, &ORIGINAL.0, &ORIGINAL.1];
    if !headers.keys().any(|name| named.contains(&name)) {
        return Ok(None);
    }
    let mut found = None;
    for (m, u) in [&FORWARDED, &ORIGINAL] {
        match (single(headers, m)?, single(headers, u)?) {
            (None, None) => {}
            (Some(method), Some(uri)) => {
                if found.is_some() {
                    // A client could add one pair to a request whose gateway
                    // sets the other: refuse rather than pick one.
                    return Err(String::from(
                        "both `X-Forwarded-Method`/`X-Forwarded-Uri` and \
                         `X-Original-Method`/`X-Original-URI` are present; send one pair",
                    ));
                }
                found = Some((method, uri));
            }
            _ => return Err(format!("forward-auth needs both `{m}` and `{u}`")),
        }
    }
    Ok(found)
}

/// Whether the query names a fixed scope (the original `/v1/authorize` form).
fn fixed_scope_query(query: Option<&str>) -> bool {
    query.unwrap_or_default().split('&').any(|pair| {
        let key = pair.split('=').next().unwrap_or_default();
        key == "resource_type" || key == "access_level"
    })
}

/// `/v1/authorize` in forward-auth mode, or `None` for the fixed-scope form.
///
/// With a table, a request that carries a forwarded method and URI is
/// always decided by the table, whatever its query: Caddy keeps the client's
/// query when it rewrites the request to `/v1/authorize`, so a client could
/// otherwise add `?resource_type=&access_level=` and pick its own scope.
/// Without a table, the fixed-scope query still works behind any gateway.
pub fn forward_auth<A: Authenticate + ?Sized>(auth: &A, request: &Request) -> Option<Response> {
    let headers = request.headers();
    let (method, uri) = match original(headers) {
        Ok(Some(pair)) => pair,
        Ok(None) => return None,
        Err(detail) => return Some(problem(StatusCode::BAD_REQUEST, &detail)),
    };
    let Some(Routes(table)) = request.extensions().get::<Routes>() else {
        if fixed_scope_query(request.uri().query()) {
            return None;
        }
        return Some(problem(
            StatusCode::BAD_REQUEST,
            "forward-auth needs a route table: start `keygate serve --routes FILE`, \
             or ask with `?resource_type=&access_level=`",
        ));
    };
    let decided = authorize_route(auth, table, method, uri, headers, system_now_ms());
    Some(match decided {
        Err(rejection) => {
            tracing::debug!(
                method = %String::from_utf8_lossy(method),
                uri = %String::from_utf8_lossy(uri),
                "forward-auth refused: {rejection}"
            );
            rejection.to_response()
        }
        Ok((principal, route)) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            let out = response.headers_mut();
            match principal {
                Some(p) => {
                    if let Ok(id) = HeaderValue::from_str(p.id().as_str()) {
                        out.insert(&KEY_ID, id);
                    }
                    out.insert(&KEY_KIND, HeaderValue::from_static(p.kind().as_str()));
                }
                // A public route: `-`, as in the request log. The header is
                // always there, so a gateway that copies it (Caddy's
                // `copy_headers`) replaces anything a client sent; Caddy 2.6
                // would otherwise forward its unresolved placeholder.
                None => {
                    out.insert(&KEY_ID, HeaderValue::from_static("-"));
                }
            }
            if let Ok(d) = HeaderValue::from_str(&route.decision().to_string()) {
                out.insert(&DECISION, d);
            }
            let rule = match route.matched_by() {
                MatchedBy::Rule(r) => r.line().to_string(),
                MatchedBy::Default { .. } => String::from("default"),
                MatchedBy::Nothing => String::from("none"),
            };
            if let Ok(r) = HeaderValue::from_str(&rule) {
                out.insert(&RULE, r);
            }
            response
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_scope_query_is_recognized() {
        assert!(fixed_scope_query(Some("resource_type=X&access_level=Y")));
        assert!(fixed_scope_query(Some("access_level=Y")));
        assert!(!fixed_scope_query(Some("x=resource_type")));
        assert!(!fixed_scope_query(None));
    }

    #[test]
    fn one_header_pair_only() {
        let mut h = HeaderMap::new();
        assert_eq!(original(&h), Ok(None));
        h.insert("x-forwarded-method", HeaderValue::from_static("GET"));
        assert!(original(&h).is_err());
        h.insert("x-forwarded-uri", HeaderValue::from_static("/a"));
        assert_eq!(original(&h), Ok(Some((&b"GET"[..], &b"/a"[..]))));
        h.insert("x-original-method", HeaderValue::from_static("GET"));
        h.insert("x-original-uri", HeaderValue::from_static("/b"));
        assert!(original(&h).is_err());
        h.remove("x-forwarded-method");
        h.remove("x-forwarded-uri");
        assert_eq!(original(&h), Ok(Some((&b"GET"[..], &b"/b"[..]))));
        h.append("x-original-uri", HeaderValue::from_static("/c"));
        assert!(original(&h).is_err());
    }
}
