//! Ingress end to end on a real kube-apiserver: IngressClasses decide
//! which Ingresses are Pier's, served ones get `status.loadBalancer` from
//! the dataplane Service, and what Pier refuses or serves without is said
//! in Events.

mod support;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use support::{Cluster, eventually, local_address, tiny_backend_on};

fn ingress(name: &str, class: &str, host: &str, annotations: serde_json::Value) -> Ingress {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {
            "ingressClassName": class,
            "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"name": "http"}}},
            }]}}],
        },
    }))
    .expect("an Ingress")
}

async fn create<K>(api: &Api<K>, object: &K)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.create(&PostParams::default(), object)
        .await
        .expect("created");
}

/// Warning Events about Ingress `name`, as (reason, note).
async fn warnings(events: &Api<Event>, name: &str) -> Vec<(String, String)> {
    events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingresses_of_pier_classes_are_served_with_status_and_events() {
    let cluster = Cluster::start().await;
    let client = cluster.cp.client();
    let classes: Api<IngressClass> = Api::all(client.clone());
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");

    // The harness installs the chart, whose IngressClass is `pier`;
    // another controller's class stands beside it.
    let pier = classes.get("pier").await.expect("the chart's IngressClass");
    let controller = pier.spec.and_then(|s| s.controller);
    assert_eq!(
        controller.as_deref(),
        Some(pier_compile::ingress::CONTROLLER)
    );
    let nginx: IngressClass = serde_json::from_value(json!({
        "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"},
    }))
    .expect("an IngressClass");
    create(&classes, &nginx).await;
    // The dataplane's Service, as the chart makes it (the harness's
    // controller publishes `default/pier-dataplane`).
    let published: Service = serde_json::from_value(json!({
        "metadata": {"name": "pier-dataplane", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80}], "externalIPs": ["203.0.113.10"]},
    }))
    .expect("a Service");
    create(&services, &published).await;
    // Service `web`, its one pod on this machine's non-loopback address
    // (the API server refuses loopback endpoints).
    let ip = local_address().expect("a non-loopback IPv4 address on this machine");
    let backend = tiny_backend_on(ip, "from web");
    let web: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }))
    .expect("a Service");
    create(&services, &web).await;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": backend.port()}],
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
    }))
    .expect("an EndpointSlice");
    create(&Api::namespaced(client.clone(), "default"), &slice).await;

    create(
        &ingresses,
        &ingress("app", "pier", "app.example.com", json!({})),
    )
    .await;
    create(
        &ingresses,
        &ingress("theirs", "nginx", "theirs.example.com", json!({})),
    )
    .await;
    create(
        &ingresses,
        &ingress(
            "snippet",
            "pier",
            "snippet.example.com",
            json!({
                "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers \"X: y\";",
            }),
        ),
    )
    .await;
    create(
        &ingresses,
        &ingress(
            "errors",
            "pier",
            "errors.example.com",
            json!({
                "nginx.ingress.kubernetes.io/custom-http-errors": "404,503",
            }),
        ),
    )
    .await;

    // Basic authentication from an Opaque Secret (`htpasswd -nbm bob
    // hunter2`), which the controller watches in its Secret namespaces.
    let users: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "users", "namespace": "default"},
        "type": "Opaque",
        "stringData": {"auth": "bob:$apr1$cNOAwpSu$MtBlYKfXHmZtzh7a7jGe1.\n"},
    }))
    .expect("a Secret");
    create(&Api::namespaced(client.clone(), "default"), &users).await;
    create(
        &ingresses,
        &ingress(
            "staff",
            "pier",
            "staff.example.com",
            json!({
                "nginx.ingress.kubernetes.io/auth-type": "basic",
                "nginx.ingress.kubernetes.io/auth-secret": "users",
                "nginx.ingress.kubernetes.io/auth-realm": "Staff only",
            }),
        ),
    )
    .await;

    eventually("the Ingress of Pier's class is served", || async {
        cluster
            .get("app.example.com", "/")
            .is_some_and(|(s, b)| s == 200 && b == "from web")
    })
    .await;
    eventually(
        "status.loadBalancer names the dataplane Service",
        || async {
            let got = ingresses.get("app").await.expect("read back");
            got.status
                .and_then(|s| s.load_balancer)
                .and_then(|lb| lb.ingress)
                .is_some_and(|i| i.len() == 1 && i[0].ip.as_deref() == Some("203.0.113.10"))
        },
    )
    .await;
    eventually(
        "the snippet Ingress is refused in a Warning Event",
        || async {
            warnings(&events, "snippet")
                .await
                .iter()
                .any(|(reason, note)| {
                    reason == "SnippetRefused" && note.contains("configuration-snippet")
                })
        },
    )
    .await;
    eventually(
        "the unsupported annotation is said in a Warning Event",
        || async {
            warnings(&events, "errors")
                .await
                .iter()
                .any(|(reason, note)| {
                    reason == "UnsupportedAnnotation" && note.contains("custom-http-errors")
                })
        },
    )
    .await;
    // Served without it, and the others untouched.
    assert_eq!(
        cluster.get("errors.example.com", "/").map(|(s, _)| s),
        Some(200)
    );
    assert_eq!(
        cluster.get("snippet.example.com", "/").map(|(s, _)| s),
        Some(404)
    );
    // Bob's password admits him; without it, 401.
    let bob = "Authorization: Basic Ym9iOmh1bnRlcjI=";
    eventually("the basic-auth Ingress serves bob", || async {
        cluster
            .get_with("staff.example.com", "/", &[bob])
            .is_some_and(|(s, b)| s == 200 && b == "from web")
    })
    .await;
    assert_eq!(
        cluster.get("staff.example.com", "/").map(|(s, _)| s),
        Some(401)
    );
    assert_eq!(
        cluster.get("theirs.example.com", "/").map(|(s, _)| s),
        Some(404)
    );
    let theirs = ingresses.get("theirs").await.expect("read back");
    assert!(
        theirs
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .is_none(),
        "another controller's Ingress gets no status from Pier"
    );
    assert!(warnings(&events, "theirs").await.is_empty());
}
