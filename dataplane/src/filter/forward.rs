//! Forward authentication, the pure half: the check a request asks for
//! (nginx's `auth_request`: the request's own fields, no body, and where
//! it was going), and what the answer means. The check itself is sent by
//! `dispatch` through `upstream::check`.
//!
//! A 2xx answer admits the request, with the fields the route names
//! copied onto it (the client's own fields of those names are always
//! dropped, so they cannot be forged); 401 and 403 are the client's
//! answer (401 becomes a redirect to the sign-in page when there is one);
//! any other answer, or none, is 500: the route fails closed.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use http::header::{HOST, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use super::Request;
use crate::body::Body;
use crate::http::forward::strip_hop_by_hop;

/// A route's authentication service.
#[derive(Debug)]
pub(crate) struct Forward {
    endpoints: Box<[SocketAddr]>,
    next: AtomicUsize,
    host: HeaderValue,
    path: Box<str>,
    method: Method,
    copied: Box<[HeaderName]>,
    signin: Option<Box<str>>,
}

/// One check to send, and what the request needs afterwards.
#[derive(Debug)]
pub(crate) struct Check {
    /// Where to send it; `None`: the service has no endpoint (500).
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) request: http::Request<()>,
    /// The request's own URL (`scheme://host/path?query`), for `rd=`.
    original: String,
}

/// What the answer to a check means.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Served, with these fields set on the request.
    Admit(Vec<(HeaderName, HeaderValue)>),
    /// Answered with this (boxed: the large, rarer case).
    Refuse(Box<Response<Body>>),
}

impl Forward {
    /// The compiler checked the values; a host or method that still does
    /// not fit a request leaves no endpoint, so every check fails (500),
    /// never open.
    pub(super) fn new(auth: &pier_snapshot::ForwardAuth) -> Self {
        let host = HeaderValue::try_from(auth.host.as_str()).ok();
        let method = Method::from_bytes(auth.method.as_bytes()).ok();
        let usable = host.is_some() && method.is_some();
        Self {
            endpoints: auth
                .endpoints
                .iter()
                .filter(|_| usable)
                .filter_map(|e| e.parse().ok())
                .collect(),
            next: AtomicUsize::new(0),
            host: host.unwrap_or(HeaderValue::from_static("invalid")),
            path: auth.path.as_str().into(),
            method: method.unwrap_or(Method::GET),
            copied: auth
                .response_headers
                .iter()
                .filter_map(|h| HeaderName::try_from(h.as_str()).ok())
                .collect(),
            signin: auth.signin.as_deref().map(Into::into),
        }
    }

    /// The check for a request: its fields without the hop-by-hop ones
    /// and its body's, and nginx's `X-Original-*` and `X-Forwarded-*`.
    pub(super) fn check(&self, req: &Request<'_>) -> Check {
        let scheme = if req.secure { "https" } else { "http" };
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let original = format!("{scheme}://{}{target}", req.host);
        let mut headers = req.headers.clone();
        strip_hop_by_hop(&mut headers);
        headers.insert(HOST, self.host.clone());
        let mut set = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        set("x-original-url", &original);
        set("x-original-method", req.method.as_str());
        set("x-auth-request-redirect", target);
        set("x-forwarded-host", req.host);
        set("x-forwarded-proto", scheme);
        if let Some(ip) = (req.client)() {
            let ip = ip_text(ip);
            set("x-forwarded-for", &ip);
            set("x-real-ip", &ip);
        }
        let mut request = http::Request::new(());
        *request.method_mut() = self.method.clone();
        if let Ok(uri) = self.path.parse() {
            *request.uri_mut() = uri;
        }
        *request.headers_mut() = headers;
        let endpoint = (!self.endpoints.is_empty())
            .then(|| self.endpoints[self.next.fetch_add(1, Relaxed) % self.endpoints.len()]);
        Check {
            endpoint,
            request,
            original,
        }
    }

    /// What the service's answer means; `None`: no answer.
    pub(crate) fn verdict(
        &self,
        check: &Check,
        answer: Option<(StatusCode, &HeaderMap)>,
    ) -> Verdict {
        let Some((status, headers)) = answer else {
            return Verdict::Refuse(Box::new(status_only(StatusCode::INTERNAL_SERVER_ERROR)));
        };
        if status.is_success() {
            let copied = self
                .copied
                .iter()
                .filter_map(|name| Some((name.clone(), headers.get(name)?.clone())))
                .collect();
            return Verdict::Admit(copied);
        }
        match status {
            StatusCode::UNAUTHORIZED => {
                if let Some(signin) = &self.signin {
                    let sep = if signin.contains('?') { '&' } else { '?' };
                    let to = format!("{signin}{sep}rd={}", encode_component(&check.original));
                    let mut res = status_only(StatusCode::FOUND);
                    if let Ok(to) = HeaderValue::try_from(to) {
                        res.headers_mut().insert(LOCATION, to);
                    }
                    return Verdict::Refuse(Box::new(res));
                }
                let mut res = status_only(status);
                if let Some(challenge) = headers.get(WWW_AUTHENTICATE) {
                    res.headers_mut()
                        .insert(WWW_AUTHENTICATE, challenge.clone());
                }
                Verdict::Refuse(Box::new(res))
            }
            StatusCode::FORBIDDEN => Verdict::Refuse(Box::new(status_only(status))),
            _ => Verdict::Refuse(Box::new(status_only(StatusCode::INTERNAL_SERVER_ERROR))),
        }
    }

    /// Puts an admitted request's fields on it, first dropping the
    /// client's own of every name the route copies.
    pub(crate) fn admit(&self, copied: Vec<(HeaderName, HeaderValue)>, headers: &mut HeaderMap) {
        for name in &self.copied {
            headers.remove(name);
        }
        for (name, value) in copied {
            headers.append(name, value);
        }
    }
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    res
}

fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3 / 2);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let hex = |n: u8| char::from(b"0123456789ABCDEF"[usize::from(n)]);
            out.extend(['%', hex(b >> 4), hex(b & 15)]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(signin: Option<&str>) -> Forward {
        Forward::new(&pier_snapshot::ForwardAuth {
            endpoints: vec!["127.0.0.1:4180".into(), "127.0.0.2:4180".into()],
            host: "oauth2-proxy.auth.svc:4180".into(),
            path: "/oauth2/auth?x=1".into(),
            method: "GET".into(),
            response_headers: vec!["x-auth-request-user".into()],
            signin: signin.map(str::to_owned),
        })
    }

    fn check(auth: &Forward) -> Check {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", HeaderValue::from_static("session=abc"));
        headers.insert("content-length", HeaderValue::from_static("5"));
        headers.insert("x-auth-request-user", HeaderValue::from_static("forged"));
        let uri: http::Uri = "/admin/page?q=a%20b".parse().unwrap_or_default();
        let client = || Some(IpAddr::from([192, 0, 2, 7]));
        auth.check(&Request {
            host: "app.example.com",
            uri: &uri,
            method: &Method::POST,
            headers: &headers,
            path: b"/admin/page",
            prefix_len: 0,
            secure: true,
            client: &client,
        })
    }

    #[test]
    fn the_check_carries_the_request_and_where_it_was_going() {
        let auth = forward(None);
        let first = check(&auth);
        let r = &first.request;
        assert_eq!(
            (r.method(), r.uri().to_string().as_str()),
            (&Method::GET, "/oauth2/auth?x=1")
        );
        let h = r.headers();
        assert_eq!(h["host"], "oauth2-proxy.auth.svc:4180");
        assert_eq!(h["cookie"], "session=abc");
        assert!(
            !h.contains_key("content-length"),
            "no body goes with a check"
        );
        assert_eq!(h["x-original-method"], "POST");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        // Endpoints in turn.
        let second = check(&auth);
        assert_ne!(first.endpoint, second.endpoint);
    }

    #[test]
    fn answers_admit_refuse_or_fail_closed() {
        let auth = forward(None);
        let c = check(&auth);
        let mut answer = HeaderMap::new();
        answer.insert("x-auth-request-user", HeaderValue::from_static("alice"));
        answer.insert("www-authenticate", HeaderValue::from_static("Bearer"));
        let Verdict::Admit(copied) = auth.verdict(&c, Some((StatusCode::ACCEPTED, &answer))) else {
            panic!("a 2xx admits");
        };
        let mut request = HeaderMap::new();
        request.insert("x-auth-request-user", HeaderValue::from_static("forged"));
        auth.admit(copied, &mut request);
        assert_eq!(request["x-auth-request-user"], "alice");
        // Not in the answer: the client's forged value is dropped anyway.
        let mut request = HeaderMap::new();
        request.insert("x-auth-request-user", HeaderValue::from_static("forged"));
        auth.admit(Vec::new(), &mut request);
        assert!(request.is_empty());

        let refused = |status: StatusCode| match auth.verdict(&c, Some((status, &answer))) {
            Verdict::Refuse(res) => res,
            Verdict::Admit(_) => panic!("{status} admitted"),
        };
        let res = refused(StatusCode::UNAUTHORIZED);
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        assert_eq!(refused(StatusCode::FORBIDDEN).status(), 403);
        for status in [
            StatusCode::FOUND,
            StatusCode::NOT_FOUND,
            StatusCode::BAD_GATEWAY,
        ] {
            assert_eq!(refused(status).status(), 500, "{status}");
        }
        let Verdict::Refuse(res) = auth.verdict(&c, None) else {
            panic!("no answer admitted");
        };
        assert_eq!(res.status(), 500);
    }

    #[test]
    fn a_401_goes_to_the_sign_in_page_with_the_original_url() {
        let auth = forward(Some("https://auth.example.com/oauth2/start"));
        let c = check(&auth);
        let Verdict::Refuse(res) =
            auth.verdict(&c, Some((StatusCode::UNAUTHORIZED, &HeaderMap::new())))
        else {
            panic!("refused");
        };
        assert_eq!(res.status(), 302);
        assert_eq!(
            res.headers()["location"],
            "https://auth.example.com/oauth2/start?rd=https%3A%2F%2Fapp.example.com%2Fadmin%2Fpage%3Fq%3Da%2520b"
        );
    }
}
