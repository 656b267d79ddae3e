//! A proxy route's rewrites: the matched path prefix replaced
//! (`rewrite.prefix`) and the `Host` sent upstream (`rewrite.host`).
//! The path itself is written by `http::forward::upstream_path`.

use http::HeaderValue;
use pier_snapshot::ProxyAction;

/// The rewrites of a proxy route; empty: the request goes as it came.
#[derive(Debug, Default)]
pub(crate) struct Rewrite {
    /// Replaces the matched prefix.
    pub(crate) prefix: Option<Box<[u8]>>,
    /// Replaces the client's `Host`.
    pub(crate) host: Option<HeaderValue>,
}

impl Rewrite {
    pub(super) fn new(action: &ProxyAction) -> Self {
        Self {
            prefix: action
                .rewrite_prefix
                .as_deref()
                .map(|p| p.as_bytes().into()),
            // The compiler checked the value.
            host: action
                .rewrite_host
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
        }
    }

    /// The `Host` sent upstream: the rewrite, or the client's.
    pub(crate) fn host<'a>(&'a self, client: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        self.host.as_ref().or(client)
    }
}
