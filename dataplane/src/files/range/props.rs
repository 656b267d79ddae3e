//! Properties of `Range` parsing over generated headers and lengths.

use proptest::prelude::*;

use super::*;

proptest! {
    /// Any bytes at all: no panic, and whatever is satisfiable lies within
    /// the representation, in at most `max_ranges` ranges.
    #[test]
    fn any_header_gives_ranges_inside_the_file(header in prop::collection::vec(any::<u8>(), 0..64), len in 0u64..1 << 40, max in 1usize..8) {
        if let Ranges::Satisfiable(ranges) = parse(&header, len, max) {
            prop_assert!(!ranges.is_empty() && ranges.len() <= max);
            for r in ranges {
                prop_assert!(r.start <= r.end && r.end < len, "{:?} in {}", r, len);
            }
        }
    }

    /// Well-formed specs, in every form, are read exactly.
    #[test]
    fn each_form_means_what_rfc_9110_says(len in 1u64..1 << 40, a in any::<u64>(), b in any::<u64>()) {
        let (first, last) = (a.min(b) % (len + len / 2 + 1), a.max(b) % (len * 2 + 1));
        let (first, last) = (first.min(last), first.max(last));
        let expect = |start: u64, end: u64| {
            if start >= len { Ranges::Unsatisfiable } else {
                Ranges::Satisfiable(vec![ByteRange { start, end: end.min(len - 1) }])
            }
        };
        prop_assert_eq!(parse(format!("bytes={first}-{last}").as_bytes(), len, 4), expect(first, last));
        prop_assert_eq!(parse(format!("bytes={first}-").as_bytes(), len, 4), expect(first, len - 1));
        let suffix = parse(format!("bytes=-{last}").as_bytes(), len, 4);
        if last == 0 {
            prop_assert_eq!(suffix, Ranges::Unsatisfiable);
        } else {
            prop_assert_eq!(suffix, Ranges::Satisfiable(vec![ByteRange { start: len.saturating_sub(last), end: len - 1 }]));
        }
    }

    /// Overlapping ranges come back sorted and coalesced: no byte twice.
    #[test]
    fn overlapping_ranges_never_repeat_a_byte(len in 1u64..10_000, specs in prop::collection::vec((0u64..10_000, 0u64..200), 2..5)) {
        let header = specs.iter().map(|(s, l)| format!("{s}-{}", s + l)).collect::<Vec<_>>().join(",");
        if let Ranges::Satisfiable(ranges) = parse(format!("bytes={header}").as_bytes(), len, 8) {
            let mut seen = std::collections::BTreeSet::new();
            for r in &ranges {
                prop_assert!(seen.insert((r.start, r.end)));
            }
            let overlapping = ranges.windows(2).any(|w| w[0].start <= w[1].end && w[1].start <= w[0].end);
            prop_assert!(!overlapping, "{:?}", ranges);
        }
    }
}
