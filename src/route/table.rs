//! The rule table: its text format, its parser and its matcher.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use thiserror::Error;

use super::path::{check_method, literal_key, CanonicalPath, PathError, Segment, Segments};
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
    const fn index(self) -> usize {
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
    ///
    /// ```
    /// let err = "\n\nGET".parse::<keygate::RouteTable>().unwrap_err();
    /// assert_eq!(err.line(), 3);
    /// ```
    pub fn line(&self) -> u32 {
        self.line
    }

    /// The column in characters, from 1.
    ///
    /// ```
    /// let err = "GET  /a  devboxes:rd".parse::<keygate::RouteTable>().unwrap_err();
    /// assert_eq!(err.column(), 10);
    /// ```
    pub fn column(&self) -> u32 {
        self.column
    }

    /// What is wrong.
    ///
    /// ```
    /// use keygate::route::RouteParseErrorKind;
    /// let err = "GET /a".parse::<keygate::RouteTable>().unwrap_err();
    /// assert!(matches!(err.kind(), RouteParseErrorKind::Missing(_)));
    /// ```
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
    line: u32,
    method: Method,
    pattern: Box<str>,
    decision: Decision,
    segments: Box<[PatternSegment]>,
}

impl Rule {
    /// The line it was on, from 1.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "GET / public".parse()?;
    /// assert_eq!(table.rules().next().map(|r| r.line()), Some(1));
    /// # Ok::<(), keygate::RouteParseError>(())
    /// ```
    pub fn line(&self) -> u32 {
        self.line
    }

    /// Its method.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "* / public".parse()?;
    /// assert_eq!(table.rules().next().map(|r| r.method()), Some(keygate::route::Method::Any));
    /// # Ok::<(), keygate::RouteParseError>(())
    /// ```
    pub fn method(&self) -> Method {
        self.method
    }

    /// Its pattern, as written.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "GET /a/{id} public".parse()?;
    /// assert_eq!(table.rules().next().map(|r| r.pattern()), Some("/a/{id}"));
    /// # Ok::<(), keygate::RouteParseError>(())
    /// ```
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Its decision.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "GET /a deny".parse()?;
    /// assert_eq!(table.rules().next().map(|r| r.decision()), Some(keygate::Decision::Deny));
    /// # Ok::<(), keygate::RouteParseError>(())
    /// ```
    pub fn decision(&self) -> Decision {
        self.decision
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.method, self.pattern, self.decision)
    }
}

/// Which rule, if any, decided a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchedBy<'t> {
    /// A rule matched.
    Rule(&'t Rule),
    /// No rule matched; the table's `default` line decided.
    Default {
        /// The `default` line's number.
        line: u32,
    },
    /// No rule matched and the table has no `default`: denied.
    Nothing,
}

/// The outcome of [`RouteTable::lookup`]: a decision and what made it.
///
/// ```
/// use keygate::{route::MatchedBy, Decision};
/// let table: keygate::RouteTable = "GET /healthz public".parse()?;
/// let m = table.lookup("GET", "/other")?;
/// assert_eq!((m.decision(), m.matched_by()), (Decision::Deny, MatchedBy::Nothing));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteMatch<'t> {
    decision: Decision,
    by: MatchedBy<'t>,
}

impl<'t> RouteMatch<'t> {
    /// The decision.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "GET /healthz public".parse()?;
    /// assert_eq!(table.lookup("GET", "/healthz")?.decision(), keygate::Decision::Public);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// The rule, the `default` line, or nothing.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "GET /healthz public".parse()?;
    /// let m = table.lookup("GET", "/healthz")?;
    /// assert!(matches!(m.matched_by(), keygate::route::MatchedBy::Rule(r) if r.line() == 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn matched_by(&self) -> MatchedBy<'t> {
        self.by
    }

    /// The line that decided: the rule's or the `default`'s; `None` when
    /// nothing matched.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "\ndefault public".parse()?;
    /// assert_eq!(table.lookup("GET", "/x")?.line(), Some(2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn line(&self) -> Option<u32> {
        match self.by {
            MatchedBy::Rule(r) => Some(r.line),
            MatchedBy::Default { line } => Some(line),
            MatchedBy::Nothing => None,
        }
    }
}

/// Rule indexes by method (`Method::index`), for one node and one kind of end.
#[derive(Clone, Copy, Debug, Default)]
struct Slots([Option<u32>; 8]);

impl Slots {
    #[inline]
    fn get(&self, m: Method) -> Option<u32> {
        self.0.get(m.index()).copied().flatten()
    }

    /// The rule for a request of `m`: its own method, then `GET` for `HEAD`,
    /// then `*`.
    #[inline]
    fn pick(&self, m: Option<Method>) -> Option<u32> {
        let named = match m {
            Some(Method::Head) => self.get(Method::Head).or_else(|| self.get(Method::Get)),
            Some(m) => self.get(m),
            None => None,
        };
        named.or_else(|| self.get(Method::Any))
    }
}

/// A literal child of a trie node.
#[derive(Clone, Debug)]
struct Literal {
    /// Length, first and last byte, compared first (see `Segment::key`).
    key: u64,
    /// The whole literal.
    text: Box<[u8]>,
    /// The child node.
    child: u32,
}

/// A trie node: the patterns that share a prefix of segments.
#[derive(Clone, Debug, Default)]
struct Node {
    /// Literal children, in insertion order (few per node: lookup scans them).
    literals: Vec<Literal>,
    /// The `{name}`/`*` child.
    param: Option<u32>,
    /// Rules whose pattern ends here.
    end: Slots,
    /// Rules whose pattern ends here with `**`.
    rest: Slots,
}

/// A route table: method and path to a [`Decision`].
///
/// The text format has one rule per line, `METHOD PATTERN DECISION`, `#`
/// comments, and an optional `default DECISION` line:
///
/// ```text
/// # method  path pattern                         decision
/// GET       /v1/devboxes/**                      devboxes:read
/// POST      /v1/devboxes/**                      devboxes:write
/// POST      /v1/devboxes/{id}/read_file_contents devboxes:read
/// GET       /healthz                             public
/// *         /internal/**                         deny
/// ```
///
/// * A method is `GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE`, `OPTIONS`
///   or `*` (any). A `HEAD` request uses the `GET` rules where no `HEAD`
///   rule is as specific.
/// * A pattern segment is a literal, a `{name}` or `*` (one segment), or a
///   final `**` (zero or more).
/// * Precedence is by specificity, never by line order: paths are compared
///   segment by segment (a literal beats `{…}`/`*`, which beats `**`; a
///   pattern that ends exactly beats a `**` that matches nothing), and only
///   between equally specific paths does a named method beat `*`. Two rules
///   that would tie are a parse error naming both lines.
/// * Unmatched requests are denied unless a `default` line says otherwise.
///
/// Paths are canonicalized first: see [`CanonicalPath`] for the rules.
/// [`RouteTable::lookup`] allocates nothing.
///
/// ```
/// use keygate::{Access, Decision, Resource, RouteTable};
/// let table: RouteTable = "\
///     GET  /v1/devboxes/**                      devboxes:read
///     POST /v1/devboxes/**                      devboxes:write
///     POST /v1/devboxes/{id}/read_file_contents devboxes:read
///     *    /internal/**                         deny
/// ".parse()?;
/// let read = Decision::Scope(Resource::Devboxes, Access::Read);
/// assert_eq!(table.lookup("POST", "/v1/devboxes/dbx_1/read_file_contents")?.decision(), read);
/// assert_eq!(table.lookup("HEAD", "/v1/devboxes/dbx_1")?.decision(), read);
/// assert_eq!(table.lookup("GET", "/internal/x")?.decision(), Decision::Deny);
/// assert!(table.lookup("GET", "/v1/devboxes/..%2Finternal").is_err()); // 400
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct RouteTable {
    rules: Vec<Rule>,
    nodes: Vec<Node>,
    default: Option<(Decision, u32)>,
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
        let mut table = RouteTable {
            rules: Vec::new(),
            nodes: alloc::vec![Node::default()],
            default: None,
        };
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
        let rule = Rule {
            line: line_no,
            method,
            pattern: pattern.into(),
            decision,
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

    /// Adds a rule to the trie; on a tie, the other rule's line.
    fn insert(&mut self, rule: Rule) -> Result<(), u32> {
        let mut node = 0usize;
        let mut rest = false;
        for seg in rule.segments.iter() {
            let next = match seg {
                PatternSegment::Rest => {
                    rest = true;
                    break;
                }
                PatternSegment::One => match self.nodes.get(node).and_then(|n| n.param) {
                    Some(child) => child,
                    None => {
                        let child = self.new_node();
                        if let Some(n) = self.nodes.get_mut(node) {
                            n.param = Some(child);
                        }
                        child
                    }
                },
                PatternSegment::Literal(text) => {
                    let bytes = text.as_bytes();
                    let key = literal_key(bytes);
                    let found = self.nodes.get(node).and_then(|n| {
                        n.literals
                            .iter()
                            .find(|lit| lit.key == key && *lit.text == *bytes)
                            .map(|lit| lit.child)
                    });
                    match found {
                        Some(child) => child,
                        None => {
                            let child = self.new_node();
                            if let Some(n) = self.nodes.get_mut(node) {
                                n.literals.push(Literal {
                                    key,
                                    text: bytes.into(),
                                    child,
                                });
                            }
                            child
                        }
                    }
                }
            };
            node = usize::try_from(next).unwrap_or(0);
        }
        let index = u32::try_from(self.rules.len()).unwrap_or(u32::MAX);
        let method = rule.method;
        let Some(n) = self.nodes.get_mut(node) else {
            return Ok(());
        };
        let slots = if rest { &mut n.rest } else { &mut n.end };
        if let Some(slot) = slots.0.get_mut(method.index()) {
            if let Some(other) = slot {
                let other_line = self
                    .rules
                    .get(usize::try_from(*other).unwrap_or(usize::MAX))
                    .map_or(0, |r| r.line);
                return Err(other_line);
            }
            *slot = Some(index);
        }
        self.rules.push(rule);
        Ok(())
    }

    fn new_node(&mut self) -> u32 {
        self.nodes.push(Node::default());
        u32::try_from(self.nodes.len() - 1).unwrap_or(u32::MAX)
    }

    /// The rules, in line order.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "GET /a public\nGET /b deny".parse()?;
    /// assert_eq!(table.rules().map(|r| r.line()).collect::<Vec<_>>(), [1, 2]);
    /// # Ok::<(), keygate::RouteParseError>(())
    /// ```
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// The number of rules (the `default` line is not one).
    ///
    /// ```
    /// # let table: keygate::RouteTable = "default public".parse()?;
    /// assert_eq!(table.len(), 0);
    /// # Ok::<(), keygate::RouteParseError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the table has no rules.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "# nothing".parse()?;
    /// assert!(table.is_empty());
    /// # Ok::<(), keygate::RouteParseError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The `default` decision and its line, if the table has one.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "default objects:read".parse()?;
    /// assert_eq!(table.default_decision().map(|d| d.1), Some(1));
    /// # Ok::<(), keygate::RouteParseError>(())
    /// ```
    pub fn default_decision(&self) -> Option<(Decision, u32)> {
        self.default
    }

    /// The decision for `method` and `path` (a request target: the query is
    /// ignored). A path refused by the canonicalization rules is an error
    /// (400). Allocates nothing.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "GET /v1/objects/** objects:read".parse()?;
    /// let m = table.lookup("GET", "/v1/objects/obj_1/download?x=1")?;
    /// assert_eq!(m.decision().to_string(), "objects:read");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Method and target are text or bytes (header values).
    #[inline]
    pub fn lookup(
        &self,
        method: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> Result<RouteMatch<'_>, PathError> {
        self.lookup_bytes(method.as_ref(), target.as_ref())
    }

    fn lookup_bytes(&self, method: &[u8], target: &[u8]) -> Result<RouteMatch<'_>, PathError> {
        let named = Method::of_request(method);
        if named.is_none() {
            // The seven named methods are tokens; only others need the check.
            check_method(method)?;
        }
        let path = CanonicalPath::new(target)?;
        Ok(self.lookup_canonical(named, &path))
    }

    /// The decision for an already canonical path; `method` is `None` for a
    /// request method other than the seven named ones (only `*` rules match it).
    ///
    /// ```
    /// use keygate::route::{CanonicalPath, Method};
    /// # let table: keygate::RouteTable = "* /a deny\nGET /a public".parse()?;
    /// let path = CanonicalPath::new(b"/a")?;
    /// assert_eq!(table.lookup_canonical(None, &path).decision(), keygate::Decision::Deny);
    /// assert_eq!(table.lookup_canonical(Some(Method::Get), &path).decision(), keygate::Decision::Public);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lookup_canonical(
        &self,
        method: Option<Method>,
        path: &CanonicalPath<'_>,
    ) -> RouteMatch<'_> {
        let found = self
            .nodes
            .first()
            .and_then(|root| self.find(root, path.segments(), method))
            .and_then(|i| self.rules.get(usize::try_from(i).unwrap_or(usize::MAX)));
        match (found, self.default) {
            (Some(rule), _) => RouteMatch {
                decision: rule.decision,
                by: MatchedBy::Rule(rule),
            },
            (None, Some((decision, line))) => RouteMatch {
                decision,
                by: MatchedBy::Default { line },
            },
            (None, None) => RouteMatch {
                decision: Decision::Deny,
                by: MatchedBy::Nothing,
            },
        }
    }

    /// Depth first, most specific branch first, so the first rule found wins.
    fn find(&self, node: &Node, mut segments: Segments<'_>, method: Option<Method>) -> Option<u32> {
        let Some(seg) = segments.next() else {
            return node.end.pick(method).or_else(|| node.rest.pick(method));
        };
        if let Some(child) = self.literal_child(node, &seg) {
            if let Some(found) = self.find(child, segments.clone(), method) {
                return Some(found);
            }
        }
        if let Some(child) = node.param.and_then(|i| self.node(i)) {
            if let Some(found) = self.find(child, segments, method) {
                return Some(found);
            }
        }
        node.rest.pick(method)
    }

    #[inline]
    fn node(&self, i: u32) -> Option<&Node> {
        self.nodes.get(usize::try_from(i).ok()?)
    }

    #[inline]
    fn literal_child(&self, node: &Node, seg: &Segment<'_>) -> Option<&Node> {
        if node.literals.is_empty() {
            return None;
        }
        // Few children per node: a linear scan of integer keys, then one
        // byte compare on a key match.
        let key = seg.key();
        node.literals
            .iter()
            .find(|lit| lit.key == key && seg.eq_decoded(&lit.text))
            .and_then(|lit| self.node(lit.child))
    }

    /// Every rule that matches, most specific first, with why each one after
    /// the first lost to it. Allocates; for tools (`keygate routes explain`),
    /// not for the hot path.
    ///
    /// ```
    /// let table: keygate::RouteTable = "GET /v1/** objects:read\nGET /v1/{x} deny".parse()?;
    /// let e = table.explain("GET", "/v1/a")?;
    /// assert_eq!(e.route().line(), Some(2));
    /// assert_eq!(e.candidates().len(), 2);
    /// println!("{e}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn explain(&self, method: &str, path: &str) -> Result<Explanation<'_>, PathError> {
        check_method(method.as_bytes())?;
        let canonical = CanonicalPath::new(path.as_bytes())?;
        let request = Method::of_request(method.as_bytes());
        let route = self.lookup_canonical(request, &canonical);
        let segments: Vec<Segment<'_>> = canonical.segments().collect();
        let mut candidates: Vec<(Key, &Rule)> = self
            .rules
            .iter()
            .filter_map(|r| Some((key(r, &segments, request)?, r)))
            .collect();
        candidates.sort_by(|a, b| b.0.cmp(&a.0));
        let winner = candidates.first().map(|c| c.0.clone());
        let candidates = candidates
            .into_iter()
            .map(|(k, rule)| {
                let why = match &winner {
                    Some(w) if *w == k => String::from("wins: the most specific match"),
                    Some(w) => why_lost(w, &k, &segments),
                    None => String::new(),
                };
                Candidate { rule, why }
            })
            .collect();
        Ok(Explanation {
            method: String::from(method),
            path: alloc::string::ToString::to_string(&canonical),
            route,
            candidates,
        })
    }
}

impl FromStr for RouteTable {
    type Err = RouteParseError;

    fn from_str(s: &str) -> Result<RouteTable, RouteParseError> {
        RouteTable::parse(s)
    }
}

/// A rule's specificity for one request: the rank of each pattern segment
/// (literal 4, one-segment 3, exact end 2, `**` 1), then the method tier.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key(Vec<u8>, u8);

const RANK_LITERAL: u8 = 4;
const RANK_ONE: u8 = 3;
const RANK_END: u8 = 2;
const RANK_REST: u8 = 1;

/// The specificity of `rule` for a request, or `None` if it does not match.
fn key(rule: &Rule, segments: &[Segment<'_>], method: Option<Method>) -> Option<Key> {
    let tier = rule.method.tier(method)?;
    let mut ranks = Vec::with_capacity(rule.segments.len() + 1);
    for (i, p) in rule.segments.iter().enumerate() {
        match p {
            PatternSegment::Rest => {
                ranks.push(RANK_REST);
                return Some(Key(ranks, tier));
            }
            PatternSegment::One => {
                segments.get(i)?;
                ranks.push(RANK_ONE);
            }
            PatternSegment::Literal(text) => {
                if !segments.get(i)?.eq_decoded(text.as_bytes()) {
                    return None;
                }
                ranks.push(RANK_LITERAL);
            }
        }
    }
    (segments.len() == rule.segments.len()).then(|| {
        ranks.push(RANK_END);
        Key(ranks, tier)
    })
}

fn rank_name(rank: u8) -> &'static str {
    match rank {
        RANK_LITERAL => "a literal",
        RANK_ONE => "a `{…}`/`*` segment",
        RANK_END => "an exact end",
        _ => "`**`",
    }
}

fn why_lost(winner: &Key, loser: &Key, segments: &[Segment<'_>]) -> String {
    let diff = winner.0.iter().zip(&loser.0).position(|(a, b)| a != b);
    match diff {
        Some(i) => {
            let (w, l) = (
                winner.0.get(i).copied().unwrap_or(0),
                loser.0.get(i).copied().unwrap_or(0),
            );
            let at = match segments.get(i) {
                Some(s) => alloc::format!("segment {} (`{}`)", i + 1, quote(&s.decoded())),
                None => alloc::format!("segment {} (past the end of the path)", i + 1),
            };
            alloc::format!("loses at {at}: {} beats {}", rank_name(w), rank_name(l))
        }
        None => {
            let tier = |t: u8| match t {
                3 => "the request's own method",
                2 => "`GET` standing in for `HEAD`",
                _ => "`*`",
            };
            alloc::format!(
                "equally specific path; {} beats {}",
                tier(winner.1),
                tier(loser.1)
            )
        }
    }
}

/// A rule that matched a request, with why it won or lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<'t> {
    /// The rule.
    pub rule: &'t Rule,
    /// Why it won, or why it lost to the winner.
    pub why: String,
}

/// What [`RouteTable::explain`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation<'t> {
    method: String,
    path: String,
    route: RouteMatch<'t>,
    candidates: Vec<Candidate<'t>>,
}

impl<'t> Explanation<'t> {
    /// The winning decision, as [`RouteTable::lookup`] gives it.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "GET /a public".parse()?;
    /// assert_eq!(table.explain("GET", "/a")?.route().decision(), keygate::Decision::Public);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn route(&self) -> RouteMatch<'t> {
        self.route
    }

    /// Every matching rule, the winner first.
    ///
    /// ```
    /// # let table: keygate::RouteTable = "GET /a public".parse()?;
    /// assert_eq!(table.explain("POST", "/a")?.candidates().len(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn candidates(&self) -> &[Candidate<'t>] {
        &self.candidates
    }
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The request is user input: a token pasted into a path is not echoed.
        writeln!(
            f,
            "request:  {} {}",
            crate::token::redact_tokens(&self.method),
            crate::token::redact_tokens(&self.path)
        )?;
        write!(f, "decision: {}", self.route.decision)?;
        match self.route.by {
            MatchedBy::Rule(rule) => writeln!(f, " (line {}: {rule})", rule.line)?,
            MatchedBy::Default { line } => {
                writeln!(f, " (no rule matches; the `default` on line {line})")?;
            }
            MatchedBy::Nothing => writeln!(f, " (no rule matches and there is no `default`)")?,
        }
        for c in &self.candidates {
            let rule = alloc::string::ToString::to_string(c.rule);
            writeln!(f, "  line {:>4}: {rule:<64} {}", c.rule.line, c.why)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn table(text: &str) -> RouteTable {
        text.parse().unwrap()
    }

    fn decision(t: &RouteTable, m: &str, p: &str) -> String {
        t.lookup(m, p).unwrap().decision().to_string()
    }

    const ISSUE: &str = "\
# method  path pattern                        decision
GET       /v1/devboxes/**                     devboxes:read
POST      /v1/devboxes/**                     devboxes:write
POST      /v1/devboxes/{id}/read_file_contents devboxes:read
GET       /v1/devboxes/disk_snapshots/**      snapshots:read
POST      /v1/devboxes/disk_snapshots/**      snapshots:write
GET       /healthz                            public
*         /internal/**                        deny
";

    #[test]
    fn issue_example() {
        let t = table(ISSUE);
        assert_eq!(decision(&t, "GET", "/v1/devboxes"), "devboxes:read");
        assert_eq!(
            decision(&t, "GET", "/v1/devboxes/dbx_1/logs"),
            "devboxes:read"
        );
        assert_eq!(
            decision(&t, "POST", "/v1/devboxes/dbx_1/execute"),
            "devboxes:write"
        );
        assert_eq!(
            decision(&t, "POST", "/v1/devboxes/dbx_1/read_file_contents"),
            "devboxes:read"
        );
        assert_eq!(
            decision(&t, "POST", "/v1/devboxes/dbx_1/read_file_contents/x"),
            "devboxes:write"
        );
        assert_eq!(
            decision(&t, "POST", "/v1/devboxes/disk_snapshots/s1/delete"),
            "snapshots:write"
        );
        assert_eq!(
            decision(&t, "GET", "/v1/devboxes/disk_snapshots"),
            "snapshots:read"
        );
        assert_eq!(decision(&t, "GET", "/healthz"), "public");
        assert_eq!(decision(&t, "HEAD", "/healthz"), "public");
        assert_eq!(decision(&t, "POST", "/healthz"), "deny");
        assert_eq!(decision(&t, "DELETE", "/internal/a/b"), "deny");
        assert_eq!(decision(&t, "PROPFIND", "/internal"), "deny");
        assert_eq!(decision(&t, "GET", "/V1/devboxes"), "deny");
        assert_eq!(
            t.lookup("GET", "/nope").unwrap().matched_by(),
            MatchedBy::Nothing
        );
    }

    #[test]
    fn precedence() {
        let t = table(
            "GET /a/** r1:read\nGET /a/{x} deny\nGET /a/b public\nGET /a/b/** objects:write\n* /a/b deny\nGET /a/{x}/c agents:read"
                .replace("r1", "objects")
                .as_str(),
        );
        assert_eq!(decision(&t, "GET", "/a/b"), "public"); // literal, named method
        assert_eq!(decision(&t, "POST", "/a/b"), "deny"); // `*` at the same path
        assert_eq!(decision(&t, "GET", "/a/z"), "deny"); // `{x}` beats `**`
        assert_eq!(decision(&t, "GET", "/a"), "objects:read"); // `**` matches nothing
        assert_eq!(decision(&t, "GET", "/a/b/c"), "objects:write"); // literal b beats {x}
        assert_eq!(decision(&t, "GET", "/a/z/c"), "agents:read");
        assert_eq!(decision(&t, "GET", "/a/z/d"), "objects:read"); // backtracks to `/a/**`
        assert_eq!(decision(&t, "POST", "/a/z"), "deny"); // nothing for POST: default deny
    }

    #[test]
    fn exact_end_beats_rest() {
        let t = table("GET /a public\nGET /a/** deny");
        assert_eq!(decision(&t, "GET", "/a"), "public");
        assert_eq!(decision(&t, "GET", "/a/"), "public");
        assert_eq!(decision(&t, "GET", "/a/b"), "deny");
    }

    #[test]
    fn head_falls_back_to_get() {
        let t = table("GET /a/** objects:read\nHEAD /a/b public\n* /a/c deny");
        assert_eq!(decision(&t, "HEAD", "/a/b"), "public");
        assert_eq!(decision(&t, "HEAD", "/a/x"), "objects:read");
        // Path first: `/a/c` (any method) is more specific than `GET /a/**`.
        assert_eq!(decision(&t, "HEAD", "/a/c"), "deny");
    }

    #[test]
    fn default_line() {
        let t = table("GET /a deny\ndefault objects:read");
        assert_eq!(decision(&t, "GET", "/b"), "objects:read");
        assert_eq!(
            t.lookup("GET", "/b").unwrap().matched_by(),
            MatchedBy::Default { line: 2 }
        );
        let err = "default public\ndefault deny"
            .parse::<RouteTable>()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "route table line 2, column 1: a second `default` line; the first is line 1"
        );
    }

    #[test]
    fn root_pattern() {
        let t = table("GET / public\nGET /** deny");
        assert_eq!(decision(&t, "GET", "/"), "public");
        assert_eq!(decision(&t, "GET", "/x"), "deny");
    }

    #[test]
    fn ambiguity_names_both_lines() {
        for text in [
            "GET /a/{id} deny\nGET /a/{other} public",
            "GET /a/* deny\nGET /a/{x} public",
            "* /a/** deny\n* /a/** public",
            "GET /a deny\nGET /a deny",
        ] {
            let err = text.parse::<RouteTable>().unwrap_err();
            assert_eq!(err.line(), 2, "{text}");
            assert!(err.to_string().contains("line 1"), "{err}");
        }
        // Not ambiguous: another method, or `*` against a named method.
        table("GET /a deny\nPOST /a public\n* /a deny\nHEAD /a deny");
        table("GET /a/** deny\nGET /a/* public\nGET /a deny");
    }

    #[test]
    fn parse_errors_point_at_the_text() {
        let cases: &[(&str, u32, &str)] = &[
            ("get /a public", 1, "unknown method `get`"),
            ("GET a public", 5, "pattern `a`: a pattern starts with `/`"),
            ("GET /a/ public", 5, "does not end with `/`"),
            ("GET /a//b public", 5, "no empty segment"),
            ("GET /**/a public", 5, "`**` may only be the last segment"),
            ("GET /a/{} public", 5, "`{name}` segment"),
            ("GET /a/{x public", 5, "`{name}` segment"),
            ("GET /a/b%2F public", 5, "literal segment has no `%`"),
            ("GET /a/b;c public", 5, "literal segment"),
            ("GET /a/../b public", 5, "no `.` or `..`"),
            ("GET /a/x* public", 5, "literal segment"),
            ("GET /a", 7, "lacks a decision"),
            ("GET", 4, "lacks a path pattern"),
            ("GET /a publik", 8, "unknown decision `publik`"),
            ("GET /a devboxes:none", 8, "grants nothing"),
            ("GET /a devbox:read", 8, "unknown resource `devbox`"),
            ("GET /a devboxes:rw", 8, "unknown access level `rw`"),
            ("GET /a public extra", 15, "unexpected `extra`"),
            ("default", 8, "lacks a decision"),
            ("default deny deny", 14, "unexpected `deny`"),
        ];
        for (text, col, msg) in cases {
            let err = text.parse::<RouteTable>().unwrap_err();
            assert_eq!((err.line(), err.column()), (1, *col), "{text}: {err}");
            assert!(err.to_string().contains(msg), "{text}: {err}");
            assert_eq!(err.http_status(), 400);
        }
        // Columns count characters, not bytes.
        let err = "GET /é/x publik".parse::<RouteTable>().unwrap_err();
        assert_eq!(err.column(), 10);
        let long = alloc::format!("GET /{} publik", "a/".repeat(64) + "b");
        let err = long.parse::<RouteTable>().unwrap_err();
        assert!(err.to_string().contains("at most 64 segments"), "{err}");
    }

    #[test]
    fn comments_and_blank_lines() {
        let t = table("\n   # x\n\tGET\t/a\tpublic # trailing\n");
        assert_eq!(t.len(), 1);
        assert_eq!(t.rules().next().unwrap().line(), 3);
    }

    #[test]
    fn encoded_segments_match_decoded_literals() {
        let t = table("GET /v1/devboxes/** devboxes:read\nGET /v1/caf\u{e9} public");
        assert_eq!(decision(&t, "GET", "/v1/dev%62oxes/x"), "devboxes:read");
        assert_eq!(decision(&t, "GET", "/v1/caf%C3%A9"), "public");
        assert_eq!(decision(&t, "GET", "/v1/café"), "public");
    }

    #[test]
    fn explain_lists_candidates() {
        let t = table(ISSUE);
        let e = t
            .explain("POST", "/v1/devboxes/dbx_1/read_file_contents")
            .unwrap();
        assert_eq!(e.route().line(), Some(4));
        assert_eq!(e.candidates().len(), 2);
        assert_eq!(e.candidates()[0].rule.line(), 4);
        assert!(e.candidates()[1]
            .why
            .contains("segment 3 (`dbx_1`): a `{…}`/`*` segment beats `**`"));
        let text = e.to_string();
        assert!(text.contains("decision: devboxes:read (line 4"), "{text}");
        let e = t.explain("HEAD", "/healthz").unwrap();
        assert_eq!(e.candidates().len(), 1);
        let t = table("* /a deny\nGET /a public");
        let e = t.explain("GET", "/a").unwrap();
        assert!(e.candidates()[1].why.contains("method"), "{e}");
    }
}
