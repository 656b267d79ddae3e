//! Cross-origin resource sharing: a preflight is answered here with 204;
//! any other request from an allowed origin has its response marked
//! (`Access-Control-Allow-Origin` and the rest) in the response phase.
//! A request from another origin passes unmarked, and the browser keeps
//! the response from the page.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::body::Body;

/// A route's CORS settings, with every header value made once.
#[derive(Debug)]
pub(super) struct Cors {
    origins: Origins,
    methods: HeaderValue,
    headers: HeaderValue,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

#[derive(Debug)]
enum Origins {
    Any,
    /// Exact origins, and `scheme://*.` wildcards.
    Listed {
        exact: Box<[Box<[u8]>]>,
        wildcard: Box<[Wildcard]>,
    },
}

/// `https://*.example.com`: any origin of that scheme below the suffix.
#[derive(Debug)]
struct Wildcard {
    /// `https://`.
    scheme: Box<[u8]>,
    /// `.example.com`.
    suffix: Box<[u8]>,
}

/// What a request's origin earned it.
pub(super) enum Verdict {
    /// No `Origin`, or one not allowed: nothing to do.
    Foreign,
    /// A preflight from an allowed origin: answered here (boxed: the
    /// rare case).
    Preflight(Box<Response<Body>>),
    /// An allowed origin: its responses carry this `Allow-Origin`.
    Allowed(HeaderValue),
}

impl Cors {
    /// `None` when a value the compiler checked would not be a header
    /// value (it cannot happen; the route then gets no CORS rather than a
    /// wrong one).
    pub(super) fn new(cors: &pier_snapshot::Cors) -> Option<Self> {
        let origins = if cors.allow_origins.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            let mut exact = Vec::new();
            let mut wildcard = Vec::new();
            for origin in &cors.allow_origins {
                match origin.split_once("://*.") {
                    Some((scheme, rest)) => wildcard.push(Wildcard {
                        scheme: format!("{scheme}://").into_bytes().into(),
                        suffix: format!(".{rest}").into_bytes().into(),
                    }),
                    None => exact.push(origin.as_bytes().into()),
                }
            }
            Origins::Listed {
                exact: exact.into(),
                wildcard: wildcard.into(),
            }
        };
        Some(Self {
            origins,
            methods: HeaderValue::from_str(&cors.allow_methods).ok()?,
            headers: HeaderValue::from_str(&cors.allow_headers).ok()?,
            expose: match cors.expose_headers.as_str() {
                "" => None,
                list => Some(HeaderValue::from_str(list).ok()?),
            },
            credentials: cors.allow_credentials,
            max_age: HeaderValue::from(cors.max_age),
        })
    }

    /// Compared without case and without allocating (the compiler
    /// lower-cased the allowed origins).
    fn allows(&self, origin: &[u8]) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::Listed { exact, wildcard } => {
                exact.iter().any(|o| o.eq_ignore_ascii_case(origin))
                    || wildcard.iter().any(|Wildcard { scheme, suffix }| {
                        let Some(host) = origin
                            .get(..scheme.len())
                            .filter(|s| s.eq_ignore_ascii_case(scheme))
                            .map(|_| &origin[scheme.len()..])
                        else {
                            return false;
                        };
                        // At least one label before the suffix; a port
                        // may follow it.
                        let host = host.split(|&b| b == b':').next().unwrap_or(host);
                        host.len() > suffix.len()
                            && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    })
            }
        }
    }

    /// The request phase.
    pub(super) fn check(&self, method: &Method, headers: &HeaderMap) -> Verdict {
        let Some(origin) = headers.get(ORIGIN) else {
            return Verdict::Foreign;
        };
        if !self.allows(origin.as_bytes()) {
            return Verdict::Foreign;
        }
        // With credentials a browser refuses `*`: the origin is echoed.
        let allow = if matches!(self.origins, Origins::Any) && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        if method == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
            let mut res = Response::new(Body::empty());
            *res.status_mut() = StatusCode::NO_CONTENT;
            let out = res.headers_mut();
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.headers.clone());
            out.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            self.mark(out, &allow);
            return Verdict::Preflight(Box::new(res));
        }
        Verdict::Allowed(allow)
    }

    /// The response phase, for an allowed origin.
    pub(super) fn mark(&self, headers: &mut HeaderMap, allow: &HeaderValue) {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow.clone());
        if self.credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
        if allow.as_bytes() != b"*" {
            // Caches must keep answers for different origins apart.
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
    }
}
