//! A route's filters, compiled once per snapshot into a fixed list per
//! phase and run in that order on every request of the route, the way
//! pingora names its phases:
//!
//! ```text
//!  request   before a handler or an upstream is chosen; a filter may
//!            answer here and end the request      access (403), redirect
//!                                                 (HTTPS), cors (preflight),
//!                                                 redirect (the route's),
//!                                                 basic (401), forward
//!                                                 (the check's answer)
//!  upstream  what a proxied request sends: path and Host rewrites,
//!            header edits, applied in the one pass that writes the
//!            upstream head                        rewrite, headers
//!  response  the response head, whoever built it  headers, hsts, cors
//!  log       when the body ends (the `Done` guard in `body`)
//! ```
//!
//! A new feature is one file here with its compile step in
//! [`Filters::compile`] and, for the request and response phases, one
//! variant of [`RequestFilter`] or [`ResponseFilter`].

mod access;
mod basic;
mod cors;
mod forward;
mod hsts;
mod htpasswd;
mod redirect;
mod rewrite;

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use pier_snapshot::{Action, Route};

pub(crate) use self::forward::{Check, Forward, Verdict};
pub(crate) use self::rewrite::Rewrite;
use crate::body::Body;
use crate::http::edits::Edits;

/// A route's filters, phase by phase.
#[derive(Debug, Default)]
pub(crate) struct Filters {
    request: Box<[RequestFilter]>,
    /// Forward authentication: after every other request filter, the
    /// request waits for the check (`Decision::Check`).
    forward: Option<Forward>,
    upstream: Upstream,
    response: Box<[ResponseFilter]>,
}

/// A filter of the request phase.
#[derive(Debug)]
enum RequestFilter {
    /// Clients outside the route's networks get 403.
    Access(access::Access),
    /// Requests without a user's password get 401.
    Basic(basic::Basic),
    /// Plain-HTTP requests get a 308 to HTTPS.
    HttpsRedirect,
    /// Preflights answered; allowed origins noted for the response phase.
    Cors(cors::Cors),
    /// Every request answered with the route's redirect.
    Redirect(redirect::Redirect),
}

/// A filter of the response phase.
#[derive(Debug)]
enum ResponseFilter {
    /// The route's `responseHeaders`.
    Headers(Edits),
    /// `Strict-Transport-Security` on HTTPS responses.
    Hsts(hsts::Hsts),
    /// `Access-Control-Allow-Origin` and the rest, for an allowed origin;
    /// the settings are the request filter's (its index in `request`).
    Cors(usize),
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
pub(crate) struct Request<'a> {
    /// The authority of an absolute-form target, or the `Host` field.
    pub(crate) host: &'a str,
    pub(crate) uri: &'a Uri,
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    /// The normalised path, and how many of its bytes the route matched.
    pub(crate) path: &'a [u8],
    pub(crate) prefix_len: usize,
    /// The request came over TLS.
    pub(crate) secure: bool,
    /// The client's address, asked for only by a filter that needs it
    /// (the HTTP/1.1 engine learns it with a system call).
    pub(crate) client: &'a dyn Fn() -> Option<IpAddr>,
}

/// What the request phase hands the response phase of the same request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pass {
    /// The request came over TLS.
    pub(crate) secure: bool,
    /// The `Access-Control-Allow-Origin` its responses carry.
    cors_origin: Option<HeaderValue>,
}

impl Pass {
    /// What a request that ran no request filter passes on.
    pub(crate) fn plain(secure: bool) -> Self {
        Self {
            secure,
            cors_origin: None,
        }
    }
}

/// How the request phase ended.
pub(crate) enum Decision {
    /// On to the handler.
    Pass(Pass),
    /// A filter answered (boxed: the rare case, and the common one stays
    /// small).
    Answer(Box<Response<Body>>),
    /// Forward authentication: the check to send first (see
    /// [`Filters::forward`]), and what passes on if it admits.
    Check(Box<(Check, Pass)>),
}

impl Filters {
    /// Compiles a route's filters.
    pub(crate) fn compile(route: &Route) -> Self {
        let tls = route.tls.as_ref();
        let policy = &route.policy;
        let mut request = Vec::new();
        let mut response = Vec::new();
        if let Some(access) = access::Access::new(&policy.allow, &policy.deny) {
            request.push(RequestFilter::Access(access));
        }
        if tls.is_some_and(|t| t.redirect) {
            request.push(RequestFilter::HttpsRedirect);
        }
        if let Some(cors) = policy.cors.as_ref().and_then(cors::Cors::new) {
            response.push(ResponseFilter::Cors(request.len()));
            request.push(RequestFilter::Cors(cors));
        }
        if let Some(redirect) = &policy.redirect {
            request.push(RequestFilter::Redirect(redirect::Redirect::new(redirect)));
        }
        // Last, as nginx's access phase follows its rewrites: a redirect
        // to HTTPS comes before credentials are sent, and a CORS preflight
        // (which browsers send without them) is answered.
        if let Some(auth) = &policy.basic_auth {
            request.push(RequestFilter::Basic(basic::Basic::new(auth)));
        }
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
            forward: policy.forward_auth.as_ref().map(Forward::new),
            upstream,
            response: response.into(),
        }
    }

    /// The request phase: a response when a filter answers the request
    /// itself, or what the response phase needs to know.
    pub(crate) fn on_request(&self, req: &Request<'_>) -> Decision {
        let mut pass = Pass::plain(req.secure);
        for filter in &self.request {
            match filter {
                RequestFilter::Access(access) => {
                    if !access.admits((req.client)()) {
                        let mut res = Response::new(Body::empty());
                        *res.status_mut() = StatusCode::FORBIDDEN;
                        return Decision::Answer(Box::new(res));
                    }
                }
                RequestFilter::Basic(auth) => {
                    if !auth.admits(req.headers) {
                        return Decision::Answer(Box::new(auth.challenge()));
                    }
                }
                RequestFilter::HttpsRedirect if !req.secure => {
                    return Decision::Answer(Box::new(redirect::to_https(req.host, req.uri)));
                }
                RequestFilter::HttpsRedirect => {}
                RequestFilter::Cors(cors) => match cors.check(req.method, req.headers) {
                    cors::Verdict::Foreign => {}
                    cors::Verdict::Preflight(res) => return Decision::Answer(res),
                    cors::Verdict::Allowed(origin) => pass.cors_origin = Some(origin),
                },
                RequestFilter::Redirect(redirect) => {
                    let mut res = redirect.answer(req);
                    // A redirect from an allowed origin is a response too.
                    self.on_response(res.headers_mut(), &pass);
                    return Decision::Answer(Box::new(res));
                }
            }
        }
        match &self.forward {
            Some(forward) => Decision::Check(Box::new((forward.check(req), pass))),
            None => Decision::Pass(pass),
        }
    }

    /// The route's forward authentication, which judges a check's answer.
    pub(crate) fn forward(&self) -> Option<&Forward> {
        self.forward.as_ref()
    }

    /// The upstream phase of a proxy route.
    pub(crate) fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Whether the response phase changes anything for a request: when it
    /// does not, the HTTP/1.1 engine copies a backend's fields as they
    /// came, without making a header map of them.
    pub(crate) fn edits_response(&self, pass: &Pass) -> bool {
        self.response.iter().any(|filter| match filter {
            ResponseFilter::Headers(_) => true,
            ResponseFilter::Hsts(_) => pass.secure,
            ResponseFilter::Cors(_) => pass.cors_origin.is_some(),
        })
    }

    /// The response phase, on any response of the route (files, a
    /// backend's, an X-Sendfile file, a filter's answer).
    pub(crate) fn on_response(&self, headers: &mut HeaderMap, pass: &Pass) {
        for filter in &self.response {
            match filter {
                ResponseFilter::Headers(edits) => edits.apply(headers),
                ResponseFilter::Hsts(hsts) if pass.secure => hsts.apply(headers),
                ResponseFilter::Hsts(_) => {}
                ResponseFilter::Cors(at) => {
                    if let (Some(origin), Some(RequestFilter::Cors(cors))) =
                        (&pass.cors_origin, self.request.get(*at))
                    {
                        cors.mark(headers, origin);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
