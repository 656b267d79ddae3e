//! Gateway API manifests served from a routes directory by the standalone
//! dataplane: the same YAML a cluster would take, through the same
//! compiler, over real sockets.

mod support;

use std::net::SocketAddr;

use support::{Response, Running, named_backend as backend, send};

/// Service `name` in `app` (port 80) whose one endpoint is `backend`.
fn service(name: &str, backend: SocketAddr) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: app}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: app, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {}}}]
endpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}]
",
        backend.port(),
        backend.ip()
    )
}

const GATEWAY: &str = "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: app}
spec:
  gatewayClassName: whatever
  listeners:
  - {name: web, port: 80, protocol: HTTP, hostname: '*.example.test'}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: app}
spec:
  parentRefs: [{name: edge}]
  hostnames: [shop.example.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, queryParams: [{name: v, value: '2'}]}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Set, value: two}]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: X-Served-By, value: pier}]}}
    backendRefs: [{name: next, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{type: RegularExpression, name: X-Version, value: 'v[0-9]+'}]}]
    backendRefs: [{name: next, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /old}, method: GET}]
    filters:
    - {type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /new}}}
";

fn ask(pier: &Running, host: &str, method: &str, path: &str) -> Response {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    send(&mut pier.connect(), &req)
}

#[test]
fn an_http_route_is_served_with_its_matches_and_filters() {
    let manifests = [
        service("web", backend("web")),
        service("next", backend("next")),
        GATEWAY.to_owned(),
    ]
    .concat();
    let pier = Running::start(&[("gateway.yaml", &manifests)], &[]);

    // The query match goes first, with its rewrite and header edits.
    let res = ask(&pier, "shop.example.test", "GET", "/api/items?v=2");
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "next /v2/items?v=2 two");
    assert_eq!(res.header("x-served-by"), Some("pier"));
    // Without it, the plain rule.
    let res = ask(&pier, "shop.example.test", "GET", "/api/items?v=1");
    assert_eq!(res.text(), "web /api/items?v=1 -");
    // A header pattern, matched against the whole value.
    let versioned = |version: &str| {
        let req = format!(
            "GET /api/x HTTP/1.1\r\nHost: shop.example.test\r\nX-Version: {version}\r\n\r\n"
        );
        send(&mut pier.connect(), &req).text()
    };
    assert_eq!(versioned("v12"), "next /api/x -");
    assert_eq!(versioned("v12-rc"), "web /api/x -");
    assert_eq!(res.header("x-served-by"), None);

    // RequestRedirect, for GET only.
    let res = ask(&pier, "shop.example.test", "GET", "/old");
    assert_eq!(res.status, 301);
    assert_eq!(
        res.header("location"),
        Some("https://shop.example.test/new")
    );
    assert_eq!(ask(&pier, "shop.example.test", "POST", "/old").status, 404);

    // A host the route does not name gets nothing.
    assert_eq!(ask(&pier, "other.example.test", "GET", "/api").status, 404);
}
