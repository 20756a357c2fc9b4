//! Forward-auth on `/v1/authorize` by a route table (`keygate serve
//! --routes FILE`; the `keygate routes` commands are in `crate::cli::routes`).
//!
//! Forward-auth: a gateway asks `GET /v1/authorize` with the original
//! request's `Authorization` header and its method and URI in one header
//! family, the one the operator names with `--forwarded-headers`:
//! `X-Original-Method` + `X-Original-URI` (`x-original`, the default: nginx
//! `auth_request`, set in its config) or `X-Forwarded-Method` +
//! `X-Forwarded-Uri` (`x-forwarded`: Caddy `forward_auth`, Traefik
//! `ForwardAuth`, which set them). A gateway passes on the headers it does
//! not set (nginx passes a client's `X-Forwarded-Uri`), so the other family
//! is never read: a request that carries it is refused (400), so that a
//! gateway that lets it through is noticed. The table decides; a 204 names the
//! key (`X-Keygate-Key-Id`, `-` on a public route), its kind, the decision
//! (`X-Keygate-Decision`) and the deciding line (`X-Keygate-Rule`).
//! Without forwarded headers, `?resource_type=&access_level=` keeps the
//! fixed-scope form; with a table, forwarded headers win over that query.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::{Extension, Router};
use keygate::route::MatchedBy;
use keygate::tower::{bearer_token, problem};
use keygate::RouteTable;
use keygate::UnixMillis;
use keygate::{AuthError, Rejection};

use crate::http::state::AppState;
use crate::sync::counts::Outcome;

/// The loaded table and the trusted header family, in the request
/// extensions of every route. The table can be swapped while serving
/// ([`RouteTableHandle::replace`], on `SIGHUP`): each request reads it once,
/// so a request in flight finishes on the table it started with.
#[derive(Clone, Debug)]
pub struct Routes {
    table: RouteTableHandle,
    trusted: ForwardedHeaders,
}

/// The live route table, shared by the router and whoever reloads it.
#[derive(Clone, Debug)]
pub struct RouteTableHandle(Arc<arc_swap::ArcSwap<RouteTable>>);

impl RouteTableHandle {
    /// A handle on `table`.
    pub fn new(table: RouteTable) -> RouteTableHandle {
        RouteTableHandle(Arc::new(arc_swap::ArcSwap::from_pointee(table)))
    }

    /// Serves `table` from the next request on.
    pub fn replace(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }
}

/// The header family that carries the original method and URI, as
/// `keygate serve --forwarded-headers` names it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeaders {
    /// `X-Original-Method` + `X-Original-URI` (nginx `auth_request`, which
    /// sets them in its config).
    #[default]
    #[value(name = "x-original")]
    XOriginal,
    /// `X-Forwarded-Method` + `X-Forwarded-Uri` (Caddy `forward_auth`,
    /// Traefik `ForwardAuth`, which set them themselves).
    #[value(name = "x-forwarded")]
    XForwarded,
}

impl ForwardedHeaders {
    /// The (method, URI) header names of the family.
    fn names(self) -> &'static (HeaderName, HeaderName) {
        match self {
            ForwardedHeaders::XOriginal => &ORIGINAL,
            ForwardedHeaders::XForwarded => &FORWARDED,
        }
    }

    /// The other family.
    fn other(self) -> ForwardedHeaders {
        match self {
            ForwardedHeaders::XOriginal => ForwardedHeaders::XForwarded,
            ForwardedHeaders::XForwarded => ForwardedHeaders::XOriginal,
        }
    }

    /// The flag value.
    fn flag(self) -> &'static str {
        match self {
            ForwardedHeaders::XOriginal => "x-original",
            ForwardedHeaders::XForwarded => "x-forwarded",
        }
    }
}

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

/// Adds the table, if any, and the trusted header family to every
/// request's extensions.
pub fn with_routes(router: Router, table: Option<(RouteTableHandle, ForwardedHeaders)>) -> Router {
    match table {
        Some((table, trusted)) => router.layer(Extension(Routes { table, trusted })),
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

/// The original method and URI. With a table, from the `trusted` family
/// only, and a request with any header of the other family is refused;
/// without one (`None`: the headers then only select the "needs a route
/// table" answer), from exactly one of the two pairs.
fn original(
    headers: &HeaderMap,
    trusted: Option<ForwardedHeaders>,
) -> Result<Option<MethodAndUri<'_>>, String> {
    // Most requests carry none of the four: one pass over the few names a
    // request has is cheaper than four hashed lookups.
    let named = [&FORWARDED.0, &FORWARDED.1, &ORIGINAL.0, &ORIGINAL.1];
    if !headers.keys().any(|name| named.contains(&name)) {
        return Ok(None);
    }
    if let Some(trusted) = trusted {
        let (om, ou) = trusted.other().names();
        if let Some(name) = [om, ou].into_iter().find(|n| headers.contains_key(*n)) {
            let (m, u) = trusted.names();
            return Err(format!(
                "header `{name}` is not trusted: this server reads the original request \
                 from `{m}` and `{u}` only (`--forwarded-headers {}`); \
                 the gateway must drop `{om}` and `{ou}`",
                trusted.flag()
            ));
        }
        let (m, u) = trusted.names();
        return match (single(headers, m)?, single(headers, u)?) {
            (Some(method), Some(uri)) => Ok(Some((method, uri))),
            (None, None) => Ok(None),
            _ => Err(format!("forward-auth needs both `{m}` and `{u}`")),
        };
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
/// With `--forwarded-headers x-forwarded`, a request that carries a
/// forwarded method and URI is always decided by the table, whatever its
/// query: Caddy keeps the client's query when it rewrites the request to
/// `/v1/authorize`, so a client could otherwise add
/// `?resource_type=&access_level=` and pick its own scope. With
/// `x-original` (nginx, which passes no client query to `auth_request`), a
/// fixed-scope query is the gateway's own and decides: the headers are not
/// read, so a client cannot send `X-Original-URI` to a location that asks a
/// fixed scope. Without a table, the fixed-scope query works behind any
/// gateway.
///
/// A 204 for a key counts as allowed in its usage, and a 403 for a key that
/// lacks the route's scope as forbidden; a public route, a denied or
/// unmatched route (decided before any key) and a 401 count nothing.
pub fn forward_auth(state: &AppState, request: &Request) -> Option<Response> {
    let headers = request.headers();
    let routes = request.extensions().get::<Routes>();
    if routes.is_some_and(|r| r.trusted == ForwardedHeaders::XOriginal)
        && fixed_scope_query(request.uri().query())
    {
        // nginx: a location that asks a fixed scope has put it in the
        // query itself (nginx passes no client query to `auth_request`); no
        // header the client may have sent is read.
        return None;
    }
    let (method, uri) = match original(headers, routes.map(|r| r.trusted)) {
        Ok(Some(pair)) => pair,
        Ok(None) => return None,
        Err(detail) => return Some(problem(StatusCode::BAD_REQUEST, &detail)),
    };
    let Some(Routes { table, .. }) = routes else {
        if fixed_scope_query(request.uri().query()) {
            return None;
        }
        return Some(problem(
            StatusCode::BAD_REQUEST,
            "forward-auth needs a route table: start `keygate serve --routes FILE`, \
             or ask with `?resource_type=&access_level=`",
        ));
    };
    let token = bearer_token(headers);
    let now = UnixMillis::now();
    let table = table.0.load();
    let decided = match table.authorize_request(state, token.ok(), method, uri, now) {
        Ok(ok) => Ok((ok.principal(), ok.route())),
        // A header that is there but not a bearer credential says so.
        Err(Rejection::MissingCredential) => {
            Err(token.err().unwrap_or(Rejection::MissingCredential))
        }
        Err(e) => Err(e),
    };
    let counts = state.counts();
    let now_ms = now.as_millis();
    if let Err(Rejection::Auth(AuthError::InsufficientScope { id, .. })) = &decided {
        counts.record(*id, now_ms, Outcome::Forbidden);
    }
    Some(match decided {
        Err(rejection) => {
            tracing::debug!(
                method = %keygate::redact_tokens(&String::from_utf8_lossy(method)),
                uri = %keygate::redact_tokens(&String::from_utf8_lossy(uri)),
                "forward-auth refused: {rejection}"
            );
            rejection.to_response()
        }
        Ok((principal, route)) => {
            // The key's limits, at the route's cost (a public route spends nothing).
            let verdict = match &principal {
                Some(p) => state.keys().check_limits(&p.id(), now_ms, route.cost()),
                None => keygate::Verdict::UNLIMITED,
            };
            if let Some(p) = &principal {
                counts.record(p.id(), now_ms, Outcome::of(&verdict));
            }
            if let Err(refusal) = verdict.result() {
                if let Some(p) = principal {
                    return Some(crate::http::problem::limit_refusal(
                        refusal, &verdict, headers, p,
                    ));
                }
            }
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            let out = response.headers_mut();
            keygate::tower::insert_limit_headers(out, &verdict);
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
        assert_eq!(original(&h, None), Ok(None));
        h.insert("x-forwarded-method", HeaderValue::from_static("GET"));
        assert!(original(&h, None).is_err());
        h.insert("x-forwarded-uri", HeaderValue::from_static("/a"));
        assert_eq!(original(&h, None), Ok(Some((&b"GET"[..], &b"/a"[..]))));
        h.insert("x-original-method", HeaderValue::from_static("GET"));
        h.insert("x-original-uri", HeaderValue::from_static("/b"));
        assert!(original(&h, None).is_err());
        h.remove("x-forwarded-method");
        h.remove("x-forwarded-uri");
        assert_eq!(original(&h, None), Ok(Some((&b"GET"[..], &b"/b"[..]))));
        h.append("x-original-uri", HeaderValue::from_static("/c"));
        assert!(original(&h, None).is_err());
    }

    #[test]
    fn only_the_trusted_family_is_read() {
        use ForwardedHeaders::{XForwarded, XOriginal};
        let pair = |m: &'static str, u: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(m, HeaderValue::from_static("GET"));
            h.insert(u, HeaderValue::from_static("/a"));
            h
        };
        let xo = pair("x-original-method", "x-original-uri");
        let xf = pair("x-forwarded-method", "x-forwarded-uri");
        let found = Ok(Some((&b"GET"[..], &b"/a"[..])));
        assert_eq!(original(&xo, Some(XOriginal)), found);
        assert_eq!(original(&xf, Some(XForwarded)), found);
        // The other family, whole or one header of it, is refused.
        for (h, trusted) in [(&xf, XOriginal), (&xo, XForwarded)] {
            let e = original(h, Some(trusted)).unwrap_err();
            assert!(e.contains("is not trusted"), "{e}");
            assert!(e.contains(trusted.flag()), "{e}");
        }
        let mut one = xo.clone();
        one.insert("x-forwarded-uri", HeaderValue::from_static("/healthz"));
        assert!(original(&one, Some(XOriginal)).is_err());
        let mut half = HeaderMap::new();
        half.insert("x-original-uri", HeaderValue::from_static("/a"));
        assert!(original(&half, Some(XOriginal))
            .unwrap_err()
            .contains("needs both"));
        assert_eq!(ForwardedHeaders::default(), XOriginal);
    }
}
