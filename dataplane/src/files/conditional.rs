//! Conditional requests (RFC 9110 §13) evaluated in the RFC's order, and
//! the choice between a full, partial or empty answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};

use super::range::{self, ByteRange, Ranges};

/// The validators of the selected representation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Validators<'a> {
    /// Strong entity tag, quotes included.
    pub(crate) etag: &'a str,
    /// Modification time, whole seconds since the epoch.
    pub(crate) modified: u64,
    /// Length in bytes.
    pub(crate) len: u64,
}

/// What to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 412 Precondition Failed.
    PreconditionFailed,
    /// 304 Not Modified.
    NotModified,
    /// 200 with the whole representation.
    Full,
    /// 206 with these ranges.
    Partial(Vec<ByteRange>),
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// Evaluates the preconditions of a GET or HEAD request (RFC 9110 §13.2.2).
pub(crate) fn evaluate(
    is_get: bool,
    headers: &HeaderMap,
    v: &Validators<'_>,
    max_ranges: usize,
) -> Outcome {
    // Steps 1 and 2: If-Match, else If-Unmodified-Since.
    if headers.contains_key(IF_MATCH) {
        if !any_tag(headers, IF_MATCH, |tag| tag.matches_strong(v.etag)) {
            return Outcome::PreconditionFailed;
        }
    } else if let Some(since) = date(headers, IF_UNMODIFIED_SINCE)
        && v.modified > since
    {
        return Outcome::PreconditionFailed;
    }
    // Steps 3 and 4: If-None-Match, else If-Modified-Since (GET and HEAD only).
    if headers.contains_key(IF_NONE_MATCH) {
        if any_tag(headers, IF_NONE_MATCH, |tag| tag.matches_weak(v.etag)) {
            return Outcome::NotModified;
        }
    } else if let Some(since) = date(headers, IF_MODIFIED_SINCE)
        && v.modified <= since
    {
        return Outcome::NotModified;
    }
    // Step 5: Range, for GET only, unless If-Range says the client's copy is stale.
    let Some(range) = headers.get(RANGE).filter(|_| is_get) else {
        return Outcome::Full;
    };
    if let Some(if_range) = headers.get(IF_RANGE)
        && !if_range_matches(if_range.as_bytes(), v)
    {
        return Outcome::Full;
    }
    match range::parse(range.as_bytes(), v.len, max_ranges) {
        Ranges::Ignore => Outcome::Full,
        Ranges::Unsatisfiable => Outcome::Unsatisfiable,
        Ranges::Satisfiable(ranges) => Outcome::Partial(ranges),
    }
}

/// Seconds since the epoch of a file modification time (before 1970: 0).
pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn date(headers: &HeaderMap, name: http::HeaderName) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok().map(unix_seconds)
}

fn if_range_matches(value: &[u8], v: &Validators<'_>) -> bool {
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        let mut tags = TagList(value);
        return matches!(tags.next(), Some(Tag::Tag { weak: false, opaque }) if opaque == v.etag.as_bytes())
            && tags.next().is_none();
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| httpdate::parse_http_date(s).ok())
        .is_some_and(|date| unix_seconds(date) == v.modified)
}

fn any_tag(headers: &HeaderMap, name: http::HeaderName, pred: impl Fn(Tag<'_>) -> bool) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|value| TagList(value.as_bytes()).any(&pred))
}

/// One element of an `If-Match` / `If-None-Match` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag<'a> {
    /// `*`
    Any,
    /// An entity tag; `opaque` includes the quotes.
    Tag { weak: bool, opaque: &'a [u8] },
}

impl Tag<'_> {
    fn matches_strong(self, etag: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Tag { weak, opaque } => !weak && opaque == etag.as_bytes(),
        }
    }

    fn matches_weak(self, etag: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Tag { opaque, .. } => opaque == etag.as_bytes(),
        }
    }
}

/// Iterates the entity tags of a header value. Stops at the first
/// malformed element, which then matches nothing.
struct TagList<'a>(&'a [u8]);

impl<'a> Iterator for TagList<'a> {
    type Item = Tag<'a>;

    fn next(&mut self) -> Option<Tag<'a>> {
        let mut rest = self.0;
        while let [b' ' | b'\t' | b',', tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            return None;
        }
        if let [b'*', tail @ ..] = rest {
            self.0 = tail;
            return Some(Tag::Any);
        }
        let (weak, quoted) = match rest {
            [b'W', b'/', tail @ ..] => (true, tail),
            _ => (false, rest),
        };
        let close = match quoted {
            [b'"', tail @ ..] => tail.iter().position(|&b| b == b'"'),
            _ => None,
        };
        let Some(close) = close else {
            self.0 = &[];
            return None;
        };
        let (opaque, tail) = quoted.split_at(close + 2);
        self.0 = tail;
        Some(Tag::Tag { weak, opaque })
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const ETAG: &str = "\"5f3a-1000\"";
    const MODIFIED: u64 = 1_700_000_000;

    fn eval(headers: &[(&'static str, &str)]) -> Outcome {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_str(value).expect("test header"));
        }
        let v = Validators {
            etag: ETAG,
            modified: MODIFIED,
            len: 1000,
        };
        evaluate(true, &map, &v, 16)
    }

    fn date(offset: i64) -> String {
        let secs = MODIFIED.checked_add_signed(offset).expect("in range");
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn no_conditions_serve_the_whole_file() {
        assert_eq!(eval(&[]), Outcome::Full);
    }

    #[test]
    fn if_match_needs_a_strong_match() {
        assert_eq!(eval(&[("if-match", ETAG)]), Outcome::Full);
        assert_eq!(eval(&[("if-match", "*")]), Outcome::Full);
        assert_eq!(eval(&[("if-match", "\"x\", \"5f3a-1000\"")]), Outcome::Full);
        assert_eq!(
            eval(&[("if-match", "W/\"5f3a-1000\"")]),
            Outcome::PreconditionFailed
        );
        assert_eq!(
            eval(&[("if-match", "\"other\"")]),
            Outcome::PreconditionFailed
        );
        assert_eq!(
            eval(&[("if-match", "garbage")]),
            Outcome::PreconditionFailed
        );
    }

    #[test]
    fn if_unmodified_since_fails_for_newer_files() {
        assert_eq!(
            eval(&[("if-unmodified-since", &date(-1))]),
            Outcome::PreconditionFailed
        );
        assert_eq!(eval(&[("if-unmodified-since", &date(0))]), Outcome::Full);
        assert_eq!(
            eval(&[("if-unmodified-since", "not a date")]),
            Outcome::Full
        );
    }

    #[test]
    fn if_match_takes_precedence_over_if_unmodified_since() {
        assert_eq!(
            eval(&[("if-match", ETAG), ("if-unmodified-since", &date(-100))]),
            Outcome::Full
        );
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert_eq!(eval(&[("if-none-match", ETAG)]), Outcome::NotModified);
        assert_eq!(
            eval(&[("if-none-match", "W/\"5f3a-1000\"")]),
            Outcome::NotModified
        );
        assert_eq!(eval(&[("if-none-match", "*")]), Outcome::NotModified);
        assert_eq!(
            eval(&[("if-none-match", "\"a,b\", \"5f3a-1000\"")]),
            Outcome::NotModified
        );
        assert_eq!(eval(&[("if-none-match", "\"stale\"")]), Outcome::Full);
    }

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        assert_eq!(
            eval(&[
                ("if-none-match", "\"stale\""),
                ("if-modified-since", &date(10))
            ]),
            Outcome::Full
        );
    }

    #[test]
    fn if_modified_since_gives_304_when_unchanged() {
        assert_eq!(
            eval(&[("if-modified-since", &date(0))]),
            Outcome::NotModified
        );
        assert_eq!(
            eval(&[("if-modified-since", &date(5))]),
            Outcome::NotModified
        );
        assert_eq!(eval(&[("if-modified-since", &date(-5))]), Outcome::Full);
    }

    #[test]
    fn precondition_failure_beats_not_modified() {
        assert_eq!(
            eval(&[("if-match", "\"other\""), ("if-none-match", ETAG)]),
            Outcome::PreconditionFailed
        );
    }

    #[test]
    fn if_range_applies_the_range_only_when_it_matches() {
        let range = ("range", "bytes=0-9");
        let partial = Outcome::Partial(vec![ByteRange { start: 0, end: 9 }]);
        assert_eq!(eval(&[range, ("if-range", ETAG)]), partial);
        assert_eq!(eval(&[range, ("if-range", &date(0))]), partial);
        assert_eq!(eval(&[range, ("if-range", "\"stale\"")]), Outcome::Full);
        assert_eq!(
            eval(&[range, ("if-range", "W/\"5f3a-1000\"")]),
            Outcome::Full
        );
        assert_eq!(eval(&[range, ("if-range", &date(-1))]), Outcome::Full);
    }

    #[test]
    fn range_is_ignored_for_head() {
        let mut map = HeaderMap::new();
        map.insert(RANGE, HeaderValue::from_static("bytes=0-1"));
        let v = Validators {
            etag: ETAG,
            modified: MODIFIED,
            len: 1000,
        };
        assert_eq!(evaluate(false, &map, &v, 16), Outcome::Full);
    }

    #[test]
    fn unsatisfiable_range_gives_416() {
        assert_eq!(eval(&[("range", "bytes=5000-")]), Outcome::Unsatisfiable);
    }
}
