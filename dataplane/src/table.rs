//! The active routing table: a snapshot compiled for serving. Built off the
//! request path when a snapshot arrives, then swapped in atomically; requests
//! read it lock-free.

use std::collections::HashMap;
use std::sync::Arc;

use pier_snapshot::{Action, RouteKey, RouteKind, Snapshot};

use crate::certs::Certificates;
use crate::files::StaticFiles;
use crate::filter::Filters;
use crate::metrics::{ConnectionGauges, RouteMetrics};
use crate::proxy::Proxy;
use crate::routing::Router;

/// One snapshot, ready to serve.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) snapshot: Snapshot,
    pub(crate) router: Router,
    pub(crate) routes: Vec<Entry>,
    /// Certificates by SNI name.
    pub(crate) certificates: Certificates,
}

/// A route with its handler and counters.
#[derive(Debug)]
pub(crate) struct Entry {
    /// `namespace/name`, escaped for a Prometheus label.
    pub(crate) label: Box<str>,
    pub(crate) handler: Handler,
    pub(crate) metrics: Arc<RouteMetrics>,
    /// The route's filters, phase by phase.
    pub(crate) filters: Filters,
}

/// What a route does with a request.
#[derive(Debug)]
pub(crate) enum Handler {
    Static(StaticFiles),
    /// Shared: each try of a request holds it until the try ends, which
    /// may be after the table was replaced.
    Proxy(Arc<Proxy>),
}

impl Table {
    /// Compiles a snapshot for serving, keeping the counters of routes that
    /// `previous` already had.
    pub(crate) fn new(
        snapshot: Snapshot,
        previous: Option<&Table>,
        gauges: &ConnectionGauges,
    ) -> Self {
        let mut old: HashMap<&RouteKey, &Entry> = previous
            .map(|t| {
                t.snapshot
                    .routes
                    .iter()
                    .map(|r| &r.key)
                    .zip(&t.routes)
                    .collect()
            })
            .unwrap_or_default();
        let routes = snapshot
            .routes
            .iter()
            .map(|route| {
                let old = old.remove(&route.key);
                Entry {
                    label: label(&route.key),
                    handler: match &route.action {
                        Action::Static(action) => Handler::Static(StaticFiles::new(action)),
                        Action::Proxy(action) => {
                            let previous = old.and_then(|e| match &e.handler {
                                Handler::Proxy(p) => Some(&**p),
                                Handler::Static(_) => None,
                            });
                            Handler::Proxy(Arc::new(Proxy::new(action, previous, gauges)))
                        }
                    },
                    metrics: old.map(|e| Arc::clone(&e.metrics)).unwrap_or_default(),
                    filters: Filters::compile(route),
                }
            })
            .collect();
        Self {
            router: Router::new(&snapshot),
            certificates: Certificates::new(&snapshot.certificates),
            snapshot,
            routes,
        }
    }

    /// A table that routes nothing, active until the first snapshot.
    pub(crate) fn empty() -> Self {
        Self::new(Snapshot::empty(), None, &ConnectionGauges::default())
    }
}

/// The `route` label of a route's series: `namespace/name` for Pier's
/// own kinds, `ingress:namespace/name#rule` for an Ingress's routes (and
/// `httproute:` for an HTTPRoute's), so
/// that no two routes of a snapshot share a series (an Ingress has one
/// route per path, and may share its name with a ProxyRoute it replaces).
fn label(key: &RouteKey) -> Box<str> {
    let mut raw = String::with_capacity(key.namespace.len() + key.name.len() + 16);
    let numbered = match key.kind {
        RouteKind::Ingress => Some("ingress:"),
        RouteKind::HttpRoute => Some("httproute:"),
        _ => None,
    };
    if let Some(kind) = numbered {
        raw.push_str(kind);
    }
    raw.push_str(&key.namespace);
    raw.push('/');
    raw.push_str(&key.name);
    if numbered.is_some() {
        raw.push('#');
        raw.push_str(&key.rule.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use pier_snapshot::{RouteKey, RouteKind};

    #[test]
    fn every_route_of_a_snapshot_has_its_own_label() {
        let ingress = |rule| RouteKey {
            rule,
            ..RouteKey::new(RouteKind::Ingress, "shop", "web")
        };
        let labels = [
            super::label(&RouteKey::new(RouteKind::ProxyRoute, "shop", "web")),
            super::label(&ingress(0)),
            super::label(&ingress(1)),
            super::label(&RouteKey::new(RouteKind::StaticRoute, "a\"b", "c")),
        ];
        assert_eq!(&*labels[0], "shop/web");
        assert_eq!(&*labels[1], "ingress:shop/web#0");
        assert_eq!(&*labels[2], "ingress:shop/web#1");
        assert_eq!(&*labels[3], "a\\\"b/c", "escaped for the text format");
    }
}
