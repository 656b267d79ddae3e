use std::sync::Arc;

use pier_crds::{ProxyRoute, StaticRoute};

use pier_snapshot::{BufferMode, Buffering};

use super::*;

fn route(yaml: &str) -> StaticRoute {
    serde_saphyr::from_str(yaml).expect("test manifest parses")
}

fn named(name: &str, spec: &str) -> StaticRoute {
    route(&format!(
        "apiVersion: pier.dev/v1alpha1\nkind: StaticRoute\nmetadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
    ))
}

fn compile_all(routes: Vec<StaticRoute>) -> Compiled {
    compile(&Resources {
        static_routes: routes.into_iter().map(Arc::new).collect(),
        ..Resources::default()
    })
}

#[test]
fn defaults_are_prefix_root_and_index_html() {
    let out = compile_all(vec![named("a", "{root: /srv/a/}")]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let route = &out.snapshot.routes[0];
    assert_eq!(route.path, PathRule::Prefix("/".into()));
    assert!(route.hosts.is_empty());
    let Action::Static(action) = &route.action else {
        panic!("a static action: {:?}", route.action);
    };
    assert_eq!(action.root, "/srv/a");
    assert_eq!(action.index, "index.html");
}

#[test]
fn hosts_are_lowercased_deduplicated_and_sorted() {
    let out = compile_all(vec![named(
        "a",
        r#"{root: /srv, hosts: ["WWW.Example.com.", "*.cdn.example.com", "www.example.com"]}"#,
    )]);
    assert_eq!(
        out.snapshot.routes[0].hosts,
        vec!["*.cdn.example.com", "www.example.com"]
    );
}

#[test]
fn prefix_trailing_slash_is_removed() {
    let out = compile_all(vec![named(
        "a",
        "{root: /srv, path: {type: PathPrefix, value: /assets/}}",
    )]);
    assert_eq!(
        out.snapshot.routes[0].path,
        PathRule::Prefix("/assets".into())
    );
}

#[test]
fn one_invalid_route_does_not_drop_the_others() {
    let out = compile_all(vec![
        named("good", "{root: /srv/good}"),
        named("bad", "{root: relative/dir, path: {value: /bad}}"),
    ]);
    assert_eq!(out.snapshot.routes.len(), 1);
    assert_eq!(out.snapshot.routes[0].key.name, "good");
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].key.name, "bad");
    assert_eq!(out.errors[0].invalid.reason(), "InvalidRoot");
}

#[test]
fn invalid_values_are_reported_with_their_reason() {
    let cases = [
        ("{root: /srv, path: {value: nope}}", "InvalidPath"),
        ("{root: /srv, path: {value: /a/../b}}", "InvalidPath"),
        ("{root: /srv, path: {value: /a%2fb}}", "InvalidPath"),
        ("{root: /srv, path: {value: /a//b}}", "InvalidPath"),
        (r#"{root: /srv, hosts: ["bad host"]}"#, "InvalidHost"),
        (r#"{root: /srv, hosts: ["*"]}"#, "InvalidHost"),
        (r#"{root: /srv, hosts: ["a.*.com"]}"#, "InvalidHost"),
        (r#"{root: /srv, hosts: ["-a.com"]}"#, "InvalidHost"),
        ("{root: /srv/../etc}", "InvalidRoot"),
        ("{root: /srv, index: ../x}", "InvalidIndex"),
        ("{root: /srv, index: a/b.html}", "InvalidIndex"),
        ("{root: /srv, fallback: index.html}", "InvalidFallback"),
        ("{root: /srv, fallback: /}", "InvalidFallback"),
        (
            r#"{root: /srv, cacheControl: "a\r\nX-Evil: 1"}"#,
            "InvalidHeaderValue",
        ),
    ];
    for (spec, reason) in cases {
        let out = compile_all(vec![named("r", spec)]);
        assert!(out.snapshot.routes.is_empty(), "{spec} compiled");
        assert_eq!(out.errors[0].invalid.reason(), reason, "{spec}");
        assert!(!out.errors[0].invalid.to_string().is_empty());
    }
}

#[test]
fn conflicting_routes_keep_the_older_one() {
    let mut older = named("zz-older", r#"{root: /a, hosts: [a.com]}"#);
    older.metadata.creation_timestamp =
        Some(serde_json::from_value(serde_json::json!("2026-01-01T00:00:00Z")).expect("time"));
    let mut newer = named("aa-newer", r#"{root: /b, hosts: [a.com, b.com]}"#);
    newer.metadata.creation_timestamp =
        Some(serde_json::from_value(serde_json::json!("2026-02-01T00:00:00Z")).expect("time"));
    let out = compile_all(vec![newer, older]);
    assert_eq!(out.snapshot.routes.len(), 1);
    assert_eq!(out.snapshot.routes[0].key.name, "zz-older");
    let Invalid::Conflict { winner, host, .. } = &out.errors[0].invalid else {
        panic!("expected a conflict, got {:?}", out.errors[0]);
    };
    assert_eq!(winner.name, "zz-older");
    assert_eq!(host, "a.com");
}

#[test]
fn conflicts_without_timestamps_go_by_namespace_and_name() {
    let out = compile_all(vec![named("b", "{root: /b}"), named("a", "{root: /a}")]);
    assert_eq!(out.snapshot.routes[0].key.name, "a");
    assert_eq!(out.errors[0].key.name, "b");
}

#[test]
fn same_path_on_different_hosts_or_types_does_not_conflict() {
    let out = compile_all(vec![
        named("a", r#"{root: /a, hosts: [a.com]}"#),
        named("b", r#"{root: /b, hosts: [b.com]}"#),
        named("c", "{root: /c, path: {type: Exact, value: /}}"),
        named("d", "{root: /d}"),
    ]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.snapshot.routes.len(), 4);
}

#[test]
fn version_depends_on_content_not_on_input_order() {
    let a = compile_all(vec![
        named("a", "{root: /a, path: {value: /a}}"),
        named("b", "{root: /b, path: {value: /b}}"),
    ]);
    let b = compile_all(vec![
        named("b", "{root: /b, path: {value: /b}}"),
        named("a", "{root: /a, path: {value: /a}}"),
    ]);
    assert_eq!(a.snapshot, b.snapshot);
    let c = compile_all(vec![named("a", "{root: /changed, path: {value: /a}}")]);
    assert_ne!(a.snapshot.version, c.snapshot.version);
    assert_eq!(a.snapshot.version.len(), 16);
}

#[test]
fn snapshot_round_trips_through_json_and_detects_tampering() {
    let out = compile_all(vec![named("a", "{root: /a, precompressed: true}")]);
    let json = serde_json::to_string(&out.snapshot).expect("serialises");
    let mut back: Snapshot = serde_json::from_str(&json).expect("decodes");
    assert_eq!(back, out.snapshot);
    assert!(back.is_consistent());
    back.routes.clear();
    assert!(!back.is_consistent());
}

fn proxy(name: &str, spec: &str) -> ProxyRoute {
    serde_saphyr::from_str(&format!(
        "apiVersion: pier.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
    ))
    .expect("test manifest parses")
}

fn compile_proxies(routes: Vec<ProxyRoute>) -> Compiled {
    compile(&Resources {
        proxy_routes: routes.into_iter().map(Arc::new).collect(),
        ..Resources::default()
    })
}

#[test]
fn proxy_routes_compile_with_defaults_and_normalised_fields() {
    let out = compile_proxies(vec![proxy(
        "api",
        r#"{hosts: [API.example.com], path: {value: /api/}, backends: [{address: "127.0.0.1:9001", weight: 2}, {address: "[::1]:9002"}],
            rewrite: {pathPrefix: /v2, host: internal.example},
            requestHeaders: {set: [{name: X-Env, value: " prod "}], remove: [X-Debug]},
            timeouts: {connect: 500ms}}"#,
    )]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let route = &out.snapshot.routes[0];
    assert_eq!(route.key.kind, RouteKind::ProxyRoute);
    assert_eq!(route.hosts, ["api.example.com"]);
    assert_eq!(route.path, PathRule::Prefix("/api".into()));
    let Action::Proxy(action) = &route.action else {
        panic!("a proxy action: {:?}", route.action);
    };
    let endpoints: Vec<(&str, u32)> = action
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.weight))
        .collect();
    assert_eq!(endpoints, [("127.0.0.1:9001", 2000), ("[::1]:9002", 1000)]);
    assert_eq!(action.endpoints[0].identity, "127.0.0.1:9001");
    assert!(out.unresolved.is_empty());
    assert_eq!(action.rewrite_prefix.as_deref(), Some("/v2"));
    assert_eq!(action.rewrite_host.as_deref(), Some("internal.example"));
    assert_eq!(
        action.request_headers.set,
        [("x-env".to_owned(), "prod".to_owned())]
    );
    assert_eq!(action.request_headers.remove, ["x-debug"]);
    assert_eq!(action.timeouts.connect_ms, 500);
    assert_eq!(action.timeouts.response_header_ms, 30_000);
}

#[test]
fn invalid_proxy_routes_are_reported_with_their_reason() {
    let cases = [
        (
            r#"{backends: [{address: "localhost:80"}]}"#,
            "InvalidBackend",
        ),
        (
            r#"{backends: [{address: "127.0.0.1:0"}]}"#,
            "InvalidBackend",
        ),
        (
            r#"{backends: [{address: "127.0.0.1:80", weight: 0}]}"#,
            "InvalidBackend",
        ),
        (
            r#"{backends: [{address: "127.0.0.1:80"}], requestHeaders: {set: [{name: "Bad Name", value: x}]}}"#,
            "InvalidHeaderValue",
        ),
        (
            r#"{backends: [{address: "127.0.0.1:80"}], responseHeaders: {add: [{name: X-A, value: "a\r\nb"}]}}"#,
            "InvalidHeaderValue",
        ),
        (
            r#"{backends: [{address: "127.0.0.1:80"}], requestHeaders: {set: [{name: Content-Length, value: "1"}]}}"#,
            "InvalidHeaderValue",
        ),
        (
            r#"{backends: [{address: "127.0.0.1:80"}], timeouts: {idle: 0s}}"#,
            "InvalidTimeout",
        ),
        (
            r#"{backends: [{address: "127.0.0.1:80"}], timeouts: {idle: 5 s}}"#,
            "InvalidTimeout",
        ),
        (
            r#"{path: {type: Exact, value: /x}, backends: [{address: "127.0.0.1:80"}], rewrite: {pathPrefix: /y}}"#,
            "InvalidPath",
        ),
        (
            r#"{path: {type: RegularExpression, value: "/a.*"}, backends: [{address: "127.0.0.1:80"}], rewrite: {pathPrefix: /y}}"#,
            "InvalidPath",
        ),
        (
            r#"{path: {type: RegularExpression, value: "/(unclosed"}, backends: [{address: "127.0.0.1:80"}]}"#,
            "InvalidPath",
        ),
        (
            r#"{path: {type: RegularExpression, value: "/a{1000}{1000}"}, backends: [{address: "127.0.0.1:80"}]}"#,
            "InvalidPath",
        ),
        (
            r#"{headers: [{name: "X Bad", value: "1"}], backends: [{address: "127.0.0.1:80"}]}"#,
            "InvalidHeaderValue",
        ),
        (
            r#"{backends: [{address: "127.0.0.1:80"}], sendfile: {enabled: true}}"#,
            "InvalidRoot",
        ),
        (
            r#"{backends: [{address: "127.0.0.1:80"}], sendfile: {enabled: true, roots: [files]}}"#,
            "InvalidRoot",
        ),
    ];
    for (spec, reason) in cases {
        let out = compile_proxies(vec![proxy("p", spec)]);
        assert!(out.snapshot.routes.is_empty(), "{spec} compiled");
        assert_eq!(
            out.errors[0].invalid.reason(),
            reason,
            "{spec}: {}",
            out.errors[0].invalid
        );
    }
}

#[test]
fn static_and_proxy_routes_share_one_precedence_for_conflicts() {
    let mut older = named("files", "{root: /srv, hosts: [a.example]}");
    older.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().expect("time")));
    let mut younger = proxy(
        "app",
        r#"{hosts: [a.example], backends: [{address: "127.0.0.1:80"}]}"#,
    );
    younger.metadata.creation_timestamp = Some(Time("2026-06-01T00:00:00Z".parse().expect("time")));
    let out = compile(&Resources {
        static_routes: vec![older].into_iter().map(Arc::new).collect(),
        proxy_routes: vec![younger].into_iter().map(Arc::new).collect(),
        ..Resources::default()
    });
    assert_eq!(out.snapshot.routes.len(), 1);
    assert_eq!(out.snapshot.routes[0].key.kind, RouteKind::StaticRoute);
    assert_eq!(out.errors[0].key.kind, RouteKind::ProxyRoute);
    assert_eq!(out.errors[0].invalid.reason(), "Conflict");
}

#[test]
fn methods_and_headers_are_normalised_and_tell_routes_apart() {
    let a = proxy(
        "a",
        r#"{path: {value: /api}, methods: [POST, GET, POST], headers: [{name: X-Canary, value: "1"}], backends: [{address: "127.0.0.1:80"}],
            sendfile: {enabled: true, roots: [/srv/files/, /srv/files]}}"#,
    );
    // Same host and path, other conditions: both serve.
    let b = proxy(
        "b",
        r#"{path: {value: /api}, backends: [{address: "127.0.0.1:80"}], sendfile: {enabled: false, roots: [/x]}}"#,
    );
    // Same conditions in another order: a conflict.
    let c = proxy(
        "c",
        r#"{path: {value: /api/}, methods: [GET, POST], headers: [{name: x-canary, value: "1"}], backends: [{address: "127.0.0.1:80"}]}"#,
    );
    let out = compile_proxies(vec![a, b, c]);
    let names: Vec<&str> = out
        .snapshot
        .routes
        .iter()
        .map(|r| r.key.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].key.name, "c");
    assert_eq!(out.errors[0].invalid.reason(), "Conflict");
    let a = &out.snapshot.routes[0];
    assert_eq!(a.matches.methods, ["GET", "POST"]);
    assert_eq!(a.matches.headers, [("x-canary".to_owned(), "1".to_owned())]);
    let Action::Proxy(action) = &a.action else {
        panic!("a proxy action");
    };
    assert_eq!(action.sendfile_roots, ["/srv/files"]);
    let Action::Proxy(action) = &out.snapshot.routes[1].action else {
        panic!("a proxy action");
    };
    assert!(
        action.sendfile_roots.is_empty(),
        "disabled sendfile has no roots"
    );
}

#[test]
fn regular_expression_paths_are_kept_as_written() {
    let out = compile_all(vec![named(
        "a",
        r#"{root: /srv, path: {type: RegularExpression, value: '.*\.(png|jpg)'}}"#,
    )]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(
        out.snapshot.routes[0].path,
        PathRule::Regex(r".*\.(png|jpg)".into())
    );
}

fn service(name: &str, ports: &[(&str, i32)]) -> Arc<k8s_openapi::api::core::v1::Service> {
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|(n, p)| serde_json::json!({"name": n, "port": p}))
        .collect();
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": ports},
        }))
        .expect("a Service"),
    )
}

fn slice(
    service: &str,
    port: (&str, i32),
    endpoints: &[(&str, &str, Option<bool>)],
) -> Arc<k8s_openapi::api::discovery::v1::EndpointSlice> {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, pod, ready)| {
            serde_json::json!({
                "addresses": [ip],
                "targetRef": {"kind": "Pod", "name": pod},
                "conditions": {"ready": ready},
            })
        })
        .collect();
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("{service}-abc"),
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "ports": [{"name": port.0, "port": port.1}],
            "endpoints": endpoints,
        }))
        .expect("an EndpointSlice"),
    )
}

#[test]
fn service_backends_resolve_to_ready_endpoints_with_pod_identities() {
    let route = proxy(
        "app",
        r#"{backends: [{service: api, port: 80, weight: 3}, {service: web, port: 80}]}"#,
    );
    let out = compile(&Resources {
        proxy_routes: vec![route].into_iter().map(Arc::new).collect(),
        services: vec![
            service("api", &[("http", 80), ("admin", 9000)]),
            service("web", &[("", 80)]),
        ],
        endpoint_slices: vec![
            slice(
                "api",
                ("http", 8080),
                &[
                    ("10.0.0.1", "api-0", Some(true)),
                    ("10.0.0.2", "api-1", None),
                    ("10.0.0.3", "api-2", Some(false)),
                ],
            ),
            slice("web", ("", 3000), &[("10.0.1.1", "web-0", Some(true))]),
        ],
        ..Resources::default()
    });
    assert!(
        out.errors.is_empty() && out.unresolved.is_empty(),
        "{out:?}"
    );
    let Action::Proxy(action) = &out.snapshot.routes[0].action else {
        panic!("a proxy action");
    };
    let got: Vec<(&str, &str, u32)> = action
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.identity.as_str(), e.weight))
        .collect();
    // api's weight 3 is split over its two ready pods; web keeps weight 1.
    assert_eq!(
        got,
        [
            ("10.0.0.1:8080", "api-0", 1500),
            ("10.0.0.2:8080", "api-1", 1500),
            ("10.0.1.1:3000", "web-0", 1000),
        ]
    );
}

#[test]
fn unresolved_service_backends_keep_the_route_and_say_why() {
    let route = proxy(
        "app",
        r#"{backends: [{service: missing, port: 80}, {service: idle, port: 80}, {address: "127.0.0.1:9"}]}"#,
    );
    let out = compile(&Resources {
        proxy_routes: vec![route].into_iter().map(Arc::new).collect(),
        services: vec![service("idle", &[("", 80)])],
        endpoint_slices: vec![slice(
            "idle",
            ("", 80),
            &[("10.0.0.9", "idle-0", Some(false))],
        )],
        ..Resources::default()
    });
    assert_eq!(out.snapshot.routes.len(), 1, "served with what resolved");
    let problem = &out.unresolved[0];
    assert_eq!(problem.reason, "BackendNotFound");
    assert!(
        problem
            .message
            .contains("service missing port 80: no such Service"),
        "{}",
        problem.message
    );
    assert!(
        problem
            .message
            .contains("service idle port 80 has no ready endpoints"),
        "{}",
        problem.message
    );
}

/// A `kubernetes.io/tls` Secret (`kind` overrides the type).
fn tls_secret(name: &str, kind: &str, cert: &str, key: &str) -> k8s_openapi::api::core::v1::Secret {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "type": kind,
        "stringData": {"tls.crt": cert, "tls.key": key},
    }))
    .expect("secret")
}

/// A self-signed certificate for `host` valid over `years`, and its key.
fn self_signed(host: &str, years: (i32, i32)) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), key.serialize_pem())
}

/// 2026-12-01T00:00:00Z.
const NOW: i64 = 1_796_083_200;

#[test]
fn a_certificate_shared_by_routes_lists_each_host_once() {
    let (cert, key) = self_signed("a.example", (2020, 2090));
    let routes = [
        named(
            "a",
            "{root: /srv, hosts: [b.example, a.example], tls: {secretName: site}}",
        ),
        named(
            "b",
            "{root: /srv, hosts: [a.example], path: {value: /b}, tls: {secretName: site}}",
        ),
    ];
    let out = compile(&Resources {
        static_routes: routes.into_iter().map(Arc::new).collect(),
        secrets: vec![Arc::new(tls_secret(
            "site",
            "kubernetes.io/tls",
            &cert,
            &key,
        ))],
        now: Some(NOW),
        ..Resources::default()
    });
    assert!(out.errors.is_empty(), "{out:?}");
    assert_eq!(out.snapshot.certificates.len(), 1);
    assert_eq!(
        out.snapshot.certificates[0].hosts,
        ["a.example", "b.example"]
    );
}

#[test]
fn tls_secrets_resolve_to_certificates_for_the_routes_hosts() {
    let (cert, key) = self_signed("a.example", (2020, 2090));
    let route = named(
        "a",
        "{root: /srv, hosts: [a.example, b.example], tls: {secretName: site, redirect: true, hsts: max-age=60}}",
    );
    let out = compile(&Resources {
        static_routes: vec![route].into_iter().map(Arc::new).collect(),
        secrets: vec![tls_secret("site", "kubernetes.io/tls", &cert, &key)]
            .into_iter()
            .map(Arc::new)
            .collect(),
        now: Some(NOW),
        ..Resources::default()
    });
    assert!(
        out.errors.is_empty() && out.unresolved.is_empty(),
        "{out:?}"
    );
    let tls = out.snapshot.routes[0].tls.as_ref().expect("tls resolved");
    assert_eq!(tls.certificate, "default/site");
    assert!(tls.redirect);
    assert_eq!(tls.hsts.as_deref(), Some("max-age=60"));
    let certificate = &out.snapshot.certificates[0];
    assert_eq!(certificate.hosts, ["a.example", "b.example"]);
    assert_eq!(certificate.not_after, 3_786_912_000);
    assert!(
        !format!("{certificate:?}").contains("PRIVATE KEY"),
        "Debug shows no key"
    );
    assert!(out.snapshot.redacted().certificates[0].key_pem == pier_snapshot::REDACTED);
    assert!(out.snapshot.is_consistent());
}

#[test]
fn broken_tls_secrets_leave_the_route_serving_and_say_why() {
    let (cert, key) = self_signed("a.example", (2020, 2090));
    let (_, other_key) = self_signed("b.example", (2020, 2090));
    let (old_cert, old_key) = self_signed("a.example", (2000, 2001));
    let cases = [
        (None, "not found"),
        (
            Some(tls_secret("site", "Opaque", &cert, &key)),
            "not kubernetes.io/tls",
        ),
        (
            Some(tls_secret("site", "kubernetes.io/tls", &cert, &other_key)),
            "does not match",
        ),
        (
            Some(tls_secret("site", "kubernetes.io/tls", &old_cert, &old_key)),
            "expired at 2001-01-01T00:00:00Z",
        ),
        (
            Some(tls_secret(
                "site",
                "kubernetes.io/tls",
                "not a certificate",
                &key,
            )),
            "holds no certificate",
        ),
        (
            Some(tls_secret("site", "kubernetes.io/tls", &cert, "no key")),
            "no PEM private key",
        ),
    ];
    for (secret, why) in cases {
        let out = compile(&Resources {
            static_routes: vec![Arc::new(named(
                "a",
                "{root: /srv, hosts: [a.example], tls: {secretName: site}}",
            ))],
            secrets: secret.into_iter().map(Arc::new).collect(),
            now: Some(NOW),
            ..Resources::default()
        });
        assert_eq!(out.snapshot.routes.len(), 1, "the route is still served");
        assert!(out.snapshot.routes[0].tls.is_none());
        assert!(out.snapshot.certificates.is_empty());
        let problem = &out.unresolved[0];
        assert_eq!(problem.reason, "InvalidCertificateRef");
        assert!(problem.message.contains(why), "{why}: {}", problem.message);
        assert!(!problem.message.contains("PRIVATE"), "{}", problem.message);
    }
    let bad_hsts = compile_all(vec![named(
        "a",
        "{root: /srv, tls: {secretName: site, hsts: \"a\\r\\nb\"}}",
    )]);
    assert_eq!(bad_hsts.errors[0].invalid.reason(), "InvalidHeaderValue");
}

#[test]
fn backend_tls_takes_the_ca_or_trusts_nothing_and_says_why() {
    let (ca, _) = self_signed("ca.example", (2020, 2090));
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ca", "namespace": "default"},
        "stringData": {"ca.crt": ca},
    }))
    .expect("secret");
    let route = |secret: &str| {
        proxy(
            "p",
            &format!(
                r#"{{backends: [{{address: "127.0.0.1:80"}}], backendTLS: {{caSecretName: {secret}, serverName: API.internal}}}}"#
            ),
        )
    };
    let tls_of = |out: &Compiled| match &out.snapshot.routes[0].action {
        Action::Proxy(action) => action.upstream_tls.clone().expect("upstream TLS"),
        Action::Static(_) => panic!("a proxy route"),
    };
    let out = compile(&Resources {
        proxy_routes: vec![route("ca")].into_iter().map(Arc::new).collect(),
        secrets: vec![secret].into_iter().map(Arc::new).collect(),
        ..Resources::default()
    });
    assert!(out.unresolved.is_empty(), "{:?}", out.unresolved);
    let tls = tls_of(&out);
    assert_eq!(tls.server_name, "api.internal");
    assert!(tls.ca_pem.contains("BEGIN CERTIFICATE"));
    let out = compile_proxies(vec![route("missing")]);
    assert_eq!(tls_of(&out).ca_pem, "", "no CA: nothing is trusted");
    assert_eq!(out.unresolved[0].reason, "InvalidCertificateRef");
    assert!(
        out.unresolved[0]
            .message
            .contains("Secret default/missing not found")
    );
}

#[test]
fn buffering_defaults_to_hybrid_and_sizes_take_kubernetes_suffixes() {
    let action = |spec: &str| {
        let out = compile_proxies(vec![proxy("p", spec)]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let Action::Proxy(action) = &out.snapshot.routes[0].action else {
            panic!("a proxy action");
        };
        action.buffering
    };
    let plain = action(r#"{backends: [{address: "127.0.0.1:1"}]}"#);
    assert_eq!(plain, Buffering::default());
    assert_eq!(plain.mode, BufferMode::Hybrid);
    assert_eq!((plain.memory, plain.disk), (64 << 10, 1 << 30));
    assert!(plain.request_body, "uploads are buffered by default");
    let given = action(
        r#"{backends: [{address: "127.0.0.1:1"}], buffering: {mode: Buffer, memory: 1Mi, disk: 10G, requestBody: Buffer, maxBodySize: "4096"}}"#,
    );
    assert_eq!(given.mode, BufferMode::Buffer);
    assert_eq!((given.memory, given.disk), (1 << 20, 10_000_000_000));
    assert!(given.request_body);
    assert_eq!(given.max_body_size, Some(4096));
    let streamed =
        action(r#"{backends: [{address: "127.0.0.1:1"}], buffering: {requestBody: Stream}}"#);
    assert!(!streamed.request_body);
}

#[test]
fn an_unusable_size_rejects_the_route_with_a_reason() {
    let out = compile_proxies(vec![proxy(
        "p",
        r#"{backends: [{address: "127.0.0.1:1"}], buffering: {disk: 99999999999999Ti}}"#,
    )]);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].invalid.reason(), "InvalidBuffering");
    assert!(out.errors[0].invalid.to_string().contains("buffering.disk"));
}
