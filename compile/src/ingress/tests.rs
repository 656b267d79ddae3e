//! Ingress lowering: each feature through the whole compiler, from YAML
//! as users write it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use pier_snapshot::{
    Action, Balance, BufferMode, HashKey, PathRule, ProxyAction, RedirectPath, RedirectTo, Route,
    RouteKind,
};

use crate::{Compiled, Resources, compile};

fn ingress(yaml: &str) -> Arc<Ingress> {
    Arc::new(serde_saphyr::from_str(yaml).expect("test Ingress parses"))
}

/// An Ingress named `name` in `default` with these annotations and spec
/// (YAML flow style).
fn named(name: &str, annotations: &str, spec: &str) -> Arc<Ingress> {
    ingress(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: default, annotations: {{{annotations}}}}}\nspec: {spec}\n"
    ))
}

/// Services `web` (port 80 `http`) and `canary` (port 80 `http`), each
/// with one ready endpoint on 8080.
fn services() -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    let service = |name: &str| -> Arc<Service> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"ports": [{"name": "http", "port": 80}]},
            }))
            .expect("a Service"),
        )
    };
    let slice = |name: &str, ip: &str| -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{name}-1"), "namespace": "default",
                    "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "name": format!("{name}-pod")}}],
            }))
            .expect("an EndpointSlice"),
        )
    };
    (
        vec![service("web"), service("canary")],
        vec![slice("web", "10.0.0.1"), slice("canary", "10.0.0.2")],
    )
}

fn compile_ingresses(ingresses: Vec<Arc<Ingress>>) -> Compiled {
    let (services, endpoint_slices) = services();
    compile(&Resources {
        ingresses,
        services,
        endpoint_slices,
        ..Resources::default()
    })
}

const WEB: &str = "{service: {name: web, port: {number: 80}}}";

fn rule(host: &str, paths: &[(&str, &str)]) -> String {
    let paths: Vec<String> = paths
        .iter()
        .map(|(path, kind)| format!("{{path: {path}, pathType: {kind}, backend: {WEB}}}"))
        .collect();
    format!("{{host: {host}, http: {{paths: [{}]}}}}", paths.join(", "))
}

fn proxy(route: &Route) -> &ProxyAction {
    match &route.action {
        Action::Proxy(action) => action,
        Action::Static(_) => panic!("a proxy action"),
    }
}

#[test]
fn hosts_paths_and_the_default_backend_become_routes_numbered_in_order() {
    let spec = format!(
        "{{defaultBackend: {WEB}, rules: [{}, {}]}}",
        rule("a.example.com", &[("/", "Prefix"), ("/exact", "Exact")]),
        rule("b.example.com", &[("/impl", "ImplementationSpecific")]),
    );
    let out = compile_ingresses(vec![named("site", "", &spec)]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert!(out.unresolved.is_empty(), "{:?}", out.unresolved);
    let routes: Vec<(u32, Vec<String>, PathRule)> = out
        .snapshot
        .routes
        .iter()
        .map(|r| (r.key.rule, r.hosts.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        routes,
        [
            (
                0,
                vec!["a.example.com".into()],
                PathRule::Prefix("/".into())
            ),
            (
                1,
                vec!["a.example.com".into()],
                PathRule::Exact("/exact".into())
            ),
            (
                2,
                vec!["b.example.com".into()],
                PathRule::Prefix("/impl".into())
            ),
            (3, vec![], PathRule::Prefix("/".into())),
        ]
    );
    let route = &out.snapshot.routes[0];
    assert_eq!(route.key.kind, RouteKind::Ingress);
    let action = proxy(route);
    assert_eq!(action.endpoints[0].address, "10.0.0.1:8080");
    // ingress-nginx's default body limit comes along.
    assert_eq!(action.buffering.max_body_size, Some(1 << 20));
    assert_eq!(action.buffering.mode, BufferMode::Hybrid);
}

#[test]
fn a_port_may_be_named_and_a_missing_one_is_reported() {
    let named_port = "{service: {name: web, port: {name: http}}}";
    let spec = format!("{{defaultBackend: {named_port}}}");
    let out = compile_ingresses(vec![named("by-name", "", &spec)]);
    assert_eq!(
        proxy(&out.snapshot.routes[0]).endpoints[0].address,
        "10.0.0.1:8080"
    );
    let spec = "{defaultBackend: {service: {name: web, port: {name: grpc}}}}";
    let out = compile_ingresses(vec![named("no-port", "", spec)]);
    assert_eq!(out.unresolved[0].reason, "BackendNotFound");
    assert!(out.warnings[0].message.contains("no port named \"grpc\""));
}

#[test]
fn rewrite_target_makes_paths_case_insensitive_expressions_with_captures() {
    let spec = format!(
        "{{rules: [{}]}}",
        rule(
            "a.example.com",
            &[("/something(/|$)(.*)", "ImplementationSpecific")]
        )
    );
    let annotations = r#"nginx.ingress.kubernetes.io/rewrite-target: "/$2""#;
    let out = compile_ingresses(vec![named("rw", annotations, &spec)]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let route = &out.snapshot.routes[0];
    let PathRule::Regex(pattern) = &route.path else {
        panic!("a regex path: {:?}", route.path);
    };
    let regex = pier_snapshot::path_regex(pattern).expect("compiles");
    for (path, matched) in [
        ("/something", true),
        ("/SOMETHING/x", true),
        ("/something/a/b", true),
        ("/other", false),
    ] {
        assert_eq!(regex.is_match(path.as_bytes()), matched, "{path}");
    }
    let rewrite = proxy(route).rewrite_regex.as_ref().expect("a rewrite");
    assert_eq!(rewrite.pattern, "(?i)/something(/|$)(.*)");
    assert_eq!(rewrite.replacement, "/$2");
}

#[test]
fn tls_hosts_get_the_certificate_a_redirect_and_hsts_unless_told_otherwise() {
    let spec = format!(
        "{{tls: [{{hosts: [a.example.com], secretName: cert}}], rules: [{}, {}]}}",
        rule("a.example.com", &[("/", "Prefix")]),
        rule("plain.example.com", &[("/", "Prefix")]),
    );
    let out = compile_ingresses(vec![named("tls", "", &spec)]);
    // The Secret is missing: reported, and the route still served.
    let unresolved = &out.unresolved[0];
    assert_eq!(unresolved.reason, "InvalidCertificateRef");
    assert_eq!(unresolved.key.rule, 0, "reported on the Ingress itself");
    assert_eq!(out.snapshot.routes.len(), 2);

    let secret = test_certificate("a.example.com");
    let (services, endpoint_slices) = services();
    let compiled = |annotations: &str| {
        compile(&Resources {
            ingresses: vec![named("tls", annotations, &spec)],
            services: services.clone(),
            endpoint_slices: endpoint_slices.clone(),
            secrets: vec![Arc::clone(&secret)],
            ..Resources::default()
        })
    };
    let out = compiled("");
    assert!(out.unresolved.is_empty(), "{:?}", out.unresolved);
    let tls = out.snapshot.routes[0].tls.as_ref().expect("TLS");
    assert!(tls.redirect);
    assert_eq!(
        tls.hsts.as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    assert!(out.snapshot.routes[1].tls.is_none(), "a host without TLS");
    let out = compiled(r#"nginx.ingress.kubernetes.io/ssl-redirect: "false""#);
    assert!(!out.snapshot.routes[0].tls.as_ref().expect("TLS").redirect);
}

fn test_certificate(host: &str) -> Arc<Secret> {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cert", "namespace": "default"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()},
        }))
        .expect("a Secret"),
    )
}

#[test]
fn annotations_map_onto_the_route_features() {
    let spec = format!(
        "{{rules: [{}]}}",
        rule("a.example.com", &[("/api", "Prefix")])
    );
    let annotations = r#"
        nginx.ingress.kubernetes.io/proxy-body-size: 8m,
        nginx.ingress.kubernetes.io/proxy-buffering: "off",
        nginx.ingress.kubernetes.io/proxy-request-buffering: "off",
        nginx.ingress.kubernetes.io/proxy-connect-timeout: "5",
        nginx.ingress.kubernetes.io/proxy-read-timeout: "120",
        nginx.ingress.kubernetes.io/proxy-send-timeout: "300",
        nginx.ingress.kubernetes.io/upstream-hash-by: "$http_x_user_id",
        nginx.ingress.kubernetes.io/whitelist-source-range: "10.0.0.0/8, 192.168.1.1",
        nginx.ingress.kubernetes.io/denylist-source-range: "10.6.6.0/24",
        nginx.ingress.kubernetes.io/enable-cors: "true",
        nginx.ingress.kubernetes.io/cors-allow-origin: "https://app.example.com, https://*.example.org",
        nginx.ingress.kubernetes.io/upstream-vhost: internal.example,
        nginx.ingress.kubernetes.io/x-forwarded-prefix: /api,
        nginx.ingress.kubernetes.io/proxy-http-version: "1.1",
        nginx.ingress.kubernetes.io/proxy-next-upstream-tries: "3""#;
    let out = compile_ingresses(vec![named("features", annotations, &spec)]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let route = &out.snapshot.routes[0];
    let action = proxy(route);
    assert_eq!(action.buffering.max_body_size, Some(8 << 20));
    assert_eq!(action.buffering.mode, BufferMode::Stream);
    assert!(!action.buffering.request_body);
    assert_eq!(action.timeouts.connect_ms, 5_000);
    assert_eq!(action.timeouts.response_header_ms, 120_000);
    assert_eq!(action.timeouts.idle_ms, 300_000);
    assert_eq!(
        action.balancer,
        Balance::ConsistentHash {
            key: HashKey::Header("x-user-id".into()),
            bounded_load_permille: None
        }
    );
    assert_eq!(action.retries.attempts, 2);
    assert_eq!(action.rewrite_host.as_deref(), Some("internal.example"));
    assert_eq!(
        action.request_headers.set,
        [("x-forwarded-prefix".to_owned(), "/api".to_owned())]
    );
    assert_eq!(route.policy.allow, ["10.0.0.0/8", "192.168.1.1/32"]);
    assert_eq!(route.policy.deny, ["10.6.6.0/24"]);
    let cors = route.policy.cors.as_ref().expect("CORS");
    assert_eq!(
        cors.allow_origins,
        ["https://app.example.com", "https://*.example.org"]
    );
    assert!(cors.allow_credentials, "ingress-nginx's default");
    assert_eq!(cors.max_age, 1_728_000);
    assert_eq!(cors.allow_methods, crate::policy::CORS_METHODS);
}

#[test]
fn cookie_affinity_keeps_ingress_nginx_defaults() {
    let spec = format!(
        "{{rules: [{}]}}",
        rule("a.example.com", &[("/api", "Prefix")])
    );
    let sticky = r#"
        nginx.ingress.kubernetes.io/affinity: cookie,
        nginx.ingress.kubernetes.io/session-cookie-expires: "172800",
        nginx.ingress.kubernetes.io/session-cookie-samesite: None"#;
    let out = compile_ingresses(vec![named("sticky", sticky, &spec)]);
    assert!(out.errors.is_empty() && out.warnings.is_empty(), "{out:?}");
    let affinity = proxy(&out.snapshot.routes[0]).affinity.clone();
    assert_eq!(
        affinity,
        Some(pier_snapshot::Affinity {
            cookie: "INGRESSCOOKIE".into(),
            path: "/api".into(),
            max_age_s: Some(172_800),
            secure: true,
            http_only: true,
            same_site: Some("None".into()),
        })
    );
    let regex = format!(
        "{sticky}, nginx.ingress.kubernetes.io/use-regex: \"true\", nginx.ingress.kubernetes.io/session-cookie-name: s"
    );
    let out = compile_ingresses(vec![named("sticky", &regex, &spec)]);
    let affinity = proxy(&out.snapshot.routes[0])
        .affinity
        .clone()
        .expect("affinity");
    assert_eq!(
        (affinity.cookie.as_str(), affinity.path.as_str()),
        ("s", "/")
    );
    for bad in [
        "nginx.ingress.kubernetes.io/affinity: ip",
        "nginx.ingress.kubernetes.io/affinity: cookie, nginx.ingress.kubernetes.io/session-cookie-max-age: soon",
        "nginx.ingress.kubernetes.io/affinity: cookie, nginx.ingress.kubernetes.io/session-cookie-name: \"a b\"",
    ] {
        let out = compile_ingresses(vec![named("sticky", bad, &spec)]);
        assert_eq!(out.errors.len(), 1, "{bad}: {out:?}");
        assert!(out.snapshot.routes.is_empty(), "{bad}");
    }
}

#[test]
fn redirects_and_app_root_answer_from_the_dataplane() {
    let spec = format!("{{rules: [{}]}}", rule("a.example.com", &[("/", "Prefix")]));
    let out = compile_ingresses(vec![named(
        "moved",
        r#"nginx.ingress.kubernetes.io/permanent-redirect: "https://new.example.com/""#,
        &spec,
    )]);
    let redirect = out.snapshot.routes[0]
        .policy
        .redirect
        .as_ref()
        .expect("redirect");
    assert_eq!(redirect.status, 301);
    assert_eq!(
        redirect.to,
        RedirectTo::Url("https://new.example.com/".into())
    );
    let out = compile_ingresses(vec![named(
        "temp",
        r#"nginx.ingress.kubernetes.io/temporal-redirect: "/elsewhere", nginx.ingress.kubernetes.io/temporal-redirect-code: "307""#,
        &spec,
    )]);
    assert_eq!(
        out.snapshot.routes[0]
            .policy
            .redirect
            .as_ref()
            .expect("redirect")
            .status,
        307
    );

    let out = compile_ingresses(vec![named(
        "app",
        r#"nginx.ingress.kubernetes.io/app-root: /app1"#,
        &spec,
    )]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let root = out
        .snapshot
        .routes
        .iter()
        .find(|r| r.path == PathRule::Exact("/".into()))
        .expect("a route for / itself");
    let redirect = root.policy.redirect.as_ref().expect("redirect");
    assert_eq!(redirect.status, 302);
    let RedirectTo::Parts { path, .. } = &redirect.to else {
        panic!("parts");
    };
    assert_eq!(*path, RedirectPath::Full("/app1".into()));
    let rest = out
        .snapshot
        .routes
        .iter()
        .find(|r| r.path == PathRule::Prefix("/".into()));
    assert!(rest.expect("the prefix route").policy.redirect.is_none());
}

#[test]
fn snippets_and_unsupported_access_controls_refuse_the_ingress_others_warn() {
    let spec = format!("{{rules: [{}]}}", rule("a.example.com", &[("/", "Prefix")]));
    let cases = [
        (
            "nginx.ingress.kubernetes.io/configuration-snippet: \"more_set_headers 'X: y';\"",
            "SnippetRefused",
        ),
        (
            "nginx.ingress.kubernetes.io/server-snippet: \"location /x {}\"",
            "SnippetRefused",
        ),
        (
            "nginx.ingress.kubernetes.io/auth-tls-secret: default/ca",
            "UnsupportedAnnotation",
        ),
        (
            "nginx.ingress.kubernetes.io/limit-rps: \"5\"",
            "UnsupportedAnnotation",
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-body-size: lots",
            "InvalidAnnotation",
        ),
        (
            "nginx.ingress.kubernetes.io/backend-protocol: GRPC",
            "InvalidAnnotation",
        ),
        (
            "nginx.ingress.kubernetes.io/upstream-hash-by: \"$host$uri\"",
            "InvalidAnnotation",
        ),
        (
            "nginx.ingress.kubernetes.io/whitelist-source-range: \"10.0.0.0/33\"",
            "InvalidPolicy",
        ),
    ];
    for (annotation, reason) in cases {
        let out = compile_ingresses(vec![
            named("bad", annotation, &spec),
            named(
                "good",
                "",
                &format!("{{rules: [{}]}}", rule("b.example.com", &[("/", "Prefix")])),
            ),
        ]);
        assert_eq!(out.errors.len(), 1, "{annotation}");
        assert_eq!(out.errors[0].invalid.reason(), reason, "{annotation}");
        assert_eq!(out.errors[0].key.name, "bad");
        assert_eq!(
            out.snapshot.routes.len(),
            1,
            "the valid Ingress stays: {annotation}"
        );
    }
    let out = compile_ingresses(vec![named(
        "warned",
        "nginx.ingress.kubernetes.io/custom-http-errors: \"404\", nginx.ingress.kubernetes.io/made-up: x",
        &spec,
    )]);
    assert!(out.errors.is_empty());
    assert_eq!(out.snapshot.routes.len(), 1, "served without them");
    let reasons: Vec<(&str, &str)> = out
        .warnings
        .iter()
        .map(|w| (w.reason, w.message.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().all(|(r, _)| *r == "UnsupportedAnnotation"));
    assert!(
        reasons[0].1.contains("custom-http-errors is not supported"),
        "{reasons:?}"
    );
    assert!(reasons[1].1.contains("made-up is unknown"), "{reasons:?}");
}

#[test]
fn canaries_join_the_main_route_by_weight_and_by_header() {
    let spec = format!("{{rules: [{}]}}", rule("a.example.com", &[("/", "Prefix")]));
    let canary_spec = spec.replace("name: web", "name: canary");
    let out = compile_ingresses(vec![
        named("main", "", &spec),
        named(
            "canary",
            r#"nginx.ingress.kubernetes.io/canary: "true", nginx.ingress.kubernetes.io/canary-weight: "20", nginx.ingress.kubernetes.io/canary-by-header: X-Canary"#,
            &canary_spec,
        ),
    ]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let main = out
        .snapshot
        .routes
        .iter()
        .find(|r| r.key.name == "main")
        .expect("main");
    let weights: Vec<(&str, u32)> = proxy(main)
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.weight))
        .collect();
    assert_eq!(
        weights,
        [("10.0.0.1:8080", 80_000), ("10.0.0.2:8080", 20_000)]
    );
    let header = out
        .snapshot
        .routes
        .iter()
        .find(|r| r.key.name == "canary")
        .expect("header route");
    assert_eq!(
        header.matches.headers,
        [("x-canary".to_owned(), "always".to_owned())]
    );
    assert_eq!(proxy(header).endpoints[0].address, "10.0.0.2:8080");

    // Alone, a canary serves nothing and says why.
    let out = compile_ingresses(vec![named(
        "lonely",
        r#"nginx.ingress.kubernetes.io/canary: "true", nginx.ingress.kubernetes.io/canary-weight: "50""#,
        &canary_spec,
    )]);
    assert!(out.snapshot.routes.is_empty());
    assert_eq!(out.warnings[0].reason, "CanaryUnmatched");
}

#[test]
fn a_conflict_between_ingresses_goes_to_the_older_and_is_reported_on_the_resource() {
    let spec = format!(
        "{{rules: [{}]}}",
        rule("a.example.com", &[("/", "Prefix"), ("/x", "Prefix")])
    );
    let older_rule = rule("a.example.com", &[("/x", "Prefix")]);
    let older = ingress(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: zz-older, namespace: default, creationTimestamp: \"2026-01-01T00:00:00Z\"}}\nspec: {{rules: [{older_rule}]}}\n"
    ));
    let out = compile_ingresses(vec![named("newer", "", &spec), older]);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].invalid.reason(), "Conflict");
    assert_eq!(out.errors[0].key.rule, 0);
    assert_eq!(
        out.snapshot.routes.len(),
        2,
        "the newer keeps its other path"
    );
}

fn class(name: &str, controller: &str, default: bool) -> Arc<IngressClass> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": {crate::ingress::DEFAULT_CLASS: default.to_string()}},
            "spec": {"controller": controller},
        }))
        .expect("an IngressClass"),
    )
}

#[test]
fn ingresses_are_claimed_by_class_legacy_annotation_or_default_class() {
    let ours = class("pier", crate::ingress::CONTROLLER, false);
    let theirs = class("nginx", "k8s.io/ingress-nginx", true);
    let by_field = |name: &str| {
        ingress(&format!(
            "metadata: {{name: x}}\nspec: {{ingressClassName: {name}}}\n"
        ))
    };
    let claims = |i: &Ingress, classes: &[Arc<IngressClass>]| {
        crate::ingress::claims(i, classes, crate::ingress::CONTROLLER)
    };
    let classes = vec![Arc::clone(&ours), Arc::clone(&theirs)];
    assert!(claims(&by_field("pier"), &classes));
    assert!(!claims(&by_field("nginx"), &classes));
    assert!(!claims(&by_field("missing"), &classes));
    let legacy = ingress("metadata: {name: x, annotations: {kubernetes.io/ingress.class: pier}}\n");
    assert!(claims(&legacy, &classes));
    let unclassed = ingress("metadata: {name: x}\n");
    assert!(
        !claims(&unclassed, &classes),
        "the default class is nginx's"
    );
    let default_ours = vec![class("pier", crate::ingress::CONTROLLER, true)];
    assert!(claims(&unclassed, &default_ours));
}
