//! Forwarding rules, pure: which request fields go upstream and which
//! this proxy adds (`X-Forwarded-*`, `Forwarded`, `Via`), hop-by-hop
//! fields, the path sent upstream, and which methods may be sent twice.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::edits::Edits;

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1),
/// plus the framing fields the proxy writes itself.
const HOP_BY_HOP: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::CONTENT_LENGTH,
    http::header::EXPECT,
];

/// The client's address as the forwarding headers spell it, formatted once
/// per connection rather than per request.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    /// `X-Forwarded-For` form: `192.0.2.1`, `2001:db8::1`.
    ip: Box<str>,
    /// `Forwarded` form: `for=192.0.2.1`, `for="[2001:db8::1]"`.
    node: Box<str>,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip();
        let node = match ip {
            IpAddr::V4(ip) => format!("for={ip}"),
            IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        };
        Self {
            addr,
            ip: ip.to_string().into(),
            node: node.into(),
        }
    }
}

/// Where upstream request fields go: a request head being written
/// (HTTP/1.1), or a header map (hyper's client).
pub(crate) trait Fields {
    /// One field whose value is the concatenation of `value`.
    fn field(&mut self, name: &HeaderName, value: &[&[u8]]);
}

impl Fields for Vec<u8> {
    fn field(&mut self, name: &HeaderName, value: &[&[u8]]) {
        self.extend_from_slice(name.as_str().as_bytes());
        self.extend_from_slice(b": ");
        for part in value {
            self.extend_from_slice(part);
        }
        self.extend_from_slice(b"\r\n");
    }
}

impl Fields for HeaderMap {
    fn field(&mut self, name: &HeaderName, value: &[&[u8]]) {
        // Every part is a checked header value, or the proxy's own ASCII.
        if let Ok(value) = HeaderValue::from_bytes(&value.concat()) {
            self.append(name.clone(), value);
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Writes the request fields sent upstream, in one pass over the client's:
/// without hop-by-hop fields (and those `Connection` names) or `Host` (the
/// caller writes the upstream `Host`; `host` is the client's `Host` or
/// `:authority`); with `X-Forwarded-For` and `Forwarded` (RFC 7239)
/// appended to the client's, `X-Forwarded-Proto` and `-Host` set, `Via`
/// appended when configured; the route's edits decide last (`remove` and
/// `set` replace any of these, `add` appends).
pub(crate) fn upstream_fields(
    client: &HeaderMap,
    host: Option<&HeaderValue>,
    peer: Option<&Peer>,
    proto: &'static str,
    via: Option<&HeaderValue>,
    edits: &Edits,
    out: &mut impl Fields,
) {
    // Names `Connection` lists are hop-by-hop too (rare: collected only
    // when there is such a header).
    let named: Vec<HeaderName> = client
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    let ours = [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &http::header::FORWARDED,
        &http::header::VIA,
    ];
    // Which of ours the client sent too (looked up only then).
    let mut sent = [false; 5];
    for (name, value) in client {
        if let Some(i) = ours.iter().position(|o| *o == name) {
            sent[i] = true;
            continue;
        }
        let dropped = *name == http::header::HOST
            || HOP_BY_HOP.contains(name)
            || named.contains(name)
            || edits.drops(name);
        if !dropped {
            out.field(name, &[value.as_bytes()]);
        }
    }
    // Appended to what the client sent, joined into one field (many
    // backends read only the first).
    let mut joined = |name: &HeaderName, own: &[&[u8]]| {
        if edits.drops(name) {
            return;
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        let was_sent = ours
            .iter()
            .position(|o| *o == name)
            .is_some_and(|i| sent[i]);
        if was_sent {
            for previous in client.get_all(name) {
                parts.extend_from_slice(&[previous.as_bytes(), b", "]);
            }
        }
        if parts.is_empty() {
            out.field(name, own);
        } else {
            parts.extend_from_slice(own);
            out.field(name, &parts);
        }
    };
    if let Some(peer) = peer {
        joined(&X_FORWARDED_FOR, &[peer.ip.as_bytes()]);
    }
    let host = host.map(HeaderValue::as_bytes);
    // `for=…;host=…;proto=…`; a host is a token or a quoted string (one
    // with a port needs the quotes; one with `"` or `\\` is left out).
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    let mut element: [&[u8]; 7] = [b"", b"", b"", b"", b"", b"proto=", proto.as_bytes()];
    if let Some(peer) = peer {
        element[0] = peer.node.as_bytes();
        element[1] = b";";
    }
    match host {
        Some(h) if h.iter().all(tchar) => {
            element[2] = b"host=";
            element[3] = h;
            element[5] = b";proto=";
        }
        Some(h) if !h.iter().any(|b| *b == b'"' || *b == b'\\') => {
            element[2] = b"host=\"";
            element[3] = h;
            element[4] = b"\"";
            element[5] = b";proto=";
        }
        _ => {}
    }
    joined(&http::header::FORWARDED, &element);
    if let Some(via) = via {
        joined(&http::header::VIA, &[via.as_bytes()]);
    }
    if !edits.drops(&X_FORWARDED_PROTO) {
        out.field(&X_FORWARDED_PROTO, &[proto.as_bytes()]);
    }
    if let Some(host) = host.filter(|_| !edits.drops(&X_FORWARDED_HOST)) {
        out.field(&X_FORWARDED_HOST, &[host]);
    }
    for (name, value) in edits.written() {
        out.field(name, &[value.as_bytes()]);
    }
}

/// Appends this proxy to `Via` (its value is `1.1 NAME`).
pub(crate) fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    let joined = match headers.get(http::header::VIA) {
        Some(previous) => {
            let mut value = previous.as_bytes().to_vec();
            value.extend_from_slice(b", ");
            value.extend_from_slice(via.as_bytes());
            HeaderValue::from_bytes(&value).ok()
        }
        None => Some(via.clone()),
    };
    if let Some(joined) = joined {
        headers.insert(http::header::VIA, joined);
    }
}

/// Removes hop-by-hop fields, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(http::header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// How a route changes the path it sends upstream.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PathRewrite<'a> {
    /// As the client sent it.
    Keep,
    /// The matched prefix replaced by this.
    Prefix(&'a [u8]),
    /// When the expression finds a match in the decoded path, the whole
    /// path becomes the replacement with its `${n}` groups put in.
    Regex(&'a regex::bytes::Regex, &'a [u8]),
}

/// The path sent upstream: the matched prefix replaced when the route
/// rewrites it. The request target's own encoding is kept when its raw path
/// starts with the matched prefix; otherwise the decoded path is
/// re-encoded. A regex rewrite works on the decoded path, and its result
/// is encoded once.
pub(crate) fn upstream_path(
    raw_path: &str,
    query: Option<&str>,
    normalized: &[u8],
    prefix_len: usize,
    rewrite: PathRewrite<'_>,
    out: &mut Vec<u8>,
) {
    match rewrite {
        PathRewrite::Keep => out.extend_from_slice(raw_path.as_bytes()),
        PathRewrite::Regex(regex, replacement) => match regex.captures(normalized) {
            Some(groups) => {
                let mut path = Vec::with_capacity(replacement.len() + normalized.len());
                groups.expand(replacement, &mut path);
                if !path.starts_with(b"/") {
                    out.push(b'/');
                }
                out.extend_from_slice(&encode_path(&path));
            }
            None => out.extend_from_slice(raw_path.as_bytes()),
        },
        PathRewrite::Prefix(prefix) => {
            let matched = &normalized[..prefix_len.min(normalized.len())];
            let rest: Vec<u8> = match raw_path.as_bytes().strip_prefix(matched) {
                Some(rest) => rest.to_vec(),
                None => encode_path(&normalized[matched.len()..]),
            };
            if prefix == b"/" && rest.starts_with(b"/") {
                out.extend_from_slice(&rest);
            } else {
                out.extend_from_slice(prefix);
                if rest.is_empty() && prefix.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(&rest);
            }
        }
    }
    if let Some(query) = query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
}

/// Percent-encodes what may not appear raw in a path.
pub(crate) fn encode_path(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// The protocol an upgrade request asks for: an `Upgrade` header with
/// `upgrade` among the `Connection` tokens.
pub(crate) fn upgrade_of(headers: &HeaderMap) -> Option<&HeaderValue> {
    let asked = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    asked.then(|| headers.get(http::header::UPGRADE)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str, query: Option<&str>, prefix_len: usize, rewrite: Option<&str>) -> String {
        let normalized = super::super::path::normalize(raw).expect("valid path");
        let mut out = Vec::new();
        let rewrite = match rewrite {
            None => PathRewrite::Keep,
            Some(prefix) => PathRewrite::Prefix(prefix.as_bytes()),
        };
        upstream_path(raw, query, &normalized, prefix_len, rewrite, &mut out);
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn prefixes_are_replaced_and_encoding_kept() {
        assert_eq!(path("/api/users", Some("a=1"), 4, None), "/api/users?a=1");
        assert_eq!(path("/api/users", None, 4, Some("/v2")), "/v2/users");
        assert_eq!(path("/api/us%20ers", None, 4, Some("/v2")), "/v2/us%20ers");
        assert_eq!(path("/api", None, 4, Some("/v2")), "/v2");
        assert_eq!(path("/api/x", None, 4, Some("/")), "/x");
        assert_eq!(path("/%61pi/x y", None, 4, Some("/v2")), "/v2/x%20y");
    }

    #[test]
    fn regex_rewrites_replace_the_whole_path_with_its_groups() {
        let rewrite = |raw: &str, pattern: &str, replacement: &str| {
            let regex = pier_snapshot::rewrite_regex(pattern).expect("valid");
            let normalized = super::super::path::normalize(raw).expect("valid path");
            let mut out = Vec::new();
            let how = PathRewrite::Regex(&regex, replacement.as_bytes());
            upstream_path(raw, Some("q=1"), &normalized, 0, how, &mut out);
            String::from_utf8(out).expect("ASCII")
        };
        // ingress-nginx's own example: `/something(/|$)(.*)` to `/$2`.
        let nginx = "(?i)/something(/|$)(.*)";
        assert_eq!(rewrite("/something/new", nginx, "/${2}"), "/new?q=1");
        assert_eq!(rewrite("/something", nginx, "/${2}"), "/?q=1");
        assert_eq!(rewrite("/SomeThing/a/b", nginx, "/${2}"), "/a/b?q=1");
        // No match: the path goes as it came, encoding and all.
        assert_eq!(rewrite("/other/x%20y", nginx, "/${2}"), "/other/x%20y?q=1");
        // Groups are decoded text; the result is encoded once.
        assert_eq!(
            rewrite("/api/a%20b", "^/api/(.*)", "/v2/${1}"),
            "/v2/a%20b?q=1"
        );
        assert_eq!(rewrite("/api/x", "^/api/(.*)", "${1}"), "/x?q=1");
    }

    #[test]
    fn hop_by_hop_fields_go_including_those_connection_names() {
        let mut headers = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("x-kept", "yes"),
            ("content-length", "5"),
        ] {
            headers.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }
}
