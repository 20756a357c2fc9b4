//! The matcher: a trie of pattern segments with per-method slots, and
//! [`RouteTable::lookup`], which allocates nothing.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::path::{check_method, literal_key, CanonicalPath, PathError, Segment, Segments};
use super::syntax::{Decision, Method, PatternSegment, Rule};

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
    pub(super) decision: Decision,
    pub(super) by: MatchedBy<'t>,
}

impl<'t> RouteMatch<'t> {
    /// The decision.
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// What the request costs against the key's limits: the rule's
    /// `cost=N`, or 1 (for the `default` line too).
    ///
    /// ```
    /// let table: keygate::RouteTable = "POST /v1/devboxes devboxes:write cost=5\ndefault objects:read".parse()?;
    /// assert_eq!(table.lookup("POST", "/v1/devboxes")?.cost(), 5);
    /// assert_eq!(table.lookup("GET", "/v1/other")?.cost(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cost(&self) -> u32 {
        match self.by {
            MatchedBy::Rule(r) => r.cost,
            _ => 1,
        }
    }

    /// The rule, the `default` line, or nothing.
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
    pub(super) rules: Vec<Rule>,
    nodes: Vec<Node>,
    pub(super) default: Option<(Decision, u32)>,
}

impl RouteTable {
    /// A table without rules, whose trie is the root alone.
    pub(super) fn empty() -> RouteTable {
        RouteTable {
            rules: Vec::new(),
            nodes: alloc::vec![Node::default()],
            default: None,
        }
    }

    /// Adds a rule to the trie; on a tie, the other rule's line.
    pub(super) fn insert(&mut self, rule: Rule) -> Result<(), u32> {
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
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// The number of rules (the `default` line is not one).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the table has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The `default` decision and its line, if the table has one.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::{String, ToString};

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

#[cfg(test)]
mod cost_tests {
    use super::RouteTable;
    use crate::route::RouteParseErrorKind;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    #[test]
    fn a_rule_may_end_in_a_cost() {
        let t: RouteTable = "POST /v1/devboxes/** devboxes:write cost=5\n\
                             GET /v1/devboxes/** devboxes:read cost=0\n\
                             GET /v1/objects objects:read"
            .parse()
            .unwrap();
        assert_eq!(t.lookup("POST", "/v1/devboxes/x").unwrap().cost(), 5);
        assert_eq!(t.lookup("GET", "/v1/devboxes/x").unwrap().cost(), 0);
        assert_eq!(t.lookup("GET", "/v1/objects").unwrap().cost(), 1);
        assert_eq!(t.lookup("GET", "/nothing").unwrap().cost(), 1);
        let text: Vec<String> = t.rules().map(|r| r.to_string()).collect();
        assert!(text.contains(&"POST /v1/devboxes/** devboxes:write cost=5".into()));
        assert!(text.contains(&"GET /v1/objects objects:read".into()));
        let mut costs: Vec<u32> = t.rules().map(|r| r.cost()).collect();
        costs.sort_unstable();
        assert_eq!(costs, [0, 1, 5]);
    }

    #[test]
    fn bad_costs_are_named() {
        for (line, kind) in [
            ("GET /a objects:read cost=", "cost"),
            ("GET /a objects:read cost=-1", "cost"),
            ("GET /a objects:read cost=+1", "cost"),
            ("GET /a objects:read cost=4294967296", "cost"),
            ("GET /a public cost=2", "cost"),
            ("GET /a deny cost=0", "cost"),
            ("GET /a objects:read price=2", "extra"),
            ("GET /a objects:read cost=2 x", "extra"),
        ] {
            let err = line.parse::<RouteTable>().unwrap_err();
            let got = match err.kind() {
                RouteParseErrorKind::Cost(_) => "cost",
                RouteParseErrorKind::Extra(_) => "extra",
                other => panic!("{line}: {other:?}"),
            };
            assert_eq!(got, kind, "{line}");
        }
        assert!("GET /a objects:read cost=4294967295"
            .parse::<RouteTable>()
            .is_ok());
    }
}
