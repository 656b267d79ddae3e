//! `Strict-Transport-Security` on a route's HTTPS responses.

use http::header::STRICT_TRANSPORT_SECURITY;
use http::{HeaderMap, HeaderValue};

/// The route's HSTS value, checked as a header value by the compiler.
#[derive(Debug)]
pub(super) struct Hsts(HeaderValue);

impl Hsts {
    pub(super) fn new(value: &str) -> Option<Self> {
        HeaderValue::from_str(value).ok().map(Self)
    }

    pub(super) fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(STRICT_TRANSPORT_SECURITY, self.0.clone());
    }
}
