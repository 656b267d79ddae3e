//! The routing table's precedence rules, on snapshots built here.

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

#[test]
fn header_and_query_patterns_match_whole_values() {
    let with = |name: &str, headers: &[(&str, &str)], query: &[(&str, &str)]| {
        let mut route = conditional(name, &["a.com"], prefix("/"), Matches::default());
        let own = |l: &[(&str, &str)]| -> Vec<(String, String)> {
            l.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        route.matches.header_patterns = own(headers);
        route.matches.query_patterns = own(query);
        route
    };
    let s = Snapshot::new(vec![
        route("plain", &["a.com"], prefix("/")),
        with("version", &[("x-version", "v[0-9]+")], &[]),
        with("search", &[], &[("q", "[a-z]+")]),
    ]);
    let get = |path, headers| name(find_with(&s, "a.com", path, &Method::GET, headers));
    assert_eq!(
        get("/", &[("x-version", "v12")]).as_deref(),
        Some("version")
    );
    assert_eq!(
        get("/", &[("x-version", "v12-beta")]).as_deref(),
        Some("plain"),
        "whole value"
    );
    assert_eq!(get("/", &[("x-version", "xv1")]).as_deref(), Some("plain"));
    assert_eq!(get("/?q=whale", &[]).as_deref(), Some("search"));
    assert_eq!(get("/?q=Whale", &[]).as_deref(), Some("plain"));
    assert_eq!(get("/?q=", &[]).as_deref(), Some("plain"));
}
