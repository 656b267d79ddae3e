//! The reconcile loop: reflector stores in, snapshots and route status out.
//!
//! ```text
//!  watch StaticRoute, ProxyRoute, ... ──► stores ──► change ──► coalesce (--coalesce)
//!                                                                 │
//!            compile(stores) ──► new version? publish ──► snapshot service
//!                     └──► verdicts ──┐
//!  dataplane acks (Fleet) ────────────┴──► plan status ──► StatusWriter
//! ```
//!
//! A change to the stores compiles once its burst settles. An
//! acknowledgement (or a new leader) only plans status again from the last
//! build's verdicts: no compile, no coalesce wait.
//!
//! Nothing is published before every store has listed its resources once,
//! so a restarting controller never pushes a partial (or empty) snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::{IngressClass, IngressLoadBalancerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};
use pier_compile::Resources;
use pier_crds::gateway::GatewayClass;
use pier_snapshot::{Compiled, RouteKey, wire};
use tokio::sync::{Notify, watch};

use crate::channel::Published;
use crate::fleet::{Contents, Fleet};
use crate::gateway;
use crate::lease::{self, FLEET_LABEL, LeaseConfig};
use crate::metrics::Metrics;
use crate::stores::{self, RouteObject, Stores, shared};
use crate::writer::{self, Batch, Verdicts};

/// The Secret types the controller reads in `--secret-namespace`
/// namespaces, each by its own field-selected watch.
const SECRET_TYPES: [&str; 2] = ["kubernetes.io/tls", "Opaque"];

/// Watches the routes of `namespaces` (all when empty) and keeps the
/// published snapshot and the route status current.
pub(crate) struct Reconciler {
    pub(crate) client: Client,
    pub(crate) namespaces: Vec<String>,
    pub(crate) secret_namespaces: Vec<String>,
    pub(crate) coalesce: Duration,
    /// Which routes are this controller's.
    pub(crate) class: stores::Class,
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) publish: watch::Sender<Arc<Published>>,
    pub(crate) ready: watch::Sender<bool>,
    /// Closes when the controller stops.
    pub(crate) alive: watch::Receiver<()>,
    /// Whether this replica writes status.
    pub(crate) leader: watch::Receiver<bool>,
    /// Leader election, when several replicas may run.
    pub(crate) lease: Option<LeaseConfig>,
    /// Hands status writes to the [`StatusWriter`](crate::writer::StatusWriter).
    pub(crate) status: watch::Sender<Arc<Batch>>,
    /// Also wakes the loop (watch events, status retries).
    pub(crate) changed: Arc<Notify>,
    /// Ingress support, when on.
    pub(crate) ingress: Option<crate::IngressConfig>,
    /// Gateway API support, when on.
    pub(crate) gateway: Option<crate::GatewayConfig>,
}

/// Why the loop woke.
enum Wake {
    /// A store changed: compile.
    Change,
    /// Programming may have changed (an ack, a dataplane came or went) or
    /// this replica now leads: plan status only.
    Status,
}

impl Reconciler {
    pub(crate) async fn run(self) {
        let changed = &self.changed;
        let scopes: Vec<Option<String>> = if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        };
        let alive = &self.alive;
        let mut stores = Stores {
            class: self.class.clone(),
            ingress_controller: self.ingress.as_ref().map(|i| i.controller.clone()),
            gateway_controller: self.gateway.as_ref().map(|g| g.controller.clone()),
            ..Stores::default()
        };
        for scope in &scopes {
            let scope = scope.as_deref();
            let all = watcher::Config::default;
            let s = &mut stores;
            s.statics
                .push(stores::watch_specs(self.api(scope), changed, alive));
            s.proxies
                .push(stores::watch_specs(self.api(scope), changed, alive));
            s.services
                .push(stores::watch(self.api(scope), all(), changed, alive));
            s.slices
                .push(stores::watch(self.api(scope), all(), changed, alive));
            if self.ingress.is_some() {
                s.ingresses
                    .push(stores::watch_specs(self.api(scope), changed, alive));
            }
            if self.gateway.is_some() {
                s.gateways
                    .push(stores::watch_specs(self.api(scope), changed, alive));
                s.http_routes
                    .push(stores::watch_specs(self.api(scope), changed, alive));
                s.reference_grants
                    .push(stores::watch(self.api(scope), all(), changed, alive));
            }
        }
        if self.gateway.is_some() {
            let classes = Api::<GatewayClass>::all(self.client.clone());
            let classes = stores::watch_specs(classes, changed, alive);
            stores.gateway_classes.push(classes);
            let namespaces = Api::<Namespace>::all(self.client.clone());
            let namespaces = stores::watch(namespaces, watcher::Config::default(), changed, alive);
            stores.namespaces.push(namespaces);
        }
        if self.ingress.is_some() {
            let classes = Api::<IngressClass>::all(self.client.clone());
            let classes = stores::watch(classes, watcher::Config::default(), changed, alive);
            stores.ingress_classes.push(classes);
        }
        for namespace in &self.secret_namespaces {
            // TLS Secrets (certificates) and Opaque ones (CA bundles,
            // basic-auth users), only where the chart grants reading them:
            // never service-account tokens or Helm's release records.
            for kind in SECRET_TYPES {
                let config = watcher::Config::default().fields(&format!("type={kind}"));
                let api = self.api(Some(namespace));
                stores
                    .secrets
                    .push(stores::watch(api, config, changed, alive));
            }
        }
        let reports = self.lease.as_ref().map(|lease| {
            let api: Api<Lease> = Api::namespaced(self.client.clone(), &lease.namespace);
            let selector = format!("{FLEET_LABEL}={}", lease.name);
            let config = watcher::Config::default().labels(&selector);
            stores::watch(api, config, changed, alive)
        });
        if !stores.wait_until_ready().await {
            tracing::error!("a route store closed before it was ready");
            return;
        }
        let _ = self.ready.send(true);
        tracing::info!("route stores ready");

        let mut acks = self.fleet.subscribe();
        let mut leader = self.leader.clone();
        // Without an election the leader flag never changes.
        let mut electing = self.lease.is_some();
        // When the change the next build carries arrived.
        let mut woke = Instant::now();
        // The first build covers every event of the initial lists: drop the
        // wake-up they left, so they do not cause a second build.
        let _ = futures::FutureExt::now_or_never(changed.notified());
        let mut verdicts = self.reconcile(&stores, reports.as_ref(), woke);
        loop {
            let wake = tokio::select! {
                () = changed.notified() => Wake::Change,
                result = acks.changed() => match result {
                    Ok(()) => Wake::Status,
                    Err(_) => return,
                },
                result = leader.changed(), if electing => {
                    electing = result.is_ok();
                    Wake::Status
                }
            };
            match wake {
                Wake::Change => {
                    woke = Instant::now();
                    // Let a burst of changes settle into one build.
                    tokio::time::sleep(self.coalesce).await;
                    acks.borrow_and_update();
                    verdicts = self.reconcile(&stores, reports.as_ref(), woke);
                }
                Wake::Status => {
                    acks.borrow_and_update();
                    self.plan_status(&verdicts, &stores, &stores.routes(), reports.as_ref());
                }
            }
        }
    }

    /// An API for `K` in `scope` (a namespace), or in all namespaces.
    fn api<K>(&self, scope: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match scope {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Compiles the stores, publishes a new version and plans the status it
    /// calls for. `woke`: when the watch event that led to this build
    /// arrived.
    fn reconcile(
        &self,
        stores: &Stores,
        reports: Option<&Store<Lease>>,
        woke: Instant,
    ) -> Verdicts {
        let started = Instant::now();
        let statics = stores.static_routes();
        let proxies = stores.proxy_routes();
        let ingresses = stores.ingresses();
        // HTTPRoutes are not among them: their status is Gateway API's.
        let routes = RouteObject::all(&statics, &proxies, &ingresses);
        // The stores' objects themselves: no clone of them per build.
        let resources = Resources {
            static_routes: statics,
            proxy_routes: proxies,
            ingresses,
            services: shared(&stores.services),
            endpoint_slices: shared(&stores.slices),
            secrets: shared(&stores.secrets),
            gateway_classes: stores.gateway_classes(),
            gateways: shared(&stores.gateways),
            http_routes: shared(&stores.http_routes),
            reference_grants: shared(&stores.reference_grants),
            namespaces: shared(&stores.namespaces),
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok()),
        };
        let compiled = pier_compile::compile(&resources);
        let gateway = self
            .gateway
            .is_some()
            .then(|| pier_compile::gateway::report(&resources, &compiled));
        self.metrics.reconciled(started.elapsed());
        self.publish(&compiled, &routes, woke);
        let mut verdicts = Verdicts::new(compiled, &routes);
        verdicts.load_balancer = self.load_balancer(stores, self.publish_service());
        verdicts.gateway = gateway;
        self.plan_status(&verdicts, stores, &routes, reports);
        verdicts
    }

    /// The dataplane's Service, as Ingress or Gateway API support names it.
    fn publish_service(&self) -> Option<&(String, String)> {
        let ingress = self
            .ingress
            .as_ref()
            .and_then(|i| i.publish_service.as_ref());
        ingress.or_else(|| self.gateway.as_ref()?.publish_service.as_ref())
    }

    /// What the served Ingresses' `status.loadBalancer` says: the
    /// addresses of the dataplane's Service, once it is seen.
    fn load_balancer(
        &self,
        stores: &Stores,
        publish: Option<&(String, String)>,
    ) -> Option<IngressLoadBalancerStatus> {
        let (namespace, name) = publish?;
        // A lookup by key in the stores, not a scan of every Service.
        let key = kube::runtime::reflector::ObjectRef::new(name).within(namespace);
        let found = stores.services.iter().find_map(|store| store.get(&key));
        if found.is_none() {
            tracing::debug!(%namespace, %name, "the publish Service is not (yet) seen");
        }
        Some(crate::ingress::load_balancer(&*found?))
    }

    /// Hands the status writes the routes need now to the writer, when
    /// this replica leads.
    fn plan_status(
        &self,
        verdicts: &Verdicts,
        stores: &Stores,
        routes: &[RouteObject],
        reports: Option<&Store<Lease>>,
    ) {
        if !*self.leader.borrow() {
            return;
        }
        let remote = self.remote_dataplanes(reports);
        let now = Time(jiff_now());
        let mut batch = writer::plan(verdicts, routes, &self.fleet, &remote, &now);
        if let (Some(report), Some(config)) = (&verdicts.gateway, &self.gateway) {
            let current = gateway::Current {
                classes: &shared(&stores.gateway_classes),
                gateways: &shared(&stores.gateways),
                routes: &shared(&stores.http_routes),
            };
            let addresses = gateway::addresses(verdicts.load_balancer.as_ref());
            let dataplanes = !remote.is_empty() || !self.fleet.dataplanes().is_empty();
            batch.gateway = gateway::plan(
                report,
                &current,
                &config.controller,
                &addresses,
                dataplanes,
                &now,
            )
            .into_iter()
            .map(Arc::new)
            .collect();
        }
        self.metrics.status_planned();
        self.status.send_replace(Arc::new(batch));
    }

    /// Dataplanes the other replicas report, by name.
    fn remote_dataplanes(&self, reports: Option<&Store<Lease>>) -> BTreeMap<String, String> {
        let (Some(reports), Some(lease)) = (reports, &self.lease) else {
            return BTreeMap::new();
        };
        let own = lease::report_name(lease);
        let now = k8s_openapi::jiff::Timestamp::now();
        reports
            .state()
            .iter()
            .filter(|report| report.metadata.name.as_deref() != Some(own.as_str()))
            .flat_map(|report| lease::reported(report, now))
            .collect()
    }

    fn publish(&self, compiled: &Compiled, routes: &[RouteObject], woke: Instant) {
        let snapshot = &compiled.snapshot;
        if self.publish.borrow().version == snapshot.version {
            return;
        }
        let frame = match wire::encode(snapshot) {
            Ok(frame) => Bytes::from(frame),
            Err(e) => {
                tracing::error!(error = %e, "snapshot cannot be encoded; keeping the previous one");
                return;
            }
        };
        let generations: HashMap<RouteKey, i64> =
            routes.iter().map(|r| (r.key(), r.generation())).collect();
        let contents: Contents = snapshot
            .routes
            .iter()
            .filter_map(|r| {
                let key = r.key.resource();
                let generation = *generations.get(&key)?;
                Some((key, generation))
            })
            .collect();
        self.fleet
            .published(&snapshot.version, Arc::new(contents), woke);
        self.metrics
            .published(frame.len(), snapshot.routes.len(), compiled.errors.len());
        tracing::info!(
            version = %snapshot.version,
            routes = snapshot.routes.len(),
            invalid = compiled.errors.len(),
            "snapshot published"
        );
        self.publish.send_replace(Arc::new(Published {
            version: snapshot.version.clone(),
            frame,
        }));
    }
}

/// The current time to the second, as the API server stores it.
fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}

#[cfg(test)]
mod tests;
