//! Gateway API v1 (standard channel): GatewayClass, Gateway, HTTPRoute and
//! ReferenceGrant.
//!
//! An HTTPRoute is lowered to the `ProxyRoute` specs it means (one per rule
//! and match, see [`rules`]) and compiled by the same function as a
//! `ProxyRoute`: one model, one set of checks. What Gateway API adds is
//! attachment: which listeners of which Gateways take a route, and so its
//! host names and certificate. [`report`] gives every status the spec asks
//! for, from the same analysis.
//!
//! Pier's dataplane has one plain and one TLS listener: an `HTTP` listener
//! of a Gateway is served on the first, an `HTTPS` one on the second,
//! whatever its port number. A route attached only to `HTTPS` listeners
//! answers plain HTTP with a redirect to HTTPS.

mod grants;
mod listeners;
mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use pier_crds::gateway::{Gateway, GatewayClass, HTTPRoute, ParentRef};
use pier_crds::{ProxyRouteSpec, RouteTls, Time};
use pier_snapshot::{Compiled, Invalid, RouteKey, RouteKind};

use self::grants::Grants;
use super::Resources;
use super::tls::Secrets;

pub use pier_crds::gateway::GROUP;

/// The `controllerName` of Pier's GatewayClasses.
pub const CONTROLLER: &str = "pier.dev/gateway-controller";

/// The GatewayClasses `controller` runs.
pub fn ours(classes: &[Arc<GatewayClass>], controller: &str) -> Vec<Arc<GatewayClass>> {
    classes
        .iter()
        .filter(|c| c.spec.controller_name == controller)
        .cloned()
        .collect()
}

/// One status condition, before the controller stamps it with a
/// generation and a transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// `Accepted`, `ResolvedRefs`, `Programmed`, `Conflicted`.
    pub kind: &'static str,
    /// The condition's status.
    pub status: bool,
    /// Gateway API's reason.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

impl Cond {
    /// A condition of `kind` with this status, reason and message.
    pub fn new(
        kind: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Every Gateway API status Pier writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Pier's GatewayClasses.
    pub classes: Vec<ClassReport>,
    /// The Gateways of those classes.
    pub gateways: Vec<GatewayReport>,
    /// The HTTPRoutes that name one of those Gateways.
    pub routes: Vec<RouteReport>,
}

/// A GatewayClass's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassReport {
    /// Its name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `Accepted`.
    pub conditions: Vec<Cond>,
}

/// A Gateway's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `Accepted`, `Programmed`.
    pub conditions: Vec<Cond>,
    /// One per listener, in spec order.
    pub listeners: Vec<ListenerReport>,
}

/// A listener's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerReport {
    /// Its name.
    pub name: String,
    /// Route kinds it takes (`HTTPRoute` or none).
    pub supported_kinds: Vec<&'static str>,
    /// Routes attached.
    pub attached: i32,
    /// `Accepted`, `ResolvedRefs`, `Programmed`, `Conflicted`.
    pub conditions: Vec<Cond>,
}

/// An HTTPRoute's status: one entry per parent of Pier's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Per parent reference to one of Pier's Gateways.
    pub parents: Vec<ParentReport>,
}

/// One parent's view of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentReport {
    /// The reference as the route gives it.
    pub parent: ParentRef,
    /// `Accepted`, `ResolvedRefs`.
    pub conditions: Vec<Cond>,
}

/// One route an HTTPRoute asks for, in `ProxyRoute`'s terms.
#[derive(Debug)]
pub(crate) struct Piece {
    pub(crate) key: RouteKey,
    pub(crate) spec: ProxyRouteSpec,
    /// The namespace of the `tls` Secret (the Gateway's).
    pub(crate) tls_namespace: Option<String>,
    /// Per backend: its Service's namespace when not the route's.
    pub(crate) namespaces: Vec<Option<String>>,
}

/// An HTTPRoute lowered, with what its status needs.
#[derive(Debug)]
pub(crate) struct Lowered {
    pub(crate) key: RouteKey,
    pub(crate) generation: Option<i64>,
    pub(crate) created: Option<Time>,
    /// Empty when no parent accepted it, or it asks for what Pier lacks.
    pub(crate) pieces: Vec<Piece>,
}

/// Attachment: every HTTPRoute's pieces, and the reports before the
/// compile results (backends found, conflicts) are known.
pub(crate) fn lower(resources: &Resources, secrets: &Secrets<'_>) -> (Vec<Lowered>, Report) {
    let grants = Grants(&resources.reference_grants);
    let mut report = Report::default();
    let classes: BTreeMap<&str, &GatewayClass> = resources
        .gateway_classes
        .iter()
        .filter_map(|c| Some((c.metadata.name.as_deref()?, &**c)))
        .collect();
    for (name, class) in &classes {
        let accepted = match class.spec.parameters_ref {
            None => Cond::new("Accepted", true, "Accepted", "Pier runs this class"),
            Some(_) => Cond::new(
                "Accepted",
                false,
                "InvalidParameters",
                "Pier's GatewayClasses take no parametersRef",
            ),
        };
        report.classes.push(ClassReport {
            name: (*name).to_owned(),
            generation: class.metadata.generation,
            conditions: vec![accepted],
        });
    }
    let namespaces: BTreeMap<&str, &Arc<Namespace>> = resources
        .namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n)))
        .collect();
    // Each of Pier's Gateways with its usable listeners.
    let mut gateways = Vec::new();
    for gateway in &resources.gateways {
        let class = classes.get(gateway.spec.gateway_class_name.as_str());
        if class.is_none_or(|c| c.spec.parameters_ref.is_some()) {
            continue;
        }
        let (usable, listeners) = listeners::check(gateway, secrets, &grants, resources.now);
        let accepted = if !gateway.spec.addresses.is_empty() {
            Cond::new(
                "Accepted",
                false,
                "UnsupportedAddress",
                "spec.addresses is not supported; clients reach the dataplane Service",
            )
        } else if usable.is_empty() {
            Cond::new(
                "Accepted",
                false,
                "ListenersNotValid",
                "no listener is valid",
            )
        } else {
            Cond::new("Accepted", true, "Accepted", "Gateway is valid")
        };
        let programmed = if accepted.status {
            Cond::new("Programmed", true, "Programmed", "served by the dataplane")
        } else {
            Cond::new(
                "Programmed",
                false,
                "Invalid",
                "the Gateway is not accepted",
            )
        };
        let served = accepted.status;
        report.gateways.push(GatewayReport {
            namespace: namespace_of(&gateway.metadata.namespace).to_owned(),
            name: gateway.metadata.name.clone().unwrap_or_default(),
            generation: gateway.metadata.generation,
            conditions: vec![accepted, programmed],
            listeners,
        });
        gateways.push((&**gateway, if served { usable } else { Vec::new() }));
    }
    let mut lowered = Vec::new();
    for route in &resources.http_routes {
        if let Some((l, r)) = lower_route(route, &gateways, &namespaces, &grants, &mut report) {
            lowered.push(l);
            report.routes.push(r);
        }
    }
    (lowered, report)
}

fn namespace_of(given: &Option<String>) -> &str {
    given.as_deref().unwrap_or("default")
}

/// Attaches one HTTPRoute and lowers its rules; `None` when it names none
/// of Pier's Gateways.
fn lower_route(
    route: &HTTPRoute,
    gateways: &[(&Gateway, Vec<listeners::Usable<'_>>)],
    namespaces: &BTreeMap<&str, &Arc<Namespace>>,
    grants: &Grants<'_>,
    report: &mut Report,
) -> Option<(Lowered, RouteReport)> {
    let route_ns = namespace_of(&route.metadata.namespace);
    let name = route.metadata.name.clone().unwrap_or_default();
    let key = RouteKey::new(RouteKind::HttpRoute, route_ns, &name);
    let mut parents = Vec::new();
    // Host sets over every accepting listener: `None` once one takes any host.
    let mut hosts: Option<Vec<String>> = Some(Vec::new());
    let mut any_attached = false;
    let (mut plain, mut certificate) = (false, None);
    for parent in &route.spec.parent_refs {
        if parent.group.as_deref().is_some_and(|g| g != GROUP)
            || parent.kind.as_deref().is_some_and(|k| k != "Gateway")
        {
            continue;
        }
        let gw_ns = parent.namespace.as_deref().unwrap_or(route_ns);
        let Some((_, usable)) = gateways.iter().find(|(g, _)| {
            namespace_of(&g.metadata.namespace) == gw_ns
                && g.metadata.name.as_deref() == Some(parent.name.as_str())
        }) else {
            continue;
        };
        let named: Vec<&listeners::Usable<'_>> = usable
            .iter()
            .filter(|u| {
                parent
                    .section_name
                    .as_ref()
                    .is_none_or(|s| *s == u.listener.name)
            })
            .filter(|u| parent.port.is_none_or(|p| p == u.listener.port))
            .collect();
        let allowed: Vec<_> = named
            .iter()
            .filter(|u| listeners::admits(u.listener, gw_ns, route_ns, namespaces))
            .collect();
        let mut taken = Vec::new();
        for u in &allowed {
            if let Some(h) = listeners::intersect(u.hostname.as_deref(), &route.spec.hostnames) {
                taken.push((u, h));
            }
        }
        let accepted = if named.is_empty() {
            Cond::new(
                "Accepted",
                false,
                "NoMatchingParent",
                "no valid listener matches the sectionName and port",
            )
        } else if allowed.is_empty() {
            Cond::new(
                "Accepted",
                false,
                "NotAllowedByListeners",
                "the listeners' allowedRoutes do not admit this route",
            )
        } else if taken.is_empty() {
            Cond::new(
                "Accepted",
                false,
                "NoMatchingListenerHostname",
                "no listener hostname matches the route's hostnames",
            )
        } else {
            Cond::new("Accepted", true, "Accepted", "route is attached")
        };
        if accepted.status {
            any_attached = true;
            let gw_index = report
                .gateways
                .iter()
                .position(|g| g.namespace == gw_ns && g.name == parent.name);
            for (u, h) in &taken {
                if let Some(g) = gw_index.map(|i| &mut report.gateways[i])
                    && let Some(l) = g.listeners.get_mut(u.report)
                {
                    l.attached += 1;
                }
                match (&mut hosts, h.is_empty()) {
                    (_, true) => hosts = None,
                    (Some(all), false) => all.extend(h.iter().cloned()),
                    (None, false) => {}
                }
                match &u.certificate {
                    Some(c) => {
                        certificate.get_or_insert(c.clone());
                    }
                    None => plain = true,
                }
            }
        }
        parents.push(ParentReport {
            parent: parent.clone(),
            conditions: vec![accepted],
        });
    }
    if parents.is_empty() {
        return None;
    }
    let mut pieces = Vec::new();
    let mut refs = Vec::new();
    let mut unsupported = None;
    if any_attached {
        let hosts = hosts.map(|mut h| {
            h.sort();
            h.dedup();
            h
        });
        for rule in &route.spec.rules {
            match rules::lower(route_ns, rule, grants) {
                Ok(l) => {
                    refs.extend(l.refs);
                    for mut spec in l.specs {
                        spec.hosts = hosts.clone().unwrap_or_default();
                        spec.tls = certificate.as_ref().map(|(_, secret)| RouteTls {
                            secret_name: secret.clone(),
                            redirect: !plain,
                            hsts: None,
                        });
                        let rule = u32::try_from(pieces.len()).unwrap_or(u32::MAX);
                        pieces.push(Piece {
                            key: RouteKey {
                                rule,
                                ..key.clone()
                            },
                            spec,
                            tls_namespace: certificate.as_ref().map(|(ns, _)| ns.clone()),
                            namespaces: l.namespaces.clone(),
                        });
                    }
                }
                Err(why) => unsupported = Some(why),
            }
        }
    }
    if let Some(why) = &unsupported {
        pieces.clear();
        for p in &mut parents {
            if p.conditions[0].status {
                p.conditions[0] = Cond::new("Accepted", false, "UnsupportedValue", why.clone());
            }
        }
    }
    let resolved = match refs.first() {
        None => Cond::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "all references resolved",
        ),
        Some((reason, _)) => Cond::new(
            "ResolvedRefs",
            false,
            reason,
            refs.iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    for p in &mut parents {
        p.conditions.push(resolved.clone());
    }
    let lowered = Lowered {
        key,
        generation: route.metadata.generation,
        created: route.metadata.creation_timestamp.clone(),
        pieces,
    };
    let route_report = RouteReport {
        namespace: route_ns.to_owned(),
        name,
        generation: route.metadata.generation,
        parents,
    };
    Some((lowered, route_report))
}

/// Every Gateway API status, from the resources and what compiling them
/// gave: an HTTPRoute the compiler refused is not accepted, and a Service
/// it did not find leaves its references unresolved.
pub fn report(resources: &Resources, compiled: &Compiled) -> Report {
    let secrets = Secrets::index(&resources.secrets);
    let (_, mut report) = lower(resources, &secrets);
    for route in &mut report.routes {
        let key = RouteKey::new(RouteKind::HttpRoute, &route.namespace, &route.name);
        let refused = compiled
            .errors
            .iter()
            .find(|e| e.key == key && !matches!(e.invalid, Invalid::Conflict { .. }));
        let missing = compiled
            .unresolved
            .iter()
            .find(|u| u.key == key && u.reason == "BackendNotFound");
        for parent in &mut route.parents {
            if let Some(error) = refused
                && parent.conditions[0].status
            {
                parent.conditions[0] = Cond::new(
                    "Accepted",
                    false,
                    "UnsupportedValue",
                    error.invalid.to_string(),
                );
            }
            if let Some(u) = missing
                && parent.conditions[1].status
            {
                parent.conditions[1] =
                    Cond::new("ResolvedRefs", false, "BackendNotFound", u.message.clone());
            }
        }
    }
    report
}

#[cfg(test)]
mod tests;
