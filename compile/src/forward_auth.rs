//! Forward authentication: the check's URL turned into addresses the
//! dataplane can reach without resolving names (a Service's ready
//! endpoints, or an IP address), and its other settings checked.

use std::net::{IpAddr, SocketAddr};

use pier_snapshot::{ForwardAuth, Invalid};

use super::backends::{Backends, Unresolvable};
use super::header_value;
use super::proxy::token;

/// The checked settings, and what did not resolve (the route's
/// `ResolvedRefs=False` reason and message): the route is kept, and every
/// check fails (500) until the Service has ready endpoints.
pub(crate) type Resolved = (ForwardAuth, Option<(&'static str, String)>);

/// `forwardAuth` of a route in `namespace`.
pub(crate) fn forward(
    spec: Option<&pier_crds::ForwardAuth>,
    namespace: &str,
    backends: &Backends<'_>,
) -> Result<Option<Resolved>, Invalid> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let invalid = |value: &str, why: &'static str| Invalid::Policy {
        field: "forwardAuth.url",
        value: value.to_owned(),
        why,
    };
    let url = spec.url.as_str();
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        invalid(
            url,
            "must start with http:// (checks over TLS are not built yet)",
        )
    })?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    if path
        .bytes()
        .any(|b| !(0x21..=0x7e).contains(&b) || b == b'#')
    {
        return Err(invalid(url, "has a path that cannot be sent as it is"));
    }
    let (host, port) =
        host_port(authority).ok_or_else(|| invalid(url, "has no valid host and port"))?;
    let mut problem = None;
    let endpoints = if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port).to_string()]
    } else {
        let service = host
            .strip_suffix(".svc.cluster.local")
            .or_else(|| host.strip_suffix(".svc"))
            .unwrap_or(host);
        let (name, ns) = match service.split_once('.') {
            Some((name, ns)) if !ns.contains('.') => (name, ns),
            None => (service, namespace),
            Some(_) => {
                return Err(invalid(
                    url,
                    "must name a Service (NAME.NAMESPACE.svc) or an IP address: the dataplane resolves no other names",
                ));
            }
        };
        match backends.resolve(ns, name, port) {
            Ok(resolved) => resolved.iter().map(|(a, _)| a.to_string()).collect(),
            Err(e) => {
                let (reason, why) = match e {
                    Unresolvable::NotFound(why) => ("BackendNotFound", why),
                    Unresolvable::NoReady => ("NoReadyEndpoints", "no ready endpoints"),
                };
                problem = Some((
                    reason,
                    format!(
                        "forwardAuth service {ns}/{name} port {port}: {why}; every request gets 500"
                    ),
                ));
                Vec::new()
            }
        }
    };
    let response_headers = spec
        .response_headers
        .iter()
        .map(|name| token(name))
        .collect::<Result<_, _>>()?;
    if let Some(signin) = &spec.signin {
        header_value(signin).map_err(|why| Invalid::HeaderValue {
            field: "forwardAuth.signin",
            why,
        })?;
    }
    let method = spec.method.map_or("GET", |m| m.as_str()).to_owned();
    Ok(Some((
        ForwardAuth {
            endpoints,
            host: authority.to_owned(),
            path,
            method,
            response_headers,
            signin: spec.signin.clone(),
        },
        problem,
    )))
}

/// `host[:port]` (`[v6]:port` too); port 80 when absent.
fn host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            (&authority[..i], authority[i + 1..].parse().ok()?)
        }
        _ => (authority, 80),
    };
    let valid = !host.is_empty()
        && port != 0
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    valid.then_some((host, port))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn services() -> (
        Vec<Arc<k8s_openapi::api::core::v1::Service>>,
        Vec<Arc<k8s_openapi::api::discovery::v1::EndpointSlice>>,
    ) {
        let service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "oauth2-proxy", "namespace": "auth"},
            "spec": {"ports": [{"name": "http", "port": 4180}]},
        }))
        .expect("a Service");
        let slice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "oauth2-proxy-1", "namespace": "auth",
                         "labels": {"kubernetes.io/service-name": "oauth2-proxy"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.1.0.7"], "conditions": {"ready": true}}],
        }))
        .expect("an EndpointSlice");
        (vec![Arc::new(service)], vec![Arc::new(slice)])
    }

    fn check(url: &str) -> Result<Option<Resolved>, Invalid> {
        let (services, slices) = services();
        let backends = Backends::index(&services, &slices);
        let spec = pier_crds::ForwardAuth {
            url: url.to_owned(),
            response_headers: vec!["X-Auth-Request-User".into()],
            ..Default::default()
        };
        forward(Some(&spec), "app", &backends)
    }

    #[test]
    fn a_service_url_becomes_its_ready_endpoints() {
        for url in [
            "http://oauth2-proxy.auth.svc.cluster.local:4180/oauth2/auth",
            "http://oauth2-proxy.auth.svc:4180/oauth2/auth",
            "http://oauth2-proxy.auth:4180/oauth2/auth",
        ] {
            let (auth, problem) = check(url).expect("valid").expect("set");
            assert_eq!(auth.endpoints, ["10.1.0.7:8080"], "{url}");
            assert_eq!(auth.path, "/oauth2/auth");
            assert_eq!(auth.method, "GET");
            assert_eq!(auth.response_headers, ["x-auth-request-user"]);
            assert!(problem.is_none());
        }
        let (auth, _) = check("http://127.0.0.1:9000?check=1")
            .expect("valid")
            .expect("set");
        assert_eq!(
            (auth.endpoints[0].as_str(), auth.path.as_str()),
            ("127.0.0.1:9000", "/?check=1")
        );
        assert_eq!(auth.host, "127.0.0.1:9000");
        let (auth, _) = check("http://[::1]/").expect("valid").expect("set");
        assert_eq!(auth.endpoints, ["[::1]:80"]);
    }

    #[test]
    fn a_missing_service_is_reported_and_fails_closed() {
        let (auth, problem) = check("http://nobody.auth.svc/check")
            .expect("valid")
            .expect("set");
        assert!(auth.endpoints.is_empty());
        let (reason, message) = problem.expect("reported");
        assert_eq!(reason, "BackendNotFound");
        assert!(message.contains("auth/nobody"), "{message}");
        // A bare name is a Service in the route's namespace.
        let (_, problem) = check("http://oauth2-proxy:4180/")
            .expect("valid")
            .expect("set");
        assert!(problem.expect("reported").1.contains("app/oauth2-proxy"));
    }

    #[test]
    fn urls_the_dataplane_cannot_reach_are_refused() {
        for url in [
            "https://auth.example.com/check",
            "http://auth.example.com/check",
            "http:///check",
            "http://10.0.0.1:0/",
            "http://10.0.0.1:x/",
            "http://10.0.0.1/a b",
        ] {
            assert!(matches!(check(url), Err(Invalid::Policy { .. })), "{url}");
        }
    }

    /// ingress-nginx's `auth-url` annotations compile to the same check.
    #[test]
    fn ingress_nginx_auth_url_annotations_become_the_check() {
        let (services, endpoint_slices) = services();
        let ingress = |name: &str, url: &str| -> Arc<k8s_openapi::api::networking::v1::Ingress> {
            Arc::new(
                serde_saphyr::from_str(&format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: app, annotations: {{nginx.ingress.kubernetes.io/auth-url: \"{url}\", nginx.ingress.kubernetes.io/auth-method: post, nginx.ingress.kubernetes.io/auth-response-headers: \"X-Auth-Request-User, X-Auth-Request-Email\", nginx.ingress.kubernetes.io/auth-signin: \"https://sso.test/start\"}}}}\nspec: {{rules: [{{host: {name}.test, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}}}]}}\n"
                ))
                .expect("an Ingress"),
            )
        };
        let out = crate::compile(&crate::Resources {
            ingresses: vec![
                ingress(
                    "ok",
                    "http://oauth2-proxy.auth.svc.cluster.local:4180/oauth2/auth",
                ),
                ingress("dns", "https://auth.example.com/verify"),
            ],
            services,
            endpoint_slices,
            ..crate::Resources::default()
        });
        assert_eq!(out.snapshot.routes.len(), 1, "{:?}", out.errors);
        let auth = out.snapshot.routes[0]
            .policy
            .forward_auth
            .as_ref()
            .expect("the check");
        assert_eq!(auth.endpoints, ["10.1.0.7:8080"]);
        assert_eq!(auth.method, "POST");
        assert_eq!(
            auth.response_headers,
            ["x-auth-request-user", "x-auth-request-email"]
        );
        assert_eq!(auth.signin.as_deref(), Some("https://sso.test/start"));
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].key.name, "dns");
        assert_eq!(out.errors[0].invalid.reason(), "InvalidPolicy");
    }
}
