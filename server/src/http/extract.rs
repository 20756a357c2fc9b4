//! Reading requests: the optional JSON body, query pairs, limits and ids.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use keygate::KeyId;
use serde::de::DeserializeOwned;

use crate::http::problem::quote;

/// The default and the largest page size of `GET /v1/keys` and `/v1/events`.
pub const DEFAULT_LIMIT: usize = 20;

/// The largest page size.
pub const MAX_LIMIT: usize = 100;
/// The largest request body, in bytes (64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Whether a body read failed because the body read timeout passed
/// (`--body-read-timeout`: the listener's deadline, tower-http's
/// `TimeoutError`, somewhere in the rejection's source chain).
pub(crate) fn timed_out(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Reads an optional JSON body: empty (or only whitespace) counts as `{}`.
/// Any content type is accepted; the bytes must be a JSON object. The error
/// is the status (400, 408 or 413) and the problem's detail.
pub(crate) fn parse_body<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, (StatusCode, String)> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {BODY_LIMIT} bytes"),
            )
        } else if timed_out(&rejection) {
            (
                StatusCode::REQUEST_TIMEOUT,
                String::from("the request body did not arrive within the body read timeout"),
            )
        } else {
            (
                StatusCode::BAD_REQUEST,
                String::from("cannot read request body"),
            )
        }
    })?;
    // The body is optional; the wire types accept a JSON object only.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    // serde's derive also reads a struct from a JSON array; only an object
    // is a valid body.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err((
            StatusCode::BAD_REQUEST,
            String::from("invalid request body: expected a JSON object"),
        ));
    }
    // serde quotes what it could not read (an unknown field's name, a
    // string of the wrong type): redacted, as any user input.
    serde_json::from_slice(&bytes).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!(
                "invalid request body: {}",
                keygate::redact_tokens(&e.to_string())
            ),
        )
    })
}
/// Splits a query into decoded pairs, refusing unknown and repeated names.
pub(crate) fn query_pairs(
    query: Option<&str>,
    known: &[&str],
) -> Result<Vec<(String, String)>, String> {
    let mut seen: Vec<(String, String)> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if !known.contains(&&*key) {
            return Err(format!("unknown query parameter `{}`", quote(&key)));
        }
        if seen.iter().any(|(k, _)| *k == key) {
            return Err(format!("query parameter `{key}` appears twice"));
        }
        seen.push((key.into_owned(), value.into_owned()));
    }
    Ok(seen)
}

pub(crate) fn parse_limit(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) && !value.starts_with('+') => Ok(n),
        _ => Err(format!(
            "`limit` must be an integer from 1 to {MAX_LIMIT}, not `{}`",
            quote(value)
        )),
    }
}

pub(crate) fn parse_id(value: &str, what: &str) -> Result<KeyId, String> {
    KeyId::parse(value).map_err(|_| {
        format!(
            "`{what}` is not a key id (16 characters of [0-9A-Za-z]): `{}`",
            quote(value)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        n: u32,
    }

    fn parse(text: &'static str) -> Result<Body, (StatusCode, String)> {
        parse_body::<Body>(Ok(Bytes::from_static(text.as_bytes())))
    }

    #[test]
    fn body_is_optional_and_must_be_an_object() {
        assert_eq!(parse(""), Ok(Body::default()));
        assert_eq!(parse(" \r\n\t"), Ok(Body::default()));
        assert_eq!(parse(" \n{\"n\": 3}"), Ok(Body { n: 3 }));
        for not_an_object in ["[3]", " [3]", "3", "x{}", "null"] {
            assert_eq!(
                parse(not_an_object),
                Err((
                    StatusCode::BAD_REQUEST,
                    String::from("invalid request body: expected a JSON object")
                )),
                "{not_an_object}"
            );
        }
        let (status, detail) = parse(r#"{"m": 1}"#).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            detail.starts_with("invalid request body: unknown field `m`"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn an_oversized_body_is_a_413() {
        use axum::extract::FromRequest;
        let request = axum::http::Request::builder()
            .body(axum::body::Body::from(vec![b' '; 3 * 1024 * 1024]))
            .unwrap();
        let bytes = Bytes::from_request(request, &()).await;
        let (status, detail) = parse_body::<Body>(bytes).unwrap_err();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            detail,
            format!("request body is larger than {BODY_LIMIT} bytes")
        );
    }
}
