//! Smoke tests of the harness against a real kube-apiserver and etcd: Pier's
//! CRD is accepted and enforced, and identities other than the admin are
//! subject to RBAC. Each test starts its own control plane.

use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{CustomResourceExt, Resource};
use pier_crds::{PathMatch, PathMatchType, StaticRoute, StaticRouteSpec};
use pier_e2e::ControlPlane;

/// Starts a control plane, failing the test with the harness's readable
/// message (not its `Debug` form) when that is impossible.
async fn start() -> ControlPlane {
    let started = Instant::now();
    let cp = ControlPlane::start()
        .await
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
    eprintln!(
        "control plane at {} ready in {:.1}s",
        cp.server_url(),
        started.elapsed().as_secs_f32()
    );
    cp
}

/// The API server's refusal of `object`, which must be refused.
async fn refusal(api: &Api<DynamicObject>, object: serde_json::Value) -> Box<kube::core::Status> {
    let object: DynamicObject = serde_json::from_value(object).expect("a well-formed object");
    match api.create(&PostParams::default(), &object).await {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected the API server to refuse {object:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_route_crd_is_served_and_its_schema_enforced() {
    let cp = start().await;

    cp.apply_crds([StaticRoute::crd()])
        .await
        .unwrap_or_else(|e| panic!("applying the StaticRoute CRD: {e}"));
    let crd = Api::<CustomResourceDefinition>::all(cp.client())
        .get("staticroutes.pier.dev")
        .await
        .expect("the CRD is stored");
    let established = crd
        .status
        .and_then(|status| status.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established, "the CRD is Established");

    // A typed StaticRoute round-trips through the real API server.
    let routes: Api<StaticRoute> = Api::namespaced(cp.client(), "default");
    let route = StaticRoute::new(
        "assets",
        StaticRouteSpec {
            class_name: None,
            hosts: vec!["www.example.com".to_owned(), "*.cdn.example.com".to_owned()],
            path: Some(PathMatch {
                kind: PathMatchType::Exact,
                value: "/assets".to_owned(),
            }),
            root: "/srv/assets".to_owned(),
            index: Some("index.htm".to_owned()),
            cache_control: Some("public, max-age=60".to_owned()),
            precompressed: true,
            fallback: None,
            tls: None,
            access: None,
            basic_auth: None,
            forward_auth: None,
            cors: None,
            redirect: None,
        },
    );
    routes
        .create(&PostParams::default(), &route)
        .await
        .expect("the route is created");
    let stored = routes.get("assets").await.expect("the route reads back");
    assert_eq!(stored.spec, route.spec);
    assert!(stored.metadata.uid.is_some(), "the server assigned a uid");
    let listed = routes
        .list(&ListParams::default())
        .await
        .expect("routes list");
    assert_eq!(listed.items.len(), 1);

    // Untyped objects reach the schema as written.
    let resource = ApiResource::erase::<StaticRoute>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(cp.client(), "default", &resource);
    let object = |name: &str, spec: serde_json::Value| {
        serde_json::json!({
            "apiVersion": StaticRoute::api_version(&()),
            "kind": StaticRoute::kind(&()),
            "metadata": { "name": name },
            "spec": spec,
        })
    };

    // The schema's default fills in a path type left out.
    raw.create(
        &PostParams::default(),
        &serde_json::from_value(object(
            "defaulted",
            serde_json::json!({ "root": "/srv", "path": { "value": "/docs" } }),
        ))
        .expect("a well-formed object"),
    )
    .await
    .expect("a route without a path type is accepted");
    let defaulted = routes.get("defaulted").await.expect("reads back");
    assert_eq!(
        defaulted.spec.path.map(|p| p.kind),
        Some(PathMatchType::PathPrefix)
    );

    // A path type outside the enum is refused, with a message naming the
    // field, the value and the allowed values.
    let status = refusal(
        &raw,
        object(
            "bad-type",
            serde_json::json!({ "root": "/srv", "path": { "type": "Regex", "value": "/x" } }),
        ),
    )
    .await;
    eprintln!("refusal of path.type Regex: {}", status.message);
    assert_eq!(status.code, 422, "{status:?}");
    for needle in [
        "spec.path.type",
        "Unsupported value",
        "\"Regex\"",
        "\"PathPrefix\"",
        "\"Exact\"",
    ] {
        assert!(
            status.message.contains(needle),
            "{needle:?} not in {:?}",
            status.message
        );
    }

    // So is a route without its required root.
    let status = refusal(
        &raw,
        object("no-root", serde_json::json!({ "hosts": ["a.example"] })),
    )
    .await;
    eprintln!("refusal of a missing root: {}", status.message);
    assert_eq!(status.code, 422, "{status:?}");
    assert!(status.message.contains("spec.root"), "{:?}", status.message);
    assert!(
        status.message.contains("Required value"),
        "{:?}",
        status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_other_than_admin_are_subject_to_rbac() {
    let cp = start().await;

    // The written kubeconfig works for other tools: load it as kubectl would.
    let kubeconfig = Kubeconfig::read_from(cp.kubeconfig_path()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads");
    let from_file = kube::Client::try_from(config).expect("client from kubeconfig");
    let namespaces = Api::<Namespace>::all(from_file)
        .list(&ListParams::default())
        .await
        .expect("the admin lists namespaces");
    assert!(
        namespaces
            .items
            .iter()
            .any(|ns| ns.metadata.name.as_deref() == Some("default"))
    );

    // A user RBAC knows nothing about is forbidden...
    let alice = cp
        .client_for_user("alice", Some("testers"))
        .await
        .unwrap_or_else(|e| panic!("client for alice: {e}"));
    let alice_configmaps: Api<ConfigMap> = Api::namespaced(alice.clone(), "default");
    match alice_configmaps.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 for alice, got {other:?}"),
    }
    let review = Api::<SelfSubjectReview>::all(alice)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("anyone may ask who they are");
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    assert_eq!(user.username.as_deref(), Some("alice"));
    assert!(
        user.groups
            .unwrap_or_default()
            .contains(&"testers".to_owned())
    );

    // ...until a Role bound to it allows the request.
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some("default".to_owned()),
        ..ObjectMeta::default()
    };
    Api::<Role>::namespaced(cp.client(), "default")
        .create(
            &PostParams::default(),
            &Role {
                metadata: meta("configmap-reader"),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["configmaps".to_owned()]),
                    verbs: vec!["list".to_owned()],
                    ..PolicyRule::default()
                }]),
            },
        )
        .await
        .expect("role created");
    Api::<RoleBinding>::namespaced(cp.client(), "default")
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: meta("testers-read-configmaps"),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".to_owned(),
                    kind: "Role".to_owned(),
                    name: "configmap-reader".to_owned(),
                },
                subjects: Some(vec![Subject {
                    kind: "Group".to_owned(),
                    name: "testers".to_owned(),
                    api_group: Some("rbac.authorization.k8s.io".to_owned()),
                    ..Subject::default()
                }]),
            },
        )
        .await
        .expect("role binding created");
    // The authorizer sees new bindings through a watch: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match alice_configmaps.list(&ListParams::default()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet allowed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("alice still cannot list configmaps: {e}"),
        }
    }

    // A service account authenticates with a token from the TokenRequest API.
    let robot = cp
        .client_for_service_account("default", "robot")
        .await
        .unwrap_or_else(|e| panic!("client for the robot service account: {e}"));
    let review = Api::<SelfSubjectReview>::all(robot.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("anyone may ask who they are");
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:robot")
    );
    match Api::<ConfigMap>::namespaced(robot, "default")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 for the robot, got {other:?}"),
    }
}
