//! The reconcile loop against kube's client over a mock API server (a
//! `tower` service answering lists, holding watches open and recording
//! status patches), on a paused clock: no sockets, no waiting.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::Reconciler;
use crate::channel::Published;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::writer::StatusWriter;

type Reply = Response<BoxBody<Bytes, Infallible>>;

/// What the mock API server serves and what it was sent.
#[derive(Default)]
struct ApiServer {
    static_routes: Vec<Value>,
    /// Watch events for StaticRoutes, sent on the first watch of them.
    static_events: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Value>>>,
    /// Status patches: (route name, conditions).
    patches: Mutex<Vec<(String, Value)>>,
    ingresses: Vec<Value>,
    ingress_classes: Vec<Value>,
    services: Vec<Value>,
    /// Ingress status patches: (name, status).
    ingress_patches: Mutex<Vec<(String, Value)>>,
    /// Events created: (regarding name, reason).
    events: Mutex<Vec<(String, String)>>,
}

impl ApiServer {
    fn patches(&self) -> Vec<(String, Value)> {
        self.patches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn ingress_patches(&self) -> Vec<(String, Value)> {
        self.ingress_patches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn events(&self) -> Vec<(String, String)> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn answer(self: Arc<Self>, request: Request<kube::client::Body>) -> Reply {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let method = request.method().clone();
        if method == http::Method::GET && query.contains("watch=true") {
            let events = (path == "/apis/pier.dev/v1alpha1/staticroutes")
                .then(|| {
                    self.static_events
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take()
                })
                .flatten();
            if let Some(events) = events {
                let stream = futures::stream::unfold(events, |mut events| async move {
                    let event = events.recv().await?;
                    let line = Bytes::from(format!("{event}\n"));
                    Some((Ok(hyper::body::Frame::data(line)), events))
                });
                return Response::new(BoxBody::new(StreamBody::new(stream)));
            }
            // Held open: nothing changes unless a test says so.
            let pending =
                futures::stream::pending::<Result<hyper::body::Frame<Bytes>, Infallible>>();
            return Response::new(BoxBody::new(StreamBody::new(pending)));
        }
        let list = |kind: &str, api: &str, items: &[Value]| json!({"apiVersion": api, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items});
        let body = match (method.as_str(), path.as_str()) {
            ("GET", "/apis/pier.dev/v1alpha1/staticroutes") => {
                list("StaticRouteList", "pier.dev/v1alpha1", &self.static_routes)
            }
            ("GET", "/apis/pier.dev/v1alpha1/proxyroutes") => {
                list("ProxyRouteList", "pier.dev/v1alpha1", &[])
            }
            ("GET", "/api/v1/services") => list("ServiceList", "v1", &self.services),
            ("GET", "/apis/networking.k8s.io/v1/ingresses") => {
                list("IngressList", "networking.k8s.io/v1", &self.ingresses)
            }
            ("GET", "/apis/networking.k8s.io/v1/ingressclasses") => list(
                "IngressClassList",
                "networking.k8s.io/v1",
                &self.ingress_classes,
            ),
            ("PATCH", p)
                if p.starts_with("/apis/networking.k8s.io/v1/namespaces/")
                    && p.ends_with("/status") =>
            {
                let name = status_of(p);
                let patch = json_body(request).await;
                self.ingress_patches
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((name.clone(), patch["status"].clone()));
                self.ingresses
                    .iter()
                    .find(|r| r["metadata"]["name"] == name.as_str())
                    .cloned()
                    .unwrap_or_default()
            }
            ("POST", p) if p.ends_with("/events") => {
                let event = json_body(request).await;
                let regarding = event["regarding"]["name"].as_str().unwrap_or_default();
                let reason = event["reason"].as_str().unwrap_or_default();
                self.events
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((regarding.to_owned(), reason.to_owned()));
                event
            }
            ("GET", "/apis/discovery.k8s.io/v1/endpointslices") => {
                list("EndpointSliceList", "discovery.k8s.io/v1", &[])
            }
            ("PATCH", p)
                if p.starts_with("/apis/pier.dev/v1alpha1/namespaces/")
                    && p.ends_with("/status") =>
            {
                let name = status_of(p);
                let patch = json_body(request).await;
                self.patches
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((name.clone(), patch["status"]["conditions"].clone()));
                self.static_routes
                    .iter()
                    .find(|r| r["metadata"]["name"] == name.as_str())
                    .cloned()
                    .unwrap_or_default()
            }
            _ => {
                let mut reply = Response::new(BoxBody::new(Full::new(Bytes::from_static(
                    br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#,
                ))));
                *reply.status_mut() = StatusCode::NOT_FOUND;
                return reply;
            }
        };
        Response::new(BoxBody::new(Full::new(Bytes::from(body.to_string()))))
    }
}

/// The object name of a `…/NAME/status` path.
fn status_of(path: &str) -> String {
    path.trim_end_matches("/status")
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A request's JSON body (`null` when it is not JSON).
async fn json_body(request: Request<kube::client::Body>) -> Value {
    let bytes = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

fn static_route(name: &str, root: &str) -> Value {
    json!({
        "apiVersion": "pier.dev/v1alpha1",
        "kind": "StaticRoute",
        "metadata": {
            "name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "generation": 1, "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"root": root, "hosts": [format!("{name}.example")]},
    })
}

/// A controller's reconcile loop and status writer on the mock.
struct Running {
    api: Arc<ApiServer>,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    published: watch::Receiver<Arc<Published>>,
    _alive: watch::Sender<()>,
}

fn start(api: ApiServer) -> Running {
    start_with(api, crate::stores::Class::default())
}

fn start_with(api: ApiServer, class: crate::stores::Class) -> Running {
    let api = Arc::new(api);
    let service = tower::service_fn({
        let api = Arc::clone(&api);
        move |request| {
            let api = Arc::clone(&api);
            async move { Ok::<_, Infallible>(api.answer(request).await) }
        }
    });
    let client = kube::Client::new(service, "default");
    let (alive_tx, alive) = watch::channel(());
    let fleet = Arc::new(Fleet::default());
    let metrics = Arc::new(Metrics::default());
    let empty = pier_snapshot::Snapshot::empty();
    let (publish, published) = watch::channel(Arc::new(Published {
        version: empty.version.clone(),
        frame: Bytes::new(),
    }));
    let (status, batches) = watch::channel(Arc::default());
    let changed = Arc::new(Notify::new());
    let reconciler = Reconciler {
        client: client.clone(),
        namespaces: Vec::new(),
        secret_namespaces: Vec::new(),
        coalesce: Duration::from_millis(500),
        class,
        fleet: Arc::clone(&fleet),
        metrics: Arc::clone(&metrics),
        publish,
        ready: watch::channel(false).0,
        alive: alive.clone(),
        leader: watch::channel(true).1,
        lease: None,
        status,
        changed: Arc::clone(&changed),
        ingress: Some(crate::IngressConfig {
            controller: pier_compile::ingress::CONTROLLER.to_owned(),
            publish_service: Some(("pier".into(), "pier-dataplane".into())),
        }),
        gateway: None,
    };
    let writer = StatusWriter {
        client: client.clone(),
        metrics: Arc::clone(&metrics),
        recorder: kube::runtime::events::Recorder::new(
            client,
            kube::runtime::events::Reporter {
                controller: "pier-controller".into(),
                instance: None,
            },
        ),
        retry: changed,
    };
    tokio::spawn(reconciler.run());
    tokio::spawn(writer.run(batches, alive));
    Running {
        api,
        fleet,
        metrics,
        published,
        _alive: alive_tx,
    }
}

/// The value of a counter in the controller's metrics text.
fn counter(metrics: &Metrics, fleet: &Fleet, name: &str) -> u64 {
    metrics
        .render(fleet, "", true)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} is rendered"))
}

/// The condition `kind` of the newest patch of `route`.
fn condition(api: &ApiServer, route: &str, kind: &str) -> Option<(String, String)> {
    let patches = api.patches();
    let (_, conditions) = patches.iter().rev().find(|(name, _)| name == route)?;
    let condition = conditions.as_array()?.iter().find(|c| c["type"] == kind)?;
    Some((
        condition["status"].as_str()?.to_owned(),
        condition["reason"].as_str()?.to_owned(),
    ))
}

/// Lets the loop and the writer run until `done`, on the paused clock.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the condition never held");
}

fn pair(status: &str, reason: &str) -> Option<(String, String)> {
    Some((status.to_owned(), reason.to_owned()))
}

#[tokio::test(start_paused = true)]
async fn an_invalid_route_is_reported_and_the_valid_one_published() {
    let run = start(ApiServer {
        static_routes: vec![
            static_route("good", "/srv/good"),
            static_route("bad", "relative"),
        ],
        ..ApiServer::default()
    });
    let mut published = run.published.clone();
    let snapshot = published
        .wait_for(|p| p.version != pier_snapshot::Snapshot::empty().version)
        .await
        .map(|p| Arc::clone(&p))
        .expect("a snapshot is published");
    assert!(!snapshot.frame.is_empty());
    until(|| condition(&run.api, "bad", "Accepted").is_some()).await;
    let (status, reason) = condition(&run.api, "bad", "Accepted").expect("bad patched");
    assert_eq!(status, "False");
    assert_eq!(reason, "InvalidRoot");
    until(|| condition(&run.api, "good", "Accepted") == pair("True", "Accepted")).await;
    assert_eq!(
        counter(&run.metrics, &run.fleet, "pier_controller_reconciles_total"),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn an_ack_sets_programmed_without_another_build() {
    let run = start(ApiServer {
        static_routes: vec![static_route("good", "/srv/good")],
        ..ApiServer::default()
    });
    let mut published = run.published.clone();
    let version = published
        .wait_for(|p| p.version != pier_snapshot::Snapshot::empty().version)
        .await
        .map(|p| p.version.clone())
        .expect("a snapshot is published");
    until(|| condition(&run.api, "good", "Programmed") == pair("False", "NoDataplanes")).await;

    // A dataplane connects, then acknowledges the version.
    let id = run.fleet.connect("dataplane-0");
    until(|| condition(&run.api, "good", "Programmed") == pair("False", "Pending")).await;
    run.fleet.ack(id, &version, None);
    until(|| condition(&run.api, "good", "Programmed") == pair("True", "Programmed")).await;

    assert_eq!(
        counter(&run.metrics, &run.fleet, "pier_controller_leader"),
        1,
        "without an election this replica leads"
    );
    // Status followed each change of the fleet; the snapshot was built once.
    assert_eq!(
        counter(&run.metrics, &run.fleet, "pier_controller_reconciles_total"),
        1
    );
    assert!(
        counter(
            &run.metrics,
            &run.fleet,
            "pier_controller_status_plans_total"
        ) >= 3
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_changes_becomes_one_build_at_the_end_of_the_window() {
    let (events, static_events) = tokio::sync::mpsc::unbounded_channel();
    let run = start(ApiServer {
        static_routes: vec![static_route("first", "/srv/first")],
        static_events: Mutex::new(Some(static_events)),
        ..ApiServer::default()
    });
    let empty = pier_snapshot::Snapshot::empty().version;
    let mut published = run.published.clone();
    let first = published
        .wait_for(|p| p.version != empty)
        .await
        .map(|p| p.version.clone())
        .expect("the first build");

    // Three routes arrive 100 ms apart, inside the 500 ms window.
    let burst = tokio::time::Instant::now();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut route = static_route(name, &format!("/srv/{name}"));
        route["metadata"]["resourceVersion"] = json!(format!("{}", i + 2));
        events
            .send(json!({"type": "ADDED", "object": route}))
            .expect("the watch is open");
    }
    published
        .wait_for(|p| p.version != first)
        .await
        .expect("a second build");
    assert_eq!(
        burst.elapsed(),
        Duration::from_millis(500),
        "built when the window after the first change closed"
    );
    assert_eq!(
        counter(&run.metrics, &run.fleet, "pier_controller_reconciles_total"),
        2,
        "one build for the three changes"
    );
    for name in ["a", "b", "c"] {
        until(|| condition(&run.api, name, "Accepted") == pair("True", "Accepted")).await;
    }
}

#[tokio::test(start_paused = true)]
async fn routes_of_another_class_are_left_alone() {
    let mut other = static_route("other", "/srv/other");
    other["spec"]["className"] = json!("other");
    let mut named = static_route("named", "/srv/named");
    named["spec"]["className"] = json!("pier");
    let run = start_with(
        ApiServer {
            static_routes: vec![static_route("unclassed", "/srv/unclassed"), other, named],
            ..ApiServer::default()
        },
        crate::stores::Class {
            name: "pier".to_owned(),
            claim_unclassed: false,
        },
    );
    until(|| condition(&run.api, "named", "Accepted") == pair("True", "Accepted")).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let touched: Vec<String> = run
        .api
        .patches()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert!(
        touched.iter().all(|name| name == "named"),
        "only this class's route gets status: {touched:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_served_ingress_gets_the_dataplane_addresses_and_one_event_per_warning() {
    let ingress = |name: &str, class: &str| {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "generation": 1, "resourceVersion": "1",
                "annotations": {"nginx.ingress.kubernetes.io/custom-http-errors": "404"},
            },
            "spec": {"ingressClassName": class, "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
        })
    };
    let run = start(ApiServer {
        ingresses: vec![ingress("ours", "pier"), ingress("theirs", "nginx")],
        ingress_classes: vec![
            json!({"metadata": {"name": "pier"}, "spec": {"controller": pier_compile::ingress::CONTROLLER}}),
            json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
        ],
        services: vec![json!({
            "metadata": {"name": "pier-dataplane", "namespace": "pier"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.9"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}},
        })],
        ..ApiServer::default()
    });
    until(|| !run.api.ingress_patches().is_empty()).await;
    let has = |reason: &str| {
        let events = run.api.events();
        events
            .iter()
            .filter(|(n, r)| n == "ours" && r == reason)
            .count()
    };
    until(|| has("UnsupportedAnnotation") == 1).await;
    // Later plans (an ack, a rebuild) repeat neither the write nor the Event.
    run.fleet
        .published("again", Arc::default(), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let patches = run.api.ingress_patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].0, "ours");
    assert_eq!(
        patches[0].1,
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}})
    );
    assert_eq!(has("UnsupportedAnnotation"), 1);
    assert!(
        run.api.events().iter().all(|(n, _)| n != "theirs"),
        "another class's Ingress is left alone"
    );
}
