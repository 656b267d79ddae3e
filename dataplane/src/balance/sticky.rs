//! Session affinity, pure: which endpoint a request's affinity cookie
//! names, and the `Set-Cookie` value that names an endpoint.
//!
//! The cookie's value is the endpoint's id: a 64-bit hash of its identity
//! (the pod name), in hex. Every dataplane replica computes the same ids,
//! so a client keeps its endpoint whichever replica it reaches, and a pod
//! that restarts under the same name keeps its sessions.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderValue};
use pier_snapshot::Affinity;

use super::ring;

/// A route's affinity: the cookie's name and each endpoint's id.
#[derive(Debug)]
pub(crate) struct Sticky {
    name: Box<str>,
    ids: Box<[u64]>,
}

impl Sticky {
    /// Over endpoints given by identity, in the balancer's order.
    pub(crate) fn new<'a>(name: &str, identities: impl Iterator<Item = &'a str>) -> Self {
        Self {
            name: name.into(),
            ids: identities.map(id).collect(),
        }
    }

    /// The endpoint the request's cookie names, if it names one of these.
    pub(crate) fn wanted(&self, headers: &HeaderMap) -> Option<usize> {
        let value = cookie(headers, &self.name)?;
        if value.len() != 16 {
            return None;
        }
        let value = std::str::from_utf8(value).ok()?;
        let wanted = u64::from_str_radix(value, 16).ok()?;
        self.ids.iter().position(|&id| id == wanted)
    }
}

/// An endpoint's id, from its identity.
pub(crate) fn id(identity: &str) -> u64 {
    ring::hash(identity.as_bytes())
}

/// The `Set-Cookie` value naming the endpoint of `identity`; `None` only
/// when the compiler let through what a header cannot carry.
pub(crate) fn set_cookie(affinity: &Affinity, identity: &str) -> Option<HeaderValue> {
    let mut v = format!(
        "{}={:016x}; Path={}",
        affinity.cookie,
        id(identity),
        affinity.path
    );
    if let Some(age) = affinity.max_age_s {
        let _ = write!(v, "; Max-Age={age}");
    }
    if affinity.secure {
        v.push_str("; Secure");
    }
    if affinity.http_only {
        v.push_str("; HttpOnly");
    }
    if let Some(same_site) = &affinity.same_site {
        let _ = write!(v, "; SameSite={same_site}");
    }
    HeaderValue::try_from(v).ok()
}

/// The value of the first cookie called `name` in the request's `Cookie`
/// fields.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affinity() -> Affinity {
        Affinity {
            cookie: "route".into(),
            path: "/app".into(),
            max_age_s: Some(3600),
            secure: true,
            http_only: true,
            same_site: Some("Lax".into()),
        }
    }

    fn request(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_str(cookie).expect("a field value"),
        );
        headers
    }

    #[test]
    fn the_cookie_set_for_an_endpoint_names_it() {
        let sticky = Sticky::new("route", ["pod-a", "pod-b", "pod-c"].into_iter());
        let set = set_cookie(&affinity(), "pod-b").expect("a cookie");
        let set = set.to_str().expect("text");
        assert!(
            set.ends_with("; Path=/app; Max-Age=3600; Secure; HttpOnly; SameSite=Lax"),
            "{set}"
        );
        let pair = set.split(';').next().expect("a pair");
        let headers = request(&format!("theme=dark; {pair}; other=1"));
        assert_eq!(sticky.wanted(&headers), Some(1));
    }

    #[test]
    fn ids_depend_on_the_identity_not_the_order() {
        let one = Sticky::new("route", ["pod-a", "pod-b"].into_iter());
        let other = Sticky::new("route", ["pod-b", "pod-a"].into_iter());
        let pair = format!("route={:016x}", id("pod-a"));
        assert_eq!(one.wanted(&request(&pair)), Some(0));
        assert_eq!(other.wanted(&request(&pair)), Some(1));
    }

    #[test]
    fn foreign_or_malformed_cookies_name_no_endpoint() {
        let sticky = Sticky::new("route", ["pod-a"].into_iter());
        for cookie in [
            "route=",
            "route=zz",
            "route=0123456789abcdef",
            "route=ffffffffffffffffff",
            "router=x",
            &format!("other={:016x}", id("pod-a")),
        ] {
            assert_eq!(sticky.wanted(&request(cookie)), None, "{cookie}");
        }
        assert_eq!(sticky.wanted(&HeaderMap::new()), None);
    }

    #[test]
    fn a_session_cookie_carries_only_what_was_asked() {
        let bare = Affinity {
            max_age_s: None,
            secure: false,
            http_only: false,
            same_site: None,
            ..affinity()
        };
        let set = set_cookie(&bare, "pod-a").expect("a cookie");
        assert_eq!(
            set.to_str().expect("text"),
            format!("route={:016x}; Path=/app", id("pod-a"))
        );
    }
}
