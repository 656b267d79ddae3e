//! The chart on a real node: the Pier image built here, `helm install`ed
//! onto a kubelet, serving a StaticRoute and a ProxyRoute to a real
//! Deployment through the dataplane pods' Service; then, under constant
//! load, a `helm upgrade` that rolls the dataplane, a rolling restart of the
//! backend and the deletion of the leading controller pod, with not one
//! request lost.
//!
//! One test, because one node runs at a time on a machine and starting it
//! costs most of a minute.

#[path = "node/load.rs"]
mod load;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use pier_crds::{ProxyRoute, StaticRoute};
use pier_e2e::{Cluster, image};
use serde::de::DeserializeOwned;
use serde_json::json;

use load::{Load, Target};

/// The release's namespace.
const NS: &str = "pier";
/// The routes' and the backend's namespace.
const APP_NS: &str = "default";
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(240);
const SITE_BODY: &str = "the static site, from a ConfigMap";
const BACKEND_BODY: &str = "the backend Deployment";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_pods_serve_routes_and_rollouts_lose_no_request() {
    let images = tokio::task::spawn_blocking(image::build)
        .await
        .expect("image build task")
        .unwrap_or_else(|e| panic!("{e}"));
    let cluster = Cluster::start(&images)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = cluster.client();

    start_backend(&cluster).await;
    install_chart(&cluster).await;
    check_pods_run_as_the_chart_says(&client).await;

    let routes: Api<StaticRoute> = Api::namespaced(client.clone(), APP_NS);
    routes
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "pier.dev/v1alpha1", "kind": "StaticRoute",
                "metadata": {"name": "site", "namespace": APP_NS},
                "spec": {"hosts": ["static.test"], "root": "/srv/site"},
            })),
        )
        .await
        .expect("StaticRoute created");
    let proxies: Api<ProxyRoute> = Api::namespaced(client.clone(), APP_NS);
    proxies
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "pier.dev/v1alpha1", "kind": "ProxyRoute",
                "metadata": {"name": "app", "namespace": APP_NS},
                "spec": {"hosts": ["app.test"], "backends": [{"service": "echo", "port": 80}]},
            })),
        )
        .await
        .expect("ProxyRoute created");

    // Through the dataplane pods' Service: kube-proxy picks the pod.
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc = services
        .get("pier-dataplane")
        .await
        .expect("dataplane Service");
    let ip: IpAddr = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .and_then(|ip| ip.parse().ok())
        .expect("a ClusterIP");
    let addr = SocketAddr::new(ip, 80);
    let targets = vec![
        Target {
            addr,
            host: "static.test",
            path: "/index.html",
            expect: SITE_BODY,
        },
        Target {
            addr,
            host: "app.test",
            path: "/index.html",
            expect: BACKEND_BODY,
        },
    ];
    for target in &targets {
        let t = target.clone();
        let served = eventually(Duration::from_secs(120), move || {
            let t = t.clone();
            async move {
                let probe = Load::start(vec![t], 1, Duration::ZERO, 1, Duration::from_secs(5));
                probe.finish().ok == 1
            }
        })
        .await;
        assert!(
            served,
            "{} is served through the dataplane pods; pod logs:\n{}",
            target.host,
            cluster.pod_logs()
        );
    }

    // Constant load, bounded in requests and time: 4 clients, one request
    // each per 10 ms.
    let load = Load::start(
        targets,
        4,
        Duration::from_millis(10),
        200_000,
        Duration::from_secs(900),
    );
    let started = Instant::now();
    settle(&load, 200).await;

    // 1. helm upgrade with a new pod template rolls the dataplane.
    let upgraded = cluster
        .control_plane()
        .helm(&[
            "upgrade",
            "pier",
            &chart(),
            "--namespace",
            NS,
            "--reuse-values",
            "--set-string",
            "dataplane.podAnnotations.pier\\.dev/e2e-rollout=1",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(upgraded.contains("has been upgraded"), "{upgraded}");
    wait_for_rollout(&cluster, NS, "pier-dataplane", 2).await;
    let after_upgrade = load.ok();
    settle(&load, 200).await;

    // 2. A rolling restart of the backend Deployment.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), APP_NS);
    deployments
        .patch(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": "e2e"
            }}}}})),
        )
        .await
        .expect("backend restarted");
    wait_for_rollout(&cluster, APP_NS, "echo", 2).await;
    let after_restart = load.ok();
    settle(&load, 200).await;

    // 3. The leading controller pod is deleted; the other takes the lease.
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let leader = leases
        .get("pier-controller")
        .await
        .expect("the controller's Lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a leader");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.delete(&leader, &DeleteParams::default())
        .await
        .expect("leader deleted");
    let taken = eventually(Duration::from_secs(120), || {
        let leases = leases.clone();
        let leader = leader.clone();
        async move {
            leases
                .get("pier-controller")
                .await
                .ok()
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .is_some_and(|holder| holder != leader)
        }
    })
    .await;
    assert!(taken, "another controller took the lease from {leader}");
    wait_for_rollout(&cluster, NS, "pier-controller", 2).await;
    settle(&load, 200).await;

    let report = tokio::task::spawn_blocking(move || load.finish())
        .await
        .expect("load task");
    eprintln!(
        "load over {:.0} s: {} answered ({} by the upgrade, {} by the backend restart), \
         {} failed, {} retried on a closed keep-alive connection, {} connections",
        started.elapsed().as_secs_f64(),
        report.ok,
        after_upgrade,
        after_restart,
        report.failed,
        report.retried,
        report.connections,
    );
    assert_eq!(
        report.failed,
        0,
        "requests failed during the rollouts: {:#?}\npod logs:\n{}",
        report.errors,
        cluster.pod_logs()
    );
    assert!(report.ok > 1_000, "the load ran: {report:?}");
}

/// The backend: two pods of the Pier image serving a page in standalone
/// mode (`--routes`), behind the Service `echo` whose EndpointSlices
/// Kubernetes makes.
async fn start_backend(cluster: &Cluster) {
    let client = cluster.client();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), APP_NS);
    for map in [
        json!({"metadata": {"name": "echo-routes"}, "data": {"site.yaml": concat!(
            "apiVersion: pier.dev/v1alpha1\nkind: StaticRoute\n",
            "metadata: {name: echo, namespace: default}\nspec: {root: /site}\n",
        )}}),
        json!({"metadata": {"name": "echo-site"}, "data": {"index.html": BACKEND_BODY}}),
    ] {
        maps.create(&PostParams::default(), &object(map))
            .await
            .expect("backend ConfigMap");
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), APP_NS);
    let labels = json!({"app": "echo"});
    deployments
        .create(
            &PostParams::default(),
            &object(json!({
                "metadata": {"name": "echo"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": labels},
                    "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "terminationGracePeriodSeconds": 40,
                            "automountServiceAccountToken": false,
                            "containers": [{
                                "name": "echo",
                                "image": format!("{}:{}", image::PIER_REPOSITORY, image::PIER_TAG),
                                "imagePullPolicy": "Never",
                                "command": ["pier-dataplane"],
                                "args": ["--routes=/routes", "--listen=0.0.0.0:8080",
                                         "--listen-tls=0.0.0.0:8443", "--admin=0.0.0.0:9901",
                                         "--workers=1", "--drain-delay=5s",
                                         "--shutdown-grace=30s"],
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9901},
                                                   "periodSeconds": 1},
                                "volumeMounts": [
                                    {"name": "routes", "mountPath": "/routes"},
                                    {"name": "site", "mountPath": "/site"},
                                ],
                            }],
                            "volumes": [
                                {"name": "routes", "configMap": {"name": "echo-routes"}},
                                {"name": "site", "configMap": {"name": "echo-site"}},
                            ],
                        },
                    },
                },
            })),
        )
        .await
        .expect("backend Deployment");
    let services: Api<Service> = Api::namespaced(client, APP_NS);
    services
        .create(
            &PostParams::default(),
            &object(json!({
                "metadata": {"name": "echo"},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
            })),
        )
        .await
        .expect("backend Service");
    cluster
        .wait_for_ready_pods(APP_NS, "app=echo", 2, ROLLOUT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `helm install` with the image built here, two dataplanes and two
/// controllers, and a ConfigMap as static content.
async fn install_chart(cluster: &Cluster) {
    let client = cluster.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": NS}})),
        )
        .await
        .expect("release namespace");
    let maps: Api<ConfigMap> = Api::namespaced(client, NS);
    maps.create(
        &PostParams::default(),
        &object(json!({"metadata": {"name": "pier-site"}, "data": {"index.html": SITE_BODY}})),
    )
    .await
    .expect("site ConfigMap");
    let values = cluster.control_plane().dir().join("node-values.yaml");
    std::fs::write(
        &values,
        format!(
            "image: {{repository: {}, tag: {}, pullPolicy: Never}}\n\
             dataplane:\n  replicas: 2\n  service: {{type: ClusterIP}}\n\
             \x20 content:\n    - {{name: site, mountPath: /srv/site, configMap: {{name: pier-site}}}}\n\
             controller:\n  replicas: 2\n",
            image::PIER_REPOSITORY,
            image::PIER_TAG
        ),
    )
    .expect("values file");
    let values = values.display().to_string();
    let out = cluster
        .control_plane()
        .helm(&[
            "install",
            "pier",
            &chart(),
            "--namespace",
            NS,
            "--values",
            &values,
            "--wait",
            "--timeout",
            "5m",
        ])
        .unwrap_or_else(|e| panic!("{e}\npod logs:\n{}", cluster.pod_logs()));
    assert!(out.contains("STATUS: deployed"), "{out}");
    for (selector, count) in [
        ("app.kubernetes.io/component=dataplane", 2),
        ("app.kubernetes.io/component=controller", 2),
    ] {
        cluster
            .wait_for_ready_pods(NS, selector, count, ROLLOUT_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The running pods use the chart's ServiceAccounts, a read-only root
/// filesystem and a non-root user: what Kubernetes enforced, read back.
async fn check_pods_run_as_the_chart_says(client: &kube::Client) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for (component, account) in [
        ("dataplane", "pier-dataplane"),
        ("controller", "pier-controller"),
    ] {
        let list = pods
            .list(
                &ListParams::default().labels(&format!("app.kubernetes.io/component={component}")),
            )
            .await
            .expect("pods");
        assert!(!list.items.is_empty(), "{component} pods");
        for pod in list.items {
            let spec = pod.spec.expect("pod spec");
            assert_eq!(spec.service_account_name.as_deref(), Some(account));
            let container = &spec.containers[0];
            let sc = container
                .security_context
                .as_ref()
                .expect("security context");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{component}");
            let pod_sc = spec.security_context.expect("pod security context");
            assert_eq!(pod_sc.run_as_non_root, Some(true), "{component}");
            let status = pod.status.expect("status");
            let running = status
                .container_statuses
                .unwrap_or_default()
                .iter()
                .all(|c| c.ready && c.image.contains(image::PIER_REPOSITORY));
            assert!(running, "{component} runs the image built here");
        }
    }
}

/// Waits until Deployment `name` has rolled out: every replica updated and
/// ready, and no pod of an older revision left.
async fn wait_for_rollout(cluster: &Cluster, namespace: &str, name: &str, replicas: i32) {
    let api: Api<Deployment> = Api::namespaced(cluster.client(), namespace);
    let pods: Api<Pod> = Api::namespaced(cluster.client(), namespace);
    let done = eventually(ROLLOUT_TIMEOUT, || {
        let api = api.clone();
        let pods = pods.clone();
        async move {
            let Ok(d) = api.get(name).await else {
                return false;
            };
            let generation = d.metadata.generation.unwrap_or_default();
            let selector = d
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default();
            let Some(status) = d.status else {
                return false;
            };
            let rolled = status.observed_generation.unwrap_or_default() >= generation
                && status.updated_replicas == Some(replicas)
                && status.ready_replicas == Some(replicas)
                && status.replicas == Some(replicas);
            let selector = labels(&selector);
            let count = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map(|l| l.items.len())
                .unwrap_or(usize::MAX);
            rolled && count == replicas as usize
        }
    })
    .await;
    assert!(
        done,
        "{namespace}/{name} rolled out; pod logs:\n{}",
        cluster.pod_logs()
    );
}

/// Lets the load send `requests` more answered requests (or 30 s pass).
async fn settle(load: &Load, requests: u64) {
    let target = load.ok() + requests;
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.ok() < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

fn labels(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn object<T: DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

fn chart() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/pier")
        .display()
        .to_string()
}
