//! Redirects answered by the dataplane: the HTTPS redirect of a route with
//! `tls.redirect`, and a route's own `redirect` (a fixed URL, or the
//! request's URL with parts replaced, as Gateway API's `RequestRedirect`).

use http::{HeaderValue, Response, StatusCode, Uri};
use pier_snapshot::{RedirectPath, RedirectTo};

use super::Request;
use crate::body::Body;
use crate::http::forward::encode_path;

/// `308 Permanent Redirect` to the same URL over HTTPS (on the standard
/// port: behind a Service, clients reach the TLS listener on 443).
pub(super) fn to_https(host: &str, uri: &Uri) -> Response<Body> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    answer(
        StatusCode::PERMANENT_REDIRECT,
        format!("https://{}{target}", split_host(host).0),
    )
}

/// The name and port of a `Host` value; an IPv6 literal keeps its
/// brackets.
fn split_host(host: &str) -> (&str, Option<&str>) {
    let end = match host.strip_prefix('[') {
        Some(rest) => rest.find(']').map_or(host.len(), |i| i + 2),
        None => host.find(':').unwrap_or(host.len()),
    };
    let (name, rest) = host.split_at(end);
    (name, rest.strip_prefix(':'))
}

fn answer(status: StatusCode, location: String) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    if let Ok(location) = HeaderValue::try_from(location) {
        res.headers_mut().insert(http::header::LOCATION, location);
    }
    res
}

/// A route's `redirect`, compiled.
#[derive(Debug)]
pub(super) struct Redirect {
    status: StatusCode,
    to: RedirectTo,
}

impl Redirect {
    pub(super) fn new(redirect: &pier_snapshot::Redirect) -> Self {
        Self {
            status: StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND),
            to: redirect.to.clone(),
        }
    }

    pub(super) fn answer(&self, req: &Request<'_>) -> Response<Body> {
        let (scheme, host, port, path) = match &self.to {
            RedirectTo::Url(url) => return answer(self.status, url.clone()),
            RedirectTo::Parts {
                scheme,
                host,
                port,
                path,
            } => (scheme, host, port, path),
        };
        let (request_name, request_port) = split_host(req.host);
        let scheme = scheme
            .as_deref()
            .unwrap_or(if req.secure { "https" } else { "http" });
        let name = host.as_deref().unwrap_or(request_name);
        // No port given: the scheme's own when the scheme changes, the
        // request's otherwise (Gateway API's rule).
        let port = match port {
            Some(port) => Some(port.to_string()),
            None if self.scheme_changed(req.secure) => None,
            None => request_port.map(str::to_owned),
        };
        let default = if scheme == "https" { "443" } else { "80" };
        let port = port
            .filter(|p| p != default)
            .map_or(String::new(), |p| format!(":{p}"));
        let mut location = format!("{scheme}://{name}{port}");
        match path {
            RedirectPath::Keep => location.push_str(req.uri.path()),
            RedirectPath::Full(full) => location.push_str(full),
            RedirectPath::Prefix(prefix) => {
                let rest = encode_path(&req.path[req.prefix_len.min(req.path.len())..]);
                let rest = String::from_utf8_lossy(&rest);
                if prefix == "/" {
                    location.push_str(if rest.is_empty() { "/" } else { &rest });
                } else {
                    location.push_str(prefix);
                    location.push_str(&rest);
                }
            }
        }
        if let Some(query) = req.uri.query() {
            location.push('?');
            location.push_str(query);
        }
        answer(self.status, location)
    }

    fn scheme_changed(&self, secure: bool) -> bool {
        match &self.to {
            RedirectTo::Parts {
                scheme: Some(s), ..
            } => (s == "https") != secure,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_redirects_keep_path_and_query_and_drop_the_port() {
        let uri: Uri = "/a/b?c=1".parse().expect("uri");
        let location = |host| {
            to_https(host, &uri).headers()[http::header::LOCATION]
                .to_str()
                .expect("ascii")
                .to_owned()
        };
        assert_eq!(location("example.com"), "https://example.com/a/b?c=1");
        assert_eq!(location("example.com:8080"), "https://example.com/a/b?c=1");
        assert_eq!(location("[::1]:8080"), "https://[::1]/a/b?c=1");
        assert_eq!(location("[::1]"), "https://[::1]/a/b?c=1");
        assert_eq!(to_https("x", &uri).status(), 308);
    }
}
