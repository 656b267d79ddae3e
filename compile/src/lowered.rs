//! The inputs that are lowered to `ProxyRoute` specs (Ingress, HTTPRoute),
//! compiled by the same function as a `ProxyRoute`. A resource is taken
//! whole or not at all: one bad piece refuses it, with the reason.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::Ingress;
use pier_crds::{ProxyRoute, ProxyRouteSpec, Time};
use pier_snapshot::{Invalid, RouteError, RouteKey, RouteKind, Warning};

use super::backends::Backends;
use super::tls::Secrets;
use super::{Candidate, gateway, ingress, proxy};

/// Where compiled pieces go.
pub(super) struct Out<'a, 'b> {
    pub(super) backends: &'a Backends<'b>,
    pub(super) secrets: &'a Secrets<'b>,
    pub(super) candidates: &'a mut Vec<Candidate>,
    pub(super) errors: &'a mut Vec<RouteError>,
}

/// One piece: its key, its spec, where its `tls` Secret is when not in its
/// own namespace, and its backends' namespaces likewise.
type Piece = (
    RouteKey,
    ProxyRouteSpec,
    Option<String>,
    Vec<Option<String>>,
);

impl Out<'_, '_> {
    /// Compiles a resource's pieces: all become candidates, or the
    /// resource is refused.
    fn pieces(
        &mut self,
        key: RouteKey,
        generation: Option<i64>,
        created: Option<Time>,
        pieces: impl Iterator<Item = Piece>,
    ) {
        let built: Result<Vec<_>, Invalid> = pieces
            .map(|(piece_key, spec, tls_namespace, namespaces)| {
                let tls = spec.tls.clone();
                let resource = ProxyRoute::new(&key.name, spec);
                let (backends, secrets) = (self.backends, self.secrets);
                proxy::proxy_route_in(&piece_key, &resource, &namespaces, backends, secrets)
                    .map(|(route, problem)| (route, problem, tls, tls_namespace))
            })
            .collect();
        match built {
            Ok(routes) => self.candidates.extend(routes.into_iter().map(
                |(route, problem, tls, tls_namespace)| Candidate {
                    unresolved: problem,
                    created: created.clone(),
                    generation,
                    tls,
                    tls_namespace,
                    route,
                },
            )),
            Err(invalid) => self.errors.push(RouteError {
                key,
                generation,
                invalid,
            }),
        }
    }
}

/// Lowers the Ingresses (canaries merged into their main Ingress's routes)
/// and compiles them.
pub(super) fn ingresses(
    given: &[Arc<Ingress>],
    out: &mut Out<'_, '_>,
    warnings: &mut Vec<Warning>,
) {
    let mut lowered = Vec::with_capacity(given.len());
    let mut meta = Vec::with_capacity(given.len());
    for resource in given {
        let metadata = &resource.metadata;
        let key = RouteKey::new(
            RouteKind::Ingress,
            metadata.namespace.as_deref().unwrap_or("default"),
            metadata.name.as_deref().unwrap_or_default(),
        );
        let generation = metadata.generation;
        let result = if key.name.is_empty() {
            Err(Invalid::Unnamed)
        } else {
            ingress::lower(&key, resource, out.backends)
        };
        match result {
            Ok(l) => {
                meta.push((generation, metadata.creation_timestamp.clone()));
                lowered.push((key, l));
            }
            Err(invalid) => out.errors.push(RouteError {
                key,
                generation,
                invalid,
            }),
        }
    }
    ingress::merge_canaries(&mut lowered);
    for ((key, l), (generation, created)) in lowered.into_iter().zip(meta) {
        warnings.extend(l.warnings.into_iter().map(|message| Warning {
            key: key.clone(),
            reason: if message.starts_with("no main Ingress") {
                "CanaryUnmatched"
            } else {
                "UnsupportedAnnotation"
            },
            message,
        }));
        let pieces = l
            .pieces
            .into_iter()
            .map(|p| (p.key, p.spec, None, Vec::new()));
        out.pieces(key, generation, created, pieces);
    }
}

/// Compiles the HTTPRoutes attached to Pier's Gateways.
pub(super) fn http_routes(lowered: Vec<gateway::Lowered>, out: &mut Out<'_, '_>) {
    for l in lowered {
        if l.key.name.is_empty() {
            out.errors.push(RouteError {
                key: l.key,
                generation: l.generation,
                invalid: Invalid::Unnamed,
            });
            continue;
        }
        let pieces = l
            .pieces
            .into_iter()
            .map(|p| (p.key, p.spec, p.tls_namespace, p.namespaces));
        out.pieces(l.key, l.generation, l.created, pieces);
    }
}
