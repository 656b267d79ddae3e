//! A route's filters, compiled once per snapshot into a fixed list per
//! phase and run in that order on every request of the route, the way
//! pingora names its phases:
//!
//! ```text
//!  request   before a handler or an upstream is chosen; a filter may
//!            answer here and end the request      redirect (HTTPS)
//!  upstream  what a proxied request sends: path and Host rewrites,
//!            header edits, applied in the one pass that writes the
//!            upstream head                        rewrite, headers
//!  response  the response head, whoever built it  headers, hsts
//!  log       when the body ends (the `Done` guard in `body`)
//! ```
//!
//! A new feature is one file here with its compile step in
//! [`Filters::compile`] and, for the request and response phases, one
//! variant of [`RequestFilter`] or [`ResponseFilter`].

mod hsts;
mod redirect;
mod rewrite;

use http::{HeaderMap, Response, Uri};
use pier_snapshot::{Action, Route};

pub(crate) use self::rewrite::Rewrite;
use crate::body::Body;
use crate::http::edits::Edits;

/// A route's filters, phase by phase.
#[derive(Debug, Default)]
pub(crate) struct Filters {
    request: Box<[RequestFilter]>,
    upstream: Upstream,
    response: Box<[ResponseFilter]>,
}

/// A filter of the request phase.
#[derive(Debug)]
enum RequestFilter {
    /// Plain-HTTP requests get a 308 to HTTPS.
    HttpsRedirect,
}

/// A filter of the response phase.
#[derive(Debug)]
enum ResponseFilter {
    /// The route's `responseHeaders`.
    Headers(Edits),
    /// `Strict-Transport-Security` on HTTPS responses.
    Hsts(hsts::Hsts),
}

/// The upstream phase of a proxy route: applied by the writer of the
/// upstream request head, in its single pass over the client's fields.
#[derive(Debug, Default)]
pub(crate) struct Upstream {
    pub(crate) rewrite: Rewrite,
    /// The route's `requestHeaders`, applied after the forwarding fields
    /// (they may replace those).
    pub(crate) headers: Edits,
}

/// What request-phase filters look at.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// The authority of an absolute-form target, or the `Host` field.
    pub(crate) host: &'a str,
    pub(crate) uri: &'a Uri,
    /// The request came over TLS.
    pub(crate) secure: bool,
}

impl Filters {
    /// Compiles a route's filters.
    pub(crate) fn compile(route: &Route) -> Self {
        let tls = route.tls.as_ref();
        let mut request = Vec::new();
        if tls.is_some_and(|t| t.redirect) {
            request.push(RequestFilter::HttpsRedirect);
        }
        let mut response = Vec::new();
        let mut upstream = Upstream::default();
        if let Action::Proxy(action) = &route.action {
            upstream.rewrite = Rewrite::new(action);
            upstream.headers = Edits::new(&action.request_headers);
            let edits = Edits::new(&action.response_headers);
            if !edits.is_empty() {
                response.push(ResponseFilter::Headers(edits));
            }
        }
        if let Some(hsts) = tls.and_then(|t| hsts::Hsts::new(t.hsts.as_deref()?)) {
            response.push(ResponseFilter::Hsts(hsts));
        }
        Self {
            request: request.into(),
            upstream,
            response: response.into(),
        }
    }

    /// The request phase: a response when a filter answers the request
    /// itself, `None` to go on to the handler.
    pub(crate) fn on_request(&self, req: &Request<'_>) -> Option<Response<Body>> {
        for filter in &self.request {
            match filter {
                RequestFilter::HttpsRedirect if !req.secure => {
                    return Some(redirect::to_https(req.host, req.uri));
                }
                RequestFilter::HttpsRedirect => {}
            }
        }
        None
    }

    /// The upstream phase of a proxy route.
    pub(crate) fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Whether the response phase changes anything for a request: when it
    /// does not, the HTTP/1.1 engine copies a backend's fields as they
    /// came, without making a header map of them.
    pub(crate) fn edits_response(&self, secure: bool) -> bool {
        self.response.iter().any(|filter| match filter {
            ResponseFilter::Headers(_) => true,
            ResponseFilter::Hsts(_) => secure,
        })
    }

    /// The response phase, on any response of the route (files, a
    /// backend's, an X-Sendfile file).
    pub(crate) fn on_response(&self, headers: &mut HeaderMap, secure: bool) {
        for filter in &self.response {
            match filter {
                ResponseFilter::Headers(edits) => edits.apply(headers),
                ResponseFilter::Hsts(hsts) if secure => hsts.apply(headers),
                ResponseFilter::Hsts(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
