//! The text format: methods, decisions, rules, patterns and their parse
//! errors, and [`RouteTable::parse`].

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use thiserror::Error;

use super::trie::RouteTable;
use crate::scope::{Access, Resource, ScopeParseError};
use crate::token::quote;

/// The most segments a pattern may have (it bounds the matcher's recursion).
pub const MAX_PATTERN_SEGMENTS: usize = 64;

/// A rule's method: one of the seven named methods, or `*` for any.
///
/// ```
/// use keygate::route::Method;
/// assert_eq!("POST".parse::<Method>(), Ok(Method::Post));
/// assert_eq!("*".parse::<Method>(), Ok(Method::Any));
/// assert!("get".parse::<Method>().is_err()); // methods are case-sensitive
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// `GET` (also answers `HEAD` requests when no `HEAD` rule matches as specifically).
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
    /// `OPTIONS`.
    Options,
    /// `*`: any method, including ones not named above.
    Any,
}

impl Method {
    /// Every method, `*` last.
    pub const ALL: [Method; 8] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
        Method::Options,
        Method::Any,
    ];

    /// The text form: `GET`, ..., `*`.
    ///
    /// ```
    /// assert_eq!(keygate::route::Method::Any.as_str(), "*");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Any => "*",
        }
    }

    /// The named method a request's method is, if it is one of the seven.
    #[inline]
    pub(crate) fn of_request(method: &[u8]) -> Option<Method> {
        Some(match method {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"PATCH" => Method::Patch,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            _ => return None,
        })
    }

    #[inline]
    pub(super) const fn index(self) -> usize {
        self as usize
    }

    /// How well a rule of this method fits a request of `request`: 3 for the
    /// same method, 2 for a `GET` rule standing in for `HEAD`, 1 for `*`.
    pub(crate) fn tier(self, request: Option<Method>) -> Option<u8> {
        match (self, request) {
            (Method::Any, _) => Some(1),
            (m, Some(r)) if m == r => Some(3),
            (Method::Get, Some(Method::Head)) => Some(2),
            _ => None,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = RouteParseErrorKind;

    fn from_str(s: &str) -> Result<Method, RouteParseErrorKind> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| RouteParseErrorKind::UnknownMethod(quote(s)))
    }
}

/// What a rule decides: a scope the key must hold, no key at all, or no.
///
/// ```
/// use keygate::{Access, Decision, Resource};
/// assert_eq!("devboxes:read".parse(), Ok(Decision::Scope(Resource::Devboxes, Access::Read)));
/// assert_eq!("public".parse(), Ok(Decision::Public));
/// assert_eq!(Decision::Deny.to_string(), "deny");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The request needs a key with `access` on `resource`.
    Scope(Resource, Access),
    /// No key needed.
    Public,
    /// Refused (403), whatever the key.
    Deny,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Scope(r, a) => write!(f, "{r}:{a}"),
            Decision::Public => f.write_str("public"),
            Decision::Deny => f.write_str("deny"),
        }
    }
}

impl FromStr for Decision {
    type Err = RouteParseErrorKind;

    fn from_str(s: &str) -> Result<Decision, RouteParseErrorKind> {
        match s {
            "public" => Ok(Decision::Public),
            "deny" => Ok(Decision::Deny),
            _ => {
                let Some((resource, access)) = s.split_once(':') else {
                    return Err(RouteParseErrorKind::UnknownDecision(quote(s)));
                };
                let scope_error = |error| RouteParseErrorKind::Scope {
                    text: quote(s),
                    error,
                };
                let resource: Resource = resource.parse().map_err(scope_error)?;
                let access: Access = access.parse().map_err(scope_error)?;
                if access == Access::None {
                    return Err(RouteParseErrorKind::NoAccess(quote(s)));
                }
                Ok(Decision::Scope(resource, access))
            }
        }
    }
}

/// A table that does not parse (400), with the line and column (both from
/// 1, the column in characters) of the offending text.
///
/// ```
/// let err = "GET /v1/x devboxes:read\nGTE /v1/y deny".parse::<keygate::RouteTable>().unwrap_err();
/// assert_eq!(err.line(), 2);
/// assert_eq!(err.to_string(), "route table line 2, column 1: unknown method `GTE`; \
///     expected `GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE`, `OPTIONS` or `*`");
/// assert_eq!(err.http_status(), 400);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("route table line {line}, column {column}: {kind}")]
pub struct RouteParseError {
    line: u32,
    column: u32,
    kind: RouteParseErrorKind,
}

impl RouteParseError {
    /// The line, from 1.
    pub fn line(&self) -> u32 {
        self.line
    }

    /// The column in characters, from 1.
    pub fn column(&self) -> u32 {
        self.column
    }

    /// What is wrong.
    pub fn kind(&self) -> &RouteParseErrorKind {
        &self.kind
    }

    /// Always 400: the table text is invalid.
    ///
    /// ```
    /// let err = "x".parse::<keygate::RouteTable>().unwrap_err();
    /// assert_eq!(err.http_status(), 400);
    /// ```
    pub const fn http_status(&self) -> u16 {
        400
    }
}

/// The kinds of [`RouteParseError`].
///
/// ```
/// use keygate::route::RouteParseErrorKind;
/// let err = "GET /a/{id} deny\nGET /a/* public".parse::<keygate::RouteTable>().unwrap_err();
/// assert_eq!(err.kind(), &RouteParseErrorKind::Ambiguous { other_line: 1, rule: "GET /a/*".into() });
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RouteParseErrorKind {
    /// A method other than the seven and `*` (methods are case-sensitive).
    #[error(
        "unknown method `{0}`; expected `GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE`, `OPTIONS` or `*`"
    )]
    UnknownMethod(String),
    /// A line that ends early.
    #[error("the rule lacks {0}; write `METHOD /path/pattern DECISION`")]
    Missing(&'static str),
    /// Text after the decision.
    #[error("unexpected `{0}` after the decision")]
    Extra(String),
    /// A pattern that breaks a pattern rule.
    #[error("pattern `{text}`: {reason}")]
    Pattern {
        /// The pattern.
        text: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A decision that is not `resource:access`, `public` or `deny`.
    #[error("unknown decision `{0}`; expected `resource:access`, `public` or `deny`")]
    UnknownDecision(String),
    /// A `resource:access` decision with an unknown resource or access level.
    #[error("decision `{text}`: {error}")]
    Scope {
        /// The decision.
        text: String,
        /// What is wrong with it.
        error: ScopeParseError,
    },
    /// A `resource:none` decision.
    #[error("decision `{0}` grants nothing; write `deny`, `public` or a `read` or `write` scope")]
    NoAccess(String),
    /// Two rules that match the same requests with equal specificity.
    #[error(
        "rule `{rule}` matches the same requests as the rule on line {other_line}, \
         with equal specificity"
    )]
    Ambiguous {
        /// The line of the earlier rule.
        other_line: u32,
        /// The later rule's method and pattern.
        rule: String,
    },
    /// A second `default` line.
    #[error("a second `default` line; the first is line {other_line}")]
    DuplicateDefault {
        /// The line of the first.
        other_line: u32,
    },
    /// A `cost=` field that is not a whole number in `0..=4294967295`, or
    /// a cost on a `public` or `deny` rule, which spends nothing.
    #[error(
        "`{0}`: a rule's cost is `cost=N` with N from 0 to 4294967295, on a `resource:access` rule"
    )]
    Cost(String),
}

/// One segment of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PatternSegment {
    /// Matches this exact (decoded) segment.
    Literal(Box<str>),
    /// `{name}` or `*`: any one segment.
    One,
    /// A final `**`: zero or more segments.
    Rest,
}

/// One line of a table.
///
/// ```
/// let table: keygate::RouteTable = "# c\nPOST /v1/devboxes/{id}/** devboxes:write".parse()?;
/// let rule = table.rules().next().unwrap();
/// assert_eq!((rule.line(), rule.pattern()), (2, "/v1/devboxes/{id}/**"));
/// assert_eq!(rule.to_string(), "POST /v1/devboxes/{id}/** devboxes:write");
/// # Ok::<(), keygate::RouteParseError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub(super) line: u32,
    pub(super) method: Method,
    pub(super) pattern: Box<str>,
    pub(super) decision: Decision,
    pub(super) cost: u32,
    pub(super) segments: Box<[PatternSegment]>,
}

impl Rule {
    /// The line it was on, from 1.
    pub fn line(&self) -> u32 {
        self.line
    }

    /// Its method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Its pattern, as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Its decision.
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// What a request on it costs against the key's rate limit and credits:
    /// its `cost=N` field, 1 without one.
    ///
    /// ```
    /// let table: keygate::RouteTable = "POST /v1/devboxes/** devboxes:write cost=5".parse()?;
    /// assert_eq!(table.rules().next().map(|r| r.cost()), Some(5));
    /// # Ok::<(), keygate::RouteParseError>(())
    /// ```
    pub fn cost(&self) -> u32 {
        self.cost
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.method, self.pattern, self.decision)?;
        if self.cost != 1 {
            write!(f, " cost={}", self.cost)?;
        }
        Ok(())
    }
}

impl RouteTable {
    /// Parses the text format; see the [type docs](RouteTable).
    ///
    /// ```
    /// let table = keygate::RouteTable::parse("GET /healthz public  # no key\ndefault deny")?;
    /// assert_eq!(table.len(), 1);
    /// # Ok::<(), keygate::RouteParseError>(())
    /// ```
    pub fn parse(text: &str) -> Result<RouteTable, RouteParseError> {
        let mut table = RouteTable::empty();
        for (n, line) in text.lines().enumerate() {
            let line_no = u32::try_from(n + 1).unwrap_or(u32::MAX);
            table.parse_line(line, line_no)?;
        }
        Ok(table)
    }

    fn parse_line(&mut self, line: &str, line_no: u32) -> Result<(), RouteParseError> {
        let content = match line.find('#') {
            Some(at) => line.get(..at).unwrap_or_default(),
            None => line,
        };
        let err = |offset: usize, kind| RouteParseError {
            line: line_no,
            column: column(line, offset),
            kind,
        };
        let mut fields = Fields {
            line: content,
            at: 0,
        };
        let Some((at0, first)) = fields.next() else {
            return Ok(());
        };
        let end = content.trim_end().len();
        if first == "default" {
            let (at, text) = fields
                .next()
                .ok_or_else(|| err(end, RouteParseErrorKind::Missing("a decision")))?;
            let decision: Decision = text.parse().map_err(|k| err(at, k))?;
            if let Some((at, extra)) = fields.next() {
                return Err(err(at, RouteParseErrorKind::Extra(quote(extra))));
            }
            if let Some((_, other_line)) = self.default {
                return Err(err(
                    at0,
                    RouteParseErrorKind::DuplicateDefault { other_line },
                ));
            }
            self.default = Some((decision, line_no));
            return Ok(());
        }
        let method: Method = first.parse().map_err(|k| err(at0, k))?;
        let (at1, pattern) = fields
            .next()
            .ok_or_else(|| err(end, RouteParseErrorKind::Missing("a path pattern")))?;
        let (at2, decision) = fields
            .next()
            .ok_or_else(|| err(end, RouteParseErrorKind::Missing("a decision")))?;
        let cost = fields.next();
        if let Some((at, extra)) = fields.next() {
            return Err(err(at, RouteParseErrorKind::Extra(quote(extra))));
        }
        let segments = parse_pattern(pattern).map_err(|reason| {
            err(
                at1,
                RouteParseErrorKind::Pattern {
                    text: quote(pattern),
                    reason,
                },
            )
        })?;
        let decision: Decision = decision.parse().map_err(|k| err(at2, k))?;
        let cost = match cost {
            None => 1,
            Some((at, text)) => {
                let n = text.strip_prefix("cost=").and_then(|n| {
                    // Digits only: `u32::from_str` would take a `+`.
                    n.bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| n.parse::<u32>().ok())?
                });
                match n {
                    Some(n) if matches!(decision, Decision::Scope(..)) => n,
                    Some(_) => return Err(err(at, RouteParseErrorKind::Cost(quote(text)))),
                    None if text.starts_with("cost=") => {
                        return Err(err(at, RouteParseErrorKind::Cost(quote(text))))
                    }
                    None => return Err(err(at, RouteParseErrorKind::Extra(quote(text)))),
                }
            }
        };
        let rule = Rule {
            line: line_no,
            method,
            pattern: pattern.into(),
            decision,
            cost,
            segments: segments.into_boxed_slice(),
        };
        self.insert(rule).map_err(|other_line| {
            err(
                at0,
                RouteParseErrorKind::Ambiguous {
                    other_line,
                    rule: quote(&alloc::format!("{method} {pattern}")),
                },
            )
        })
    }
}

impl FromStr for RouteTable {
    type Err = RouteParseError;

    fn from_str(s: &str) -> Result<RouteTable, RouteParseError> {
        RouteTable::parse(s)
    }
}

/// Whitespace-separated fields of a line, with their byte offsets.
struct Fields<'a> {
    line: &'a str,
    at: usize,
}

impl<'a> Iterator for Fields<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<(usize, &'a str)> {
        let rest = self.line.get(self.at..)?;
        let start = self.at + rest.find(|c: char| !c.is_whitespace())?;
        let tail = self.line.get(start..)?;
        let len = tail.find(char::is_whitespace).unwrap_or(tail.len());
        self.at = start + len;
        Some((start, tail.get(..len)?))
    }
}

/// The 1-based character column of byte `offset` in `line`.
fn column(line: &str, offset: usize) -> u32 {
    let chars = line.get(..offset).map_or(0, |s| s.chars().count());
    u32::try_from(chars + 1).unwrap_or(u32::MAX)
}

/// Parses a pattern into segments, or names the rule it breaks.
fn parse_pattern(pattern: &str) -> Result<Vec<PatternSegment>, &'static str> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err("a pattern starts with `/`");
    };
    let mut segments = Vec::new();
    if rest.is_empty() {
        return Ok(segments);
    }
    if rest.ends_with('/') {
        return Err("a pattern does not end with `/` (a request's trailing `/` is ignored)");
    }
    let count = rest.split('/').count();
    if count > MAX_PATTERN_SEGMENTS {
        return Err("a pattern has at most 64 segments");
    }
    for (i, seg) in rest.split('/').enumerate() {
        let last = i + 1 == count;
        let parsed = match seg {
            "" => return Err("a pattern has no empty segment (`//`)"),
            "**" if last => PatternSegment::Rest,
            "**" => return Err("`**` may only be the last segment"),
            "*" => PatternSegment::One,
            "." | ".." => return Err("a pattern has no `.` or `..` segment"),
            _ if seg.starts_with('{') => {
                let name = seg
                    .strip_prefix('{')
                    .and_then(|s| s.strip_suffix('}'))
                    .filter(|n| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    });
                if name.is_none() {
                    return Err("a `{name}` segment is `{`, letters, digits or `_`, then `}`");
                }
                PatternSegment::One
            }
            _ => {
                if seg.chars().any(|c| {
                    c.is_control() || matches!(c, '%' | ';' | '\\' | '{' | '}' | '*' | '?' | '#')
                }) {
                    return Err(
                        "a literal segment has no `%`, `;`, `\\`, `{`, `}`, `*`, `?`, `#` \
                         or control character (patterns match the decoded path)",
                    );
                }
                PatternSegment::Literal(seg.into())
            }
        };
        segments.push(parsed);
    }
    Ok(segments)
}
