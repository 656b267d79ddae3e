//! Ingress manifests with ingress-nginx annotations, served from a routes
//! directory by the standalone dataplane: the same YAML a cluster would
//! take, through the same compiler, over real sockets.

mod support;

use std::net::SocketAddr;

use support::{Response, Running, named_backend, send};

/// Service `name` (port 80, `http`) with one ready endpoint: the backend.
fn service(name: &str, backend: SocketAddr) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {}}}]
endpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}]
",
        backend.port(),
        backend.ip()
    )
}

fn ingress(name: &str, host: &str, annotations: &str, path: &str, kind: &str) -> String {
    format!(
        "---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  annotations: {{{annotations}}}
spec:
  ingressClassName: nginx
  rules:
  - host: {host}
    http:
      paths:
      - path: \"{path}\"
        pathType: {kind}
        backend: {{service: {{name: web, port: {{name: http}}}}}}
"
    )
}

fn ask(pier: &Running, host: &str, method: &str, path: &str, headers: &[&str]) -> Response {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut stream = pier.connect();
    send(&mut stream, &req)
}

#[test]
fn ingress_nginx_manifests_are_served_with_their_annotations() {
    let manifests = [
        service("web", named_backend("web")),
        ingress(
            "api",
            "api.test",
            r#"nginx.ingress.kubernetes.io/rewrite-target: "/$2",
               nginx.ingress.kubernetes.io/enable-cors: "true",
               nginx.ingress.kubernetes.io/cors-allow-origin: "https://ui.test""#,
            "/api(/|$)(.*)",
            "ImplementationSpecific",
        ),
        ingress(
            "blocked",
            "blocked.test",
            r#"nginx.ingress.kubernetes.io/denylist-source-range: "127.0.0.0/8""#,
            "/",
            "Prefix",
        ),
        ingress(
            "allowed",
            "allowed.test",
            r#"nginx.ingress.kubernetes.io/whitelist-source-range: "127.0.0.1/32""#,
            "/",
            "Prefix",
        ),
        ingress(
            "moved",
            "moved.test",
            r#"nginx.ingress.kubernetes.io/permanent-redirect: "https://new.test/""#,
            "/",
            "Prefix",
        ),
        ingress(
            "rooted",
            "rooted.test",
            "nginx.ingress.kubernetes.io/app-root: /app",
            "/",
            "Prefix",
        ),
        ingress(
            "snippet",
            "snippet.test",
            r#"nginx.ingress.kubernetes.io/configuration-snippet: "return 200 'owned';""#,
            "/",
            "Prefix",
        ),
    ]
    .concat();
    let pier = Running::start(&[("ingress.yaml", &manifests)], &[]);

    // rewrite-target with a capture group.
    let res = ask(&pier, "api.test", "GET", "/API/users/7?x=1", &[]);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "web /users/7?x=1 -");
    assert_eq!(ask(&pier, "api.test", "GET", "/api", &[]).text(), "web / -");
    assert_eq!(ask(&pier, "api.test", "GET", "/apix", &[]).status, 404);

    // CORS: the preflight never reaches the backend; responses are marked.
    let preflight = ask(
        &pier,
        "api.test",
        "OPTIONS",
        "/api/users",
        &[
            "Origin: https://ui.test",
            "Access-Control-Request-Method: PUT",
        ],
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://ui.test")
    );
    assert_eq!(
        preflight.header("access-control-allow-credentials"),
        Some("true")
    );
    assert!(
        preflight
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("PUT"))
    );
    let simple = ask(
        &pier,
        "api.test",
        "GET",
        "/api/x",
        &["Origin: https://ui.test"],
    );
    assert_eq!(
        simple.header("access-control-allow-origin"),
        Some("https://ui.test")
    );
    assert_eq!(simple.text(), "web /x -");
    let foreign = ask(
        &pier,
        "api.test",
        "GET",
        "/api/x",
        &["Origin: https://evil.test"],
    );
    assert_eq!(foreign.header("access-control-allow-origin"), None);

    // Source ranges: this test's client is 127.0.0.1.
    assert_eq!(ask(&pier, "blocked.test", "GET", "/", &[]).status, 403);
    assert_eq!(
        ask(&pier, "allowed.test", "GET", "/x", &[]).text(),
        "web /x -"
    );

    // Redirects answered by the dataplane.
    let moved = ask(&pier, "moved.test", "GET", "/anything", &[]);
    assert_eq!(
        (moved.status, moved.header("location")),
        (301, Some("https://new.test/"))
    );
    let rooted = ask(&pier, "rooted.test", "GET", "/", &[]);
    assert_eq!(rooted.status, 302);
    assert_eq!(rooted.header("location"), Some("http://rooted.test/app"));
    assert_eq!(
        ask(&pier, "rooted.test", "GET", "/app/page", &[]).text(),
        "web /app/page -"
    );

    // The snippet refused its Ingress, and only its Ingress.
    assert_eq!(ask(&pier, "snippet.test", "GET", "/", &[]).status, 404);
    let metrics = pier.admin("/metrics").text();
    assert!(
        metrics.contains("pier_dataplane_snapshot_invalid_routes 1"),
        "{metrics}"
    );
    // Each path of an Ingress counts under a label of its own.
    assert!(
        metrics
            .contains(r#"pier_dataplane_requests_total{route="ingress:default/api#0",code="200"}"#),
        "{metrics}"
    );
}

#[test]
fn the_example_manifests_compile_without_errors_or_warnings() {
    for dir in ["routes", "ingress", "gateway"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(dir);
        let compiled = pier_dataplane::standalone::load(&path).expect("the examples load");
        assert!(compiled.errors.is_empty(), "{dir}: {:?}", compiled.errors);
        assert!(
            compiled.warnings.is_empty(),
            "{dir}: {:?}",
            compiled.warnings
        );
        assert!(
            compiled.unresolved.is_empty(),
            "{dir}: {:?}",
            compiled.unresolved
        );
        assert!(!compiled.snapshot.routes.is_empty(), "{dir}");
    }
}

#[test]
fn canaries_by_cookie_and_by_header_pattern_take_their_requests() {
    let canary = ingress(
        "canary",
        "app.test",
        r#"nginx.ingress.kubernetes.io/canary: "true", nginx.ingress.kubernetes.io/canary-by-header: X-Canary, nginx.ingress.kubernetes.io/canary-by-header-pattern: "^beta", nginx.ingress.kubernetes.io/canary-by-cookie: canary"#,
        "/",
        "Prefix",
    )
    .replace("name: web,", "name: canary,");
    let manifests = [
        service("web", named_backend("web")),
        format!("---\n{}", service("canary", named_backend("canary"))),
        ingress("main", "app.test", "", "/", "Prefix"),
        canary,
    ]
    .concat();
    let pier = Running::start(&[("app.yaml", &manifests)], &[]);
    let who = |headers: &[&str]| {
        let text = ask(&pier, "app.test", "GET", "/", headers).text();
        text.split(' ').next().unwrap_or_default().to_owned()
    };
    assert_eq!(who(&[]), "web");
    assert_eq!(who(&["Cookie: a=1; canary=always; b=2"]), "canary");
    assert_eq!(who(&["Cookie: canary=always"]), "canary");
    assert_eq!(who(&["Cookie: canary=never"]), "web");
    assert_eq!(who(&["Cookie: notcanary=always"]), "web");
    assert_eq!(who(&["X-Canary: beta-7"]), "canary");
    assert_eq!(
        who(&["X-Canary: stable-beta"]),
        "web",
        "the pattern is anchored by ^"
    );
}
