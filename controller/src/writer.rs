//! Route status: which writes the routes need ([`plan`], pure), and the
//! task that makes them ([`StatusWriter`]), apart from the reconcile loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client};
use pier_crds::{ProxyRoute, StaticRoute};
use pier_snapshot::{Compiled, RouteError, RouteKey, RouteKind, Unresolved};
use tokio::sync::{Notify, watch};

use crate::fleet::Fleet;
use crate::gateway::{self, GatewayWrite};
use crate::metrics::Metrics;
use crate::status::{self, Verdict};
use crate::stores::RouteObject;

/// The field manager of every status write.
const MANAGER: &str = "pier-controller";

/// What the last build decided about each route, kept so that an
/// acknowledgement can update `Programmed` without compiling again.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    /// The generation each route was compiled at.
    pub(crate) compiled: HashMap<RouteKey, i64>,
    errors: HashMap<RouteKey, RouteError>,
    unresolved: HashMap<RouteKey, Unresolved>,
    /// What each resource is served without, as (reason, message).
    warnings: HashMap<RouteKey, Vec<(String, String)>>,
    /// The served Ingresses' `status.loadBalancer`; `None`: not written.
    pub(crate) load_balancer: Option<IngressLoadBalancerStatus>,
    /// Gateway API's statuses, when this controller serves it.
    pub(crate) gateway: Option<pier_compile::gateway::Report>,
}

impl Verdicts {
    /// Takes the errors and unresolved references out of a build.
    pub(crate) fn new(compiled: Compiled, routes: &[RouteObject]) -> Self {
        Self {
            compiled: routes.iter().map(|r| (r.key(), r.generation())).collect(),
            errors: compiled
                .errors
                .into_iter()
                .map(|e| (e.key.resource(), e))
                .collect(),
            unresolved: compiled
                .unresolved
                .into_iter()
                .map(|u| (u.key.resource(), u))
                .collect(),
            warnings: compiled.warnings.into_iter().fold(
                HashMap::new(),
                |mut all: HashMap<RouteKey, Vec<(String, String)>>, w| {
                    all.entry(w.key.resource())
                        .or_default()
                        .push((w.reason.to_owned(), w.message));
                    all
                },
            ),
            load_balancer: None,
            gateway: None,
        }
    }
}

/// The status writes the routes need now: every route, at the generation
/// it was compiled at, whose stored conditions differ from the desired
/// ones. A route changed since the build is left to the next one.
pub(crate) fn plan(
    verdicts: &Verdicts,
    routes: &[RouteObject],
    fleet: &Fleet,
    remote: &BTreeMap<String, String>,
    now: &Time,
) -> Batch {
    let mut batch = Batch::default();
    for route in routes {
        let key = route.key();
        let generation = route.generation();
        if verdicts.compiled.get(&key) == Some(&generation) {
            let verdict = match verdicts.errors.get(&key) {
                Some(error) => Verdict::Invalid {
                    reason: error.invalid.reason().to_owned(),
                    message: error.invalid.to_string(),
                },
                None => Verdict::Accepted,
            };
            let programming = fleet.programming(&key, generation, remote);
            let current = route.conditions();
            let refs = verdicts
                .unresolved
                .get(&key)
                .map(|u| (u.reason, u.message.as_str()));
            let desired =
                status::desired(Some(generation), &verdict, refs, programming, current, now);
            let ingress = match route {
                RouteObject::Ingress(ingress) => Some(IngressStatus {
                    load_balancer: verdicts
                        .load_balancer
                        .clone()
                        .filter(|lb| Some(lb) != current_load_balancer(ingress)),
                    warnings: verdicts.warnings.get(&key).cloned().unwrap_or_default(),
                }),
                _ => None,
            };
            // An Ingress has no conditions to compare with: the writer
            // compares with what it last planned.
            if ingress.is_some() || status::differs(current, &desired) {
                batch.writes.push(Arc::new(StatusWrite {
                    transitions: status::transitions(current, &desired),
                    route: route.clone(),
                    key: key.clone(),
                    desired,
                    ingress,
                }));
            }
        }
        batch.live.insert(key);
    }
    batch
}

/// Status patches in flight at once: enough to keep up with thousands of
/// routes, few enough not to crowd the API server.
const STATUS_CONCURRENCY: usize = 16;
/// A failed status write is tried again after this long.
const STATUS_RETRY: Duration = Duration::from_secs(1);

/// The writes one reconcile pass found necessary.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) writes: Vec<Arc<StatusWrite>>,
    /// Every route that exists, to forget the ones deleted.
    pub(crate) live: HashSet<RouteKey>,
    /// Gateway API status writes.
    pub(crate) gateway: Vec<Arc<GatewayWrite>>,
}

/// One route's new conditions.
#[derive(Debug)]
pub(crate) struct StatusWrite {
    pub(crate) route: RouteObject,
    pub(crate) key: RouteKey,
    pub(crate) desired: Vec<Condition>,
    pub(crate) transitions: Vec<status::Transition>,
    /// For an Ingress: what its status and Events say instead.
    pub(crate) ingress: Option<IngressStatus>,
}

/// An Ingress's status has no conditions: its conditions become Events
/// (on each change of what the writer last planned), and its status says
/// where clients reach the dataplane.
#[derive(Debug, PartialEq)]
pub(crate) struct IngressStatus {
    /// `status.loadBalancer` to write; `None`: it is as it should be.
    pub(crate) load_balancer: Option<IngressLoadBalancerStatus>,
    /// Warnings (reason, message), each an Event when new.
    pub(crate) warnings: Vec<(String, String)>,
}

impl StatusWrite {
    /// Whether this write says something `done` did not.
    fn news_after(&self, done: Option<&StatusWrite>) -> bool {
        done.is_none_or(|done| {
            status::differs(&done.desired, &self.desired) || done.ingress != self.ingress
        })
    }
}

fn current_load_balancer(ingress: &Ingress) -> Option<&IngressLoadBalancerStatus> {
    ingress.status.as_ref()?.load_balancer.as_ref()
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
        // The last Gateway API status written per object.
        let mut gateway_written: HashMap<
            (gateway::Kind, Option<String>, String),
            serde_json::Value,
        > = HashMap::new();
        loop {
            tokio::select! {
                changed = batches.changed() => if changed.is_err() { return },
                _ = alive.changed() => return,
            }
            let batch = Arc::clone(&batches.borrow_and_update());
            written.retain(|key, _| batch.live.contains(key));
            let todo: Vec<(Arc<StatusWrite>, Option<Arc<StatusWrite>>)> = batch
                .writes
                .iter()
                .filter(|w| w.news_after(written.get(&w.key).map(|d| &**d)))
                .map(|w| (Arc::clone(w), written.get(&w.key).cloned()))
                .collect();
            let outcomes: Vec<(Arc<StatusWrite>, bool)> = futures::stream::iter(todo)
                .map(|(w, done)| {
                    let this = Arc::clone(&this);
                    async move {
                        let ok = this.write(&w, done.as_deref()).await;
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
            let todo: Vec<Arc<GatewayWrite>> = batch
                .gateway
                .iter()
                .filter(|w| gateway_written.get(&w.key()) != Some(&w.status))
                .cloned()
                .collect();
            let outcomes: Vec<(Arc<GatewayWrite>, bool)> = futures::stream::iter(todo)
                .map(|w| {
                    let this = Arc::clone(&this);
                    async move {
                        let ok = this.write_gateway(&w).await;
                        (w, ok)
                    }
                })
                .buffer_unordered(STATUS_CONCURRENCY)
                .collect()
                .await;
            for (write, ok) in outcomes {
                if ok {
                    gateway_written.insert(write.key(), write.status.clone());
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
    /// moot (the route is gone). `done`: what was last written for it.
    async fn write(&self, write: &StatusWrite, done: Option<&StatusWrite>) -> bool {
        if let Some(ingress) = &write.ingress {
            return self.write_ingress(write, ingress, done).await;
        }
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
            RouteKind::Ingress | RouteKind::HttpRoute => return true,
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
    /// Patches one Gateway API object's status (a merge patch of the whole
    /// status: an HTTPRoute's carries the other controllers' entries as
    /// read); true when done or moot (the object is gone).
    async fn write_gateway(&self, write: &GatewayWrite) -> bool {
        use pier_crds::gateway::{Gateway, GatewayClass, HTTPRoute};
        let patch = Patch::Merge(serde_json::json!({ "status": write.status }));
        let params = PatchParams::default();
        let client = self.client.clone();
        let ns = write.namespace.as_deref().unwrap_or("default");
        let name = &write.name;
        let patched = match write.kind {
            gateway::Kind::Class => Api::<GatewayClass>::all(client)
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
            gateway::Kind::Gateway => Api::<Gateway>::namespaced(client, ns)
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
            gateway::Kind::Route => Api::<HTTPRoute>::namespaced(client, ns)
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
        };
        match patched {
            Ok(()) => {
                self.metrics.status_written();
                true
            }
            Err(kube::Error::Api(e)) if e.code == 404 => true,
            Err(e) => {
                tracing::warn!(kind = ?write.kind, namespace = ns, name, error = %e, "status write failed");
                false
            }
        }
    }

    /// An Ingress: `status.loadBalancer` when it changed, then Events for
    /// the conditions that changed since the last write and for new
    /// warnings.
    async fn write_ingress(
        &self,
        write: &StatusWrite,
        ingress: &IngressStatus,
        done: Option<&StatusWrite>,
    ) -> bool {
        if let Some(lb) = &ingress.load_balancer {
            let patch = serde_json::json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "status": { "loadBalancer": lb },
            });
            let params = PatchParams::apply(MANAGER).force();
            let api = Api::<Ingress>::namespaced(self.client.clone(), &write.key.namespace);
            match api
                .patch_status(&write.key.name, &params, &Patch::Apply(&patch))
                .await
            {
                Ok(_) => self.metrics.status_written(),
                Err(kube::Error::Api(e)) if e.code == 404 => return true,
                Err(e) => {
                    tracing::warn!(route = %write.key, error = %e, "status write failed");
                    return false;
                }
            }
        }
        let before = done.map_or(&[][..], |d| d.desired.as_slice());
        let mut transitions = status::transitions(before, &write.desired);
        let known = done.and_then(|d| d.ingress.as_ref()).map(|i| &i.warnings);
        for (reason, message) in &ingress.warnings {
            if known.is_none_or(|k| !k.iter().any(|(_, m)| m == message)) {
                transitions.push(status::Transition {
                    kind: "Served".to_owned(),
                    ok: false,
                    reason: reason.clone(),
                    message: message.clone(),
                });
            }
        }
        self.announce(&write.route, &transitions).await;
        true
    }

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
