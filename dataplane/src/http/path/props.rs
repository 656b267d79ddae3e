//! Properties of request path normalisation over generated paths.

use proptest::prelude::*;

use super::*;

/// Paths built from the pieces that matter: separators, dots, escapes
/// (slash, dot, percent, NUL, high bytes), backslashes and plain letters.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/", "//", ".", "..", "%2e", "%2E%2e", "%2f", "%5c", "\\", "%00", "%25", "%ff", "a", "b.c",
        "%41", "~", ";", "%",
    ]);
    prop::collection::vec(piece, 0..12).prop_map(|pieces| format!("/{}", pieces.concat()))
}

proptest! {
    /// No panic on any text, and what is accepted is normal: absolute, no
    /// empty, `.` or `..` segment, no NUL or backslash, within the limits.
    #[test]
    fn accepted_paths_are_normal(raw in prop_oneof![tricky_path(), ".{0,64}"]) {
        if let Ok(path) = normalize(&raw) {
            prop_assert!(path.starts_with(b"/"));
            let inner = path.strip_suffix(b"/").unwrap_or(&path);
            for segment in inner.split(|&b| b == b'/').skip(1) {
                prop_assert!(!segment.is_empty() || inner.is_empty(), "empty segment in {:?}", path);
                prop_assert!(segment != b"." && segment != b"..", "dot segment in {:?}", path);
                prop_assert!(segment.len() <= MAX_SEGMENT_LEN);
            }
            prop_assert!(!path.contains(&0) && !path.contains(&b'\\'));
        }
    }

    /// Normalising a normal path changes nothing and allocates nothing.
    #[test]
    fn normal_paths_are_a_fixed_point(raw in tricky_path()) {
        if let Ok(path) = normalize(&raw)
            && let Ok(text) = std::str::from_utf8(&path)
            && !text.contains('%')
        {
            let again = normalize(text).expect("a normal path stays accepted");
            prop_assert!(matches!(again, Cow::Borrowed(_)), "{} was rewritten", text);
            prop_assert_eq!(&*again, text.as_bytes());
        }
    }

    /// A `..` in any spelling is refused, never resolved.
    #[test]
    fn dot_dot_is_refused_in_every_spelling(before in "[a-z/]{0,8}", dots in prop::sample::select(vec!["..", "%2e.", ".%2E", "%2e%2e"]), after in "[a-z]{0,8}") {
        let raw = format!("/{before}/{dots}/{after}");
        prop_assert_eq!(normalize(&raw), Err(PathError::DotDot));
    }
}
