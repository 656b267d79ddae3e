//! The routing table: host, then path, then the route's other conditions,
//! to a route index. Pure and built once per snapshot; a lookup costs
//! O(host labels × path segments), not O(routes), plus one test per
//! `RegularExpression` route of the host.
//!
//! Precedence, as in Gateway API: an exact host before a wildcard host (the
//! longest wildcard suffix first) before routes for any host; within a host,
//! an exact path, then regular expressions (nginx's order: they beat
//! prefixes), then the longest matching prefix. Routes on the same host and
//! path are tried most specific first (a method match, then more header
//! matches), ties in snapshot order (namespace/name); regular expressions
//! are tried in snapshot order too. A request whose host matches but none
//! of whose paths and conditions do falls through to the less specific
//! hosts.

use http::{HeaderMap, HeaderName, Method};
use pier_snapshot::fnv::FnvMap;
use pier_snapshot::{Matches, PathRule, Snapshot};
use regex::bytes::Regex;

/// A route chosen for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Match {
    /// Index of the route in the snapshot.
    pub(crate) route: usize,
    /// Bytes of the request path covered by the prefix, to strip before the
    /// file lookup (0 for `/`, exact and regular-expression matches).
    pub(crate) prefix_len: usize,
}

/// What a lookup looks at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request<'a> {
    /// The Host header or `:authority` (any case, with or without port).
    pub(crate) host: &'a str,
    /// The normalised path.
    pub(crate) path: &'a [u8],
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    /// The raw query string, without `?`.
    pub(crate) query: Option<&'a str>,
}

/// Host and path lookup for one snapshot.
#[derive(Debug, Default)]
pub(crate) struct Router {
    exact: FnvMap<Box<str>, Paths>,
    /// Keyed by the suffix after `*.`.
    wildcard: FnvMap<Box<str>, Paths>,
    any: Paths,
    /// Per route: its conditions besides host and path, if any.
    conditions: Box<[Option<Box<Conditions>>]>,
}

/// Routes sharing one host and path, in the order they are tried.
type Slot = Vec<usize>;

#[derive(Debug, Default)]
struct Paths {
    exact: FnvMap<Box<[u8]>, Slot>,
    /// One entry per distinct expression (as written), in snapshot order.
    regex: Vec<(Box<str>, Regex, Slot)>,
    prefix: FnvMap<Box<[u8]>, Slot>,
}

/// Methods, exact header values and query parameters a request must have.
#[derive(Debug)]
struct Conditions {
    methods: Box<[Method]>,
    headers: Box<[(HeaderName, Box<[u8]>)]>,
    query: Box<[(Box<str>, Box<str>)]>,
}

impl Conditions {
    /// `Ok(None)` when the route has no conditions; `Err` when the
    /// snapshot holds one this dataplane cannot parse (the compiler checked
    /// them, so only a damaged snapshot gets here).
    fn new(matches: &Matches) -> Result<Option<Box<Self>>, ()> {
        if matches.is_empty() {
            return Ok(None);
        }
        let methods = matches
            .methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(drop))
            .collect::<Result<_, _>>()?;
        let headers = matches
            .headers
            .iter()
            .map(|(n, v)| {
                Ok((
                    HeaderName::from_bytes(n.as_bytes()).map_err(drop)?,
                    v.as_bytes().into(),
                ))
            })
            .collect::<Result<_, _>>()?;
        let query = matches
            .query
            .iter()
            .map(|(n, v)| (n.as_str().into(), v.as_str().into()))
            .collect();
        Ok(Some(Box::new(Self {
            methods,
            headers,
            query,
        })))
    }

    fn admit(&self, req: &Request<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(req.method))
            && self.headers.iter().all(|(name, value)| {
                req.headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.as_bytes() == &**value)
            })
            && self
                .query
                .iter()
                .all(|(name, value)| query_param(req.query, name) == Some(&**value))
    }
}

/// The raw value of a query string's first parameter called `name` (a
/// name without `=` has the empty value).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

impl Router {
    /// Builds the table. The snapshot compiler has already rejected routes
    /// that claim the same host, path and conditions, and checked every
    /// expression; one that still fails to compile matches nothing.
    pub(crate) fn new(snapshot: &Snapshot) -> Self {
        let mut router = Self::default();
        let mut conditions = Vec::with_capacity(snapshot.routes.len());
        for (index, route) in snapshot.routes.iter().enumerate() {
            let Ok(parsed) = Conditions::new(&route.matches) else {
                tracing::warn!(route = %route.key, "route conditions unusable; route left out");
                conditions.push(None);
                continue;
            };
            conditions.push(parsed);
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
        router.conditions = conditions.into();
        // Most specific first; the sort is stable, so ties keep snapshot
        // order.
        let rank = |i: &usize| std::cmp::Reverse(snapshot.routes[*i].matches.specificity());
        for paths in router
            .exact
            .values_mut()
            .chain(router.wildcard.values_mut())
            .chain([&mut router.any])
        {
            let slots = paths.exact.values_mut().chain(paths.prefix.values_mut());
            for slot in slots.chain(paths.regex.iter_mut().map(|(_, _, slot)| slot)) {
                slot.sort_by_key(rank);
            }
        }
        router
    }

    /// Finds the route for a request.
    pub(crate) fn lookup(&self, req: &Request<'_>) -> Option<Match> {
        let mut buf = [0u8; 256];
        // Without host-specific routes the host is not even looked at.
        let named = !self.exact.is_empty() || !self.wildcard.is_empty();
        let host = named.then(|| normalize_host(req.host, &mut buf)).flatten();
        if let Some(host) = host {
            if let Some(found) = self.exact.get(host).and_then(|p| self.in_paths(p, req)) {
                return Some(found);
            }
            if !self.wildcard.is_empty() {
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    rest = &rest[dot + 1..];
                    if let Some(found) = self.wildcard.get(rest).and_then(|p| self.in_paths(p, req))
                    {
                        return Some(found);
                    }
                }
            }
        }
        self.in_paths(&self.any, req)
    }

    /// The first route of a slot whose conditions the request meets.
    fn in_slot(&self, slot: &Slot, req: &Request<'_>) -> Option<usize> {
        slot.iter().copied().find(|&route| {
            self.conditions
                .get(route)
                .and_then(Option::as_deref)
                .is_none_or(|c| c.admit(req))
        })
    }

    fn in_paths(&self, paths: &Paths, req: &Request<'_>) -> Option<Match> {
        let path = req.path;
        let whole = |route| Match {
            route,
            prefix_len: 0,
        };
        // Empty tables are skipped: a lookup hashes its key even then.
        let exact = (!paths.exact.is_empty())
            .then(|| paths.exact.get(path))
            .flatten();
        if let Some(route) = exact.and_then(|s| self.in_slot(s, req)) {
            return Some(whole(route));
        }
        for (_, regex, slot) in &paths.regex {
            if regex.is_match(path)
                && let Some(route) = self.in_slot(slot, req)
            {
                return Some(whole(route));
            }
        }
        if paths.prefix.is_empty() {
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
            if let Some(route) = paths
                .prefix
                .get(candidate)
                .and_then(|s| self.in_slot(s, req))
            {
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

impl Paths {
    fn insert(&mut self, rule: &PathRule, index: usize) {
        match rule {
            PathRule::Exact(value) => self
                .exact
                .entry(value.as_bytes().into())
                .or_default()
                .push(index),
            PathRule::Prefix(value) => self
                .prefix
                .entry(value.as_bytes().into())
                .or_default()
                .push(index),
            PathRule::Regex(value) => {
                match self.regex.iter_mut().find(|(v, _, _)| **v == **value) {
                    Some((_, _, slot)) => slot.push(index),
                    None => match pier_snapshot::path_regex(value) {
                        Ok(regex) => self.regex.push((value.as_str().into(), regex, vec![index])),
                        Err(why) => {
                            tracing::warn!(expression = value, why, "path expression left out")
                        }
                    },
                }
            }
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
    use http::HeaderValue;
    use pier_snapshot::{Action, Route, RouteKey, RouteKind, StaticAction};

    use super::*;

    fn route(name: &str, hosts: &[&str], path: PathRule) -> Route {
        conditional(name, hosts, path, Matches::default())
    }

    fn conditional(name: &str, hosts: &[&str], path: PathRule, matches: Matches) -> Route {
        Route {
            key: RouteKey::new(RouteKind::StaticRoute, "default", name),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            path,
            matches,
            tls: None,
            policy: Default::default(),
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

    /// Looks a GET request up and returns the route name and stripped length.
    fn find(snapshot: &Snapshot, host: &str, path: &str) -> Option<(String, usize)> {
        find_with(snapshot, host, path, &Method::GET, &[])
    }

    fn find_with(
        snapshot: &Snapshot,
        host: &str,
        path: &str,
        method: &Method,
        headers: &[(&'static str, &'static str)],
    ) -> Option<(String, usize)> {
        let router = Router::new(snapshot);
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(*n, HeaderValue::from_static(v));
        }
        let req = Request {
            host,
            path: path.as_bytes(),
            method,
            headers: &map,
            query,
        };
        router
            .lookup(&req)
            .map(|m| (snapshot.routes[m.route].key.name.clone(), m.prefix_len))
    }

    fn matches(methods: &[&str], headers: &[(&str, &str)]) -> Matches {
        Matches {
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            ..Matches::default()
        }
    }

    #[test]
    fn query_parameter_matches_take_the_first_occurrence_and_go_before_none() {
        let by_query = |name: &str, params: &[(&str, &str)]| {
            let mut route = conditional(name, &["a.com"], prefix("/"), Matches::default());
            route.matches.query = params
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            route
        };
        let s = Snapshot::new(vec![
            route("plain", &["a.com"], prefix("/")),
            by_query("whale", &[("animal", "whale")]),
            by_query("two", &[("animal", "whale"), ("color", "blue")]),
        ]);
        let get = |path| name(find(&s, "a.com", path));
        assert_eq!(get("/?animal=whale").as_deref(), Some("whale"));
        assert_eq!(get("/x?color=blue&animal=whale").as_deref(), Some("two"));
        assert_eq!(
            get("/?animal=whale&animal=dolphin").as_deref(),
            Some("whale")
        );
        assert_eq!(
            get("/?animal=dolphin&animal=whale").as_deref(),
            Some("plain")
        );
        assert_eq!(
            get("/?Animal=whale").as_deref(),
            Some("plain"),
            "names keep case"
        );
        assert_eq!(get("/?animal").as_deref(), Some("plain"));
        assert_eq!(get("/").as_deref(), Some("plain"));
    }

    #[test]
    fn regular_expressions_match_whole_paths_after_exact_and_before_prefixes() {
        let s = Snapshot::new(vec![
            route("root", &[], prefix("/")),
            route("api", &[], prefix("/api")),
            route("php", &[], PathRule::Regex(r"/.*\.php".into())),
            route("exact", &[], PathRule::Exact("/api/index.php".into())),
        ]);
        assert_eq!(find(&s, "x", "/api/a.php"), Some(("php".into(), 0)));
        assert_eq!(find(&s, "x", "/a/b.php"), Some(("php".into(), 0)));
        assert_eq!(name(find(&s, "x", "/api/index.php")), Some("exact".into()));
        // Anchored: a match inside the path is not enough.
        assert_eq!(name(find(&s, "x", "/a.php/x")), Some("root".into()));
        assert_eq!(name(find(&s, "x", "/api/a.phpx")), Some("api".into()));
    }

    #[test]
    fn method_and_header_matches_go_first_then_fall_back() {
        let s = Snapshot::new(vec![
            route("plain", &["a.com"], prefix("/api")),
            conditional("posts", &["a.com"], prefix("/api"), matches(&["POST"], &[])),
            conditional(
                "canary",
                &["a.com"],
                prefix("/api"),
                matches(&[], &[("x-canary", "1")]),
            ),
            conditional(
                "canary-posts",
                &["a.com"],
                prefix("/api"),
                matches(&["POST"], &[("x-canary", "1")]),
            ),
            route("any", &[], prefix("/")),
        ]);
        let get = |headers| name(find_with(&s, "a.com", "/api/x", &Method::GET, headers));
        let post = |headers| name(find_with(&s, "a.com", "/api/x", &Method::POST, headers));
        assert_eq!(get(&[]), Some("plain".into()));
        assert_eq!(post(&[]), Some("posts".into()));
        assert_eq!(get(&[("x-canary", "1")]), Some("canary".into()));
        assert_eq!(get(&[("x-canary", "2")]), Some("plain".into()));
        assert_eq!(post(&[("x-canary", "1")]), Some("canary-posts".into()));
        // Any one of repeated fields may carry the value.
        assert_eq!(
            get(&[("x-canary", "0"), ("x-canary", "1")]),
            Some("canary".into())
        );
    }

    #[test]
    fn a_conditional_route_alone_lets_other_requests_fall_through() {
        let s = Snapshot::new(vec![
            conditional("posts", &["a.com"], prefix("/api"), matches(&["POST"], &[])),
            route("parent", &["a.com"], prefix("/")),
            route("any", &[], prefix("/")),
        ]);
        let found = |m: &Method| name(find_with(&s, "a.com", "/api/x", m, &[]));
        assert_eq!(found(&Method::POST), Some("posts".into()));
        assert_eq!(found(&Method::GET), Some("parent".into()));
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
