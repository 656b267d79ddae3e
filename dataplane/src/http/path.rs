//! Request path normalisation: percent-decoding and refusal of every path
//! that could mean something other than what it looks like.
//!
//! Routing and file lookup both use the normalised form, so a path cannot be
//! routed as one thing and opened as another.

use std::borrow::Cow;

/// Longest request path accepted, in bytes before decoding.
pub(crate) const MAX_PATH_LEN: usize = 4096;
/// Longest path segment accepted after decoding (Linux `NAME_MAX`).
pub(crate) const MAX_SEGMENT_LEN: usize = 255;

/// Why a request path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// Not an origin-form path (`/...`).
    #[error("the path does not start with `/`")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("the path has an invalid percent-escape")]
    BadEscape,
    /// A `%2F` that would change how the path splits into segments.
    #[error("the path has an encoded slash")]
    EncodedSlash,
    /// A backslash, which some file systems and proxies treat as a separator.
    #[error("the path has a backslash")]
    Backslash,
    /// NUL or another control character.
    #[error("the path has a control character")]
    Control,
    /// A `..` segment, encoded or not.
    #[error("the path has a `..` segment")]
    DotDot,
    /// Longer than [`MAX_PATH_LEN`] or with a segment over [`MAX_SEGMENT_LEN`].
    #[error("the path is too long")]
    TooLong,
}

/// Decodes and normalises a request path: percent-escapes decoded, empty
/// and `.` segments dropped, a trailing slash kept. Returns the input
/// unchanged (no allocation) when it is already normal.
pub(crate) fn normalize(raw: &str) -> Result<Cow<'_, [u8]>, PathError> {
    normalize_bytes(raw.as_bytes(), Escapes::Decode)
}

/// Normalises a file system path as [`normalize`] does a request path, but
/// with `%` an ordinary byte (X-Sendfile names files, not URIs).
pub(crate) fn normalize_file(raw: &[u8]) -> Result<Cow<'_, [u8]>, PathError> {
    normalize_bytes(raw, Escapes::Literal)
}

/// Whether `%XX` is an escape.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Escapes {
    Decode,
    Literal,
}

fn normalize_bytes(bytes: &[u8], escapes: Escapes) -> Result<Cow<'_, [u8]>, PathError> {
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }

    let mut out = Vec::with_capacity(bytes.len());
    let mut segment = Vec::new();
    for raw_segment in bytes[1..].split(|&b| b == b'/') {
        segment.clear();
        decode_into(raw_segment, escapes, &mut segment)?;
        match segment.as_slice() {
            b"" | b"." => continue,
            b".." => return Err(PathError::DotDot),
            _ => {}
        }
        if segment.len() > MAX_SEGMENT_LEN {
            return Err(PathError::TooLong);
        }
        out.push(b'/');
        out.extend_from_slice(&segment);
    }
    let ends_with_slash = bytes.ends_with(b"/") || bytes.ends_with(b"/.");
    if out.is_empty() || ends_with_slash {
        out.push(b'/');
    }
    Ok(Cow::Owned(out))
}

/// True when the path needs no decoding and no segment removal: the common
/// case, checked in one pass.
fn is_normal(bytes: &[u8]) -> bool {
    let mut segment_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b if b.is_ascii_control() => return false,
            b'/' if i > 0 => {
                let segment = &bytes[segment_start + 1..i];
                if segment.is_empty() || segment == b"." || segment == b".." {
                    return false;
                }
                if segment.len() > MAX_SEGMENT_LEN {
                    return false;
                }
                segment_start = i;
            }
            _ => {}
        }
    }
    let last = &bytes[segment_start + 1..];
    last != b"." && last != b".." && last.len() <= MAX_SEGMENT_LEN
}

fn decode_into(raw: &[u8], escapes: Escapes, out: &mut Vec<u8>) -> Result<(), PathError> {
    let mut i = 0;
    while i < raw.len() {
        let b = match raw[i] {
            b'%' if escapes == Escapes::Decode => {
                let hi = raw.get(i + 1).and_then(|&c| hex(c));
                let lo = raw.get(i + 2).and_then(|&c| hex(c));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadEscape);
                };
                i += 3;
                let b = hi << 4 | lo;
                if b == b'/' {
                    return Err(PathError::EncodedSlash);
                }
                b
            }
            b => {
                i += 1;
                b
            }
        };
        if b == b'\\' {
            return Err(PathError::Backslash);
        }
        if b.is_ascii_control() {
            return Err(PathError::Control);
        }
        out.push(b);
    }
    Ok(())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// True when a segment of the path (after the route's prefix) names a
/// dotfile. `.well-known` (RFC 8615) stays reachable.
pub(crate) fn is_hidden(path: &[u8]) -> bool {
    path.split(|&b| b == b'/')
        .any(|segment| segment.first() == Some(&b'.') && segment != b".well-known")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, PathError> {
        normalize(raw).map(|p| String::from_utf8_lossy(&p).into_owned())
    }

    #[test]
    fn file_paths_keep_percent_signs_and_refuse_dot_dot() {
        let file = |raw: &str| {
            normalize_file(raw.as_bytes()).map(|p| String::from_utf8_lossy(&p).into_owned())
        };
        assert_eq!(file("/srv/a%2e%2e/b"), Ok("/srv/a%2e%2e/b".into()));
        assert_eq!(file("/srv//./files/x"), Ok("/srv/files/x".into()));
        assert_eq!(file("/srv/files/../etc/passwd"), Err(PathError::DotDot));
        assert_eq!(file("srv/x"), Err(PathError::NotAbsolute));
        assert_eq!(file("/srv/x\\y"), Err(PathError::Backslash));
        assert_eq!(file("/srv/x\0"), Err(PathError::Control));
        assert_eq!(file("/srv/x\u{1}"), Err(PathError::Control));
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for raw in [
            "/",
            "/a",
            "/a/b.html",
            "/a/b/",
            "/.well-known/x",
            "/a..b/c.d",
        ] {
            assert!(matches!(normalize(raw), Ok(Cow::Borrowed(_))), "{raw}");
        }
    }

    #[test]
    fn escapes_are_decoded_and_segments_cleaned() {
        assert_eq!(norm("/a%20b").as_deref(), Ok("/a b"));
        assert_eq!(norm("//a///b//").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("/a/./b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("/./").as_deref(), Ok("/"));
        assert_eq!(norm("/%C3%A9t%C3%A9").as_deref(), Ok("/été"));
    }

    #[test]
    fn hostile_paths_are_refused() {
        let cases = [
            ("", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/..", PathError::DotDot),
            ("/a/../b", PathError::DotDot),
            ("/%2e%2e/etc/passwd", PathError::DotDot),
            ("/%2E%2e/", PathError::DotDot),
            ("/.%2e/", PathError::DotDot),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%2F..%2Fb", PathError::EncodedSlash),
            ("/a\\b", PathError::Backslash),
            ("/a%5c..%5cb", PathError::Backslash),
            ("/a%00b", PathError::Control),
            ("/a%0d%0ab", PathError::Control),
            ("/a%", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw), Err(want), "{raw:?}");
        }
        assert_eq!(
            norm(&format!("/{}", "a".repeat(MAX_PATH_LEN))),
            Err(PathError::TooLong)
        );
        assert_eq!(
            norm(&format!("/{}", "a".repeat(256))),
            Err(PathError::TooLong)
        );
        assert_eq!(
            norm(&format!("/%61{}", "a".repeat(255))),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn dotfiles_are_hidden_but_well_known_is_not() {
        assert!(is_hidden(b"/.git/config"));
        assert!(is_hidden(b"/a/.env"));
        assert!(is_hidden(b"/.htpasswd"));
        assert!(!is_hidden(b"/.well-known/security.txt"));
        assert!(!is_hidden(b"/a.b/c"));
        assert!(!is_hidden(b""));
    }
}

#[cfg(test)]
mod props;
