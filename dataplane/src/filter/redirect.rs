//! The HTTPS redirect of a route with `tls.redirect`.

use http::{HeaderValue, Response, StatusCode, Uri};

use crate::body::Body;

/// `308 Permanent Redirect` to the same URL over HTTPS (on the standard
/// port: behind a Service, clients reach the TLS listener on 443).
pub(super) fn to_https(host: &str, uri: &Uri) -> Response<Body> {
    let name = match host.strip_prefix('[') {
        // An IPv6 literal keeps its brackets.
        Some(rest) => rest.find(']').map_or(host, |end| &host[..end + 2]),
        None => host.split(':').next().unwrap_or(host),
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = HeaderValue::try_from(format!("https://{name}{target}")) {
        res.headers_mut().insert(http::header::LOCATION, location);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_path_and_query_and_drop_the_port() {
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
