//! Gateway API end to end on a real kube-apiserver, with upstream's CRDs
//! (standard channel, from the pinned Go module): the chart's
//! GatewayClass is accepted, a Gateway of it takes HTTPRoutes, they are
//! served, and every status says what the spec asks for.

mod support;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::PostParams;
use pier_crds::gateway::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use serde_json::json;
use support::{Cluster, eventually, local_address, tiny_backend_on};

async fn create<K>(api: &Api<K>, value: serde_json::Value)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).expect("a valid object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("created");
}

fn status_of<'a>(conditions: &'a [Condition], kind: &str) -> Option<(&'a str, &'a str)> {
    conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// The conditions Pier wrote for an HTTPRoute's first parent.
async fn route_conditions(api: &Api<HTTPRoute>, name: &str) -> Vec<Condition> {
    let route = api.get(name).await.expect("read back");
    route
        .status
        .and_then(|s| {
            s.parents
                .into_iter()
                .find(|p| p.controller_name == pier_compile::gateway::CONTROLLER)
        })
        .map(|p| p.conditions)
        .unwrap_or_default()
}

fn route(
    namespace: &str,
    name: &str,
    host: &str,
    parent: serde_json::Value,
    backend: serde_json::Value,
) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [parent],
            "hostnames": [host],
            "rules": [{"backendRefs": [backend]}],
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_attach_to_pier_gateways_and_get_their_status() {
    let cluster = Cluster::start_with_gateway_api().await;
    let client = cluster.cp.client();
    let classes: Api<GatewayClass> = Api::all(client.clone());
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), "default");
    let routes: Api<HTTPRoute> = Api::namespaced(client.clone(), "default");
    let team_routes: Api<HTTPRoute> = Api::namespaced(client.clone(), "team");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");

    // The chart's class, and another controller's beside it.
    let pier = classes.get("pier").await.expect("the chart's GatewayClass");
    assert_eq!(pier.spec.controller_name, pier_compile::gateway::CONTROLLER);
    create(
        &classes,
        json!({"metadata": {"name": "other"}, "spec": {"controllerName": "example.com/other"}}),
    )
    .await;

    // The dataplane's Service (its external IP becomes the Gateway's
    // address) and Service `web` with one endpoint on this machine.
    create(
        &services,
        json!({
            "metadata": {"name": "pier-dataplane", "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80}], "externalIPs": ["203.0.113.20"]},
        }),
    )
    .await;
    let ip = local_address().expect("a non-loopback IPv4 address on this machine");
    let backend = tiny_backend_on(ip, "from web");
    create(
        &services,
        json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }),
    )
    .await;
    create(
        &Api::<EndpointSlice>::namespaced(client.clone(), "default"),
        json!({
            "metadata": {"name": "web-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": backend.port()}],
            "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
        }),
    )
    .await;
    create(
        &Api::<Namespace>::all(client.clone()),
        json!({"metadata": {"name": "team"}}),
    )
    .await;

    create(
        &gateways,
        json!({
            "metadata": {"name": "edge", "namespace": "default"},
            "spec": {"gatewayClassName": "pier", "listeners": [{
                "name": "web", "port": 80, "protocol": "HTTP", "hostname": "*.example.com",
                "allowedRoutes": {"namespaces": {"from": "All"}},
            }]},
        }),
    )
    .await;
    create(&gateways, json!({
        "metadata": {"name": "theirs", "namespace": "default"},
        "spec": {"gatewayClassName": "other", "listeners": [{"name": "web", "port": 80, "protocol": "HTTP"}]},
    })).await;
    let edge = json!({"name": "edge", "namespace": "default"});
    let web = json!({"name": "web", "namespace": "default", "port": 80});
    create(
        &routes,
        route(
            "default",
            "app",
            "app.example.com",
            edge.clone(),
            web.clone(),
        ),
    )
    .await;
    create(
        &team_routes,
        route(
            "team",
            "cross",
            "cross.example.com",
            edge.clone(),
            web.clone(),
        ),
    )
    .await;
    create(
        &routes,
        route(
            "default",
            "lost",
            "lost.example.com",
            json!({"name": "edge", "sectionName": "nope"}),
            web.clone(),
        ),
    )
    .await;
    create(
        &routes,
        route(
            "default",
            "elsewhere",
            "theirs.example.com",
            json!({"name": "theirs"}),
            web.clone(),
        ),
    )
    .await;

    eventually("the HTTPRoute is served", || async {
        cluster
            .get("app.example.com", "/")
            .is_some_and(|(s, b)| s == 200 && b == "from web")
    })
    .await;
    eventually("the GatewayClass is Accepted", || async {
        let class = classes.get("pier").await.expect("read back");
        class
            .status
            .is_some_and(|s| status_of(&s.conditions, "Accepted") == Some(("True", "Accepted")))
    })
    .await;
    eventually(
        "the Gateway is Accepted and Programmed, with its address and attached routes",
        || async {
            let gw = gateways.get("edge").await.expect("read back");
            let generation = gw.metadata.generation;
            let Some(status) = gw.status else {
                return false;
            };
            let listener = status.listeners.first();
            status_of(&status.conditions, "Accepted") == Some(("True", "Accepted"))
                && status_of(&status.conditions, "Programmed") == Some(("True", "Programmed"))
                && status
                    .conditions
                    .iter()
                    .all(|c| c.observed_generation == generation)
                && status.addresses.iter().any(|a| a.value == "203.0.113.20")
                && listener.is_some_and(|l| {
                    l.attached_routes == 2
                        && l.supported_kinds.iter().any(|k| k.kind == "HTTPRoute")
                })
        },
    )
    .await;
    // Each object's status is its own patch: the route's may land after
    // the Gateway's.
    eventually(
        "the HTTPRoute is Accepted with its refs resolved",
        || async {
            let conditions = route_conditions(&routes, "app").await;
            status_of(&conditions, "Accepted") == Some(("True", "Accepted"))
                && status_of(&conditions, "ResolvedRefs") == Some(("True", "ResolvedRefs"))
        },
    )
    .await;

    // A Service in another namespace needs a ReferenceGrant there.
    eventually("the cross-namespace reference is not permitted", || async {
        status_of(
            &route_conditions(&team_routes, "cross").await,
            "ResolvedRefs",
        ) == Some(("False", "RefNotPermitted"))
    })
    .await;
    assert_eq!(
        cluster.get("cross.example.com", "/").map(|(s, _)| s),
        Some(503)
    );
    create(&Api::<ReferenceGrant>::namespaced(client.clone(), "default"), json!({
        "metadata": {"name": "team-to-web", "namespace": "default"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "team"}],
                 "to": [{"group": "", "kind": "Service", "name": "web"}]},
    })).await;
    eventually("the granted reference resolves and is served", || async {
        status_of(
            &route_conditions(&team_routes, "cross").await,
            "ResolvedRefs",
        ) == Some(("True", "ResolvedRefs"))
            && cluster
                .get("cross.example.com", "/")
                .is_some_and(|(s, _)| s == 200)
    })
    .await;

    // A sectionName no listener has.
    eventually("a parentRef to no listener is not accepted", || async {
        status_of(&route_conditions(&routes, "lost").await, "Accepted")
            == Some(("False", "NoMatchingParent"))
    })
    .await;
    // Another controller's Gateway and class: not served, no status from Pier.
    assert_eq!(
        cluster.get("theirs.example.com", "/").map(|(s, _)| s),
        Some(404)
    );
    assert!(route_conditions(&routes, "elsewhere").await.is_empty());
    // (The CRDs default their status to Unknown/Pending; only a controller
    // changes that.)
    let untouched = |c: &Condition| c.status == "Unknown" && c.reason == "Pending";
    let theirs = gateways
        .get("theirs")
        .await
        .expect("read")
        .status
        .unwrap_or_default();
    assert!(theirs.conditions.iter().all(untouched), "{theirs:?}");
    let other = classes
        .get("other")
        .await
        .expect("read")
        .status
        .unwrap_or_default();
    assert!(other.conditions.iter().all(untouched), "{other:?}");
}
