//! The reflector stores the reconcile loop reads, and the watches that fill
//! them and wake it.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::Api;
use kube::Resource;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use pier_crds::gateway::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use pier_crds::{ProxyRoute, StaticRoute};
use pier_snapshot::{RouteKey, RouteKind};
use tokio::sync::{Notify, watch};

/// Mirrors `api` into a store, waking `changed` on every change, until
/// `alive` closes.
pub(crate) fn watch<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    changed: &Arc<Notify>,
    alive: &watch::Receiver<()>,
) -> Store<K> {
    watch_filtered(api, config, changed, alive, None)
}

/// Like [`watch`], waking the loop only when `generation` of an object
/// changes (or it comes or goes): a route's own status writes come back as
/// watch events, and rebuilding for them would publish nothing new.
pub(crate) fn watch_specs<K: Watched>(
    api: Api<K>,
    changed: &Arc<Notify>,
    alive: &watch::Receiver<()>,
) -> Store<K> {
    watch_filtered(
        api,
        watcher::Config::default(),
        changed,
        alive,
        Some(generation_of::<K>),
    )
}

fn watch_filtered<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    changed: &Arc<Notify>,
    alive: &watch::Receiver<()>,
    generation: Option<Generation<K>>,
) -> Store<K> {
    let (reader, writer) = reflector::store();
    let events = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let changed = Arc::clone(changed);
    let mut alive = alive.clone();
    tokio::spawn(async move {
        futures::pin_mut!(events);
        // Last generation seen per object uid (only with a filter).
        let mut seen: HashMap<String, i64> = HashMap::new();
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                _ = alive.changed() => return,
            };
            match event {
                Some(Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object))) => {
                    let echo =
                        generation
                            .and_then(|of| of(&object))
                            .is_some_and(|(uid, generation)| {
                                seen.insert(uid, generation) == Some(generation)
                            });
                    if !echo {
                        changed.notify_one();
                    }
                }
                Some(Ok(watcher::Event::Delete(object))) => {
                    if let Some((uid, _)) = generation.and_then(|of| of(&object)) {
                        seen.remove(&uid);
                    }
                    changed.notify_one();
                }
                Some(Ok(_)) => changed.notify_one(),
                Some(Err(e)) => {
                    tracing::warn!(kind = %K::kind(&K::DynamicType::default()), error = %e, "watch failed; retrying")
                }
                None => return,
            }
        }
    });
    reader
}

/// What a watched resource type must offer: a reflector store of it.
pub(crate) trait Watched:
    kube::Resource<DynamicType: Default + Eq + std::hash::Hash + Clone>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType: Default + Eq + std::hash::Hash + Clone>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Reads an object's uid and generation.
type Generation<K> = fn(&K) -> Option<(String, i64)>;

/// An object's uid and generation, for telling spec changes from status
/// echoes.
fn generation_of<K: kube::Resource>(object: &K) -> Option<(String, i64)> {
    let meta = object.meta();
    Some((meta.uid.clone()?, meta.generation?))
}

/// The stores of every watched namespace.
#[derive(Default)]
pub(crate) struct Stores {
    /// Which routes are this controller's.
    pub(crate) class: Class,
    pub(crate) statics: Vec<Store<StaticRoute>>,
    pub(crate) proxies: Vec<Store<ProxyRoute>>,
    pub(crate) services: Vec<Store<Service>>,
    pub(crate) slices: Vec<Store<EndpointSlice>>,
    pub(crate) secrets: Vec<Store<Secret>>,
    /// Ingresses, when this controller serves them.
    pub(crate) ingresses: Vec<Store<Ingress>>,
    /// The cluster's IngressClasses (one store, or none without Ingress).
    pub(crate) ingress_classes: Vec<Store<IngressClass>>,
    /// The `spec.controller` of the IngressClasses this controller serves.
    pub(crate) ingress_controller: Option<String>,
    /// Gateway API, when this controller serves it: GatewayClasses (one
    /// cluster-wide store), Gateways, HTTPRoutes, ReferenceGrants, and
    /// Namespaces (one store, for listeners that select by their labels).
    pub(crate) gateway_classes: Vec<Store<GatewayClass>>,
    pub(crate) gateways: Vec<Store<Gateway>>,
    pub(crate) http_routes: Vec<Store<HTTPRoute>>,
    pub(crate) reference_grants: Vec<Store<ReferenceGrant>>,
    pub(crate) namespaces: Vec<Store<Namespace>>,
    /// The `controllerName` of the GatewayClasses this controller runs.
    pub(crate) gateway_controller: Option<String>,
}

/// Waits until each store listed its resources once; false when one closed.
async fn all_ready<K: Watched>(stores: &[Store<K>]) -> bool {
    for store in stores {
        if store.wait_until_ready().await.is_err() {
            return false;
        }
    }
    true
}

/// Every object of these stores, shared with them.
pub(crate) fn shared<K: kube::Resource + Clone>(stores: &[Store<K>]) -> Vec<Arc<K>>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    stores.iter().flat_map(Store::state).collect()
}

impl Stores {
    /// Waits until every store listed its resources once; false when one
    /// closed first.
    pub(crate) async fn wait_until_ready(&self) -> bool {
        all_ready(&self.statics).await
            && all_ready(&self.proxies).await
            && all_ready(&self.services).await
            && all_ready(&self.slices).await
            && all_ready(&self.secrets).await
            && all_ready(&self.ingresses).await
            && all_ready(&self.ingress_classes).await
            && all_ready(&self.gateway_classes).await
            && all_ready(&self.gateways).await
            && all_ready(&self.http_routes).await
            && all_ready(&self.reference_grants).await
            && all_ready(&self.namespaces).await
    }

    /// This controller's GatewayClasses (none without Gateway API).
    pub(crate) fn gateway_classes(&self) -> Vec<Arc<GatewayClass>> {
        match &self.gateway_controller {
            Some(controller) => {
                pier_compile::gateway::ours(&shared(&self.gateway_classes), controller)
            }
            None => Vec::new(),
        }
    }
}

/// A route resource of any kind.
#[derive(Clone, Debug)]
pub(crate) enum RouteObject {
    Static(Arc<StaticRoute>),
    Proxy(Arc<ProxyRoute>),
    /// Its status has no conditions: they become Events, and the writer
    /// writes `status.loadBalancer`.
    Ingress(Arc<Ingress>),
}

impl RouteObject {
    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Static(r) => &r.metadata,
            Self::Proxy(r) => &r.metadata,
            Self::Ingress(r) => &r.metadata,
        }
    }

    pub(crate) fn key(&self) -> RouteKey {
        let meta = self.meta();
        RouteKey {
            kind: match self {
                Self::Static(_) => RouteKind::StaticRoute,
                Self::Proxy(_) => RouteKind::ProxyRoute,
                Self::Ingress(_) => RouteKind::Ingress,
            },
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            rule: 0,
        }
    }

    pub(crate) fn generation(&self) -> i64 {
        self.meta().generation.unwrap_or(0)
    }

    pub(crate) fn conditions(&self) -> &[Condition] {
        let status = match self {
            Self::Static(r) => r.status.as_ref(),
            Self::Proxy(r) => r.status.as_ref(),
            Self::Ingress(_) => None,
        };
        status.map(|s| s.conditions.as_slice()).unwrap_or_default()
    }

    pub(crate) fn object_ref(&self) -> k8s_openapi::api::core::v1::ObjectReference {
        match self {
            Self::Static(r) => r.object_ref(&()),
            Self::Proxy(r) => r.object_ref(&()),
            Self::Ingress(r) => r.object_ref(&()),
        }
    }
}

impl Stores {
    /// Every route of the stores this controller claims, all kinds.
    pub(crate) fn routes(&self) -> Vec<RouteObject> {
        RouteObject::all(
            &self.static_routes(),
            &self.proxy_routes(),
            &self.ingresses(),
        )
    }

    /// The Ingresses of this controller's IngressClasses.
    pub(crate) fn ingresses(&self) -> Vec<Arc<Ingress>> {
        let Some(controller) = &self.ingress_controller else {
            return Vec::new();
        };
        let classes = shared(&self.ingress_classes);
        let mut ingresses = shared(&self.ingresses);
        ingresses.retain(|i| pier_compile::ingress::claims(i, &classes, controller));
        ingresses
    }

    /// The StaticRoutes this controller claims.
    pub(crate) fn static_routes(&self) -> Vec<Arc<StaticRoute>> {
        let mut routes = shared(&self.statics);
        routes.retain(|r| self.class.claims(r.spec.class_name.as_deref()));
        routes
    }

    /// The ProxyRoutes this controller claims.
    pub(crate) fn proxy_routes(&self) -> Vec<Arc<ProxyRoute>> {
        let mut routes = shared(&self.proxies);
        routes.retain(|r| self.class.claims(r.spec.class_name.as_deref()));
        routes
    }
}

/// Which routes a controller serves, so that two Pier installations in one
/// cluster do not both claim every route: those whose `className` is its
/// `--class-name`, and those without one when it claims unclassed routes
/// (as the default IngressClass takes Ingresses that name none). A route
/// of another class is left alone: not compiled, no status written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Class {
    /// `--class-name`.
    pub name: String,
    /// `--claim-unclassed`.
    pub claim_unclassed: bool,
}

impl Default for Class {
    fn default() -> Self {
        Self {
            name: "pier".to_owned(),
            claim_unclassed: true,
        }
    }
}

impl Class {
    /// Whether a route naming `class` (or none) is this controller's.
    pub fn claims(&self, class: Option<&str>) -> bool {
        class.map_or(self.claim_unclassed, |c| c == self.name)
    }
}

impl RouteObject {
    /// Both kinds of route in one list.
    pub(crate) fn all(
        statics: &[Arc<StaticRoute>],
        proxies: &[Arc<ProxyRoute>],
        ingresses: &[Arc<Ingress>],
    ) -> Vec<Self> {
        let statics = statics.iter().cloned().map(Self::Static);
        statics
            .chain(proxies.iter().cloned().map(Self::Proxy))
            .chain(ingresses.iter().cloned().map(Self::Ingress))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Class;

    #[test]
    fn a_class_claims_its_routes_and_unclassed_ones_when_told() {
        let default = Class::default();
        assert!(default.claims(None));
        assert!(default.claims(Some("pier")));
        assert!(!default.claims(Some("other")));
        let strict = Class {
            name: "edge".to_owned(),
            claim_unclassed: false,
        };
        assert!(!strict.claims(None));
        assert!(strict.claims(Some("edge")));
        assert!(!strict.claims(Some("pier")));
    }
}
