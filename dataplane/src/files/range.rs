//! `Range: bytes=...` parsing (RFC 9110 §14.1.2), independent of any file.

/// An inclusive byte range within a representation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ByteRange {
    /// First byte.
    pub(crate) start: u64,
    /// Last byte, inclusive.
    pub(crate) end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub(crate) fn len(self) -> u64 {
        self.end - self.start + 1
    }
}

/// What a `Range` header asks for, given the representation's length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ranges {
    /// Malformed, not in bytes, too many ranges, or an empty
    /// representation: serve the whole thing with 200.
    Ignore,
    /// Well-formed but no range overlaps the representation: 416.
    Unsatisfiable,
    /// One or more satisfiable ranges, in request order, or sorted and
    /// coalesced when some overlapped.
    Satisfiable(Vec<ByteRange>),
}

/// Parses a `Range` header value against a representation of `len` bytes.
/// More than `max_ranges` ranges makes the header ignored, like nginx's
/// `max_ranges`, so a client cannot make one request cost thousands of parts.
pub(crate) fn parse(header: &[u8], len: u64, max_ranges: usize) -> Ranges {
    let Some(specs) = strip_unit(header) else {
        return Ranges::Ignore;
    };
    if len == 0 {
        return Ranges::Ignore;
    }
    let mut ranges = Vec::new();
    let mut any = false;
    for spec in specs.split(|&b| b == b',') {
        let spec = trim(spec);
        if spec.is_empty() {
            continue;
        }
        any = true;
        let Some(range) = parse_spec(spec) else {
            return Ranges::Ignore;
        };
        if let Some(range) = range.resolve(len) {
            ranges.push(range);
            if ranges.len() > max_ranges {
                return Ranges::Ignore;
            }
        }
    }
    if !any {
        return Ranges::Ignore;
    }
    if ranges.is_empty() {
        return Ranges::Unsatisfiable;
    }
    Ranges::Satisfiable(coalesce_if_overlapping(ranges))
}

fn strip_unit(header: &[u8]) -> Option<&[u8]> {
    let header = trim(header);
    let (unit, rest) = header.split_at_checked(6)?;
    unit.eq_ignore_ascii_case(b"bytes=").then_some(rest)
}

enum Spec {
    /// `first-` or `first-last`.
    From(u64, Option<u64>),
    /// `-suffix`.
    Suffix(u64),
}

impl Spec {
    fn resolve(self, len: u64) -> Option<ByteRange> {
        match self {
            Self::From(start, _) if start >= len => None,
            Self::From(start, end) => Some(ByteRange {
                start,
                end: end.map_or(len - 1, |end| end.min(len - 1)),
            }),
            Self::Suffix(0) => None,
            Self::Suffix(n) => Some(ByteRange {
                start: len.saturating_sub(n),
                end: len - 1,
            }),
        }
    }
}

fn parse_spec(spec: &[u8]) -> Option<Spec> {
    let dash = spec.iter().position(|&b| b == b'-')?;
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    if first.is_empty() {
        return Some(Spec::Suffix(number(last)?));
    }
    let start = number(first)?;
    if last.is_empty() {
        return Some(Spec::From(start, None));
    }
    let end = number(last)?;
    (start <= end).then_some(Spec::From(start, Some(end)))
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Strips optional whitespace (RFC 9110 OWS) from both ends.
pub(super) fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

fn coalesce_if_overlapping(mut ranges: Vec<ByteRange>) -> Vec<ByteRange> {
    let mut sorted = ranges.clone();
    sorted.sort_by_key(|r| r.start);
    let overlapping = sorted.windows(2).any(|w| w[1].start <= w[0].end);
    if !overlapping {
        return ranges;
    }
    ranges.clear();
    for range in sorted {
        match ranges.last_mut() {
            Some(last) if range.start <= last.end + 1 => last.end = last.end.max(range.end),
            _ => ranges.push(range),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    fn ranges(header: &str, len: u64) -> Ranges {
        parse(header.as_bytes(), len, 16)
    }

    #[test]
    fn single_open_and_suffix_ranges() {
        assert_eq!(
            ranges("bytes=0-499", 1000),
            Ranges::Satisfiable(vec![r(0, 499)])
        );
        assert_eq!(
            ranges("bytes=500-", 1000),
            Ranges::Satisfiable(vec![r(500, 999)])
        );
        assert_eq!(
            ranges("bytes=-200", 1000),
            Ranges::Satisfiable(vec![r(800, 999)])
        );
        assert_eq!(
            ranges("bytes=-2000", 1000),
            Ranges::Satisfiable(vec![r(0, 999)])
        );
        assert_eq!(
            ranges("bytes=900-5000", 1000),
            Ranges::Satisfiable(vec![r(900, 999)])
        );
        assert_eq!(
            ranges("Bytes= 1-1 ", 10),
            Ranges::Satisfiable(vec![r(1, 1)])
        );
    }

    #[test]
    fn several_ranges_keep_their_order() {
        assert_eq!(
            ranges("bytes=500-599, 0-99,, -1", 1000),
            Ranges::Satisfiable(vec![r(500, 599), r(0, 99), r(999, 999)])
        );
    }

    #[test]
    fn overlapping_ranges_are_coalesced() {
        assert_eq!(
            ranges("bytes=50-150,0-99,151-160", 1000),
            Ranges::Satisfiable(vec![r(0, 160)])
        );
    }

    #[test]
    fn range_past_end_is_unsatisfiable() {
        assert_eq!(ranges("bytes=1000-", 1000), Ranges::Unsatisfiable);
        assert_eq!(ranges("bytes=-0", 1000), Ranges::Unsatisfiable);
        assert_eq!(
            ranges("bytes=2000-3000, 1000-1001", 1000),
            Ranges::Unsatisfiable
        );
    }

    #[test]
    fn unsatisfiable_parts_are_dropped_when_others_fit() {
        assert_eq!(
            ranges("bytes=2000-3000, 0-0", 1000),
            Ranges::Satisfiable(vec![r(0, 0)])
        );
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for header in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "items=0-1",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=--1",
            "bytes=1-2-3",
            "bytes=0x1-2",
            "bytes= -",
            "bytes=99999999999999999999-",
            "bytes=0-1,x",
        ] {
            assert_eq!(ranges(header, 1000), Ranges::Ignore, "{header:?}");
        }
    }

    #[test]
    fn too_many_ranges_are_ignored() {
        let many = (0..17)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect::<Vec<_>>();
        assert_eq!(
            ranges(&format!("bytes={}", many.join(",")), 1000),
            Ranges::Ignore
        );
    }

    #[test]
    fn empty_representation_ignores_ranges() {
        assert_eq!(ranges("bytes=0-", 0), Ranges::Ignore);
    }

    #[test]
    fn ranges_beyond_four_gib_work() {
        let len = 5 << 30;
        assert_eq!(
            ranges("bytes=5368709000-", len),
            Ranges::Satisfiable(vec![r(5_368_709_000, len - 1)])
        );
    }
}

#[cfg(test)]
mod props;
