//! The reconcile loop: reflector stores in, snapshots and route status out.
//!
//! ```text
//!  watch StaticRoute, ProxyRoute ──► reflector stores ───────┐ change
//!  dataplane acks (Fleet) ───────────────────────────────────┤
//!                                                            ▼ coalesce (--coalesce)
//!            compile(stores) ──► new version? publish ──► snapshot service
//!                     └──► desired conditions ≠ stored? ──► status patch (server-side apply)
//! ```
//!
//! Nothing is published before every store has listed its resources once,
//! so a restarting controller never pushes a partial (or empty) snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use pier_compile::Resources;
use pier_crds::{ProxyRoute, StaticRoute};
use pier_snapshot::{Compiled, RouteKey, RouteKind, wire};
use tokio::sync::{Notify, watch};

use crate::channel::Published;
use crate::fleet::{Contents, Fleet};
use crate::lease::{self, FLEET_LABEL, LeaseConfig};
use crate::metrics::Metrics;
use crate::status::{self, Verdict};

/// The field manager of every status write.
const MANAGER: &str = "pier-controller";

/// Watches the routes of `namespaces` (all when empty) and keeps the
/// published snapshot and the route status current.
pub(crate) struct Reconciler {
    pub(crate) client: Client,
    pub(crate) namespaces: Vec<String>,
    pub(crate) secret_namespaces: Vec<String>,
    pub(crate) coalesce: Duration,
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
    /// Hands status writes to the [`StatusWriter`].
    pub(crate) status: watch::Sender<Arc<Batch>>,
    /// Also wakes the loop (watch events, status retries).
    pub(crate) changed: Arc<Notify>,
}

impl Reconciler {
    pub(crate) async fn run(self) {
        let changed = &self.changed;
        let scopes: Vec<Option<String>> = if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        };
        let mut stores = Stores::default();
        for scope in &scopes {
            let scope = scope.as_deref();
            let all = watcher::Config::default;
            stores
                .statics
                .push(self.watch_specs(self.api(scope), changed));
            stores
                .proxies
                .push(self.watch_specs(self.api(scope), changed));
            stores
                .services
                .push(self.watch(self.api(scope), all(), changed));
            stores
                .slices
                .push(self.watch(self.api(scope), all(), changed));
        }
        for namespace in &self.secret_namespaces {
            // Only TLS Secrets, and only where the chart grants reading them.
            let tls = watcher::Config::default().fields("type=kubernetes.io/tls");
            stores
                .secrets
                .push(self.watch(self.api(Some(namespace)), tls, changed));
        }
        let reports = self.lease.as_ref().map(|lease| {
            let api: Api<Lease> = Api::namespaced(self.client.clone(), &lease.namespace);
            let selector = format!("{FLEET_LABEL}={}", lease.name);
            self.watch(api, watcher::Config::default().labels(&selector), changed)
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
        loop {
            self.reconcile(&stores, reports.as_ref(), woke).await;
            tokio::select! {
                () = changed.notified() => woke = Instant::now(),
                result = acks.changed() => if result.is_err() { return },
                result = leader.changed(), if electing => electing = result.is_ok(),
            }
            // Let a burst of changes settle into one build.
            tokio::time::sleep(self.coalesce).await;
            acks.borrow_and_update();
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

    /// Mirrors `api` into a store, waking the loop on every change, until
    /// the controller stops.
    fn watch<K: Watched>(
        &self,
        api: Api<K>,
        config: watcher::Config,
        changed: &Arc<Notify>,
    ) -> Store<K> {
        self.watch_filtered(api, config, changed, None)
    }

    /// Like [`Reconciler::watch`], waking the loop only when `generation`
    /// of an object changes (or it comes or goes): a route's own status
    /// writes come back as watch events, and rebuilding for them would
    /// publish nothing new.
    fn watch_specs<K: Watched>(&self, api: Api<K>, changed: &Arc<Notify>) -> Store<K> {
        self.watch_filtered(
            api,
            watcher::Config::default(),
            changed,
            Some(generation_of::<K>),
        )
    }

    fn watch_filtered<K: Watched>(
        &self,
        api: Api<K>,
        config: watcher::Config,
        changed: &Arc<Notify>,
        generation: Option<Generation<K>>,
    ) -> Store<K> {
        let (reader, writer) = reflector::store();
        let events = reflector::reflector(writer, watcher(api, config)).default_backoff();
        let changed = Arc::clone(changed);
        let mut alive = self.alive.clone();
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
                        let echo = generation.and_then(|of| of(&object)).is_some_and(
                            |(uid, generation)| seen.insert(uid, generation) == Some(generation),
                        );
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

    /// `woke`: when the watch event that led to this build arrived.
    async fn reconcile(&self, stores: &Stores, reports: Option<&Store<Lease>>, woke: Instant) {
        let started = Instant::now();
        let statics: Vec<Arc<StaticRoute>> = stores.statics.iter().flat_map(Store::state).collect();
        let proxies: Vec<Arc<ProxyRoute>> = stores.proxies.iter().flat_map(Store::state).collect();
        // The stores' objects themselves: no clone of them per build.
        let compiled = pier_compile::compile(&Resources {
            static_routes: statics.clone(),
            proxy_routes: proxies.clone(),
            services: shared(&stores.services),
            endpoint_slices: shared(&stores.slices),
            secrets: shared(&stores.secrets),
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok()),
        });
        let routes: Vec<RouteObject> = statics
            .into_iter()
            .map(RouteObject::Static)
            .chain(proxies.into_iter().map(RouteObject::Proxy))
            .collect();
        self.metrics.reconciled(started.elapsed());
        self.publish(&compiled, &routes, woke);
        if !*self.leader.borrow() {
            return;
        }
        let remote = self.remote_dataplanes(reports);
        let batch = self.status_batch(&compiled, &routes, &remote);
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
            .filter_map(|r| Some((r.key.clone(), *generations.get(&r.key)?)))
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

    /// The status writes the routes need now: every route whose stored
    /// conditions differ from the desired ones.
    fn status_batch(
        &self,
        compiled: &Compiled,
        routes: &[RouteObject],
        remote: &BTreeMap<String, String>,
    ) -> Batch {
        let errors: HashMap<&RouteKey, &pier_snapshot::RouteError> =
            compiled.errors.iter().map(|e| (&e.key, e)).collect();
        let unresolved: HashMap<&RouteKey, &pier_snapshot::Unresolved> =
            compiled.unresolved.iter().map(|u| (&u.key, u)).collect();
        let now = Time(jiff_now());
        let mut batch = Batch::default();
        for route in routes {
            let key = route.key();
            let generation = route.generation();
            let verdict = match errors.get(&key) {
                Some(error) => Verdict::Invalid {
                    reason: error.invalid.reason().to_owned(),
                    message: error.invalid.to_string(),
                },
                None => Verdict::Accepted,
            };
            let programming = self.fleet.programming(&key, generation, remote);
            let current = route.conditions();
            let refs = unresolved.get(&key).map(|u| (u.reason, u.message.as_str()));
            let desired =
                status::desired(Some(generation), &verdict, refs, programming, current, &now);
            if status::differs(current, &desired) {
                batch.writes.push(Arc::new(StatusWrite {
                    transitions: status::transitions(current, &desired),
                    route: route.clone(),
                    key: key.clone(),
                    desired,
                }));
            }
            batch.live.insert(key);
        }
        batch
    }
}

/// Status patches in flight at once: enough to keep up with thousands of
/// routes, few enough not to crowd the API server.
const STATUS_CONCURRENCY: usize = 16;
/// A failed status write is tried again after this long.
const STATUS_RETRY: Duration = Duration::from_secs(1);

/// The writes one reconcile pass found necessary.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    writes: Vec<Arc<StatusWrite>>,
    /// Every route that exists, to forget the ones deleted.
    live: std::collections::HashSet<RouteKey>,
}

#[derive(Debug)]
struct StatusWrite {
    route: RouteObject,
    key: RouteKey,
    desired: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    transitions: Vec<status::Transition>,
}

/// Writes status apart from the reconcile loop, so publishing a snapshot
/// never waits for thousands of status patches. Only the newest batch
/// matters; what it already wrote it does not write again.
pub(crate) struct StatusWriter {
    pub(crate) client: Client,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) recorder: Recorder,
    /// Wakes the reconcile loop to retry after a failure.
    pub(crate) retry: Arc<Notify>,
}

impl StatusWriter {
    pub(crate) async fn run(
        self,
        mut batches: watch::Receiver<Arc<Batch>>,
        mut alive: watch::Receiver<()>,
    ) {
        let this = Arc::new(self);
        let mut written: HashMap<RouteKey, Arc<StatusWrite>> = HashMap::new();
        loop {
            tokio::select! {
                changed = batches.changed() => if changed.is_err() { return },
                _ = alive.changed() => return,
            }
            let batch = Arc::clone(&batches.borrow_and_update());
            written.retain(|key, _| batch.live.contains(key));
            let todo: Vec<Arc<StatusWrite>> = batch
                .writes
                .iter()
                .filter(|w| {
                    written
                        .get(&w.key)
                        .is_none_or(|done| done.desired != w.desired)
                })
                .cloned()
                .collect();
            let outcomes: Vec<(Arc<StatusWrite>, bool)> = futures::stream::iter(todo)
                .map(|w| {
                    let this = Arc::clone(&this);
                    async move {
                        let ok = this.write(&w).await;
                        (w, ok)
                    }
                })
                .buffer_unordered(STATUS_CONCURRENCY)
                .collect()
                .await;
            let mut failed = false;
            for (write, ok) in outcomes {
                if ok {
                    written.insert(write.key.clone(), write);
                } else {
                    failed = true;
                }
            }
            if failed {
                this.metrics.reconcile_failed();
                let retry = Arc::clone(&this.retry);
                tokio::spawn(async move {
                    tokio::time::sleep(STATUS_RETRY).await;
                    retry.notify_one();
                });
            }
        }
    }

    /// Patches one route's status (server-side apply); true when done or
    /// moot (the route is gone).
    async fn write(&self, write: &StatusWrite) -> bool {
        let patch = serde_json::json!({
            "apiVersion": "pier.dev/v1alpha1",
            "kind": write.key.kind.as_str(),
            "status": { "conditions": write.desired },
        });
        let params = PatchParams::apply(MANAGER).force();
        let (ns, name) = (&write.key.namespace, &write.key.name);
        let patched = match write.key.kind {
            RouteKind::StaticRoute => Api::<StaticRoute>::namespaced(self.client.clone(), ns)
                .patch_status(name, &params, &Patch::Apply(&patch))
                .await
                .map(drop),
            RouteKind::ProxyRoute => Api::<ProxyRoute>::namespaced(self.client.clone(), ns)
                .patch_status(name, &params, &Patch::Apply(&patch))
                .await
                .map(drop),
        };
        match patched {
            Ok(_) => {
                self.metrics.status_written();
                self.announce(&write.route, &write.transitions).await;
                true
            }
            // Deleted meanwhile: the watch will drop it.
            Err(kube::Error::Api(e)) if e.code == 404 => true,
            Err(e) => {
                tracing::warn!(route = %write.key, error = %e, "status write failed");
                false
            }
        }
    }
}

impl StatusWriter {
    /// One Event per condition transition: `Normal` when it became true,
    /// `Warning` when it became false. A failure is logged, never retried:
    /// Events are best effort, status is the record.
    async fn announce(&self, route: &RouteObject, transitions: &[status::Transition]) {
        let reference = route.object_ref();
        for transition in transitions.iter().cloned() {
            let event = Event {
                type_: if transition.ok {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: transition.reason,
                note: Some(transition.message),
                action: transition.kind,
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "event not published");
            }
        }
    }
}

/// What a watched resource type must offer: a reflector store of it.
trait Watched:
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
struct Stores {
    statics: Vec<Store<StaticRoute>>,
    proxies: Vec<Store<ProxyRoute>>,
    services: Vec<Store<Service>>,
    slices: Vec<Store<EndpointSlice>>,
    secrets: Vec<Store<Secret>>,
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
fn shared<K: kube::Resource + Clone>(stores: &[Store<K>]) -> Vec<Arc<K>>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    stores.iter().flat_map(Store::state).collect()
}

impl Stores {
    /// Waits until every store listed its resources once; false when one
    /// closed first.
    async fn wait_until_ready(&self) -> bool {
        all_ready(&self.statics).await
            && all_ready(&self.proxies).await
            && all_ready(&self.services).await
            && all_ready(&self.slices).await
            && all_ready(&self.secrets).await
    }
}

/// A route resource of either kind.
#[derive(Clone, Debug)]
enum RouteObject {
    Static(Arc<StaticRoute>),
    Proxy(Arc<ProxyRoute>),
}

impl RouteObject {
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Self::Static(r) => &r.metadata,
            Self::Proxy(r) => &r.metadata,
        }
    }

    fn key(&self) -> RouteKey {
        let meta = self.meta();
        RouteKey {
            kind: match self {
                Self::Static(_) => RouteKind::StaticRoute,
                Self::Proxy(_) => RouteKind::ProxyRoute,
            },
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    fn generation(&self) -> i64 {
        self.meta().generation.unwrap_or(0)
    }

    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        let status = match self {
            Self::Static(r) => r.status.as_ref(),
            Self::Proxy(r) => r.status.as_ref(),
        };
        status.map(|s| s.conditions.as_slice()).unwrap_or_default()
    }

    fn object_ref(&self) -> k8s_openapi::api::core::v1::ObjectReference {
        match self {
            Self::Static(r) => r.object_ref(&()),
            Self::Proxy(r) => r.object_ref(&()),
        }
    }
}

/// The current time to the second, as the API server stores it.
fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}
