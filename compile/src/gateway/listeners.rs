//! A Gateway's listeners: which are usable, and which routes each admits.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use pier_crds::gateway::{Gateway, LabelSelector, Listener};

use super::grants::Grants;
use super::{Cond, GROUP, ListenerReport};
use crate::tls::Secrets;

/// A listener that routes may attach to.
#[derive(Debug)]
pub(super) struct Usable<'a> {
    pub(super) listener: &'a Listener,
    /// Lower-cased; `None`: any host.
    pub(super) hostname: Option<String>,
    /// For HTTPS: the Secret (namespace, name) whose certificate it serves.
    pub(super) certificate: Option<(String, String)>,
    /// Index into the Gateway's listener reports.
    pub(super) report: usize,
}

/// Checks every listener of a Gateway: the usable ones, and a report for
/// each (its conditions; attached routes are counted later).
pub(super) fn check<'a>(
    gateway: &'a Gateway,
    secrets: &Secrets<'_>,
    grants: &Grants<'_>,
    now: Option<i64>,
) -> (Vec<Usable<'a>>, Vec<ListenerReport>) {
    let namespace = gateway.metadata.namespace.as_deref().unwrap_or("default");
    let mut usable = Vec::new();
    let mut reports = Vec::with_capacity(gateway.spec.listeners.len());
    for (i, listener) in gateway.spec.listeners.iter().enumerate() {
        let hostname = listener.hostname.as_deref().map(str::to_ascii_lowercase);
        let mut report = ListenerReport {
            name: listener.name.clone(),
            supported_kinds: Vec::new(),
            attached: 0,
            conditions: Vec::new(),
        };
        let conflicted = gateway.spec.listeners[..i].iter().any(|other| {
            other.port == listener.port
                && other.hostname.as_deref().map(str::to_ascii_lowercase) == hostname
        });
        let mut accepted = Cond::new("Accepted", true, "Accepted", "listener is valid");
        let mut refs = Cond::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "all references resolved",
        );
        let mut certificate = None;
        match listener.protocol.as_str() {
            "HTTP" => {}
            "HTTPS" => match tls_of(listener, namespace, secrets, grants, now) {
                Ok(secret) => certificate = Some(secret),
                Err((reason, message)) => refs = Cond::new("ResolvedRefs", false, reason, message),
            },
            other => {
                accepted = Cond::new(
                    "Accepted",
                    false,
                    "UnsupportedProtocol",
                    format!("protocol {other} is not supported; Pier serves HTTP and HTTPS"),
                )
            }
        }
        let kinds = listener
            .allowed_routes
            .as_ref()
            .map_or(&[][..], |a| &a.kinds[..]);
        let http_route = |k: &pier_crds::gateway::RouteGroupKind| {
            k.kind == "HTTPRoute" && k.group.as_deref().is_none_or(|g| g == GROUP)
        };
        if kinds.is_empty() || kinds.iter().any(http_route) {
            report.supported_kinds.push("HTTPRoute");
        }
        if kinds.iter().any(|k| !http_route(k)) && refs.status {
            refs = Cond::new(
                "ResolvedRefs",
                false,
                "InvalidRouteKinds",
                "only HTTPRoute can attach to Pier's listeners",
            );
        }
        let conflict = if conflicted {
            let why = "an earlier listener has the same port and hostname";
            accepted = Cond::new("Accepted", false, "HostnameConflict", why);
            Cond::new("Conflicted", true, "HostnameConflict", why)
        } else {
            Cond::new("Conflicted", false, "NoConflicts", "no conflicts")
        };
        // Kinds it cannot take are reported; the HTTPRoutes still attach.
        let refs_usable = refs.status || refs.reason == "InvalidRouteKinds";
        let good = accepted.status && refs_usable && !report.supported_kinds.is_empty();
        let programmed = if good {
            Cond::new(
                "Programmed",
                true,
                "Programmed",
                "served on the dataplane's listener for its protocol",
            )
        } else {
            Cond::new("Programmed", false, "Invalid", "the listener is not valid")
        };
        report.conditions = vec![accepted, refs, programmed, conflict];
        if good {
            usable.push(Usable {
                listener,
                hostname,
                certificate,
                report: i,
            });
        }
        reports.push(report);
    }
    (usable, reports)
}

/// The certificate Secret of an HTTPS listener, or the ResolvedRefs reason
/// and message.
fn tls_of(
    listener: &Listener,
    namespace: &str,
    secrets: &Secrets<'_>,
    grants: &Grants<'_>,
    now: Option<i64>,
) -> Result<(String, String), (&'static str, String)> {
    let tls = listener.tls.clone().unwrap_or_default();
    if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
        return Err((
            "UnsupportedValue",
            "tls.mode Passthrough is not supported; Pier terminates TLS".to_owned(),
        ));
    }
    let Some(first) = tls.certificate_refs.first() else {
        return Err((
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs".to_owned(),
        ));
    };
    if first.group.as_deref().is_some_and(|g| !g.is_empty())
        || first.kind.as_deref().is_some_and(|k| k != "Secret")
    {
        return Err((
            "InvalidCertificateRef",
            format!("certificateRef {} is not a core Secret", first.name),
        ));
    }
    let secret_ns = first.namespace.as_deref().unwrap_or(namespace);
    if secret_ns != namespace
        && !grants.allows("Gateway", namespace, "", "Secret", secret_ns, &first.name)
    {
        return Err((
            "RefNotPermitted",
            format!(
                "Secret {secret_ns}/{} is in another namespace and no ReferenceGrant there allows it",
                first.name
            ),
        ));
    }
    secrets
        .usable(secret_ns, &first.name, now)
        .map_err(|why| ("InvalidCertificateRef", why))?;
    Ok((secret_ns.to_owned(), first.name.clone()))
}

/// Whether a listener admits routes from `route_ns` (`allowedRoutes`).
pub(super) fn admits(
    listener: &Listener,
    gateway_ns: &str,
    route_ns: &str,
    namespaces: &BTreeMap<&str, &Arc<Namespace>>,
) -> bool {
    let from = listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match from.and_then(|f| f.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Selector" => {
            let labels = namespaces
                .get(route_ns)
                .and_then(|n| n.metadata.labels.as_ref());
            let empty = BTreeMap::new();
            selects(
                from.and_then(|f| f.selector.as_ref()),
                labels.unwrap_or(&empty),
            )
        }
        _ => route_ns == gateway_ns,
    }
}

/// Whether a label selector selects these labels; an absent one selects
/// nothing (Gateway API requires one with `Selector`).
fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().all(|e| {
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| e.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The host names a route gets on a listener: each of the route's that the
/// listener's hostname admits (narrowed to the listener's where the
/// route's wildcard is wider). `Some(empty)` means any host; `None`: no
/// overlap.
pub(super) fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let Some(listener) = listener else {
        return Some(route.iter().map(|h| h.to_ascii_lowercase()).collect());
    };
    if route.is_empty() {
        return Some(vec![listener.to_owned()]);
    }
    let below = |name: &str, wildcard: &str| {
        wildcard
            .strip_prefix('*')
            .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
    };
    let mut out: Vec<String> = Vec::new();
    for host in route {
        let host = host.to_ascii_lowercase();
        let overlap = if host == listener || below(&host, listener) {
            Some(host)
        } else if below(listener, &host) {
            Some(listener.to_owned())
        } else {
            None
        };
        if let Some(h) = overlap
            && !out.contains(&h)
        {
            out.push(h);
        }
    }
    (!out.is_empty()).then_some(out)
}
