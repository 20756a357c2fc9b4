//! `GET /v1/events`: the audit log (the change log), in sequence order;
//! it needs `account:read`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use keygate::Principal;
use serde::Serialize;

use crate::http::extract::{parse_limit, query_pairs, DEFAULT_LIMIT};
use crate::http::keys::scope_of;
use crate::http::problem::quote;
use crate::http::problem::{bad_request, ok_json, store_error, with_caller};
use crate::http::state::AppState;
use crate::store::Event;

/// The body of `GET /v1/events`.
#[derive(Debug, Serialize)]
pub struct EventListView {
    /// The page, in sequence order.
    pub events: Vec<Event>,
    /// Whether more events follow; pass the last `seq` as `after`.
    pub has_more: bool,
}

/// The query of `GET /v1/events`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EventsQuery {
    /// The sequence number after which the page starts.
    pub after: u64,
    /// 1 to 100.
    pub limit: usize,
}

impl EventsQuery {
    /// Parses `after` and `limit`; anything else is an error.
    pub fn parse(query: Option<&str>) -> Result<EventsQuery, String> {
        let mut out = EventsQuery {
            after: 0,
            limit: DEFAULT_LIMIT,
        };
        for (key, value) in query_pairs(query, &["after", "limit"])? {
            match key.as_str() {
                "limit" => out.limit = parse_limit(&value)?,
                _ => {
                    // Sequence numbers are 63-bit (the stores keep them as
                    // SQL BIGINT), as the document's `int64` says.
                    out.after = value
                        .parse::<u64>()
                        .ok()
                        .filter(|&n| !value.starts_with('+') && i64::try_from(n).is_ok())
                        .ok_or_else(|| {
                            format!(
                                "`after` must be a sequence number from 0 to {}, not `{}`",
                                i64::MAX,
                                quote(&value)
                            )
                        })?;
                }
            }
        }
        Ok(out)
    }
}

/// `GET /v1/events?after=SEQ&limit=N`: the audit log, in sequence order;
/// under the attenuating policy a restricted caller reads only the events
/// of its descendants.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = match EventsQuery::parse(query.as_deref()) {
        Ok(q) => q,
        Err(detail) => return with_caller(bad_request(&detail), caller),
    };
    if let Some(refused) = super::keys::refuse_caller(&state, &caller).await {
        return refused;
    }
    let scope = scope_of(state.policy(), &caller);
    match state.store().events(query.after, query.limit, scope).await {
        Ok((events, has_more)) => {
            ok_json(StatusCode::OK, &EventListView { events, has_more }, caller)
        }
        Err(e) => with_caller(store_error(&e, "cannot read events"), caller),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn events_query() {
        assert_eq!(
            EventsQuery::parse(Some("after=9223372036854775807&limit=5")),
            Ok(EventsQuery {
                after: i64::MAX as u64,
                limit: 5
            })
        );
        assert_eq!(
            EventsQuery::parse(None),
            Ok(EventsQuery {
                after: 0,
                limit: 20
            })
        );
        assert_eq!(EventsQuery::parse(Some("after=7")).unwrap().after, 7);
        for bad in [
            "after=-1",
            "after=x",
            "after=+5",
            "after=",
            "after=9223372036854775808",
            "after=18446744073709551615",
            "after=18446744073709551616",
            "after=1&after=2",
            "limit=0",
            "limit=+5",
            "seq=1",
        ] {
            assert!(EventsQuery::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
