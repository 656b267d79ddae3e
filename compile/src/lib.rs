//! The pure function from route resources to a [`Snapshot`]: the one
//! compiler behind every input (the controller's watched resources and the
//! dataplane's standalone routes directory).
//!
//! ```text
//!  StaticRoute, ProxyRoute,  ──► compile() ──► Compiled { snapshot, errors, unresolved }
//!  Services, EndpointSlices,      (pure)          │             │
//!  Secrets (API server or files)                  │             └─► status conditions / logs
//!                                                 ▼
//!                                  Snapshot { version, routes, certificates }
//! ```
//!
//! [`compile`] does no I/O: it validates each resource on its own, reports
//! the invalid ones as [`RouteError`]s and keeps every valid one, so one bad
//! resource never takes the others down. This crate is the only one beside
//! the API types that knows Kubernetes objects; the snapshot it produces
//! (`pier-snapshot`) does not, so the dataplane's serving core links no
//! `kube` or `k8s-openapi`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pier_crds::gateway::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use pier_crds::{PathMatchType, ProxyRoute, StaticRoute, Time};

use pier_snapshot::fnv::FnvMap;
use pier_snapshot::path::MAX_PATH_LEN;
use pier_snapshot::{
    Action, Matches, PathRule, Route, RouteKey, RouteKind, Snapshot, StaticAction, path_regex,
};
pub use pier_snapshot::{Compiled, Invalid, RouteError, Unresolved, Warning};

/// Longest host name DNS allows.
const MAX_HOST_LEN: usize = 253;

/// The resources a snapshot is compiled from, shared rather than owned:
/// the controller hands over the objects of its reflector stores as they
/// are (cloning 10,000 objects with their managed fields took longer than
/// compiling them).
#[derive(Clone, Debug, Default)]
pub struct Resources {
    /// Every `StaticRoute` in scope.
    pub static_routes: Vec<Arc<StaticRoute>>,
    /// Every `ProxyRoute` in scope.
    pub proxy_routes: Vec<Arc<ProxyRoute>>,
    /// The Ingresses this Pier serves (see [`ingress::claims`]).
    pub ingresses: Vec<Arc<Ingress>>,
    /// Services that ProxyRoutes may name.
    pub services: Vec<Arc<Service>>,
    /// Their EndpointSlices (`discovery.k8s.io/v1`).
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// `kubernetes.io/tls` Secrets that routes may name in `tls`.
    pub secrets: Vec<Arc<Secret>>,
    /// Pier's GatewayClasses (see [`gateway::ours`]).
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    /// Gateways; those of Pier's classes are served.
    pub gateways: Vec<Arc<Gateway>>,
    /// HTTPRoutes; those attached to Pier's Gateways are served.
    pub http_routes: Vec<Arc<HTTPRoute>>,
    /// ReferenceGrants, for references into other namespaces.
    pub reference_grants: Vec<Arc<ReferenceGrant>>,
    /// Namespaces, for listeners that select routes by namespace labels.
    pub namespaces: Vec<Arc<Namespace>>,
    /// The time certificates are checked against (Unix seconds); `None`
    /// checks no validity period. Passed in: the compiler reads no clock.
    pub now: Option<i64>,
}

/// Compiles route resources into a snapshot. Pure: no I/O, no clock, and the
/// same resources in any order give the same snapshot.
///
/// Each resource is validated on its own; an invalid one becomes a
/// [`RouteError`] and the rest are kept. When two routes claim the same host
/// and path, the older one (by `creationTimestamp`, then namespace/name)
/// keeps them and the other is rejected as a [`Invalid::Conflict`].
pub fn compile(resources: &Resources) -> Compiled {
    let mut candidates = Vec::with_capacity(resources.static_routes.len());
    let mut errors = Vec::new();

    let mut unresolved = Vec::new();
    let mut add = |kind: RouteKind,
                   metadata: &ObjectMeta,
                   tls_spec: Option<pier_crds::RouteTls>,
                   build: &dyn Fn(&RouteKey) -> Built| {
        let key = RouteKey {
            kind,
            namespace: metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            name: metadata.name.clone().unwrap_or_default(),
            rule: 0,
        };
        let generation = metadata.generation;
        match build(&key) {
            Ok((route, problem)) => candidates.push(Candidate {
                unresolved: problem,
                created: metadata.creation_timestamp.clone(),
                generation,
                tls: tls_spec,
                tls_namespace: None,
                route,
            }),
            Err(invalid) => errors.push(RouteError {
                key,
                generation,
                invalid,
            }),
        }
    };
    let secrets = tls::Secrets::index(&resources.secrets);
    let backends = backends::Backends::index(&resources.services, &resources.endpoint_slices);
    for resource in &resources.static_routes {
        add(
            RouteKind::StaticRoute,
            &resource.metadata,
            resource.spec.tls.clone(),
            &|key| static_route(key, resource, &secrets, &backends),
        );
    }
    for resource in &resources.proxy_routes {
        add(
            RouteKind::ProxyRoute,
            &resource.metadata,
            resource.spec.tls.clone(),
            &|key| proxy::proxy_route(key, resource, &backends, &secrets),
        );
    }
    let mut warnings = Vec::new();
    let mut out = lowered::Out {
        backends: &backends,
        secrets: &secrets,
        candidates: &mut candidates,
        errors: &mut errors,
    };
    lowered::ingresses(&resources.ingresses, &mut out, &mut warnings);
    let (routes, _) = gateway::lower(resources, &secrets);
    lowered::http_routes(routes, &mut out);

    // Older routes claim their host/path pairs first.
    candidates.sort_by(|a, b| {
        let a_key = (a.created.is_none(), &a.created, &a.route.key);
        a_key.cmp(&(b.created.is_none(), &b.created, &b.route.key))
    });
    let mut claimed: FnvMap<(&str, &PathRule, &Matches), &RouteKey> = FnvMap::default();
    claimed.reserve(candidates.len());
    let mut accepted = vec![false; candidates.len()];
    'routes: for (i, candidate) in candidates.iter().enumerate() {
        let route = &candidate.route;
        let hosts: Vec<&str> = if route.hosts.is_empty() {
            vec!["*"]
        } else {
            route.hosts.iter().map(String::as_str).collect()
        };
        for host in &hosts {
            if let Some(winner) = claimed.get(&(*host, &route.path, &route.matches)) {
                errors.push(RouteError {
                    key: route.key.resource(),
                    generation: candidate.generation,
                    invalid: Invalid::Conflict {
                        host: (*host).to_owned(),
                        path: route.path.value().to_owned(),
                        winner: (*winner).clone(),
                    },
                });
                continue 'routes;
            }
        }
        for host in hosts {
            claimed.insert((host, &route.path, &route.matches), &route.key);
        }
        accepted[i] = true;
    }
    drop(claimed);

    let mut routes: Vec<Route> = Vec::with_capacity(candidates.len());
    let mut certificates = tls::Certificates::new(&secrets, resources.now);
    let winners = candidates
        .into_iter()
        .zip(accepted)
        .filter_map(|(candidate, accepted)| accepted.then_some(candidate));
    for candidate in winners {
        let mut route = candidate.route;
        let mut problem = candidate.unresolved;
        if let Some(spec) = &candidate.tls {
            let namespace = candidate.tls_namespace.as_deref();
            match certificates.resolve(&route, namespace.unwrap_or(&route.key.namespace), spec) {
                Ok(tls) => route.tls = Some(tls),
                Err(message) => {
                    problem = Some(match problem {
                        Some(mut earlier) => {
                            earlier.message = format!("{}; {message}", earlier.message);
                            earlier
                        }
                        None => Unresolved {
                            key: route.key.clone(),
                            reason: "InvalidCertificateRef",
                            message,
                        },
                    });
                }
            }
        }
        unresolved.extend(problem);
        routes.push(route);
    }
    let unresolved = by_resource(unresolved);
    errors.sort_by(|a, b| a.key.cmp(&b.key));
    warnings.sort_by(|a, b| a.key.cmp(&b.key));
    Compiled {
        snapshot: Snapshot::with_certificates(routes, certificates.into_used()),
        errors,
        unresolved,
        warnings,
    }
}

/// One unresolved entry per resource: an Ingress's routes each report
/// theirs, and its status has one place for them.
fn by_resource(mut unresolved: Vec<Unresolved>) -> Vec<Unresolved> {
    for u in &mut unresolved {
        u.key = u.key.resource();
    }
    unresolved.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out: Vec<Unresolved> = Vec::with_capacity(unresolved.len());
    for u in unresolved {
        match out.last_mut() {
            Some(last) if last.key == u.key => {
                if !last.message.split("; ").any(|m| m == u.message) {
                    last.message = format!("{}; {}", last.message, u.message);
                }
            }
            _ => out.push(u),
        }
    }
    out
}

/// A route compiled from one resource, with what did not resolve.
type Built = Result<(Route, Option<Unresolved>), Invalid>;

struct Candidate {
    unresolved: Option<Unresolved>,
    created: Option<Time>,
    generation: Option<i64>,
    /// The route's `tls`, resolved once conflicts are settled.
    tls: Option<pier_crds::RouteTls>,
    /// Where its Secret is when not in the route's namespace (a Gateway's).
    tls_namespace: Option<String>,
    route: Route,
}

fn static_route(
    key: &RouteKey,
    resource: &StaticRoute,
    secrets: &tls::Secrets<'_>,
    backends: &backends::Backends<'_>,
) -> Result<(Route, Option<Unresolved>), Invalid> {
    if key.name.is_empty() {
        return Err(Invalid::Unnamed);
    }
    let spec = &resource.spec;
    let hosts = hosts(&spec.hosts)?;
    let path = path_rule(spec.path.as_ref())?;
    let root = root(&spec.root)?;
    let index = match &spec.index {
        None => "index.html".to_owned(),
        Some(index) => file_name(index).map_err(|why| Invalid::Index {
            value: index.clone(),
            why,
        })?,
    };
    tls::check_spec(spec.tls.as_ref())?;
    let cache_control = match &spec.cache_control {
        None => None,
        Some(value) => Some(header_value(value).map_err(|why| Invalid::HeaderValue {
            field: "cacheControl",
            why,
        })?),
    };
    let fallback = match &spec.fallback {
        None => None,
        Some(value) => Some(clean_path(value).map_err(|why| Invalid::Fallback {
            value: value.clone(),
            why,
        })?),
    };
    if fallback.as_deref() == Some("/") {
        return Err(Invalid::Fallback {
            value: "/".to_owned(),
            why: "must name a file",
        });
    }
    let mut policy = policy::of_spec(
        spec.access.as_ref(),
        spec.cors.as_ref(),
        spec.redirect.as_ref(),
        &path,
    )?;
    policy.basic_auth = auth::basic(spec.basic_auth.as_ref(), &key.namespace, secrets)?;
    let mut unresolved = None;
    if let Some((auth, problem)) =
        forward_auth::forward(spec.forward_auth.as_ref(), &key.namespace, backends)?
    {
        policy.forward_auth = Some(auth);
        unresolved = problem.map(|(reason, message)| Unresolved {
            key: key.clone(),
            reason,
            message,
        });
    }
    let route = Route {
        key: key.clone(),
        hosts,
        path,
        matches: Matches::default(),
        tls: None,
        policy,
        action: Action::Static(StaticAction {
            root,
            index,
            cache_control,
            precompressed: spec.precompressed,
            fallback,
        }),
    };
    Ok((route, unresolved))
}

fn hosts(given: &[String]) -> Result<Vec<String>, Invalid> {
    let mut hosts = Vec::with_capacity(given.len());
    for value in given {
        let host = host(value).map_err(|why| Invalid::Host {
            value: value.clone(),
            why,
        })?;
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts.sort();
    Ok(hosts)
}

/// Validates and lower-cases a host name or `*.` wildcard.
fn host(value: &str) -> Result<String, &'static str> {
    let lower = value.trim_end_matches('.').to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    if name.is_empty() {
        return Err("is empty; leave hosts empty to match any host");
    }
    if lower.len() > MAX_HOST_LEN {
        return Err("is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("has a label that is empty or longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(
                "must be a DNS name of letters, digits and hyphens, with at most one leading `*.`",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label that starts or ends with a hyphen");
        }
    }
    Ok(lower)
}

fn path_rule(given: Option<&pier_crds::PathMatch>) -> Result<PathRule, Invalid> {
    let Some(given) = given else {
        return Ok(PathRule::Prefix("/".to_owned()));
    };
    let invalid = |why| Invalid::Path {
        value: given.value.clone(),
        why,
    };
    if given.kind == PathMatchType::RegularExpression {
        path_regex(&given.value).map_err(invalid)?;
        return Ok(PathRule::Regex(given.value.clone()));
    }
    let clean = clean_path(&given.value).map_err(invalid)?;
    Ok(match given.kind {
        PathMatchType::Exact => PathRule::Exact(given.value.clone()),
        _ => PathRule::Prefix(clean),
    })
}

/// Checks a route path and removes its trailing slash (but for `/`).
fn clean_path(value: &str) -> Result<String, &'static str> {
    if !value.starts_with('/') {
        return Err("must start with `/`");
    }
    if value.len() > MAX_PATH_LEN {
        return Err("is longer than 1024 characters");
    }
    if value.bytes().any(|b| b.is_ascii_control() || b == b'\\') {
        return Err("must not contain control characters or backslashes");
    }
    if value.contains(['%', '?', '#']) {
        return Err("must be a decoded path without `%`, `?` or `#`");
    }
    let trimmed = value.trim_end_matches('/');
    if trimmed
        .split('/')
        .skip(1)
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err("must not contain empty, `.` or `..` segments");
    }
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

fn root(value: &str) -> Result<String, Invalid> {
    let invalid = |why| Invalid::Root {
        value: value.to_owned(),
        why,
    };
    if !value.starts_with('/') {
        return Err(invalid("must be an absolute path"));
    }
    if value.bytes().any(|b| b.is_ascii_control()) {
        return Err(invalid("must not contain control characters"));
    }
    if value.split('/').any(|segment| segment == "..") {
        return Err(invalid("must not contain `..`"));
    }
    let trimmed = value.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

fn file_name(value: &str) -> Result<String, &'static str> {
    if value.is_empty() || value == "." || value == ".." {
        return Err("must be a file name");
    }
    if value
        .bytes()
        .any(|b| b == b'/' || b == b'\\' || b.is_ascii_control())
    {
        return Err("must be a file name without slashes or control characters");
    }
    Ok(value.to_owned())
}

/// A header value: visible ASCII and spaces, no CR, LF or NUL.
pub(crate) fn header_value(value: &str) -> Result<String, &'static str> {
    if value
        .bytes()
        .any(|b| b == b'\r' || b == b'\n' || b == 0 || (b.is_ascii_control() && b != b'\t'))
    {
        return Err("must not contain CR, LF, NUL or other control characters");
    }
    Ok(value.trim().to_owned())
}

mod auth;
mod backends;
mod balancing;
mod forward_auth;
pub mod gateway;
pub mod ingress;
mod lowered;
mod policy;
mod proxy;
mod tls;

#[cfg(test)]
mod tests;
