//! The control plane end to end: route resources on a real kube-apiserver
//! become snapshots served by a dataplane, with truthful status.
//!
//! Each test starts its own API server, controller (in-process) and
//! dataplane (in-process, cluster mode, over TLS with a token).

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use pier_crds::{ProxyRoute, StaticRoute};
use serde_json::json;
use support::{Cluster, eventually, local_address, tiny_backend, tiny_backend_on};

fn route(name: &str, spec: serde_json::Value) -> StaticRoute {
    serde_json::from_value(json!({
        "apiVersion": "pier.dev/v1alpha1",
        "kind": "StaticRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .expect("a StaticRoute")
}

fn proxy_route(name: &str, spec: serde_json::Value) -> ProxyRoute {
    serde_json::from_value(json!({
        "apiVersion": "pier.dev/v1alpha1",
        "kind": "ProxyRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .expect("a ProxyRoute")
}

/// Whether StaticRoute `name` is `Programmed=True` for `generation`.
async fn programmed(api: &Api<StaticRoute>, name: &str, generation: i64) -> bool {
    let got = api.get(name).await.expect("read back");
    condition(&got, "Programmed") == Some(("True".into(), "Programmed".into(), Some(generation)))
}

fn condition(route: &StaticRoute, kind: &str) -> Option<(String, String, Option<i64>)> {
    let c = route
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)?;
    Some((c.status.clone(), c.reason.clone(), c.observed_generation))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_served_updated_and_removed_with_truthful_status() {
    let cluster = Cluster::start().await;
    let v1 = cluster.docroot("v1", &[("index.html", "version one")]);
    let v2 = cluster.docroot("v2", &[("index.html", "version two")]);
    let api: Api<StaticRoute> = Api::namespaced(cluster.cp.client(), "default");

    let site = route("site", json!({"root": v1, "hosts": ["www.example.com"]}));
    api.create(&PostParams::default(), &site)
        .await
        .expect("created");
    eventually("the route is served", || async {
        cluster
            .get("www.example.com", "/")
            .is_some_and(|(s, b)| s == 200 && b == "version one")
    })
    .await;
    eventually("Programmed=True for generation 1", || async {
        let got = api.get("site").await.expect("read back");
        condition(&got, "Accepted") == Some(("True".into(), "Accepted".into(), Some(1)))
            && condition(&got, "ResolvedRefs").is_some_and(|c| c.0 == "True")
            && condition(&got, "Programmed") == Some(("True".into(), "Programmed".into(), Some(1)))
    })
    .await;

    let patch = json!({"spec": {"root": v2}});
    api.patch("site", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("updated");
    eventually("the new content is served", || async {
        cluster
            .get("www.example.com", "/")
            .is_some_and(|(_, b)| b == "version two")
    })
    .await;
    eventually("Programmed follows generation 2", || async {
        programmed(&api, "site", 2).await
    })
    .await;

    api.delete("site", &DeleteParams::default())
        .await
        .expect("deleted");
    eventually("a deleted route is 404", || async {
        cluster
            .get("www.example.com", "/")
            .is_some_and(|(s, _)| s == 404)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_routes_are_refused_or_reported_and_the_rest_keep_serving() {
    let cluster = Cluster::start().await;
    let root = cluster.docroot("site", &[("index.html", "kept")]);
    let api: Api<StaticRoute> = Api::namespaced(cluster.cp.client(), "default");
    let good = route("good", json!({"root": root, "hosts": ["a.example.com"]}));
    api.create(&PostParams::default(), &good)
        .await
        .expect("created");

    // What the schema can judge, the API server refuses with a clear message
    // (an unknown path type too: see `control_plane.rs`).
    let refused = [
        (
            json!({"root": root, "path": {"type": "PathPrefix", "value": "no-slash"}}),
            "path must start with '/'",
        ),
        (
            json!({"root": "relative/dir"}),
            "root must be an absolute path",
        ),
        (
            json!({"root": root, "index": "a/b.html"}),
            "index must be a file name",
        ),
        (
            json!({"root": root, "cacheControl": "max-age=1\r\nX-Injected: 1"}),
            "cacheControl must not contain CR, LF or NUL",
        ),
        (
            json!({"root": root, "hosts": ["Not_A_Host"]}),
            "spec.hosts[0]",
        ),
    ];
    for (i, (spec, message)) in refused.into_iter().enumerate() {
        let bad = route(&format!("bad-{i}"), spec.clone());
        match api.create(&PostParams::default(), &bad).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{spec}: {e:?}");
                assert!(
                    e.message.contains(message),
                    "{spec}: {:?} lacks {message:?}",
                    e.message
                );
            }
            other => panic!("{spec} was not refused: {other:?}"),
        }
    }

    // A conflict only the compiler sees: the older route keeps the host.
    let rival = route("rival", json!({"root": root, "hosts": ["a.example.com"]}));
    api.create(&PostParams::default(), &rival)
        .await
        .expect("created");
    eventually("the younger route is reported as a conflict", || async {
        let got = api.get("rival").await.expect("read back");
        condition(&got, "Accepted").is_some_and(|(s, r, _)| s == "False" && r == "Conflict")
            && condition(&got, "Programmed").is_some_and(|(s, _, _)| s == "False")
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.cp.client(), "default");
    eventually("a Warning Event names the conflict", || async {
        events
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Conflict")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("rival")
            })
    })
    .await;
    eventually("the older route is served and programmed", || async {
        let got = api.get("good").await.expect("read back");
        condition(&got, "Programmed").is_some_and(|(s, _, _)| s == "True")
            && cluster
                .get("a.example.com", "/")
                .is_some_and(|(s, b)| s == 200 && b == "kept")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplanes_keep_serving_without_the_controller_and_converge_when_it_returns() {
    let mut cluster = Cluster::start().await;
    let root = cluster.docroot("site", &[("index.html", "stable")]);
    let api: Api<StaticRoute> = Api::namespaced(cluster.cp.client(), "default");
    let site = route("site", json!({"root": root}));
    api.create(&PostParams::default(), &site)
        .await
        .expect("created");
    eventually("served", || async {
        cluster.get("any", "/").is_some_and(|(s, _)| s == 200)
    })
    .await;

    // Controller down: the dataplane keeps serving.
    cluster.stop_controller();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.get("any", "/").map(|(s, _)| s), Some(200));

    // A dataplane restarted meanwhile serves its stored snapshot.
    cluster.restart_dataplane();
    eventually("the restarted dataplane serves from its store", || async {
        cluster
            .get("any", "/")
            .is_some_and(|(s, b)| s == 200 && b == "stable")
    })
    .await;

    // Changes made while the controller is away arrive when it is back.
    api.delete("site", &DeleteParams::default())
        .await
        .expect("deleted");
    assert_eq!(
        cluster.get("any", "/").map(|(s, _)| s),
        Some(200),
        "still the stored routes"
    );
    cluster.start_controller().await;
    eventually(
        "the dataplane converges on the controller's view",
        || async { cluster.get("any", "/").is_some_and(|(s, _)| s == 404) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_writes_status_and_another_takes_over_when_it_dies() {
    let mut cluster = Cluster::start_replicated().await;
    let leader = cluster.leader().await;

    // The dataplane is connected to the other replica; the leader learns of
    // it from that replica's report and marks the route Programmed.
    let root = cluster.docroot("site", &[("index.html", "ha")]);
    let api: Api<StaticRoute> = Api::namespaced(cluster.cp.client(), "default");
    api.create(
        &PostParams::default(),
        &route("site", json!({"root": root})),
    )
    .await
    .expect("created");
    eventually("Programmed through the other replica's report", || async {
        programmed(&api, "site", 1).await
    })
    .await;

    // The leader dies without releasing the lease; the other replica takes
    // over once it expires and keeps status current.
    let index = cluster
        .replicas
        .iter()
        .position(|(identity, _)| *identity == leader)
        .expect("the leader is a replica");
    drop(cluster.replicas.remove(index));
    eventually("the other replica leads", || async {
        cluster.leader().await != leader
    })
    .await;
    let patch = json!({"spec": {"cacheControl": "max-age=60"}});
    api.patch("site", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("updated");
    eventually("the new leader writes status for generation 2", || async {
        programmed(&api, "site", 2).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_routes_are_served_through_the_controller() {
    let cluster = Cluster::start().await;
    let backend = tiny_backend("from the backend");
    let api: Api<ProxyRoute> = Api::namespaced(cluster.cp.client(), "default");
    let app = proxy_route(
        "app",
        json!({"hosts": ["app.example.com"], "backends": [{"address": backend.to_string()}]}),
    );
    api.create(&PostParams::default(), &app)
        .await
        .expect("created");
    eventually("the backend answers through the dataplane", || async {
        cluster
            .get("app.example.com", "/")
            .is_some_and(|(s, b)| s == 200 && b == "from the backend")
    })
    .await;
    eventually("the ProxyRoute is Programmed", || async {
        let got = api.get("app").await.expect("read back");
        got.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Programmed" && c.status == "True")
        })
    })
    .await;

    // Methods and a regular-expression path narrow a route.
    let items = proxy_route(
        "items",
        json!({
            "hosts": ["app.example.com"],
            "path": {"type": "RegularExpression", "value": "/items/[0-9]+"},
            "methods": ["GET"],
            "backends": [{"address": tiny_backend("an item").to_string()}],
        }),
    );
    api.create(&PostParams::default(), &items)
        .await
        .expect("created");
    eventually("the expression route takes its paths only", || async {
        cluster
            .get("app.example.com", "/items/42")
            .is_some_and(|(s, b)| s == 200 && b == "an item")
            && cluster
                .get("app.example.com", "/items/x")
                .is_some_and(|(s, b)| s == 200 && b == "from the backend")
    })
    .await;

    // What only the compiler can judge is reported in status.
    let unclosed = proxy_route(
        "unclosed",
        json!({
            "path": {"type": "RegularExpression", "value": "/(unclosed"},
            "backends": [{"address": backend.to_string()}],
        }),
    );
    api.create(&PostParams::default(), &unclosed)
        .await
        .expect("the schema cannot judge an expression");
    eventually("the bad expression is reported as InvalidPath", || async {
        let got = api.get("unclosed").await.expect("read back");
        got.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && c.status == "False" && c.reason == "InvalidPath")
        })
    })
    .await;

    // What the schema can judge, the API server refuses.
    let address = backend.to_string();
    let refused = [
        (
            json!({"backends": [{"address": address}], "requestHeaders": {"set": [{"name": "X-A", "value": "a\r\nInjected: 1"}]}}),
            "must not contain CR, LF or NUL",
        ),
        (
            json!({"backends": [{"address": address}], "headers": [{"name": "X-A", "value": "a\r\nb"}]}),
            "must not contain CR, LF or NUL",
        ),
        (
            json!({"backends": [{"address": address}], "sendfile": {"enabled": true}}),
            "sendfile needs at least one root when enabled",
        ),
        (
            json!({"backends": [{"address": address}], "sendfile": {"enabled": true, "roots": ["files"]}}),
            "sendfile roots must be absolute paths",
        ),
        (
            json!({"backends": [{"address": address}], "path": {"type": "PathPrefix", "value": "api"}}),
            "path must start with '/'",
        ),
    ];
    for (i, (spec, message)) in refused.into_iter().enumerate() {
        match api
            .create(
                &PostParams::default(),
                &proxy_route(&format!("bad-{i}"), spec.clone()),
            )
            .await
        {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{spec}: {e:?}");
                assert!(e.message.contains(message), "{spec}: {}", e.message);
            }
            other => panic!("{spec} was accepted: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_backends_follow_their_endpoint_slices() {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    let cluster = Cluster::start().await;
    let client = cluster.cp.client();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let routes: Api<ProxyRoute> = Api::namespaced(client.clone(), "default");

    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "api", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }))
    .expect("a Service");
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("service");
    let slice = |backends: &[(std::net::SocketAddr, &str)]| -> EndpointSlice {
        let port = backends.first().map_or(1, |(a, _)| a.port());
        let endpoints: Vec<serde_json::Value> = backends
            .iter()
            .map(|(addr, pod)| {
                json!({
                    "addresses": [addr.ip().to_string()],
                    "conditions": {"ready": true},
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"},
                })
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {
                "name": "api-1",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "api"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port}],
            "endpoints": endpoints,
        }))
        .expect("an EndpointSlice")
    };

    // A route whose Service has no endpoints yet: accepted, refs unresolved.
    let app = proxy_route("app", json!({"backends": [{"service": "api", "port": 80}]}));
    routes
        .create(&PostParams::default(), &app)
        .await
        .expect("route");
    eventually("ResolvedRefs=False NoReadyEndpoints", || async {
        let got = routes.get("app").await.expect("read back");
        got.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "ResolvedRefs" && c.status == "False" && c.reason == "NoReadyEndpoints"
            })
        })
    })
    .await;
    assert_eq!(cluster.get("any", "/").map(|(s, _)| s), Some(503));

    // The API server refuses loopback endpoint addresses: backends listen
    // on this machine's own non-loopback address, one EndpointSlice per
    // backend (each with its own port, as slices may have).
    let Some(ip) = local_address() else {
        panic!(
            "this test needs a non-loopback IPv4 address on the machine (the API server refuses loopback endpoints); none was found"
        );
    };
    let one = tiny_backend_on(ip, "one");
    let two = tiny_backend_on(ip, "two");
    let named = |name: &str, port: u16, pod: &str| {
        let mut s = slice(&[(std::net::SocketAddr::new(ip, port), pod)]);
        s.metadata.name = Some(name.to_owned());
        s
    };
    slices
        .create(
            &PostParams::default(),
            &named("api-1", one.port(), "pod-one"),
        )
        .await
        .expect("slice");
    eventually("traffic reaches the first pod", || async {
        cluster
            .get("any", "/")
            .is_some_and(|(s, b)| s == 200 && b == "one")
    })
    .await;
    eventually("ResolvedRefs=True", || async {
        let got = routes.get("app").await.expect("read back");
        got.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "ResolvedRefs" && c.status == "True")
        })
    })
    .await;
    // Scaling up: a second slice; round-robin sends traffic to both.
    slices
        .create(
            &PostParams::default(),
            &named("api-2", two.port(), "pod-two"),
        )
        .await
        .expect("second slice");
    eventually("traffic is shared by both pods", || async {
        let bodies: std::collections::BTreeSet<String> = (0..6)
            .filter_map(|_| cluster.get("any", "/").map(|(_, b)| b))
            .collect();
        bodies.len() == 2 && bodies.contains("one") && bodies.contains("two")
    })
    .await;
    // Scaling down: the first pod's slice goes, its traffic moves.
    slices
        .delete("api-1", &Default::default())
        .await
        .expect("slice deleted");
    eventually("all traffic moved to the second pod", || async {
        (0..6).all(|_| {
            cluster
                .get("any", "/")
                .is_some_and(|(s, b)| s == 200 && b == "two")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_electing_replica_programs_its_own_dataplanes() {
    let cluster = Cluster::start_electing(&["solo"]).await;
    let root = cluster.docroot("site", &[("index.html", "solo")]);
    let api: Api<StaticRoute> = Api::namespaced(cluster.cp.client(), "default");
    api.create(
        &PostParams::default(),
        &route("site", json!({"root": root})),
    )
    .await
    .expect("created");
    eventually("Programmed=True with a local dataplane", || async {
        programmed(&api, "site", 1).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataplane_is_ready_on_a_cluster_without_routes() {
    let cluster = Cluster::start().await;
    eventually("/readyz answers 200 with an empty snapshot", || async {
        cluster.admin("/readyz").is_some_and(|(s, _)| s == 200)
    })
    .await;
}

/// A `kubernetes.io/tls` Secret for `host`, self-signed, valid for decades.
fn tls_secret(name: &str, host: &str) -> k8s_openapi::api::core::v1::Secret {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()},
    }))
    .expect("a Secret")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_secrets_are_watched_checked_and_carried_to_dataplanes() {
    let cluster = Cluster::start().await;
    let root = cluster.docroot("tls", &[("index.html", "secure")]);
    let api: Api<StaticRoute> = Api::namespaced(cluster.cp.client(), "default");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.cp.client(), "default");
    secrets
        .create(
            &PostParams::default(),
            &tls_secret("site-tls", "secure.example"),
        )
        .await
        .expect("Secret created");
    let secure = route(
        "secure",
        json!({"root": root, "hosts": ["secure.example"], "tls": {"secretName": "site-tls"}}),
    );
    api.create(&PostParams::default(), &secure)
        .await
        .expect("created");
    // A route naming a Secret that does not exist yet.
    let later = route(
        "later",
        json!({"root": root, "hosts": ["later.example"], "tls": {"secretName": "later-tls"}}),
    );
    api.create(&PostParams::default(), &later)
        .await
        .expect("created");

    eventually(
        "the certificate reaches the dataplane, its key never shown",
        || async {
            let resolved = api
                .get("secure")
                .await
                .ok()
                .and_then(|r| condition(&r, "ResolvedRefs"))
                .is_some_and(|(s, _, _)| s == "True");
            let shown = cluster.snapshot().is_some_and(|s| {
                s["certificates"][0]["name"] == "default/site-tls"
                    && s["certificates"][0]["keyPem"] == "<redacted>"
                    && s["certificates"][0]["hosts"][0] == "secure.example"
            });
            resolved && shown
        },
    )
    .await;
    eventually("the missing Secret is reported", || async {
        api.get("later")
            .await
            .ok()
            .and_then(|r| condition(&r, "ResolvedRefs"))
            .is_some_and(|(s, r, _)| s == "False" && r == "InvalidCertificateRef")
    })
    .await;
    // The Secret arrives: the watch picks it up.
    secrets
        .create(
            &PostParams::default(),
            &tls_secret("later-tls", "later.example"),
        )
        .await
        .expect("Secret created");
    eventually("the new Secret resolves the route", || async {
        api.get("later")
            .await
            .ok()
            .and_then(|r| condition(&r, "ResolvedRefs"))
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
}
