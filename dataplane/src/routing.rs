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
//! matches, then more query matches; exact or regular expressions alike),
//! ties in snapshot order (namespace/name); regular expressions
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

/// Methods, header values and query parameters a request must have.
#[derive(Debug)]
struct Conditions {
    methods: Box<[Method]>,
    headers: Box<[(HeaderName, Value)]>,
    query: Box<[(Box<str>, Value)]>,
}

/// A value a condition asks for.
#[derive(Debug)]
enum Value {
    Exact(Box<[u8]>),
    /// Anchored at both ends.
    Pattern(Regex),
}

impl Value {
    fn admits(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(exact) => value == &**exact,
            Self::Pattern(regex) => regex.is_match(value),
        }
    }
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
        let exact = |v: &String| Ok(Value::Exact(v.as_bytes().into()));
        let pattern = |v: &String| {
            pier_snapshot::path::value_regex(v)
                .map(Value::Pattern)
                .map_err(drop)
        };
        let header = |(n, v): &(String, String), value: &dyn Fn(&String) -> Result<Value, ()>| {
            Ok((
                HeaderName::from_bytes(n.as_bytes()).map_err(drop)?,
                value(v)?,
            ))
        };
        let headers = (matches.headers.iter().map(|h| header(h, &exact)))
            .chain(matches.header_patterns.iter().map(|h| header(h, &pattern)))
            .collect::<Result<_, _>>()?;
        let param = |(n, v): &(String, String), value: &dyn Fn(&String) -> Result<Value, ()>| {
            Ok((n.as_str().into(), value(v)?))
        };
        let query = (matches.query.iter().map(|q| param(q, &exact)))
            .chain(matches.query_patterns.iter().map(|q| param(q, &pattern)))
            .collect::<Result<_, _>>()?;
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
                    .any(|v| value.admits(v.as_bytes()))
            })
            && self.query.iter().all(|(name, value)| {
                query_param(req.query, name).is_some_and(|v| value.admits(v.as_bytes()))
            })
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
mod tests;
