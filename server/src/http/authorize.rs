//! `GET /v1/authorize`: the gateway's decision, by a fixed scope in the
//! query or (with `--routes`) by the route table (`forward`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use keygate::Rejection;
use keygate::{Access, Resource};

use crate::clock::now_ms as system_now_ms;
use crate::http::problem::{bad_request, limit_refusal, quote};
use crate::http::state::AppState;
use crate::sync::counts::Outcome;

/// The header of the 204 of `/v1/authorize` that names the key (a static,
/// so the hot path does not parse the name again).
pub(crate) static KEY_ID_HEADER: HeaderName = HeaderName::from_static("x-keygate-key-id");

/// The header of the 204 of `/v1/authorize` that gives the key's kind.
static KEY_KIND_HEADER: HeaderName = HeaderName::from_static("x-keygate-key-kind");

/// The query parameters of `/v1/authorize`, percent-decoded
/// (`application/x-www-form-urlencoded`): the scope, and the `cost` against
/// the key's limits (default 1; 0 checks without spending). Other
/// parameters are ignored. The error is the 400's detail.
fn parse_authorize_query(query: Option<&str>) -> Result<(Resource, Access, u32), String> {
    let query = query.unwrap_or_default();
    let (resource, access) = match plain_authorize_query(query) {
        Some(found) => found,
        None => decode_authorize_query(query)?,
    };
    Ok((resource, access, parse_cost(query)?))
}

/// The `cost` parameter: digits only, at most once; 1 without it.
fn parse_cost(query: &str) -> Result<u32, String> {
    // No `cost`, and nothing that could decode to one: the default.
    if !query.contains("cost") && !query.contains('%') {
        return Ok(1);
    }
    let mut cost = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "cost" {
            continue;
        }
        if cost.is_some() {
            return Err(String::from("query parameter `cost` appears twice"));
        }
        let n = value
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| value.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| {
                format!(
                    "query parameter `cost` must be a whole number from 0 to 4294967295, not `{}`",
                    quote(&value)
                )
            })?;
        cost = Some(n);
    }
    Ok(cost.unwrap_or(1))
}

/// [`parse_authorize_query`]'s common case, read in place: text with no
/// `%` and no `+` decodes to itself, so when each parameter appears once,
/// plainly named, with a known value, this is the decoding parse's answer
/// without its per-pair allocations and UTF-8 checks (about 2 800 of the 9 000
/// instructions that `/v1/authorize` added to a request over h2c, measured
/// under callgrind). `None` for anything else: the decoding parse then
/// decides and words the error.
fn plain_authorize_query(query: &str) -> Option<(Resource, Access)> {
    let (mut resource, mut access) = (None, None);
    for pair in query.as_bytes().split(|&b| b == b'&') {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (
                pair.get(..at).unwrap_or_default(),
                pair.get(at + 1..).unwrap_or_default(),
            ),
            None => (pair, &[][..]),
        };
        // A value that names a resource or level has no `%` or `+`: an
        // exact match is the decoded match.
        let value = || core::str::from_utf8(value).ok();
        match key {
            b"resource_type" if resource.is_none() => {
                resource = Some(Resource::from_api_name(value()?)?);
            }
            b"access_level" if access.is_none() => {
                access = Some(Access::from_api_name(value()?)?);
            }
            b"resource_type" | b"access_level" => return None,
            // Another name is ignored, unless it may decode to one of ours.
            _ if key.iter().any(|&b| b == b'%' || b == b'+') => return None,
            _ => {}
        }
    }
    Some((resource?, access?))
}

/// [`parse_authorize_query`] by `form_urlencoded`, with the errors.
fn decode_authorize_query(query: &str) -> Result<(Resource, Access), String> {
    let mut resource = None;
    let mut access = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "resource_type" => {
                if resource.is_some() {
                    return Err(String::from(
                        "query parameter `resource_type` appears twice",
                    ));
                }
                resource = Some(
                    Resource::from_api_name(&value)
                        .ok_or_else(|| format!("unknown `resource_type` `{}`", quote(&value)))?,
                );
            }
            "access_level" => {
                if access.is_some() {
                    return Err(String::from("query parameter `access_level` appears twice"));
                }
                access = Some(
                    Access::from_api_name(&value)
                        .ok_or_else(|| format!("unknown `access_level` `{}`", quote(&value)))?,
                );
            }
            _ => {}
        }
    }
    match (resource, access) {
        (Some(r), Some(a)) => Ok((r, a)),
        (None, _) => Err(String::from("query parameter `resource_type` is required")),
        (_, None) => Err(String::from("query parameter `access_level` is required")),
    }
}

/// `GET /v1/authorize`: 204 with the key's id and kind when the presented
/// key may act; 401, 400 (bad query) or 403 otherwise, in that order. A 204
/// counts as allowed and a 403 as forbidden in the key's usage
/// (`crate::sync::counts`); a 401 or 400 counts nothing.
///
/// The hot path: it borrows the request (no header map or URI copy) and
/// the 204 carries the key id in a header, where the log reads it.
pub(crate) async fn authorize(state: State<Arc<AppState>>, request: Request) -> Response {
    decide(state, request)
}

/// The key a `/v1/authorize` answer is about, when known: the 204's header,
/// or the principal or rejection the answer carries (for the per-key
/// metrics).
pub(crate) fn key_of(response: &Response) -> Option<keygate::KeyId> {
    if let Some(id) = response
        .headers()
        .get(&KEY_ID_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        return id.parse().ok();
    }
    let extensions = response.extensions();
    extensions
        .get::<keygate::Principal>()
        .map(keygate::Principal::id)
        .or_else(|| extensions.get::<Rejection>().and_then(Rejection::key_id))
}

/// [`authorize`]'s decision.
fn decide(State(state): State<Arc<AppState>>, request: Request) -> Response {
    // Forward-auth (method and URI in headers, decided by `--routes`).
    if let Some(response) = crate::http::forward::forward_auth(&state, &request) {
        return response;
    }
    let now_ms = system_now_ms();
    let now = keygate::UnixMillis::from_millis(now_ms);
    let principal = match keygate::tower::authenticate_headers(&*state, request.headers(), now) {
        Ok(p) => p,
        Err(rejection) => return rejection.to_response(),
    };
    let (resource, access, cost) = match parse_authorize_query(request.uri().query()) {
        Ok(q) => q,
        Err(detail) => {
            let mut response = bad_request(&detail);
            response.extensions_mut().insert(principal);
            return response;
        }
    };
    if let Err(e) = principal.require(resource, access) {
        state
            .counts()
            .record(principal.id(), now_ms, Outcome::Forbidden);
        return Rejection::from(e).to_response();
    }
    // Authenticated (401) and in scope (403): now the rate limit, then the
    // credits (429).
    let verdict = state.keys().check_limits(&principal.id(), now_ms, cost);
    state
        .counts()
        .record(principal.id(), now_ms, Outcome::of(&verdict));
    if let Err(refusal) = verdict.result() {
        return limit_refusal(refusal, &verdict, request.headers(), principal);
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    keygate::tower::insert_limit_headers(headers, &verdict);
    if let Ok(id) = HeaderValue::from_str(principal.id().as_str()) {
        headers.insert(&KEY_ID_HEADER, id);
    }
    headers.insert(
        &KEY_KIND_HEADER,
        HeaderValue::from_static(principal.kind().as_str()),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorize_query() {
        assert_eq!(
            parse_authorize_query(Some(
                "resource_type=RESOURCE_TYPE_AGENTS&access_level=ACCESS_LEVEL_READ&x=1"
            ))
            .ok(),
            Some((Resource::Agents, Access::Read, 1))
        );
        assert_eq!(
            parse_authorize_query(Some(
                "resource_type=RESOURCE_TYPE_AGENTS&access_level=ACCESS_LEVEL_READ&cost=%35"
            ))
            .ok(),
            Some((Resource::Agents, Access::Read, 5))
        );
        for bad in [
            "cost=",
            "cost=-1",
            "cost=+1",
            "cost=1.5",
            "cost=4294967296",
            "cost=1&cost=1",
        ] {
            let query =
                format!("resource_type=RESOURCE_TYPE_AGENTS&access_level=ACCESS_LEVEL_READ&{bad}");
            assert!(
                parse_authorize_query(Some(&query))
                    .unwrap_err()
                    .contains("`cost`"),
                "{bad}"
            );
        }
        for bad in [
            None,
            Some(""),
            Some("resource_type=RESOURCE_TYPE_AGENTS"),
            Some("resource_type=NOPE&access_level=ACCESS_LEVEL_READ"),
            Some("resource_type=RESOURCE_TYPE_AGENTS&access_level=ACCESS_LEVEL_READ&access_level=ACCESS_LEVEL_READ"),
        ] {
            assert!(parse_authorize_query(bad).is_err());
        }
    }

    #[test]
    fn the_plain_query_read_agrees_with_the_decoding_parse() {
        // Every query of up to three pairs over a vocabulary of names and
        // values, plain and encoded, valid and not, plus odd separators.
        let keys = [
            "resource_type",
            "access_level",
            "resource%5Ftype",
            "access_level+",
            "other",
            "",
        ];
        let values = [
            "RESOURCE_TYPE_DEVBOXES",
            "RESOURCE_TYPE_OBJECTS",
            "ACCESS_LEVEL_READ",
            "ACCESS_LEVEL_%57RITE",
            "ACCESS_LEVEL_WRITE+",
            "nope",
            "",
        ];
        let mut pairs: Vec<String> = vec![String::new(), String::from("=")];
        for key in keys {
            pairs.push(key.to_owned());
            for value in values {
                pairs.push(format!("{key}={value}"));
            }
        }
        let (mut plain_answers, mut checked) = (0, 0);
        for a in &pairs {
            for b in &pairs {
                for c in &pairs {
                    let query = format!("{a}&{b}&{c}");
                    let decoded = decode_authorize_query(&query);
                    if let Some(found) = plain_authorize_query(&query) {
                        assert_eq!(decoded, Ok(found), "{query}");
                        plain_answers += 1;
                    }
                    assert_eq!(
                        parse_authorize_query(Some(&query)).map(|(r, a, _)| (r, a)),
                        decoded,
                        "{query}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(plain_answers > 100, "{plain_answers} of {checked}");
        assert_eq!(
            plain_authorize_query(
                "resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ"
            ),
            Some((Resource::Devboxes, Access::Read))
        );
        // Other parameters are passed over in place, unless their names
        // could decode to one of the two.
        assert_eq!(
            plain_authorize_query(
                "x=1&resource_type=RESOURCE_TYPE_DEVBOXES&y=%41+&access_level=ACCESS_LEVEL_READ"
            ),
            Some((Resource::Devboxes, Access::Read))
        );
        for name in ["resource%5Ftype", "access+level", "%61ccess_level"] {
            let query = format!(
                "resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ&{name}=x"
            );
            assert_eq!(plain_authorize_query(&query), None, "{query}");
        }
        // Escapes, and a parameter given twice, go to the decoding parse.
        assert_eq!(
            plain_authorize_query(
                "resource_type=RESOURCE%5FTYPE%5FOBJECTS&access_level=ACCESS_LEVEL_READ"
            ),
            None
        );
        assert_eq!(
            plain_authorize_query(
                "resource_type=RESOURCE_TYPE_OBJECTS&access_level=ACCESS_LEVEL_READ&access_level=ACCESS_LEVEL_READ"
            ),
            None
        );
    }

    #[test]
    fn authorize_query_values_are_percent_decoded() {
        // `%5F` is `_`; `+` is a space in form encoding, so it never names
        // an enum value.
        assert_eq!(
            parse_authorize_query(Some(
                "resource%5Ftype=RESOURCE%5FTYPE%5FOBJECTS&access_level=ACCESS_LEVEL_%57RITE"
            ))
            .ok(),
            Some((Resource::Objects, Access::Write, 1))
        );
        let err = parse_authorize_query(Some(
            "resource_type=RESOURCE_TYPE_OBJECTS+&access_level=ACCESS_LEVEL_READ",
        ))
        .unwrap_err();
        assert_eq!(err, "unknown `resource_type` `RESOURCE_TYPE_OBJECTS `");
        // A doubled parameter is caught after decoding too.
        assert!(parse_authorize_query(Some(
            "access_level=ACCESS_LEVEL_READ&resource_type=RESOURCE_TYPE_AGENTS&access%5Flevel=ACCESS_LEVEL_READ"
        ))
        .unwrap_err()
        .contains("twice"));
    }
}
