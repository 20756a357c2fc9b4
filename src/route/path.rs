//! Request-path canonicalization: one rule set, applied before matching.
//!
//! The rules are on [`CanonicalPath`].

use thiserror::Error;

/// A request path (or method) refused before matching (always 400).
///
/// `at` is the byte offset of the offending input in the request target. The
/// message never quotes the path itself, so building it allocates nothing.
///
/// ```
/// let table: keygate::RouteTable = "GET /v1/** objects:read".parse()?;
/// let err = table.lookup("GET", "/v1/devboxes/..%2Faccounts").unwrap_err();
/// assert_eq!(err.to_string(), "request path has an encoded `/` (`%2F`) at byte 15");
/// assert_eq!(err.http_status(), 400);
/// # Ok::<(), keygate::RouteParseError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PathError {
    /// The method is not an HTTP token (RFC 9110 `tchar`s, 1 to 32 bytes).
    #[error("request method is not an HTTP token")]
    BadMethod,
    /// The target does not start with `/`.
    #[error("request path does not start with `/`")]
    NotAbsolute,
    /// A `.` or `..` segment, raw or percent-encoded.
    #[error("request path has a `.` or `..` segment at byte {at}")]
    DotSegment {
        /// Byte offset of the segment.
        at: usize,
    },
    /// Two `/` in a row.
    #[error("request path has an empty segment (`//`) at byte {at}")]
    EmptySegment {
        /// Byte offset of the second `/`.
        at: usize,
    },
    /// `%2F` or `%2f`.
    #[error("request path has an encoded `/` (`%2F`) at byte {at}")]
    EncodedSlash {
        /// Byte offset of the `%`.
        at: usize,
    },
    /// `\` or `%5C`.
    #[error("request path has a `\\` (raw or `%5C`) at byte {at}")]
    Backslash {
        /// Byte offset of the `\` or `%`.
        at: usize,
    },
    /// A control character, raw or encoded (`%00`..`%1F`, `%7F`).
    #[error("request path has a control character (raw or encoded, such as `%00`) at byte {at}")]
    ControlCharacter {
        /// Byte offset of the character or its `%`.
        at: usize,
    },
    /// `;` or `%3B` (path parameters such as `;jsessionid=`).
    #[error("request path has a `;` (path parameter, raw or `%3B`) at byte {at}")]
    Semicolon {
        /// Byte offset of the `;` or `%`.
        at: usize,
    },
    /// `%3F` or `%3f`: an encoded `?`. A backend that decodes before it
    /// splits off the query would route a shorter path than the one matched
    /// (`/v1/admin%3Fx` read as `/v1/admin`).
    #[error("request path has an encoded `?` (`%3F`) at byte {at}")]
    EncodedQuery {
        /// Byte offset of the `%`.
        at: usize,
    },
    /// `%23`: an encoded `#`. A backend that decodes before it drops the
    /// fragment would route a shorter path than the one matched.
    #[error("request path has an encoded `#` (`%23`) at byte {at}")]
    EncodedFragment {
        /// Byte offset of the `%`.
        at: usize,
    },
    /// `%25`: an encoded `%`, a double-encoding attempt.
    #[error("request path has an encoded `%` (`%25`) at byte {at}")]
    EncodedPercent {
        /// Byte offset of the `%`.
        at: usize,
    },
    /// A raw `#`.
    #[error("request path has a `#` at byte {at}")]
    Fragment {
        /// Byte offset of the `#`.
        at: usize,
    },
    /// A `%` not followed by two hex digits.
    #[error("request path has invalid percent-encoding at byte {at}")]
    BadPercentEncoding {
        /// Byte offset of the `%`.
        at: usize,
    },
    /// A segment that does not decode to UTF-8.
    #[error("request path segment at byte {at} does not decode to UTF-8")]
    NotUtf8 {
        /// Byte offset of the segment.
        at: usize,
    },
}

impl PathError {
    /// Always 400: the request is malformed or unsafe to route.
    ///
    /// ```
    /// assert_eq!(keygate::PathError::NotAbsolute.http_status(), 400);
    /// ```
    pub const fn http_status(&self) -> u16 {
        400
    }
}

/// Checks that `method` is an HTTP token: 1 to 32 `tchar` bytes.
pub(crate) fn check_method(method: &[u8]) -> Result<(), PathError> {
    let is_tchar = |b: &u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
    };
    if method.is_empty() || method.len() > 32 || !method.iter().all(is_tchar) {
        return Err(PathError::BadMethod);
    }
    Ok(())
}

/// A request path that passed every rule: its segments can be matched.
///
/// The request target is cut at the first `?` (the query is never matched),
/// split at every raw `/`, and each segment is percent-decoded exactly once.
/// The rules, and why:
///
/// * The path must start with `/` (origin form). Anything else — `*`, an
///   absolute URI, an empty string — is refused.
/// * A `.` or `..` segment, raw or encoded (`%2e`, `.%2E`, ...), is refused:
///   a backend that resolves it would serve another route than the one
///   matched here (`/v1/devboxes/..%2Faccounts`).
/// * An empty segment (`//`) is refused, not collapsed: servers disagree on
///   whether `//` is one segment or none, and a gateway that merges slashes
///   already sends a clean path.
/// * One trailing `/` is dropped: `/v1/devboxes/` is `/v1/devboxes`.
/// * An encoded `/` (`%2F`) is refused: a backend that decodes before routing
///   would see a different path.
/// * A `\`, raw or encoded (`%5C`), is refused: some servers treat it as `/`.
/// * A control character, raw or encoded (`%00`..`%1F`, `%7F`), is refused;
///   this includes NUL, which C backends read as the end of the path.
/// * A `;`, raw or encoded, is refused: servlet containers strip `;params`
///   (`;jsessionid=...`) from a segment before routing and others do not, so
///   `/internal;x/y` could be denied here and served as `/internal/y` there.
/// * An encoded `%` (`%25`) is refused: a backend that decodes twice would see
///   a different path (`%252F` → `%2F` → `/`).
/// * An encoded `?` (`%3F`, `%3f`) or `#` (`%23`) is refused: a backend that
///   decodes before it splits off the query or fragment would route a
///   shorter path (`/v1/admin%3Fx` → `/v1/admin`) than the one matched here.
/// * A raw `#` is refused: a fragment never belongs in a request target.
/// * A `%` not followed by two hex digits is refused, and so is a decoded
///   segment that is not UTF-8.
/// * Matching is case-sensitive, and on the decoded bytes: `%41` is `A`.
///
/// Every refusal is a [`PathError`] (400). Canonicalization allocates nothing.
///
/// ```
/// let path = keygate::route::CanonicalPath::new(b"/v1/devboxes/dbx%5F1/?wait=1")?;
/// let segments: Vec<String> = path.segments().map(|s| s.decoded()).collect();
/// assert_eq!(segments, ["v1", "devboxes", "dbx_1"]);
/// assert_eq!(path.to_string(), "/v1/devboxes/dbx_1");
/// # Ok::<(), keygate::PathError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    /// The path after its leading `/`, without query or trailing `/`.
    rest: &'a [u8],
    /// Whether any segment has a percent-escape.
    encoded: bool,
}

impl<'a> CanonicalPath<'a> {
    /// Checks `target` (a path with an optional query) against the rules in the
    /// [`CanonicalPath`] docs. Allocates nothing.
    ///
    /// ```
    /// use keygate::route::CanonicalPath;
    /// assert!(CanonicalPath::new(b"/a/%2e%2e/b").is_err());
    /// assert!(CanonicalPath::new(b"/a//b").is_err());
    /// assert!(CanonicalPath::new(b"/a/b/").is_ok());
    /// ```
    pub fn new(target: &'a [u8]) -> Result<CanonicalPath<'a>, PathError> {
        let Some((&b'/', after)) = target.split_first() else {
            return Err(PathError::NotAbsolute);
        };
        // The fast path, one pass: find the query and classify every byte.
        let (rest, plain, ends_with_slash) = scan(after);
        if plain {
            let rest = if ends_with_slash {
                // One trailing `/` is no trailing `/` (a second is `//`,
                // which `scan` does not call plain).
                rest.split_last().map_or(rest, |(_, init)| init)
            } else {
                rest
            };
            return Ok(CanonicalPath {
                rest,
                encoded: false,
            });
        }
        // The full check, segment by segment, to name the broken rule.
        let rest = match rest.split_last() {
            Some((&b'/', [])) => return Err(PathError::EmptySegment { at: 1 }),
            Some((&b'/', init)) => init,
            _ => rest,
        };
        let mut encoded = false;
        let mut start = 1usize;
        for seg in rest.split(|&b| b == b'/') {
            encoded |= check_segment(seg, start)?;
            start += seg.len() + 1;
        }
        Ok(CanonicalPath { rest, encoded })
    }

    /// The segments, in order (none for `/`).
    ///
    /// ```
    /// let path = keygate::route::CanonicalPath::new(b"/")?;
    /// assert_eq!(path.segments().count(), 0);
    /// # Ok::<(), keygate::PathError>(())
    /// ```
    pub fn segments(&self) -> Segments<'a> {
        Segments {
            rest: if self.rest.is_empty() {
                None
            } else {
                Some(self.rest)
            },
            encoded: self.encoded,
        }
    }

    /// Whether any segment had a percent-escape.
    pub fn is_encoded(&self) -> bool {
        self.encoded
    }
}

impl core::fmt::Display for CanonicalPath<'_> {
    /// The decoded path, `/`-joined, with a leading `/`: itself a request
    /// target for the same path, so canonical text is a fixed point. (A
    /// decoded `?` or `#` would be written escaped, `%3F` or `%23`, but the
    /// rules refuse both.)
    ///
    /// ```
    /// use keygate::route::CanonicalPath;
    /// let path = CanonicalPath::new(b"/v1/a%5Fb%41/?q=1")?;
    /// assert_eq!(path.to_string(), "/v1/a_bA");
    /// let again = path.to_string();
    /// assert_eq!(CanonicalPath::new(again.as_bytes())?.to_string(), again);
    /// # Ok::<(), keygate::PathError>(())
    /// ```
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut any = false;
        for seg in self.segments() {
            any = true;
            f.write_str("/")?;
            seg.write_decoded(f)?;
        }
        if !any {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// Byte classes for the fast pre-scan of [`scan`].
const SLASH: u8 = 1;
/// `%`, `.`, `\`, `;`, `#`, control characters and non-ASCII bytes: any of
/// them sends the path to the full per-segment check.
const SPECIAL: u8 = 2;
/// `?`: the query starts.
const QUERY: u8 = 4;

/// `CLASS[b]`: the class of byte `b`.
// Evaluated at compile time: an out-of-range index is a build error.
#[allow(clippy::indexing_slicing)]
const CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        table[b] = match b as u8 {
            b'/' => SLASH,
            b'?' => QUERY,
            b'%' | b'.' | b'\\' | b';' | b'#' | 0..=0x1f | 0x7f..=0xff => SPECIAL,
            _ => 0,
        };
        b += 1;
    }
    table
};

/// One pass over the target after its leading `/`: the path up to the
/// query, whether it is plain (no byte that needs the full check, no `//`),
/// and whether it ends with `/`. One table load per byte; a plain path is
/// canonical as it is.
#[inline]
fn scan(after: &[u8]) -> (&[u8], bool, bool) {
    let (any, prev) = classify(after);
    if any & QUERY == 0 {
        return (
            after,
            any & SPECIAL == 0,
            prev == SLASH && !after.is_empty(),
        );
    }
    // A query: classify again up to it (a second pass over the path only).
    let end = after.iter().position(|&b| b == b'?').unwrap_or(after.len());
    let path = after.get(..end).unwrap_or_default();
    let (any, prev) = classify(path);
    (path, any & SPECIAL == 0, prev == SLASH && !path.is_empty())
}

/// The OR of the classes of `bytes` (with SPECIAL for a `//`, counting the
/// leading `/` before them), and the class of the last byte. No branch but
/// the loop's.
#[inline]
fn classify(bytes: &[u8]) -> (u8, u8) {
    let mut any = 0u8;
    let mut prev = SLASH; // the leading `/`
    for &b in bytes {
        // A `u8` always indexes a 256-entry table: the check compiles away.
        let class = CLASS.get(usize::from(b)).copied().unwrap_or(SPECIAL);
        // `prev & class` is SLASH exactly at a `//`, shifted to SPECIAL.
        any |= class | ((prev & class) << 1);
        prev = class;
    }
    (any, prev)
}

/// Checks one raw segment that starts at byte `at` of the target. Returns
/// whether it has percent-escapes.
fn check_segment(seg: &[u8], at: usize) -> Result<bool, PathError> {
    if seg.is_empty() {
        return Err(PathError::EmptySegment { at });
    }
    let mut encoded = false;
    let mut non_ascii = false;
    let mut dots = 0usize;
    let mut decoded_len = 0usize;
    let mut i = 0usize;
    while let Some(&b) = seg.get(i) {
        let pos = at + i;
        let byte = if b == b'%' {
            let hi = seg.get(i + 1).and_then(|&h| hex(h));
            let lo = seg.get(i + 2).and_then(|&l| hex(l));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadPercentEncoding { at: pos });
            };
            encoded = true;
            i += 3;
            let d = (hi << 4) | lo;
            match d {
                b'/' => return Err(PathError::EncodedSlash { at: pos }),
                b'%' => return Err(PathError::EncodedPercent { at: pos }),
                b'?' => return Err(PathError::EncodedQuery { at: pos }),
                b'#' => return Err(PathError::EncodedFragment { at: pos }),
                _ => {}
            }
            d
        } else {
            i += 1;
            if b == b'#' {
                return Err(PathError::Fragment { at: pos });
            }
            b
        };
        match byte {
            b'\\' => return Err(PathError::Backslash { at: pos }),
            b';' => return Err(PathError::Semicolon { at: pos }),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter { at: pos }),
            b'.' => dots += 1,
            0x80.. => non_ascii = true,
            _ => {}
        }
        decoded_len += 1;
    }
    if dots == decoded_len && decoded_len <= 2 {
        return Err(PathError::DotSegment { at });
    }
    if (encoded || non_ascii) && !decodes_to_utf8(seg) {
        return Err(PathError::NotUtf8 { at });
    }
    Ok(encoded)
}

/// The value of an ASCII hex digit.
#[inline]
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes a segment already checked by [`check_segment`].
fn decode(seg: &[u8]) -> Decoded<'_> {
    Decoded { seg, i: 0 }
}

/// The bytes of a decoded segment.
#[derive(Clone)]
struct Decoded<'a> {
    seg: &'a [u8],
    i: usize,
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let b = *self.seg.get(self.i)?;
        if b == b'%' {
            let hi = self.seg.get(self.i + 1).and_then(|&h| hex(h));
            let lo = self.seg.get(self.i + 2).and_then(|&l| hex(l));
            self.i += 3;
            match (hi, lo) {
                (Some(hi), Some(lo)) => Some((hi << 4) | lo),
                // Unreachable on a checked segment; stop rather than guess.
                _ => None,
            }
        } else {
            self.i += 1;
            Some(b)
        }
    }
}

/// Whether the decoded segment is UTF-8, checked by `core::str::from_utf8` in
/// 64-byte chunks on the stack (an incomplete sequence at a chunk's end is
/// carried to the next chunk).
fn decodes_to_utf8(seg: &[u8]) -> bool {
    let mut buf = [0u8; 64];
    let mut len = 0usize;
    for b in decode(seg) {
        if len == buf.len() && !flush(&mut buf, &mut len) {
            return false;
        }
        if let Some(slot) = buf.get_mut(len) {
            *slot = b;
            len += 1;
        }
    }
    core::str::from_utf8(buf.get(..len).unwrap_or_default()).is_ok()
}

/// Validates `buf[..len]`, keeping an incomplete final sequence (at most 3
/// bytes) at the front. False on invalid UTF-8.
fn flush(buf: &mut [u8; 64], len: &mut usize) -> bool {
    match core::str::from_utf8(buf.get(..*len).unwrap_or_default()) {
        Ok(_) => {
            *len = 0;
            true
        }
        Err(e) if e.error_len().is_none() => {
            let tail = e.valid_up_to();
            buf.copy_within(tail..*len, 0);
            *len -= tail;
            true
        }
        Err(_) => false,
    }
}

/// Length, first byte and last byte of `text`, packed into one integer.
#[inline]
pub(crate) fn literal_key(text: &[u8]) -> u64 {
    pack_key(
        text.len(),
        text.first().copied().unwrap_or(0),
        text.last().copied().unwrap_or(0),
    )
}

#[inline]
fn pack_key(len: usize, first: u8, last: u8) -> u64 {
    ((len as u64) << 16) | (u64::from(first) << 8) | u64::from(last)
}

/// The segments of a [`CanonicalPath`].
#[derive(Clone, Debug)]
pub struct Segments<'a> {
    rest: Option<&'a [u8]>,
    encoded: bool,
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    #[inline]
    fn next(&mut self) -> Option<Segment<'a>> {
        let rest = self.rest?;
        match rest.iter().position(|&b| b == b'/') {
            Some(at) => {
                self.rest = rest.get(at + 1..);
                Some(Segment {
                    raw: rest.get(..at).unwrap_or_default(),
                    encoded: self.encoded,
                })
            }
            None => {
                self.rest = None;
                Some(Segment {
                    raw: rest,
                    encoded: self.encoded,
                })
            }
        }
    }
}

/// One checked path segment, still percent-encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    raw: &'a [u8],
    /// Whether the path has any percent-escape (if not, raw is decoded).
    encoded: bool,
}

impl<'a> Segment<'a> {
    /// The segment as sent, percent-escapes and all.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The decoded segment's [`literal_key`]: length, first and last byte,
    /// compared as one integer before any bytes.
    #[inline]
    pub(crate) fn key(&self) -> u64 {
        if self.encoded && self.raw.contains(&b'%') {
            let escapes = self.raw.iter().filter(|&&b| b == b'%').count();
            let first = decode(self.raw).next().unwrap_or(0);
            let last = decode(self.raw).last().unwrap_or(0);
            pack_key(self.raw.len() - 2 * escapes, first, last)
        } else {
            literal_key(self.raw)
        }
    }

    /// Orders the decoded segment against `text` by length first, then by
    /// bytes: the order of the matcher's sorted literals, in which most
    /// comparisons are one length compare.
    #[inline]
    pub(crate) fn cmp_decoded(&self, text: &[u8]) -> core::cmp::Ordering {
        if self.encoded && self.raw.contains(&b'%') {
            let escapes = self.raw.iter().filter(|&&b| b == b'%').count();
            let len = self.raw.len() - 2 * escapes;
            len.cmp(&text.len())
                .then_with(|| decode(self.raw).cmp(text.iter().copied()))
        } else {
            self.raw
                .len()
                .cmp(&text.len())
                .then_with(|| self.raw.cmp(text))
        }
    }

    /// Whether the decoded segment is `text`.
    #[inline]
    pub(crate) fn eq_decoded(&self, text: &[u8]) -> bool {
        if self.encoded {
            self.cmp_decoded(text) == core::cmp::Ordering::Equal
        } else {
            self.raw == text
        }
    }

    fn write_decoded(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut buf = [0u8; 64];
        let mut len = 0usize;
        let out = |buf: &[u8], f: &mut core::fmt::Formatter<'_>| match core::str::from_utf8(buf) {
            Ok(s) => f.write_str(s).map(|()| buf.len()),
            Err(e) => {
                let ok = e.valid_up_to();
                f.write_str(core::str::from_utf8(buf.get(..ok).unwrap_or_default()).unwrap_or(""))
                    .map(|()| ok)
            }
        };
        for b in decode(self.raw) {
            // A decoded `?` or `#` written raw would end the path: keep it
            // escaped so the text is a request target for the same path.
            // (Every byte before it ends a whole UTF-8 character.) The rules
            // refuse both now; this stays so the text is right regardless.
            let escape = match b {
                b'?' => "%3F",
                b'#' => "%23",
                _ => "",
            };
            if !escape.is_empty() {
                let done = out(buf.get(..len).unwrap_or_default(), f)?;
                buf.copy_within(done..len, 0);
                len -= done;
                f.write_str(escape)?;
                continue;
            }
            if len == buf.len() {
                let done = out(&buf, f)?;
                buf.copy_within(done.., 0);
                len -= done;
            }
            if let Some(slot) = buf.get_mut(len) {
                *slot = b;
                len += 1;
            }
        }
        out(buf.get(..len).unwrap_or_default(), f).map(|_| ())
    }

    /// The decoded segment (checked to be UTF-8).
    ///
    /// ```
    /// let path = keygate::route::CanonicalPath::new(b"/caf%C3%A9")?;
    /// assert_eq!(path.segments().next().unwrap().decoded(), "café");
    /// # Ok::<(), keygate::PathError>(())
    /// ```
    pub fn decoded(&self) -> alloc::string::String {
        let bytes: alloc::vec::Vec<u8> = decode(self.raw).collect();
        alloc::string::String::from_utf8(bytes).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::{String, ToString};
    use alloc::vec;
    use alloc::vec::Vec;

    fn canon(p: &str) -> Result<String, PathError> {
        CanonicalPath::new(p.as_bytes()).map(|c| c.to_string())
    }

    /// A decoded `?` or `#` is written escaped, the text around it as it
    /// decodes (the path rules refuse both today, so only a segment made
    /// here reaches this).
    #[test]
    fn a_decoded_query_or_fragment_mark_stays_escaped() {
        struct Decoded<'a>(Segment<'a>);
        impl core::fmt::Display for Decoded<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                self.0.write_decoded(f)
            }
        }
        for (raw, shown) in [
            ("ab%3Fcd", "ab%3Fcd"),
            ("%23x%41", "%23xA"),
            ("caf%C3%A9%3F%23%C3%A9", "café%3F%23é"),
        ] {
            let seg = Segment {
                raw: raw.as_bytes(),
                encoded: true,
            };
            assert_eq!(Decoded(seg).to_string(), shown, "{raw}");
        }
    }

    #[test]
    fn plain_paths() {
        assert_eq!(canon("/").unwrap(), "/");
        assert_eq!(canon("/v1/devboxes").unwrap(), "/v1/devboxes");
        assert_eq!(canon("/v1/devboxes?x=/../y").unwrap(), "/v1/devboxes");
        assert_eq!(canon("/?q").unwrap(), "/");
    }

    #[test]
    fn encoded_query_and_fragment_are_refused() {
        // A backend that decodes before splitting off the query or fragment
        // would route `/v1/agents`, not the segment `agents?x` matched here.
        assert_eq!(
            canon("/v1/agents%3Fx"),
            Err(PathError::EncodedQuery { at: 10 })
        );
        assert_eq!(
            canon("/v1/agents%3fx=1"),
            Err(PathError::EncodedQuery { at: 10 })
        );
        assert_eq!(
            canon("/v1/agents%23frag"),
            Err(PathError::EncodedFragment { at: 10 })
        );
        // At any place in a segment, in any segment, after other escapes.
        assert_eq!(canon("/%3F"), Err(PathError::EncodedQuery { at: 1 }));
        assert_eq!(
            canon("/a/b%41%23"),
            Err(PathError::EncodedFragment { at: 7 })
        );
        // A raw `?` still starts the query, and an escape in the query is
        // never looked at.
        assert_eq!(canon("/v1/agents?x=%3F%23").unwrap(), "/v1/agents");
        // Their neighbours still decode.
        assert_eq!(canon("/a%3E%40").unwrap(), "/a>@");
        assert_eq!(
            PathError::EncodedQuery { at: 3 }.to_string(),
            "request path has an encoded `?` (`%3F`) at byte 3"
        );
        assert_eq!(
            PathError::EncodedFragment { at: 3 }.to_string(),
            "request path has an encoded `#` (`%23`) at byte 3"
        );
        assert_eq!(PathError::EncodedFragment { at: 3 }.http_status(), 400);
    }

    #[test]
    fn trailing_slash_is_dropped_once() {
        assert_eq!(canon("/v1/devboxes/").unwrap(), "/v1/devboxes");
        assert_eq!(canon("/v1/devboxes/?a=b").unwrap(), "/v1/devboxes");
        assert_eq!(
            canon("/v1/devboxes//"),
            Err(PathError::EmptySegment { at: 13 })
        );
    }

    #[test]
    fn double_slash_is_refused() {
        assert_eq!(canon("//"), Err(PathError::EmptySegment { at: 1 }));
        assert_eq!(canon("///"), Err(PathError::EmptySegment { at: 1 }));
        assert_eq!(canon("//v1"), Err(PathError::EmptySegment { at: 1 }));
        assert_eq!(canon("/v1//x"), Err(PathError::EmptySegment { at: 4 }));
    }

    #[test]
    fn dot_segments_are_refused_raw_and_encoded() {
        for p in [
            "/.",
            "/..",
            "/a/./b",
            "/a/../b",
            "/a/%2e",
            "/a/%2E%2e/b",
            "/a/.%2E",
            "/a/%2e./",
            "/..?x",
        ] {
            assert!(
                matches!(canon(p), Err(PathError::DotSegment { .. })),
                "{p}: {:?}",
                canon(p)
            );
        }
        // Three dots, or dots with other text, are ordinary names.
        assert_eq!(canon("/.../a.b/.x").unwrap(), "/.../a.b/.x");
    }

    #[test]
    fn dot_dot_encoded_slash_is_refused() {
        assert_eq!(
            canon("/v1/devboxes/..%2Faccounts"),
            Err(PathError::EncodedSlash { at: 15 })
        );
        assert_eq!(
            canon("/v1/devboxes/..%2faccounts"),
            Err(PathError::EncodedSlash { at: 15 })
        );
    }

    #[test]
    fn encoded_slash_backslash_nul_are_refused() {
        assert_eq!(canon("/a%2Fb"), Err(PathError::EncodedSlash { at: 2 }));
        assert_eq!(canon("/a%5Cb"), Err(PathError::Backslash { at: 2 }));
        assert_eq!(canon("/a%5cb"), Err(PathError::Backslash { at: 2 }));
        assert_eq!(canon("/a\\b"), Err(PathError::Backslash { at: 2 }));
        assert_eq!(canon("/a%00b"), Err(PathError::ControlCharacter { at: 2 }));
        assert_eq!(canon("/a%0Ab"), Err(PathError::ControlCharacter { at: 2 }));
        assert_eq!(canon("/a%7F"), Err(PathError::ControlCharacter { at: 2 }));
        assert_eq!(canon("/a\tb"), Err(PathError::ControlCharacter { at: 2 }));
        assert_eq!(canon("/a\0b"), Err(PathError::ControlCharacter { at: 2 }));
    }

    #[test]
    fn semicolon_path_parameters_are_refused() {
        assert_eq!(
            canon("/v1/devboxes;jsessionid=abc"),
            Err(PathError::Semicolon { at: 12 })
        );
        assert_eq!(
            canon("/internal%3bx/y"),
            Err(PathError::Semicolon { at: 9 })
        );
        // In the query, a `;` is not part of the path.
        assert_eq!(canon("/a?b;c").unwrap(), "/a");
    }

    #[test]
    fn double_encoding_and_fragment_are_refused() {
        assert_eq!(canon("/a%252Fb"), Err(PathError::EncodedPercent { at: 2 }));
        assert_eq!(canon("/a#frag"), Err(PathError::Fragment { at: 2 }));
    }

    #[test]
    fn bad_percent_encoding_is_refused() {
        for (p, at) in [
            ("/a%", 2),
            ("/a%2", 2),
            ("/a%zz", 2),
            ("/%g0", 1),
            ("/a%2?x", 2),
        ] {
            assert_eq!(canon(p), Err(PathError::BadPercentEncoding { at }), "{p}");
        }
    }

    #[test]
    fn non_utf8_is_refused() {
        assert_eq!(canon("/a%FF"), Err(PathError::NotUtf8 { at: 1 }));
        assert_eq!(canon("/x/%C3"), Err(PathError::NotUtf8 { at: 3 }));
        assert_eq!(
            CanonicalPath::new(b"/a\xffb").map(|_| ()),
            Err(PathError::NotUtf8 { at: 1 })
        );
        // Overlong `/` (C0 AF) is not UTF-8 either.
        assert_eq!(canon("/%C0%AF"), Err(PathError::NotUtf8 { at: 1 }));
        assert_eq!(canon("/caf%C3%A9").unwrap(), "/café");
        assert_eq!(canon("/café").unwrap(), "/café");
        // A long segment crosses the 64-byte chunk with a split sequence.
        let long: String = "%C3%A9".repeat(100);
        assert_eq!(
            canon(&format!("/{long}")).unwrap(),
            format!("/{}", "é".repeat(100))
        );
        let bad = format!("/{}%C3", "%C3%A9".repeat(40));
        assert!(matches!(canon(&bad), Err(PathError::NotUtf8 { .. })));
    }

    #[test]
    fn case_is_kept() {
        assert_eq!(canon("/V1/DevBoxes").unwrap(), "/V1/DevBoxes");
        assert_eq!(canon("/%41%61").unwrap(), "/Aa");
    }

    #[test]
    fn not_absolute_is_refused() {
        for p in ["", "*", "v1/x", "http://h/x", "?a"] {
            assert_eq!(canon(p), Err(PathError::NotAbsolute), "{p}");
        }
    }

    #[test]
    fn segments_compare_decoded() {
        let p = CanonicalPath::new(b"/dev%62oxes/x").unwrap();
        let segs: Vec<Segment<'_>> = p.segments().collect();
        assert!(segs[0].eq_decoded(b"devboxes"));
        assert!(!segs[0].eq_decoded(b"devbox"));
        assert!(segs[1].eq_decoded(b"x"));
        assert!(p.is_encoded());
    }

    #[test]
    fn methods() {
        assert!(check_method(b"GET").is_ok());
        assert!(check_method(b"PROPFIND").is_ok());
        assert_eq!(check_method(b""), Err(PathError::BadMethod));
        assert_eq!(check_method(b"GE T"), Err(PathError::BadMethod));
        assert_eq!(check_method(&[b'A'; 33]), Err(PathError::BadMethod));
        // 32 bytes is the longest method accepted.
        assert!(check_method(&[b'A'; 32]).is_ok());
        // Every tchar punctuation mark is accepted; a separator is not.
        assert!(check_method(b"!#$%&'*+-.^_`|~").is_ok());
        for sep in [
            b'(', b')', b',', b'/', b':', b';', b'<', b'=', b'>', b'?', b'@', b'[', b'"',
        ] {
            assert_eq!(
                check_method(&[b'X', sep]),
                Err(PathError::BadMethod),
                "{}",
                sep as char
            );
        }
    }

    /// Segments whose decoded bytes run past the 64-byte chunks of the UTF-8
    /// check, with a character across a chunk boundary and invalid bytes
    /// on either side of it.
    #[test]
    fn utf8_is_checked_across_chunks() {
        let path = |parts: &[&[u8]]| {
            let mut p = b"/".to_vec();
            for part in parts {
                p.extend_from_slice(part);
            }
            p
        };
        let a = |n: usize| vec![b'a'; n];
        let ok = |p: &[u8]| CanonicalPath::new(p).map(|c| c.to_string());
        let euro = "€".as_bytes();
        // A two- and a three-byte character across byte 64, raw and encoded.
        let p = path(&[&a(63), "é".as_bytes(), b"z"]);
        assert_eq!(ok(&p).unwrap(), format!("/{}éz", "a".repeat(63)));
        let p = path(&[&a(62), euro, b"b"]);
        assert_eq!(ok(&p).unwrap(), format!("/{}€b", "a".repeat(62)));
        let p = path(&[&a(62), b"%E2%82%AC", &a(70)]);
        assert_eq!(
            ok(&p).unwrap(),
            format!("/{}€{}", "a".repeat(62), "a".repeat(70))
        );
        // An invalid byte after the boundary, after the first chunk, or in
        // the first chunk of a long segment.
        for p in [
            path(&[&a(63), "é".as_bytes(), b"%FF"]),
            path(&[&a(62), euro, b"%FF"]),
            path(&[&a(100), b"%FF"]),
            path(&[&a(30), b"%FF", &a(100)]),
            path(&[&a(62), b"%E2%82", &a(70)]),
        ] {
            assert_eq!(
                CanonicalPath::new(&p),
                Err(PathError::NotUtf8 { at: 1 }),
                "{}",
                String::from_utf8_lossy(&p)
            );
        }
    }

    #[test]
    fn is_encoded_only_with_a_percent_escape() {
        assert!(!CanonicalPath::new(b"/v1/devboxes").unwrap().is_encoded());
        assert!(!CanonicalPath::new(b"/v1/dev.boxes/a?x=%41")
            .unwrap()
            .is_encoded());
        assert!(CanonicalPath::new(b"/v1/%41").unwrap().is_encoded());
    }
}
