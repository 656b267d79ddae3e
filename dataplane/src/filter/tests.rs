use http::header::{LOCATION, STRICT_TRANSPORT_SECURITY};
use http::{HeaderValue, StatusCode};
use pier_snapshot::{
    Cors, PathRule, Policy, Redirect, RedirectPath, RedirectTo, RouteKey, RouteKind, RouteTls,
    StaticAction,
};

use super::*;

fn route(tls: Option<RouteTls>) -> Route {
    with_policy(tls, Policy::default())
}

fn with_policy(tls: Option<RouteTls>, policy: Policy) -> Route {
    Route {
        key: RouteKey::new(RouteKind::StaticRoute, "default", "site"),
        hosts: vec!["example.com".into()],
        path: PathRule::Prefix("/".into()),
        matches: Default::default(),
        tls,
        policy,
        action: Action::Static(StaticAction {
            root: "/srv".into(),
            index: "index.html".into(),
            cache_control: None,
            precompressed: false,
            fallback: None,
        }),
    }
}

fn secured() -> Route {
    route(Some(RouteTls {
        certificate: "default/site".into(),
        redirect: true,
        hsts: Some("max-age=31536000".into()),
    }))
}

#[test]
fn a_route_without_features_compiles_to_no_filters() {
    let filters = Filters::compile(&route(None));
    assert!(filters.request.is_empty() && filters.response.is_empty());
    assert!(!filters.edits_response(&Pass::plain(true)));
}

/// A request to run the request phase on.
struct Asked {
    uri: Uri,
    method: Method,
    headers: HeaderMap,
    path: Vec<u8>,
    prefix_len: usize,
    host: &'static str,
    client: Option<std::net::IpAddr>,
}

impl Asked {
    fn get(target: &str) -> Self {
        let uri: Uri = target.parse().expect("uri");
        let path = crate::http::path::normalize(uri.path())
            .expect("valid")
            .into_owned();
        Self {
            uri,
            method: Method::GET,
            headers: HeaderMap::new(),
            path,
            prefix_len: 0,
            host: "example.com:8080",
            client: Some("192.0.2.1".parse().expect("ip")),
        }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.insert(name, HeaderValue::from_static(value));
        self
    }

    fn run(&self, filters: &Filters, secure: bool) -> Decision {
        let client = || self.client;
        filters.on_request(&Request {
            host: self.host,
            uri: &self.uri,
            method: &self.method,
            headers: &self.headers,
            path: &self.path,
            prefix_len: self.prefix_len,
            secure,
            client: &client,
        })
    }

    fn answer(&self, filters: &Filters, secure: bool) -> Response<Body> {
        match self.run(filters, secure) {
            Decision::Answer(res) => *res,
            Decision::Pass(_) => panic!("passed, not answered"),
            Decision::Check(_) => panic!("a check, not an answer"),
        }
    }

    fn pass(&self, filters: &Filters, secure: bool) -> Pass {
        match self.run(filters, secure) {
            Decision::Pass(pass) => pass,
            Decision::Answer(res) => panic!("answered {}", res.status()),
            Decision::Check(_) => panic!("a check, not a pass"),
        }
    }
}

#[test]
fn the_request_phase_redirects_plain_http_only() {
    let filters = Filters::compile(&secured());
    let asked = Asked::get("/a?b=1");
    let res = asked.answer(&filters, false);
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(res.headers()[LOCATION], "https://example.com/a?b=1");
    asked.pass(&filters, true);
}

#[test]
fn access_lists_deny_first_then_admit_the_allowed_only() {
    let policy = Policy {
        allow: vec!["192.0.2.0/24".into(), "2001:db8::/32".into()],
        deny: vec!["192.0.2.66/32".into()],
        ..Policy::default()
    };
    let filters = Filters::compile(&with_policy(None, policy));
    let mut asked = Asked::get("/");
    for (ip, admitted) in [
        ("192.0.2.1", true),
        ("::ffff:192.0.2.9", true),
        ("2001:db8::5", true),
        ("192.0.2.66", false),
        ("198.51.100.1", false),
    ] {
        asked.client = Some(ip.parse().expect("ip"));
        let admitted_here = matches!(asked.run(&filters, false), Decision::Pass(_));
        assert_eq!(admitted_here, admitted, "{ip}");
    }
    asked.client = None;
    assert_eq!(
        asked.answer(&filters, false).status(),
        StatusCode::FORBIDDEN,
        "unknown address"
    );
    // A deny list alone admits everyone else.
    let deny_only = Policy {
        deny: vec!["10.0.0.0/8".into()],
        ..Policy::default()
    };
    let filters = Filters::compile(&with_policy(None, deny_only));
    asked.client = Some("10.1.1.1".parse().expect("ip"));
    assert_eq!(asked.answer(&filters, false).status(), 403);
    asked.client = Some("11.1.1.1".parse().expect("ip"));
    asked.pass(&filters, false);
}

fn cors(origins: &[&str], credentials: bool) -> Filters {
    let policy = Policy {
        cors: Some(Cors {
            allow_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            allow_methods: "GET, POST".into(),
            allow_headers: "Content-Type".into(),
            expose_headers: "X-Total".into(),
            allow_credentials: credentials,
            max_age: 600,
        }),
        ..Policy::default()
    };
    Filters::compile(&with_policy(None, policy))
}

#[test]
fn cors_preflights_are_answered_and_responses_marked_for_allowed_origins() {
    let filters = cors(&["https://app.example.com", "https://*.example.org"], true);
    let mut preflight = Asked::get("/api")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST");
    preflight.method = Method::OPTIONS;
    let res = preflight.answer(&filters, true);
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "Content-Type");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["vary"], "Origin");

    // A simple request passes, and its response is marked.
    let simple = Asked::get("/api").header("origin", "https://a.b.example.org:8443");
    let pass = simple.pass(&filters, true);
    assert!(filters.edits_response(&pass));
    let mut headers = HeaderMap::new();
    filters.on_response(&mut headers, &pass);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://a.b.example.org:8443"
    );
    assert_eq!(headers["access-control-expose-headers"], "X-Total");

    // Other origins, and the bare wildcard domain, get nothing.
    for origin in [
        "https://evil.example",
        "https://example.org",
        "http://app.example.com",
    ] {
        let asked = Asked::get("/api").header("origin", origin);
        let pass = asked.pass(&filters, true);
        assert!(!filters.edits_response(&pass), "{origin}");
    }
    // Without an Origin nothing is marked, and no preflight answered.
    let mut options = Asked::get("/api");
    options.method = Method::OPTIONS;
    assert!(!filters.edits_response(&options.pass(&filters, true)));
}

#[test]
fn cors_for_any_origin_answers_star_unless_credentials_are_allowed() {
    let any = cors(&["*"], false);
    let asked = Asked::get("/").header("origin", "https://x.test");
    let mut headers = HeaderMap::new();
    any.on_response(&mut headers, &asked.pass(&any, false));
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(!headers.contains_key("vary"));
    let credentialed = cors(&["*"], true);
    let mut headers = HeaderMap::new();
    credentialed.on_response(&mut headers, &asked.pass(&credentialed, false));
    assert_eq!(headers["access-control-allow-origin"], "https://x.test");
}

fn redirecting(to: RedirectTo, status: u16) -> Filters {
    let policy = Policy {
        redirect: Some(Redirect { status, to }),
        ..Policy::default()
    };
    Filters::compile(&with_policy(None, policy))
}

#[test]
fn route_redirects_replace_the_parts_they_name() {
    let location = |filters: &Filters, asked: &Asked, secure| {
        let res = asked.answer(filters, secure);
        (
            res.status().as_u16(),
            res.headers()[LOCATION].to_str().expect("ascii").to_owned(),
        )
    };
    let fixed = redirecting(RedirectTo::Url("https://new.example/x".into()), 301);
    let asked = Asked::get("/old/page?q=1");
    assert_eq!(
        location(&fixed, &asked, false),
        (301, "https://new.example/x".into())
    );

    let parts = |scheme: Option<&str>, host: Option<&str>, port, path| RedirectTo::Parts {
        scheme: scheme.map(str::to_owned),
        host: host.map(str::to_owned),
        port,
        path,
    };
    // The scheme changes: its default port, not the request's.
    let https = redirecting(parts(Some("https"), None, None, RedirectPath::Keep), 302);
    assert_eq!(
        location(&https, &asked, false),
        (302, "https://example.com/old/page?q=1".into())
    );
    // Nothing but the host changes: the request's port stays.
    let moved = redirecting(
        parts(None, Some("b.example"), None, RedirectPath::Keep),
        307,
    );
    assert_eq!(
        location(&moved, &asked, false),
        (307, "http://b.example:8080/old/page?q=1".into())
    );
    let full = redirecting(
        parts(None, None, Some(9000), RedirectPath::Full("/new".into())),
        308,
    );
    assert_eq!(
        location(&full, &asked, false),
        (308, "http://example.com:9000/new?q=1".into())
    );
    let mut prefixed = Asked::get("/old/page%20two");
    prefixed.prefix_len = 4;
    let prefix = redirecting(
        parts(None, None, None, RedirectPath::Prefix("/v2".into())),
        302,
    );
    assert_eq!(
        location(&prefix, &prefixed, true).1,
        "https://example.com:8080/v2/page%20two"
    );
    let root = redirecting(
        parts(None, None, None, RedirectPath::Prefix("/".into())),
        302,
    );
    assert_eq!(
        location(&root, &prefixed, true).1,
        "https://example.com:8080/page%20two"
    );
}

#[test]
fn the_response_phase_adds_hsts_over_tls_only() {
    let filters = Filters::compile(&secured());
    let mut headers = HeaderMap::new();
    filters.on_response(&mut headers, &Pass::plain(false));
    assert!(headers.is_empty());
    assert!(
        !filters.edits_response(&Pass::plain(false)),
        "plain responses keep the copy path"
    );
    filters.on_response(&mut headers, &Pass::plain(true));
    assert_eq!(headers[STRICT_TRANSPORT_SECURITY], "max-age=31536000");
}

#[test]
fn response_filters_run_in_their_compiled_order() {
    let set_hsts = pier_snapshot::HeaderEdits {
        set: vec![("strict-transport-security".into(), "max-age=1".into())],
        ..Default::default()
    };
    // Header edits first, then HSTS: the route's own HSTS value wins.
    let filters = Filters {
        response: vec![
            ResponseFilter::Headers(Edits::new(&set_hsts)),
            ResponseFilter::Hsts(hsts::Hsts::new("max-age=2").expect("valid")),
        ]
        .into(),
        ..Filters::default()
    };
    let mut headers = HeaderMap::new();
    headers.insert("x-kept", HeaderValue::from_static("1"));
    filters.on_response(&mut headers, &Pass::plain(true));
    assert_eq!(headers[STRICT_TRANSPORT_SECURITY], "max-age=2");
    assert_eq!(headers["x-kept"], "1");
    assert!(filters.edits_response(&Pass::plain(false)));
}
