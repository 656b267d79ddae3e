//! A proxy route's rewrites: the path (the matched prefix replaced, or a
//! regex rewrite) and the `Host` sent upstream. The path itself is
//! written by `http::forward::upstream_path`.

use http::HeaderValue;
use pier_snapshot::ProxyAction;

use crate::http::forward::PathRewrite;

/// The rewrites of a proxy route; empty: the request goes as it came.
#[derive(Debug, Default)]
pub(crate) struct Rewrite {
    path: Path,
    /// Replaces the client's `Host`.
    host: Option<HeaderValue>,
}

#[derive(Debug, Default)]
enum Path {
    #[default]
    Keep,
    Prefix(Box<[u8]>),
    /// The expression and its replacement in the `regex` crate's own
    /// syntax: `$1` written as `${1}`, so `$1abc` means group 1 then
    /// `abc`, as in nginx.
    Regex(regex::bytes::Regex, Box<[u8]>),
}

impl Rewrite {
    pub(super) fn new(action: &ProxyAction) -> Self {
        let path = if let Some(prefix) = &action.rewrite_prefix {
            Path::Prefix(prefix.as_bytes().into())
        } else if let Some(rewrite) = &action.rewrite_regex {
            // The compiler checked the expression with the same function.
            match pier_snapshot::rewrite_regex(&rewrite.pattern) {
                Ok(regex) => Path::Regex(regex, nginx_groups(&rewrite.replacement)),
                Err(why) => {
                    tracing::warn!(pattern = %rewrite.pattern, why, "rewrite left out");
                    Path::Keep
                }
            }
        } else {
            Path::Keep
        };
        Self {
            path,
            // The compiler checked the value.
            host: action
                .rewrite_host
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
        }
    }

    /// How the path sent upstream is made.
    pub(crate) fn path(&self) -> PathRewrite<'_> {
        match &self.path {
            Path::Keep => PathRewrite::Keep,
            Path::Prefix(prefix) => PathRewrite::Prefix(prefix),
            Path::Regex(regex, replacement) => PathRewrite::Regex(regex, replacement),
        }
    }

    /// The `Host` sent upstream: the rewrite, or the client's.
    pub(crate) fn host<'a>(&'a self, client: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        self.host.as_ref().or(client)
    }
}

/// `$1` (one digit, nginx's reading) becomes `${1}`; `${name}` and `$$`
/// stay as they are.
fn nginx_groups(replacement: &str) -> Box<[u8]> {
    let bytes = replacement.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'$', Some(d)) if d.is_ascii_digit() => {
                out.extend_from_slice(&[b'$', b'{', *d, b'}']);
                i += 2;
            }
            (b'$', Some(b'$')) => {
                out.extend_from_slice(b"$$");
                i += 2;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_are_read_as_nginx_reads_them() {
        let read = |r| String::from_utf8(super::nginx_groups(r).into()).expect("ascii");
        assert_eq!(read("/$2"), "/${2}");
        assert_eq!(read("/$1abc/$2"), "/${1}abc/${2}");
        assert_eq!(read("/${name}/$$"), "/${name}/$$");
    }
}
