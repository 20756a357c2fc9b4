//! `RouteTable::explain`: every rule that matches a request, most specific
//! first, with why each lost. A second, naive precedence engine: the tests
//! check the trie against it (it is the trie's test oracle).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::path::{check_method, CanonicalPath, PathError, Segment};
use super::syntax::{Method, PatternSegment, Rule};
use super::trie::{MatchedBy, RouteMatch, RouteTable};
use crate::token::quote;

impl RouteTable {
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
    pub fn route(&self) -> RouteMatch<'t> {
        self.route
    }

    /// Every matching rule, the winner first.
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
