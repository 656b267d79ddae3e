//! The reconcile loop: reflector stores in, snapshots and route status out.
//!
//! ```text
//!  watch StaticRoute (per namespace) ──► reflector stores ──┐ change
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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use pier_crds::StaticRoute;
use pier_snapshot::{Compiled, Resources, RouteKey, RouteKind, wire};
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
    /// Publishes Events on condition transitions.
    pub(crate) recorder: Recorder,
}

impl Reconciler {
    pub(crate) async fn run(self) {
        let changed = Arc::new(Notify::new());
        let mut stores = Vec::new();
        let scopes: Vec<Option<String>> = if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        };
        for scope in scopes {
            let api: Api<StaticRoute> = match &scope {
                Some(ns) => Api::namespaced(self.client.clone(), ns),
                None => Api::all(self.client.clone()),
            };
            let (reader, writer) = reflector::store();
            stores.push(reader);
            let changed = Arc::clone(&changed);
            let events = reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff();
            let mut alive = self.alive.clone();
            tokio::spawn(async move {
                futures::pin_mut!(events);
                loop {
                    let event = tokio::select! {
                        event = events.next() => event,
                        _ = alive.changed() => return,
                    };
                    match event {
                        Some(Ok(_)) => changed.notify_one(),
                        Some(Err(e)) => {
                            tracing::warn!(scope = ?scope, error = %e, "watch failed; retrying")
                        }
                        None => return,
                    }
                }
            });
        }
        let reports = self.lease.as_ref().map(|lease| {
            let api: Api<Lease> = Api::namespaced(self.client.clone(), &lease.namespace);
            let selector = format!("{FLEET_LABEL}={}", lease.name);
            let (reader, writer) = reflector::store();
            let events = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default().labels(&selector)),
            )
            .default_backoff();
            let changed = Arc::clone(&changed);
            let mut alive = self.alive.clone();
            tokio::spawn(async move {
                futures::pin_mut!(events);
                loop {
                    let event = tokio::select! {
                        event = events.next() => event,
                        _ = alive.changed() => return,
                    };
                    match event {
                        Some(Ok(_)) => changed.notify_one(),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "fleet report watch failed; retrying")
                        }
                        None => return,
                    }
                }
            });
            reader
        });
        for store in &stores {
            if store.wait_until_ready().await.is_err() {
                tracing::error!("a route store closed before it was ready");
                return;
            }
        }
        let _ = self.ready.send(true);
        tracing::info!("route stores ready");

        let mut acks = self.fleet.subscribe();
        let mut leader = self.leader.clone();
        // Without an election the leader flag never changes.
        let mut electing = self.lease.is_some();
        loop {
            self.reconcile(&stores, reports.as_ref()).await;
            tokio::select! {
                () = changed.notified() => {}
                result = acks.changed() => if result.is_err() { return },
                result = leader.changed(), if electing => electing = result.is_ok(),
            }
            // Let a burst of changes settle into one build.
            tokio::time::sleep(self.coalesce).await;
            acks.borrow_and_update();
        }
    }

    async fn reconcile(&self, stores: &[Store<StaticRoute>], reports: Option<&Store<Lease>>) {
        let started = Instant::now();
        let routes: Vec<Arc<StaticRoute>> = stores.iter().flat_map(Store::state).collect();
        let compiled = pier_snapshot::compile(&Resources {
            static_routes: routes.iter().map(|r| StaticRoute::clone(r)).collect(),
        });
        self.metrics.reconciled(started.elapsed());
        self.publish(&compiled, &routes);
        if !*self.leader.borrow() {
            return;
        }
        let remote = self.remote_dataplanes(reports);
        if self
            .write_status(&compiled, &routes, &remote)
            .await
            .is_err()
        {
            self.metrics.reconcile_failed();
        }
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

    fn publish(&self, compiled: &Compiled, routes: &[Arc<StaticRoute>]) {
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
            routes.iter().map(|r| (key(r), generation(r))).collect();
        let contents: Contents = snapshot
            .routes
            .iter()
            .filter_map(|r| Some((r.key.clone(), *generations.get(&r.key)?)))
            .collect();
        self.fleet.published(&snapshot.version, Arc::new(contents));
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

    /// Patches the status of every route whose conditions changed.
    async fn write_status(
        &self,
        compiled: &Compiled,
        routes: &[Arc<StaticRoute>],
        remote: &BTreeMap<String, String>,
    ) -> Result<(), kube::Error> {
        let errors: HashMap<&RouteKey, &pier_snapshot::RouteError> =
            compiled.errors.iter().map(|e| (&e.key, e)).collect();
        let now = Time(jiff_now());
        let mut failed = None;
        for route in routes {
            let key = key(route);
            let generation = generation(route);
            let verdict = match errors.get(&key) {
                Some(error) => Verdict::Invalid {
                    reason: error.invalid.reason().to_owned(),
                    message: error.invalid.to_string(),
                },
                None => Verdict::Accepted,
            };
            let programming = self.fleet.programming(&key, generation, remote);
            let current = route
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            let desired = status::desired(Some(generation), &verdict, programming, current, &now);
            if !status::differs(current, &desired) {
                continue;
            }
            let api: Api<StaticRoute> = Api::namespaced(self.client.clone(), &key.namespace);
            let patch = serde_json::json!({
                "apiVersion": "pier.dev/v1alpha1",
                "kind": "StaticRoute",
                "status": { "conditions": desired },
            });
            match api
                .patch_status(
                    &key.name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => {
                    self.metrics.status_written();
                    self.announce(route, status::transitions(current, &desired))
                        .await;
                }
                // Deleted meanwhile: the watch will drop it.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(route = %key, error = %e, "status write failed");
                    failed = Some(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

impl Reconciler {
    /// One Event per condition transition: `Normal` when it became true,
    /// `Warning` when it became false. A failure is logged, never retried:
    /// Events are best effort, status is the record.
    async fn announce(&self, route: &StaticRoute, transitions: Vec<status::Transition>) {
        let reference = route.object_ref(&());
        for transition in transitions {
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

fn key(route: &StaticRoute) -> RouteKey {
    RouteKey {
        kind: RouteKind::StaticRoute,
        namespace: route.namespace().unwrap_or_default(),
        name: route.name_any(),
    }
}

fn generation(route: &StaticRoute) -> i64 {
    route.metadata.generation.unwrap_or(0)
}

/// The current time to the second, as the API server stores it.
fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}
