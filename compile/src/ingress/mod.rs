//! `networking.k8s.io/v1` Ingress, with ingress-nginx's annotations.
//!
//! An Ingress is lowered to the routes Pier's own `ProxyRoute` would give
//! (one per host and path, numbered by [`RouteKey::rule`]) and compiled by
//! the same function as a `ProxyRoute`: one model and one set of checks,
//! whatever the input. The lowering is all this module adds:
//!
//! | Ingress | ProxyRoute |
//! |---|---|
//! | `rules[].host` | `hosts` |
//! | `Exact`, `Prefix`, `ImplementationSpecific` (as prefix) | `path` |
//! | `use-regex` / `rewrite-target` | `RegularExpression` path, case-insensitive, anchored at the start, and `rewrite.regex` |
//! | `backend.service` (port by number or name) | `backends` |
//! | `tls[]` covering the host | `tls` (redirect unless `ssl-redirect: "false"`, HSTS as ingress-nginx sends it) |
//! | `defaultBackend` | a route for any host, `PathPrefix /` |
//! | the other annotations | see [`annotations::TABLE`] |
//!
//! A canary Ingress (`canary: "true"`) adds no route of its own for its
//! weight: its backend joins the main Ingress's route for the same host
//! and path, weighted; `canary-by-header` gives it a route of its own with
//! that header match.

pub mod annotations;
mod table;

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use pier_crds::{
    Access, Backend, BackendTls, Balancer, BalancerType, BasicAuth, Buffering, BufferingMode,
    Header, HeaderMatch, HeaderOps, PathMatch, PathMatchType, ProxyRouteSpec, Redirect,
    RedirectPath, RedirectPathType, RegexRewrite, RequestBuffering, Retries, RetryOn, Rewrite,
    RouteTls, Timeouts, ValueMatch,
};
use pier_snapshot::{Invalid, RouteKey};

use self::annotations::{Annotations, Canary};
use super::backends::Backends;

/// The `spec.controller` of Pier's IngressClass.
pub const CONTROLLER: &str = "pier.dev/ingress-controller";
/// The annotation that makes an IngressClass the cluster's default.
pub const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation Ingresses used before `ingressClassName`.
pub const LEGACY_CLASS: &str = "kubernetes.io/ingress.class";
/// The HSTS value ingress-nginx sends on HTTPS by default.
const HSTS: &str = "max-age=31536000; includeSubDomains";

/// Whether `controller` serves an Ingress: its `ingressClassName` (or the
/// legacy `kubernetes.io/ingress.class` annotation) names an IngressClass
/// of that controller, or it names none and such a class is the default.
pub fn claims(ingress: &Ingress, classes: &[Arc<IngressClass>], controller: &str) -> bool {
    let ours = classes
        .iter()
        .filter(|c| c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(controller));
    let named = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()?
                .get(LEGACY_CLASS)
                .map(String::as_str)
        });
    match named {
        Some(name) => ours
            .into_iter()
            .any(|c| c.metadata.name.as_deref() == Some(name)),
        None => ours.into_iter().any(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS))
                .is_some_and(|v| v == "true")
        }),
    }
}

/// One route an Ingress asks for, in `ProxyRoute`'s terms.
#[derive(Debug)]
pub(crate) struct Piece {
    pub(crate) key: RouteKey,
    pub(crate) spec: ProxyRouteSpec,
}

/// An Ingress lowered.
#[derive(Debug, Default)]
pub(crate) struct Lowered {
    pub(crate) pieces: Vec<Piece>,
    /// What is served without (unsupported annotations and the like).
    pub(crate) warnings: Vec<String>,
    /// A canary's selection; its pieces are then merged, not served.
    pub(crate) canary: Option<Canary>,
}

/// Lowers one Ingress. `key` is the Ingress's own (rule 0).
pub(crate) fn lower(
    key: &RouteKey,
    ingress: &Ingress,
    backends: &Backends<'_>,
) -> Result<Lowered, Invalid> {
    let a = annotations::parse(ingress.metadata.annotations.as_ref())?;
    let mut out = Lowered {
        warnings: a.warnings.clone(),
        canary: a.canary.clone(),
        ..Lowered::default()
    };
    let Some(spec) = &ingress.spec else {
        return Ok(out);
    };
    let tls_of = |host: Option<&str>| -> Option<&str> {
        let host = host?;
        spec.tls.iter().flatten().find_map(|tls| {
            let covers = tls.hosts.iter().flatten().any(|h| {
                h == host
                    || h.strip_prefix("*.").is_some_and(|suffix| {
                        host.strip_suffix(suffix)
                            .and_then(|label| label.strip_suffix('.'))
                            .is_some_and(|label| !label.is_empty() && !label.contains('.'))
                    })
            });
            covers.then_some(tls.secret_name.as_deref()).flatten()
        })
    };
    let mut next_rule = 0;
    let mut push = |out: &mut Lowered, spec: ProxyRouteSpec| {
        out.pieces.push(Piece {
            key: RouteKey {
                rule: next_rule,
                ..key.clone()
            },
            spec,
        });
        next_rule += 1;
    };
    let mut app_roots: Vec<(Option<String>, Vec<Backend>)> = Vec::new();
    for rule in spec.rules.iter().flatten() {
        let host = rule.host.as_deref();
        let Some(http) = &rule.http else { continue };
        for path in &http.paths {
            let backend = backend(key, &path.backend, backends, &mut out.warnings)?;
            let value = path.path.clone().unwrap_or_else(|| "/".to_owned());
            let kind = path.path_type.as_str();
            let piece = route(
                key,
                host,
                &value,
                kind,
                vec![backend.clone()],
                &a,
                tls_of(host),
            )?;
            if a.app_root.is_some() && !app_roots.iter().any(|(h, _)| h.as_deref() == host) {
                app_roots.push((host.map(str::to_owned), vec![backend]));
            }
            push(&mut out, piece);
        }
    }
    if let Some(default) = &spec.default_backend {
        let backend = backend(key, default, backends, &mut out.warnings)?;
        if a.app_root.is_some() && !app_roots.iter().any(|(h, _)| h.is_none()) {
            app_roots.push((None, vec![backend.clone()]));
        }
        push(
            &mut out,
            route(key, None, "/", "Prefix", vec![backend], &a, None)?,
        );
    }
    if let Some(root) = &a.app_root {
        // `/` itself answers 302 to the application's root.
        for (host, backends) in app_roots {
            let tls = tls_of(host.as_deref());
            let mut piece = route(key, host.as_deref(), "/", "Exact", backends, &a, tls)?;
            piece.rewrite = None;
            piece.redirect = Some(Redirect {
                path: Some(RedirectPath {
                    kind: RedirectPathType::ReplaceFullPath,
                    value: root.clone(),
                }),
                status_code: Some(302),
                ..Redirect::default()
            });
            push(&mut out, piece);
        }
    }
    if a.force_ssl_redirect && spec.tls.as_ref().is_none_or(Vec::is_empty) {
        out.warnings.push(format!(
            "annotation {}force-ssl-redirect needs the Ingress's TLS on Pier (a TLS-terminating load balancer in front is not supported yet)",
            annotations::PREFIX
        ));
    }
    Ok(out)
}

/// An Ingress backend as a `ProxyRoute` backend.
fn backend(
    key: &RouteKey,
    given: &IngressBackend,
    backends: &Backends<'_>,
    warnings: &mut Vec<String>,
) -> Result<Backend, Invalid> {
    let Some(service) = &given.service else {
        return Err(Invalid::Backend {
            value: given
                .resource
                .as_ref()
                .map(|r| format!("{}/{}", r.kind, r.name))
                .unwrap_or_default(),
            why: "is a resource backend; Pier serves Service backends",
        });
    };
    let port = service.port.as_ref();
    let number = match (
        port.and_then(|p| p.number),
        port.and_then(|p| p.name.as_deref()),
    ) {
        (Some(n), _) => u16::try_from(n).ok(),
        (None, Some(name)) => {
            let found = backends.port_named(&key.namespace, &service.name, name);
            if found.is_none() {
                warnings.push(format!(
                    "service {} has no port named {name:?} (yet); its paths answer 503",
                    service.name
                ));
            }
            // Port 0 is no Service port: the route resolves to nothing
            // and says so (BackendNotFound) until the port appears.
            Some(found.unwrap_or(0))
        }
        (None, None) => None,
    };
    let Some(number) = number else {
        return Err(Invalid::Backend {
            value: service.name.clone(),
            why: "needs a port number or name",
        });
    };
    Ok(Backend {
        service: Some(service.name.clone()),
        port: Some(number),
        address: None,
        weight: None,
    })
}

/// The `ProxyRoute` spec of one host and path.
fn route(
    key: &RouteKey,
    host: Option<&str>,
    path: &str,
    path_type: &str,
    backends: Vec<Backend>,
    a: &Annotations,
    tls_secret: Option<&str>,
) -> Result<ProxyRouteSpec, Invalid> {
    let exact = path_type == "Exact";
    let path_match = if a.regex && !exact {
        // ingress-nginx's `location ~* "^PATH"`: case-insensitive, from
        // the start, any rest.
        PathMatch {
            kind: PathMatchType::RegularExpression,
            value: format!("(?s)(?i:{path}).*"),
        }
    } else {
        PathMatch {
            kind: if exact {
                PathMatchType::Exact
            } else {
                PathMatchType::PathPrefix
            },
            value: path.to_owned(),
        }
    };
    let rewrite = Rewrite {
        path_prefix: None,
        host: a.upstream_vhost.clone(),
        regex: a.rewrite_target.as_ref().map(|target| RegexRewrite {
            pattern: format!("(?i){path}"),
            replacement: target.clone(),
        }),
    };
    let seconds = |s: Option<u64>| s.map(|s| format!("{s}s"));
    let idle = match (a.read_s, a.send_s) {
        (Some(r), Some(s)) => Some(r.max(s)),
        (r, s) => r.or(s),
    };
    let basic_auth = match &a.basic_auth {
        None => None,
        Some(basic) => {
            own_secret(
                "auth-secret",
                basic.namespace.as_deref(),
                &basic.secret,
                key,
            )?;
            Some(BasicAuth {
                secret_name: basic.secret.clone(),
                realm: basic.realm.clone(),
            })
        }
    };
    let backend_tls = if a.backend_https {
        let (namespace, name) = a.ssl_secret.clone().unwrap_or_default();
        own_secret("proxy-ssl-secret", namespace.as_deref(), &name, key)?;
        let service = backends
            .first()
            .and_then(|b| b.service.clone())
            .unwrap_or_default();
        Some(BackendTls {
            ca_secret_name: name,
            server_name: a
                .ssl_name
                .clone()
                .unwrap_or_else(|| format!("{service}.{}.svc", key.namespace)),
        })
    } else {
        None
    };
    let balancer = match (&a.hash_on, a.balancer) {
        (Some(on), _) => Some(Balancer {
            kind: BalancerType::ConsistentHash,
            hash_on: Some(on.clone()),
            bounded_load: None,
        }),
        (None, Some(kind)) => Some(Balancer {
            kind,
            ..Balancer::default()
        }),
        (None, None) => None,
    };
    let access = (!a.allow.is_empty() || !a.deny.is_empty()).then(|| Access {
        allow: a.allow.clone(),
        deny: a.deny.clone(),
    });
    Ok(ProxyRouteSpec {
        hosts: host.map(|h| vec![h.to_owned()]).unwrap_or_default(),
        path: Some(path_match),
        backends,
        balancer,
        rewrite: Some(rewrite),
        access,
        basic_auth,
        forward_auth: a.forward_auth.clone(),
        cors: a.cors.clone(),
        request_headers: a.forwarded_prefix.as_ref().map(|prefix| HeaderOps {
            set: vec![Header {
                name: "X-Forwarded-Prefix".to_owned(),
                value: prefix.clone(),
            }],
            ..HeaderOps::default()
        }),
        redirect: a.redirect.as_ref().map(|(url, status)| Redirect {
            url: Some(url.clone()),
            status_code: Some(*status),
            ..Redirect::default()
        }),
        timeouts: Some(Timeouts {
            connect: seconds(a.connect_s),
            response_header: seconds(a.read_s),
            idle: seconds(idle),
        }),
        retries: a.tries.filter(|t| *t > 0).map(|tries| Retries {
            attempts: tries - 1,
            on: vec![RetryOn::ConnectFailure],
        }),
        tls: tls_secret.map(|secret| RouteTls {
            secret_name: secret.to_owned(),
            redirect: a.ssl_redirect.unwrap_or(true) || a.force_ssl_redirect,
            hsts: Some(HSTS.to_owned()),
        }),
        backend_tls,
        affinity: a.affinity.clone().map(|mut affinity| {
            // ingress-nginx's default: the location's path (none for an
            // expression, which is no cookie path).
            if affinity.cookie.path.is_none() && !a.regex {
                affinity.cookie.path = Some(path.to_owned());
            }
            affinity
        }),
        buffering: Some(Buffering {
            mode: a.buffering.unwrap_or(BufferingMode::Hybrid),
            max_body_size: a.body_size.map(|b| b.to_string()),
            request_body: (a.request_buffering == Some(false)).then_some(RequestBuffering::Stream),
            ..Buffering::default()
        }),
        ..ProxyRouteSpec::default()
    })
}

/// The Secret an annotation names as `namespace/name` must be in the
/// Ingress's namespace.
fn own_secret(
    annotation: &str,
    namespace: Option<&str>,
    name: &str,
    key: &RouteKey,
) -> Result<(), Invalid> {
    match namespace {
        Some(ns) if ns != key.namespace => Err(Invalid::Annotation {
            name: format!("{}{annotation}", annotations::PREFIX),
            value: format!("{ns}/{name}"),
            why: "must name a Secret in the Ingress's namespace",
        }),
        _ => Ok(()),
    }
}

/// Merges each canary into the main Ingress's routes of the same
/// namespace, host and path: its weight joins their backends, and its
/// header match becomes a route of the canary's own. A canary with no
/// main route is reported and serves nothing.
pub(crate) fn merge_canaries(lowered: &mut [(RouteKey, Lowered)]) {
    let (canaries, mains): (Vec<_>, Vec<_>) =
        lowered.iter_mut().partition(|(_, l)| l.canary.is_some());
    let mut mains = mains;
    for (canary_key, canary) in canaries {
        let Some(selection) = canary.canary.clone() else {
            continue;
        };
        let pieces = std::mem::take(&mut canary.pieces);
        let mut header_rule = 0;
        for piece in pieces {
            let same = |main: &Piece| {
                main.key.namespace == canary_key.namespace
                    && main.spec.hosts == piece.spec.hosts
                    && main.spec.path == piece.spec.path
                    && main.spec.headers.is_empty()
            };
            let main = mains
                .iter_mut()
                .flat_map(|(_, l)| l.pieces.iter_mut())
                .find(|m| same(m));
            let Some(main) = main else {
                canary.warnings.push(format!(
                    "no main Ingress serves host {:?} path {:?}; the canary gets no traffic there",
                    piece.spec.hosts.first().map_or("*", String::as_str),
                    piece.spec.path.as_ref().map_or("/", |p| p.value.as_str())
                ));
                continue;
            };
            if selection.weight > 0 {
                for b in &mut main.spec.backends {
                    b.weight = Some(b.weight.unwrap_or(1) * (selection.total - selection.weight));
                }
                main.spec
                    .backends
                    .extend(piece.spec.backends.iter().map(|b| Backend {
                        weight: Some(b.weight.unwrap_or(1) * selection.weight),
                        ..b.clone()
                    }));
            }
            // The header's route goes first on a tie, as ingress-nginx
            // tries canary-by-header before canary-by-cookie.
            let header = selection
                .header
                .as_ref()
                .map(|(name, value, pattern)| HeaderMatch {
                    name: name.clone(),
                    value: value.clone(),
                    kind: pattern.then_some(ValueMatch::RegularExpression),
                });
            let cookie = selection.cookie.as_ref().map(|name| HeaderMatch {
                name: "cookie".to_owned(),
                // Names are checked to be letters, digits, `-`, `_`, `.`.
                value: format!("(?:.*; *)?{}=always(?: *;.*)?", name.replace('.', "\\.")),
                kind: Some(ValueMatch::RegularExpression),
            });
            for matched in header.into_iter().chain(cookie) {
                let mut spec = main.spec.clone();
                spec.backends = piece.spec.backends.clone();
                spec.headers = vec![matched];
                canary.pieces.push(Piece {
                    key: RouteKey {
                        rule: header_rule,
                        ..canary_key.clone()
                    },
                    spec,
                });
                header_rule += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
