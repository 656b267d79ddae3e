//! The routing table: host, then path, to a route index. Pure and built once
//! per snapshot; a lookup costs O(host labels × path segments), not
//! O(routes).
//!
//! Precedence, as in Gateway API: an exact host before a wildcard host (the
//! longest wildcard suffix first) before routes for any host; within a host,
//! an exact path before the longest matching prefix. A request that matches
//! a host but none of its paths falls through to the less specific hosts.

use std::collections::HashMap;

use pier_snapshot::{PathRule, Snapshot};

/// A route chosen for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Match {
    /// Index of the route in the snapshot.
    pub(crate) route: usize,
    /// Bytes of the request path covered by the prefix, to strip before the
    /// file lookup (0 for `/` and for exact matches).
    pub(crate) prefix_len: usize,
}

/// Host and path lookup for one snapshot.
#[derive(Debug, Default)]
pub(crate) struct Router {
    exact: HashMap<Box<str>, Paths>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, Paths>,
    any: Paths,
}

#[derive(Debug, Default)]
struct Paths {
    exact: HashMap<Box<[u8]>, usize>,
    prefix: HashMap<Box<[u8]>, usize>,
}

impl Router {
    /// Builds the table. The snapshot compiler has already rejected routes
    /// that claim the same host and path, so no entry is overwritten.
    pub(crate) fn new(snapshot: &Snapshot) -> Self {
        let mut router = Self::default();
        for (index, route) in snapshot.routes.iter().enumerate() {
            if route.hosts.is_empty() {
                router.any.insert(&route.path, index);
            }
            for host in &route.hosts {
                let paths = match host.strip_prefix("*.") {
                    Some(suffix) => router.wildcard.entry(suffix.into()).or_default(),
                    None => router.exact.entry(host.as_str().into()).or_default(),
                };
                paths.insert(&route.path, index);
            }
        }
        router
    }

    /// Finds the route for a request. `host` is the Host header or
    /// `:authority` (any case, with or without port); `path` is normalised.
    pub(crate) fn lookup(&self, host: &str, path: &[u8]) -> Option<Match> {
        let mut buf = [0u8; 256];
        let host = normalize_host(host, &mut buf);
        if let Some(host) = host {
            if let Some(found) = self.exact.get(host).and_then(|p| p.lookup(path)) {
                return Some(found);
            }
            if !self.wildcard.is_empty() {
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    rest = &rest[dot + 1..];
                    if let Some(found) = self.wildcard.get(rest).and_then(|p| p.lookup(path)) {
                        return Some(found);
                    }
                }
            }
        }
        self.any.lookup(path)
    }
}

impl Paths {
    fn insert(&mut self, rule: &PathRule, index: usize) {
        match rule {
            PathRule::Exact(value) => self.exact.insert(value.as_bytes().into(), index),
            PathRule::Prefix(value) => self.prefix.insert(value.as_bytes().into(), index),
        };
    }

    fn lookup(&self, path: &[u8]) -> Option<Match> {
        if let Some(&route) = self.exact.get(path) {
            return Some(Match {
                route,
                prefix_len: 0,
            });
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Candidates from the longest: the path without its trailing slash,
        // then each parent, then `/`.
        let mut end = path.len();
        while end > 1 && path[end - 1] == b'/' {
            end -= 1;
        }
        loop {
            let candidate = if end <= 1 { &b"/"[..] } else { &path[..end] };
            if let Some(&route) = self.prefix.get(candidate) {
                let prefix_len = if candidate == b"/" { 0 } else { end };
                return Some(Match { route, prefix_len });
            }
            if end <= 1 {
                return None;
            }
            end = path[..end].iter().rposition(|&b| b == b'/').unwrap_or(0);
        }
    }
}

/// Lower-cases a host, dropping the port and a trailing dot, into `buf`
/// without allocating. `None` for hosts that cannot match a route (too long,
/// IPv6 literals, non-ASCII).
fn normalize_host<'b>(host: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    if host.starts_with('[') {
        return None;
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _port)| name);
    let name = name.strip_suffix('.').unwrap_or(name);
    let out = buf.get_mut(..name.len())?;
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use pier_snapshot::{Action, Route, RouteKey, RouteKind, StaticAction};

    use super::*;

    fn route(name: &str, hosts: &[&str], path: PathRule) -> Route {
        Route {
            key: RouteKey {
                kind: RouteKind::StaticRoute,
                namespace: "default".into(),
                name: name.into(),
            },
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            path,
            action: Action::Static(StaticAction {
                root: "/srv".into(),
                index: "index.html".into(),
                cache_control: None,
                precompressed: false,
                fallback: None,
            }),
        }
    }

    fn prefix(p: &str) -> PathRule {
        PathRule::Prefix(p.into())
    }

    /// Looks a request up and returns the route name and stripped length.
    fn find(snapshot: &Snapshot, host: &str, path: &str) -> Option<(String, usize)> {
        let router = Router::new(snapshot);
        router
            .lookup(host, path.as_bytes())
            .map(|m| (snapshot.routes[m.route].key.name.clone(), m.prefix_len))
    }

    fn name(found: Option<(String, usize)>) -> Option<String> {
        found.map(|(name, _)| name)
    }

    #[test]
    fn longest_prefix_wins_element_by_element() {
        let s = Snapshot::new(vec![
            route("root", &[], prefix("/")),
            route("assets", &[], prefix("/assets")),
            route("img", &[], prefix("/assets/img")),
        ]);
        assert_eq!(find(&s, "x", "/assets/img/a.png"), Some(("img".into(), 11)));
        assert_eq!(find(&s, "x", "/assets/a.png"), Some(("assets".into(), 7)));
        assert_eq!(find(&s, "x", "/assets"), Some(("assets".into(), 7)));
        assert_eq!(find(&s, "x", "/assets/"), Some(("assets".into(), 7)));
        assert_eq!(find(&s, "x", "/assetsx/a"), Some(("root".into(), 0)));
        assert_eq!(find(&s, "x", "/"), Some(("root".into(), 0)));
    }

    #[test]
    fn exact_path_beats_prefix() {
        let s = Snapshot::new(vec![
            route("prefix", &[], prefix("/a")),
            route("exact", &[], PathRule::Exact("/a/b".into())),
        ]);
        assert_eq!(name(find(&s, "x", "/a/b")), Some("exact".into()));
        assert_eq!(name(find(&s, "x", "/a/b/")), Some("prefix".into()));
        assert_eq!(name(find(&s, "x", "/a/c")), Some("prefix".into()));
    }

    #[test]
    fn exact_host_before_wildcard_before_any() {
        let s = Snapshot::new(vec![
            route("any", &[], prefix("/")),
            route("wild", &["*.example.com"], prefix("/")),
            route("deep", &["*.cdn.example.com"], prefix("/")),
            route("exact", &["www.example.com"], prefix("/")),
        ]);
        assert_eq!(name(find(&s, "www.example.com", "/")), Some("exact".into()));
        assert_eq!(
            name(find(&s, "WWW.Example.COM:8080", "/")),
            Some("exact".into())
        );
        assert_eq!(
            name(find(&s, "www.example.com.", "/")),
            Some("exact".into())
        );
        assert_eq!(name(find(&s, "a.example.com", "/")), Some("wild".into()));
        assert_eq!(name(find(&s, "a.b.example.com", "/")), Some("wild".into()));
        assert_eq!(
            name(find(&s, "x.cdn.example.com", "/")),
            Some("deep".into())
        );
        assert_eq!(name(find(&s, "example.com", "/")), Some("any".into()));
        assert_eq!(name(find(&s, "[::1]:80", "/")), Some("any".into()));
        assert_eq!(name(find(&s, "", "/")), Some("any".into()));
    }

    #[test]
    fn unmatched_path_on_a_host_falls_through_to_less_specific_hosts() {
        let s = Snapshot::new(vec![
            route("api", &["www.example.com"], prefix("/api")),
            route("any", &[], prefix("/")),
        ]);
        assert_eq!(
            name(find(&s, "www.example.com", "/api/x")),
            Some("api".into())
        );
        assert_eq!(
            name(find(&s, "www.example.com", "/index.html")),
            Some("any".into())
        );
    }

    #[test]
    fn nothing_matches_without_a_route() {
        let s = Snapshot::new(vec![route("a", &["a.com"], prefix("/a"))]);
        assert_eq!(find(&s, "a.com", "/b"), None);
        assert_eq!(find(&s, "b.com", "/a"), None);
        assert_eq!(find(&s, &"a".repeat(300), "/a"), None);
    }

    #[test]
    fn lookup_works_with_thousands_of_routes() {
        let routes = (0..5000)
            .map(|i| {
                route(
                    &format!("r{i}"),
                    &[&format!("h{i}.example.com")],
                    prefix(&format!("/p{i}")),
                )
            })
            .collect();
        let s = Snapshot::new(routes);
        assert_eq!(
            name(find(&s, "h4321.example.com", "/p4321/x")),
            Some("r4321".into())
        );
        assert_eq!(find(&s, "h4321.example.com", "/p4320/x"), None);
    }
}
