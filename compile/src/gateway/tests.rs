//! Gateway API through the whole compiler, from YAML as users write it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use pier_crds::gateway::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use pier_snapshot::{Action, PathRule, ProxyAction, Route, RouteKind};

use super::{Cond, Report, listeners::intersect, report};
use crate::{Compiled, Resources, compile};

fn yaml<T: k8s_openapi::serde::de::DeserializeOwned>(text: &str) -> Arc<T> {
    Arc::new(serde_saphyr::from_str(text).expect("test object parses"))
}

fn class() -> Arc<GatewayClass> {
    yaml(
        "metadata: {name: pier, generation: 1}\nspec: {controllerName: pier.dev/gateway-controller}",
    )
}

/// Gateway `gw` in `infra` with these listeners (YAML flow style).
fn gateway(listeners: &str) -> Arc<Gateway> {
    yaml(&format!(
        "metadata: {{name: gw, namespace: infra, generation: 2}}\nspec: {{gatewayClassName: pier, listeners: {listeners}}}"
    ))
}

/// HTTPRoute `name` in `app` with this spec (YAML flow style).
fn http_route(name: &str, spec: &str) -> Arc<HTTPRoute> {
    yaml(&format!(
        "metadata: {{name: {name}, namespace: app, generation: 3}}\nspec: {spec}"
    ))
}

/// Services `web` and `canary` in `app`, `shared` in `other`, each port 80
/// with one ready endpoint.
fn services() -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    let all = [
        ("app", "web", "10.0.0.1"),
        ("app", "canary", "10.0.0.2"),
        ("other", "shared", "10.0.0.3"),
    ];
    let services = all
        .iter()
        .map(|(ns, name, _)| {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"ports": [{"name": "http", "port": 80}]},
                }))
                .expect("a Service"),
            )
        })
        .collect();
    let slices = all
        .iter()
        .map(|(ns, name, ip)| {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("{name}-1"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": [{"addresses": [ip]}],
                }))
                .expect("an EndpointSlice"),
            )
        })
        .collect();
    (services, slices)
}

const HTTP: &str = "[{name: web, port: 80, protocol: HTTP, hostname: '*.example.com', allowedRoutes: {namespaces: {from: All}}}]";

fn resources(gateways: Vec<Arc<Gateway>>, routes: Vec<Arc<HTTPRoute>>) -> Resources {
    let (services, endpoint_slices) = services();
    Resources {
        gateway_classes: vec![class()],
        gateways,
        http_routes: routes,
        services,
        endpoint_slices,
        ..Resources::default()
    }
}

fn run(resources: &Resources) -> (Compiled, Report) {
    let compiled = compile(resources);
    let report = report(resources, &compiled);
    (compiled, report)
}

fn proxy(route: &Route) -> &ProxyAction {
    match &route.action {
        Action::Proxy(action) => action,
        other => panic!("not a proxy route: {other:?}"),
    }
}

fn cond<'a>(conditions: &'a [Cond], kind: &str) -> &'a Cond {
    conditions
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} in {conditions:?}"))
}

#[test]
fn an_attached_route_is_served_with_its_matches_filters_and_weights() {
    let route = http_route(
        "shop",
        "{parentRefs: [{name: gw, namespace: infra}], hostnames: [a.example.com, b.other.org],
          rules: [{matches: [{path: {type: PathPrefix, value: /api}, method: GET,
                              headers: [{name: X-Env, value: canary}],
                              queryParams: [{name: v, value: '2'}]},
                             {path: {type: Exact, value: /health}}],
                   filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, value: '1'}], remove: [X-B]}},
                             {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: X-C, value: '2'}]}}],
                   backendRefs: [{name: web, port: 80, weight: 3}, {name: canary, port: 80, weight: 1}]}]}",
    );
    let (out, report) = run(&resources(vec![gateway(HTTP)], vec![route]));
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.snapshot.routes.len(), 2, "one route per match");
    let api = &out.snapshot.routes[0];
    assert_eq!(api.key.kind, RouteKind::HttpRoute);
    assert_eq!(
        api.hosts,
        ["a.example.com"],
        "b.other.org is outside the listener's *.example.com"
    );
    assert_eq!(api.path, PathRule::Prefix("/api".into()));
    assert_eq!(api.matches.methods, ["GET"]);
    assert_eq!(
        api.matches.headers,
        [("x-env".to_owned(), "canary".to_owned())]
    );
    assert_eq!(api.matches.query, [("v".to_owned(), "2".to_owned())]);
    let action = proxy(api);
    let weights: Vec<u32> = action.endpoints.iter().map(|e| e.weight).collect();
    assert_eq!(weights, [3000, 1000]);
    assert_eq!(
        action.request_headers.set,
        [("x-a".to_owned(), "1".to_owned())]
    );
    assert_eq!(action.request_headers.remove, ["x-b"]);
    assert_eq!(
        action.response_headers.add,
        [("x-c".to_owned(), "2".to_owned())]
    );
    assert_eq!(
        out.snapshot.routes[1].path,
        PathRule::Exact("/health".into())
    );
    assert_eq!(out.snapshot.routes[1].key.rule, 1);

    assert!(cond(&report.classes[0].conditions, "Accepted").status);
    let gw = &report.gateways[0];
    assert!(cond(&gw.conditions, "Accepted").status && cond(&gw.conditions, "Programmed").status);
    assert_eq!(gw.listeners[0].attached, 1);
    assert_eq!(gw.listeners[0].supported_kinds, ["HTTPRoute"]);
    let parent = &report.routes[0].parents[0];
    assert_eq!(parent.parent.name, "gw");
    assert!(cond(&parent.conditions, "Accepted").status);
    assert!(cond(&parent.conditions, "ResolvedRefs").status);
    assert_eq!(report.routes[0].generation, Some(3));
}

#[test]
fn attachment_failures_have_the_spec_s_reasons() {
    let listeners = "[{name: same, port: 80, protocol: HTTP, hostname: a.example.com}]";
    let routes = vec![
        http_route(
            "section",
            "{parentRefs: [{name: gw, namespace: infra, sectionName: nope}], rules: [{backendRefs: [{name: web, port: 80}]}]}",
        ),
        http_route(
            "namespace",
            "{parentRefs: [{name: gw, namespace: infra}], rules: [{backendRefs: [{name: web, port: 80}]}]}",
        ),
    ];
    let (out, report) = run(&resources(vec![gateway(listeners)], routes));
    assert!(out.snapshot.routes.is_empty());
    let reason = |name: &str| {
        let r = report
            .routes
            .iter()
            .find(|r| r.name == name)
            .expect("reported");
        cond(&r.parents[0].conditions, "Accepted").reason
    };
    assert_eq!(reason("section"), "NoMatchingParent");
    assert_eq!(
        reason("namespace"),
        "NotAllowedByListeners",
        "allowedRoutes defaults to Same"
    );

    let route = http_route(
        "hosts",
        "{parentRefs: [{name: gw, namespace: infra}], hostnames: [b.other.org], rules: [{backendRefs: [{name: web, port: 80}]}]}",
    );
    let (_, report) = run(&resources(vec![gateway(HTTP)], vec![route]));
    assert_eq!(
        cond(&report.routes[0].parents[0].conditions, "Accepted").reason,
        "NoMatchingListenerHostname"
    );
    assert_eq!(report.gateways[0].listeners[0].attached, 0);

    // Another controller's Gateway: no status from Pier at all.
    let theirs: Arc<Gateway> = yaml(
        "metadata: {name: gw, namespace: infra}\nspec: {gatewayClassName: other, listeners: []}",
    );
    let route = http_route(
        "elsewhere",
        "{parentRefs: [{name: gw, namespace: infra}], rules: []}",
    );
    let (_, report) = run(&resources(vec![theirs], vec![route]));
    assert!(report.gateways.is_empty() && report.routes.is_empty());
}

#[test]
fn a_service_in_another_namespace_needs_a_reference_grant() {
    let route = || {
        http_route(
            "x",
            "{parentRefs: [{name: gw, namespace: infra}], rules: [{backendRefs: [{name: shared, namespace: other, port: 80}]}]}",
        )
    };
    let (out, report) = run(&resources(vec![gateway(HTTP)], vec![route()]));
    assert!(
        proxy(&out.snapshot.routes[0]).endpoints.is_empty(),
        "no traffic without a grant"
    );
    let refs = cond(&report.routes[0].parents[0].conditions, "ResolvedRefs");
    assert_eq!((refs.status, refs.reason), (false, "RefNotPermitted"));

    let grant: Arc<ReferenceGrant> = yaml(
        "metadata: {name: g, namespace: other}\nspec: {from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: app}], to: [{group: '', kind: Service}]}",
    );
    let mut given = resources(vec![gateway(HTTP)], vec![route()]);
    given.reference_grants = vec![grant];
    let (out, report) = run(&given);
    let endpoints = &proxy(&out.snapshot.routes[0]).endpoints;
    assert_eq!(endpoints[0].address, "10.0.0.3:8080");
    assert!(cond(&report.routes[0].parents[0].conditions, "ResolvedRefs").status);
}

#[test]
fn redirects_and_rewrites_lower_onto_the_route_policy() {
    let route = http_route(
        "r",
        "{parentRefs: [{name: gw, namespace: infra}], hostnames: [a.example.com], rules: [
           {matches: [{path: {value: /old}}], filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]},
           {matches: [{path: {value: /full}}], filters: [{type: URLRewrite, urlRewrite: {hostname: b.internal, path: {type: ReplaceFullPath, replaceFullPath: /elsewhere}}}], backendRefs: [{name: web, port: 80}]},
           {matches: [{path: {value: /prefix}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}], backendRefs: [{name: web, port: 80}]}]}",
    );
    let (out, _) = run(&resources(vec![gateway(HTTP)], vec![route]));
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let redirect = out.snapshot.routes[0]
        .policy
        .redirect
        .as_ref()
        .expect("a redirect");
    assert_eq!(redirect.status, 301);
    let full = proxy(&out.snapshot.routes[1]);
    assert_eq!(full.rewrite_host.as_deref(), Some("b.internal"));
    assert_eq!(
        full.rewrite_regex.as_ref().map(|r| r.replacement.as_str()),
        Some("/elsewhere")
    );
    assert_eq!(
        proxy(&out.snapshot.routes[2]).rewrite_prefix.as_deref(),
        Some("/v2")
    );
}

#[test]
fn what_pier_lacks_refuses_the_route_and_keeps_the_others() {
    let routes = vec![
        http_route(
            "mirror",
            "{parentRefs: [{name: gw, namespace: infra}], rules: [{filters: [{type: RequestMirror}], backendRefs: [{name: web, port: 80}]}]}",
        ),
        http_route(
            "extension",
            "{parentRefs: [{name: gw, namespace: infra}], rules: [{filters: [{type: ExtensionRef}], backendRefs: [{name: web, port: 80}]}]}",
        ),
        http_route(
            "fine",
            "{parentRefs: [{name: gw, namespace: infra}], hostnames: [ok.example.com], rules: [{matches: [{headers: [{type: RegularExpression, name: X-Version, value: 'v[0-9]+'}], queryParams: [{type: RegularExpression, name: q, value: '.+'}]}], backendRefs: [{name: web, port: 80}]}]}",
        ),
    ];
    let (out, report) = run(&resources(vec![gateway(HTTP)], routes));
    assert_eq!(out.snapshot.routes.len(), 1);
    assert_eq!(out.snapshot.routes[0].key.name, "fine");
    let matches = &out.snapshot.routes[0].matches;
    assert_eq!(
        matches.header_patterns,
        [("x-version".to_owned(), "v[0-9]+".to_owned())]
    );
    assert_eq!(matches.query_patterns, [("q".to_owned(), ".+".to_owned())]);
    for name in ["mirror", "extension"] {
        let r = report
            .routes
            .iter()
            .find(|r| r.name == name)
            .expect("reported");
        let accepted = cond(&r.parents[0].conditions, "Accepted");
        assert_eq!(
            (accepted.status, accepted.reason),
            (false, "UnsupportedValue"),
            "{name}"
        );
    }
}

#[test]
fn a_missing_service_leaves_references_unresolved() {
    let route = http_route(
        "x",
        "{parentRefs: [{name: gw, namespace: infra}], rules: [{backendRefs: [{name: gone, port: 80}]}]}",
    );
    let (out, report) = run(&resources(vec![gateway(HTTP)], vec![route]));
    assert_eq!(out.snapshot.routes.len(), 1, "served, with 503");
    let refs = cond(&report.routes[0].parents[0].conditions, "ResolvedRefs");
    assert_eq!((refs.status, refs.reason), (false, "BackendNotFound"));
}

fn certificate(namespace: &str, host: &str) -> Arc<Secret> {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cert", "namespace": namespace},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()},
        }))
        .expect("a Secret"),
    )
}

#[test]
fn https_listeners_take_their_certificate_from_the_gateway_s_namespace() {
    let https = "[{name: tls, port: 443, protocol: HTTPS, hostname: secure.example.com, tls: {certificateRefs: [{name: cert}]}, allowedRoutes: {namespaces: {from: All}}},
                  {name: broken, port: 443, protocol: HTTPS, hostname: other.example.com, tls: {certificateRefs: [{name: missing}]}}]";
    let route = http_route(
        "s",
        "{parentRefs: [{name: gw, namespace: infra}], rules: [{backendRefs: [{name: web, port: 80}]}]}",
    );
    let mut given = resources(vec![gateway(https)], vec![route]);
    given.secrets = vec![certificate("infra", "secure.example.com")];
    let (out, report) = run(&given);
    let route = &out.snapshot.routes[0];
    assert_eq!(route.hosts, ["secure.example.com"]);
    let tls = route.tls.as_ref().expect("HTTPS");
    assert_eq!(tls.certificate, "infra/cert");
    assert!(
        tls.redirect,
        "attached only to HTTPS: plain HTTP is redirected"
    );
    let broken = &report.gateways[0].listeners[1];
    let refs = cond(&broken.conditions, "ResolvedRefs");
    assert_eq!((refs.status, refs.reason), (false, "InvalidCertificateRef"));
    assert!(!cond(&broken.conditions, "Programmed").status);
    assert_eq!(report.gateways[0].listeners[0].attached, 1);
}

#[test]
fn a_selector_admits_routes_by_namespace_labels() {
    let listeners = "[{name: web, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: shop}}}}}]";
    let route = || {
        http_route(
            "x",
            "{parentRefs: [{name: gw, namespace: infra}], rules: [{backendRefs: [{name: web, port: 80}]}]}",
        )
    };
    let app = |labels: &str| -> Arc<Namespace> {
        yaml(&format!("metadata: {{name: app, labels: {labels}}}"))
    };
    let mut given = resources(vec![gateway(listeners)], vec![route()]);
    given.namespaces = vec![app("{team: shop}")];
    assert_eq!(run(&given).0.snapshot.routes.len(), 1);
    given.namespaces = vec![app("{team: other}")];
    let (out, report) = run(&given);
    assert!(out.snapshot.routes.is_empty());
    assert_eq!(
        cond(&report.routes[0].parents[0].conditions, "Accepted").reason,
        "NotAllowedByListeners"
    );
}

#[test]
fn listener_and_route_hostnames_intersect_as_the_spec_says() {
    let hosts = |route: &[&str]| route.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    assert_eq!(intersect(None, &hosts(&["a.com"])), Some(hosts(&["a.com"])));
    assert_eq!(intersect(None, &[]), Some(vec![]), "any host");
    assert_eq!(intersect(Some("*.a.com"), &[]), Some(hosts(&["*.a.com"])));
    assert_eq!(
        intersect(Some("*.a.com"), &hosts(&["x.a.com", "a.com", "b.com"])),
        Some(hosts(&["x.a.com"]))
    );
    assert_eq!(
        intersect(Some("x.a.com"), &hosts(&["*.a.com"])),
        Some(hosts(&["x.a.com"]))
    );
    assert_eq!(
        intersect(Some("*.a.com"), &hosts(&["*.x.a.com"])),
        Some(hosts(&["*.x.a.com"]))
    );
    assert_eq!(intersect(Some("a.com"), &hosts(&["b.com"])), None);
}

#[test]
fn listeners_pier_cannot_serve_are_reported_and_the_rest_kept() {
    let listeners = "[{name: tcp, port: 9000, protocol: TCP}, {name: web, port: 80, protocol: HTTP}, {name: dup, port: 80, protocol: HTTP}]";
    let (_, report) = run(&resources(vec![gateway(listeners)], vec![]));
    let gw = &report.gateways[0];
    assert!(cond(&gw.conditions, "Accepted").status);
    assert_eq!(
        cond(&gw.listeners[0].conditions, "Accepted").reason,
        "UnsupportedProtocol"
    );
    assert!(cond(&gw.listeners[1].conditions, "Programmed").status);
    assert!(cond(&gw.listeners[2].conditions, "Conflicted").status);
}
