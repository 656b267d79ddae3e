use http::header::{LOCATION, STRICT_TRANSPORT_SECURITY};
use http::{HeaderValue, StatusCode};
use pier_snapshot::{PathRule, RouteKey, RouteKind, RouteTls, StaticAction};

use super::*;

fn route(tls: Option<RouteTls>) -> Route {
    Route {
        key: RouteKey::new(RouteKind::StaticRoute, "default", "site"),
        hosts: vec!["example.com".into()],
        path: PathRule::Prefix("/".into()),
        matches: Default::default(),
        tls,
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
    assert!(!filters.edits_response(true));
}

#[test]
fn the_request_phase_redirects_plain_http_only() {
    let filters = Filters::compile(&secured());
    let uri: Uri = "/a?b=1".parse().expect("uri");
    let plain = Request {
        host: "example.com:8080",
        uri: &uri,
        secure: false,
    };
    let res = filters.on_request(&plain).expect("redirected");
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(res.headers()[LOCATION], "https://example.com/a?b=1");
    let tls = Request {
        secure: true,
        ..plain
    };
    assert!(filters.on_request(&tls).is_none());
}

#[test]
fn the_response_phase_adds_hsts_over_tls_only() {
    let filters = Filters::compile(&secured());
    let mut headers = HeaderMap::new();
    filters.on_response(&mut headers, false);
    assert!(headers.is_empty());
    assert!(
        !filters.edits_response(false),
        "plain responses keep the copy path"
    );
    filters.on_response(&mut headers, true);
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
    filters.on_response(&mut headers, true);
    assert_eq!(headers[STRICT_TRANSPORT_SECURITY], "max-age=2");
    assert_eq!(headers["x-kept"], "1");
    assert!(filters.edits_response(false));
}
