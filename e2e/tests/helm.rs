//! The Helm chart (`charts/pier`) against a real API server: it lints,
//! renders, every object it renders is accepted by the server, it installs
//! and uninstalls, its CRDs are the generated ones, and its RBAC is enough
//! for the controller and no more.
//!
//! Pods never run here (the harness has no kubelet), so the chart's objects
//! are tested, and the controller and a dataplane run in-process with the
//! chart's service account token and the chart's snapshot TLS material.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::Scope;
use pier_crds::StaticRoute;
use pier_e2e::ControlPlane;
use pier_e2e::binaries::{self, Tool};
use serde_json::{Value, json};
use support::{Running, eventually, http_get};

/// The release namespace every test installs into.
const NAMESPACE: &str = "pier-system";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_reports_its_pinned_version_and_talks_to_the_control_plane() {
    let helm = helm_binary().await;

    let version = Command::new(&helm)
        .args(["version", "--template", "{{.Version}}"])
        .output()
        .expect("helm runs");
    assert!(version.status.success(), "{version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        Tool::Helm.version()
    );

    let cp = ControlPlane::start()
        .await
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
    let list = Command::new(&helm)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["list", "--all-namespaces", "--output", "json"])
        // Keep helm's own caches and config inside the control plane's directory.
        .env("HELM_CACHE_HOME", cp.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", cp.dir().join("helm/config"))
        .env("HELM_DATA_HOME", cp.dir().join("helm/data"))
        .output()
        .expect("helm runs");
    assert!(
        list.status.success(),
        "helm list failed: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

/// `charts/pier/crds/` holds exactly the files of `crds/yaml/`, byte for byte.
#[test]
fn chart_crds_are_the_generated_crds() {
    let read = |dir: &Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| {
                let entry = entry.expect("directory entry");
                let name = entry.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(entry.path()).expect("read CRD"))
            })
            .collect()
    };
    let generated = read(&repo().join("crds/yaml"));
    let chart = read(&chart().join("crds"));
    assert!(!generated.is_empty());
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "charts/pier/crds/ must hold the files of crds/yaml/: cp crds/yaml/*.yaml charts/pier/crds/"
    );
    for (name, contents) in &generated {
        assert!(
            chart[name] == *contents,
            "charts/pier/crds/{name} differs from crds/yaml/{name}: cp crds/yaml/*.yaml charts/pier/crds/"
        );
    }
}

/// `helm lint --strict` and `helm template` pass for the default values and
/// for every file under `charts/pier/ci/` (one turns every option on), and
/// the API server accepts every rendered object in a server-side dry-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_renders_and_every_object_passes_server_side_dry_run() {
    let helm = helm_binary().await;
    let cp = ControlPlane::start().await.expect("control plane starts");
    // The chart renders a ServiceMonitor and a cert-manager Certificate when
    // asked to; their operators are not installed here, so minimal CRDs
    // (any content) make the API server accept them. The other objects are
    // validated against their full schemas.
    cp.apply_crds([
        open_crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
        open_crd("cert-manager.io", "Certificate", "certificates"),
    ])
    .await
    .expect("stand-in CRDs applied");

    let mut values: Vec<Option<PathBuf>> = vec![None];
    let mut ci: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("charts/pier/ci")
        .map(|e| e.expect("entry").path())
        .collect();
    ci.sort();
    assert!(
        ci.iter().any(|p| p.ends_with("all-on-values.yaml")),
        "ci/all-on-values.yaml is tested"
    );
    values.extend(ci.into_iter().map(Some));

    for file in &values {
        let what = file
            .as_ref()
            .map_or("default values".to_owned(), |f| f.display().to_string());
        let mut lint = vec!["lint".to_owned(), path_arg(&chart()), "--strict".into()];
        let mut template = vec![
            "template".to_owned(),
            "pier".into(),
            path_arg(&chart()),
            "--namespace".into(),
            NAMESPACE.into(),
            "--include-crds".into(),
        ];
        if let Some(file) = file {
            lint.extend(["--values".into(), path_arg(file)]);
            template.extend(["--values".into(), path_arg(file)]);
        }
        run_helm(&helm, &cp, &lint);
        let rendered = run_helm(&helm, &cp, &template);
        let objects = documents(&rendered);
        assert!(objects.len() > 10, "{what}: only {} objects", objects.len());
        if what.contains("all-on") {
            let policies = objects
                .iter()
                .filter(|o| o["kind"] == "NetworkPolicy")
                .count();
            assert_eq!(policies, 2, "{what}: one NetworkPolicy per component");
        }

        for ns in namespaces_of(&objects) {
            ensure_namespace(&cp, &ns).await;
        }
        for object in &objects {
            dry_run_apply(&cp, object)
                .await
                .unwrap_or_else(|e| panic!("{what}: {} refused: {e}", describe(object)));
        }
    }
}

/// `helm install` creates the CRDs (Established) and every object; an
/// upgrade keeps the generated snapshot CA, certificate and token; `helm
/// uninstall` removes what the release created (the CRDs stay, as Helm
/// leaves `crds/` alone on uninstall).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_upgrades_and_uninstalls() {
    let helm = helm_binary().await;
    let cp = ControlPlane::start().await.expect("control plane starts");
    install(&helm, &cp, &[]);

    let crds: Api<CustomResourceDefinition> = Api::all(cp.client());
    let crd = crds
        .get("staticroutes.pier.dev")
        .await
        .expect("CRD created");
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established, "the StaticRoute CRD is Established");

    let deployments: Api<Deployment> = Api::namespaced(cp.client(), NAMESPACE);
    for name in ["pier-controller", "pier-dataplane"] {
        let d = deployments.get(name).await.expect("Deployment created");
        let spec = d.spec.expect("spec").template.spec.expect("pod spec");
        let security = spec.security_context.expect("pod security context");
        assert_eq!(security.run_as_non_root, Some(true), "{name}");
        let container = &spec.containers[0];
        let sc = container
            .security_context
            .as_ref()
            .expect("securityContext");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()]),
            "{name}"
        );
        assert!(container.liveness_probe.is_some() && container.startup_probe.is_some());
        let readiness = container.readiness_probe.as_ref().expect("readiness probe");
        assert!(
            readiness.failure_threshold >= Some(3),
            "{name}: readiness tolerates a slow probe"
        );
        assert!(
            container
                .resources
                .as_ref()
                .is_some_and(|r| r.limits.is_some())
        );
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(cp.client(), NAMESPACE);
    accounts
        .get("pier-controller")
        .await
        .expect("controller SA");
    let dataplane_sa = accounts.get("pier-dataplane").await.expect("dataplane SA");
    assert_eq!(dataplane_sa.automount_service_account_token, Some(false));
    let roles: Api<ClusterRole> = Api::all(cp.client());
    roles.get("pier-controller").await.expect("ClusterRole");
    let maps: Api<ConfigMap> = Api::namespaced(cp.client(), NAMESPACE);
    let dashboard = maps.get("pier-dashboard").await.expect("dashboard");
    let json = dashboard.data.expect("data")["pier.json"].clone();
    serde_json::from_str::<Value>(&json).expect("the dashboard is JSON");

    let secrets: Api<Secret> = Api::namespaced(cp.client(), NAMESPACE);
    let before = (
        secrets.get("pier-snapshot-tls").await.expect("TLS").data,
        secrets
            .get("pier-snapshot-token")
            .await
            .expect("token")
            .data,
    );
    run_helm(
        &helm,
        &cp,
        &[
            "upgrade".into(),
            "pier".into(),
            path_arg(&chart()),
            "--namespace".into(),
            NAMESPACE.into(),
        ],
    );
    let after = (
        secrets.get("pier-snapshot-tls").await.expect("TLS").data,
        secrets
            .get("pier-snapshot-token")
            .await
            .expect("token")
            .data,
    );
    assert!(
        before == after,
        "an upgrade keeps the generated TLS material and token"
    );

    run_helm(
        &helm,
        &cp,
        &[
            "uninstall".into(),
            "pier".into(),
            "--namespace".into(),
            NAMESPACE.into(),
            "--wait".into(),
        ],
    );
    for name in ["pier-controller", "pier-dataplane"] {
        assert!(
            deployments.get_opt(name).await.expect("get").is_none(),
            "{name} removed"
        );
    }
    assert!(
        roles
            .get_opt("pier-controller")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        secrets
            .get_opt("pier-snapshot-tls")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        secrets
            .get_opt("pier-snapshot-token")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        accounts
            .get_opt("pier-controller")
            .await
            .expect("get")
            .is_none()
    );
    assert!(maps.get_opt("pier-dashboard").await.expect("get").is_none());
}

/// The controller, authenticated as the chart's own ServiceAccount (token
/// from the TokenRequest API) and serving the chart's generated certificate
/// and token, elects itself on its Lease, serves a route to a dataplane that
/// trusts the chart's CA for the controller Service's DNS name, writes the
/// route's status and Events; the same identity cannot read any Secret.
/// Then both `/metrics` are scraped: every metric the Grafana dashboard
/// queries is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_works_under_the_chart_rbac_and_the_dashboard_names_real_metrics() {
    let helm = helm_binary().await;
    let cp = ControlPlane::start().await.expect("control plane starts");
    install(&helm, &cp, &[]);
    let dir = tempfile::tempdir().expect("temp dir");

    // The chart's snapshot material, as the pods would mount it.
    let secrets: Api<Secret> = Api::namespaced(cp.client(), NAMESPACE);
    let tls = secrets.get("pier-snapshot-tls").await.expect("TLS secret");
    let token = secrets.get("pier-snapshot-token").await.expect("token");
    let tls = tls.data.expect("TLS data");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.path().join(key), &tls[key].0).expect("write");
    }
    let token_bytes = &token.data.expect("token data")["token"].0;
    std::fs::write(dir.path().join("token"), token_bytes).expect("write");
    let token = String::from_utf8(token_bytes.clone()).expect("UTF-8 token");
    assert_eq!(token.len(), 48);

    let client = cp
        .client_for_service_account(NAMESPACE, "pier-controller")
        .await
        .expect("a client for the chart's service account");
    let controller = pier_controller::Controller::start(
        client.clone(),
        pier_controller::Config {
            namespaces: Vec::new(),
            secret_namespaces: Vec::new(),
            coalesce: Duration::from_millis(50),
            class: pier_controller::Class::default(),
            snapshot_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: pier_controller::tls_config(
                &dir.path().join("tls.crt"),
                &dir.path().join("tls.key"),
            )
            .expect("the chart's certificate and key load"),
            token,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            lease: Some(pier_controller::LeaseConfig {
                namespace: NAMESPACE.into(),
                name: "pier-controller".into(),
                identity: "pier-controller-0".into(),
                duration: Duration::from_secs(15),
                renew: Duration::from_secs(5),
            }),
            // What the chart's RBAC grants, publish Service and all.
            ingress: Some(pier_controller::IngressConfig {
                controller: pier_compile::ingress::CONTROLLER.to_owned(),
                publish_service: Some((NAMESPACE.into(), "pier-dataplane".into())),
            }),
            gateway: None,
        },
    )
    .await
    .expect("the controller starts under the chart's RBAC");

    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let url = format!("https://{}", controller.snapshot_addr());
    let argv = [
        "pier-dataplane",
        "--controller",
        &url,
        "--controller-ca",
        &path("ca.crt"),
        "--controller-token-file",
        &path("token"),
        // What the chart passes: the controller Service's DNS name.
        "--controller-server-name",
        "pier-controller.pier-system.svc",
        "--snapshot-store",
        &path("snapshot.json"),
        "--name",
        "pier-dataplane-0",
        "--listen",
        "127.0.0.1:0",
        "--listen-tls",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--shutdown-grace",
        "1s",
    ];
    let dataplane = pier_dataplane::Dataplane::bind(
        pier_dataplane::Args::try_parse_from(argv).expect("flags parse"),
    )
    .expect("dataplane binds");
    let dataplane = Running::start(dataplane);

    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).expect("docroot");
    std::fs::write(root.join("index.html"), "served under RBAC").expect("write");
    let routes: Api<StaticRoute> = Api::namespaced(cp.client(), "default");
    let route: StaticRoute = serde_json::from_value(json!({
        "apiVersion": "pier.dev/v1alpha1",
        "kind": "StaticRoute",
        "metadata": {"name": "site", "namespace": "default"},
        "spec": {"root": root, "hosts": ["www.example.com"]},
    }))
    .expect("a StaticRoute");
    routes
        .create(&PostParams::default(), &route)
        .await
        .expect("route created");

    eventually("the route is served", || async {
        http_get(dataplane.addr, "www.example.com", "/")
            .is_some_and(|(s, b)| s == 200 && b == "served under RBAC")
    })
    .await;
    eventually("Accepted and Programmed are True", || async {
        let got = routes.get("site").await.expect("read back");
        let status = |kind: &str| {
            got.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
                .map(|c| c.status.clone())
        };
        status("Accepted").as_deref() == Some("True")
            && status("Programmed").as_deref() == Some("True")
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(cp.client(), "default");
    eventually(
        "the controller published an Event for the route",
        || async {
            events
                .list(&ListParams::default())
                .await
                .expect("events")
                .items
                .iter()
                .any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("site"))
        },
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(cp.client(), NAMESPACE);
    let election = leases.get("pier-controller").await.expect("election Lease");
    assert_eq!(
        election.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("pier-controller-0")
    );
    leases
        .get("pier-controller-pier-controller-0")
        .await
        .expect("the replica's report Lease");

    // Least privilege: no Secrets (the chart grants none by default), not
    // even its own snapshot Secret, nor anything it does not use.
    for (ns, what) in [
        ("default", "Secrets in another namespace"),
        (NAMESPACE, "its own namespace's Secrets"),
    ] {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        assert_forbidden(api.list(&ListParams::default()).await, what);
    }
    let own: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    assert_forbidden(own.get("pier-snapshot-tls").await, "the snapshot key");
    let all: Api<Secret> = Api::all(client.clone());
    assert_forbidden(
        all.list(&ListParams::default()).await,
        "Secrets cluster-wide",
    );
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert_forbidden(maps.list(&ListParams::default()).await, "ConfigMaps");
    let elsewhere: Api<Lease> = Api::namespaced(client.clone(), "default");
    assert_forbidden(
        elsewhere.list(&ListParams::default()).await,
        "Leases outside its namespace",
    );
    let deletes = routes_as(&client).delete("site", &Default::default()).await;
    assert_forbidden(deletes, "deleting routes");

    // rbac.secretNamespaces opens Secrets read-only in the namespaces it
    // names, and nowhere else.
    run_helm(
        &helm,
        &cp,
        &[
            "upgrade".into(),
            "pier".into(),
            path_arg(&chart()),
            "--namespace".into(),
            NAMESPACE.into(),
            "--set".into(),
            format!("rbac.secretNamespaces={{{NAMESPACE}}}"),
        ],
    );
    let granted: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    eventually("Secrets are readable in the granted namespace", || async {
        granted.list(&ListParams::default()).await.is_ok()
    })
    .await;
    let other: Api<Secret> = Api::namespaced(client.clone(), "default");
    assert_forbidden(
        other.list(&ListParams::default()).await,
        "Secrets outside rbac.secretNamespaces",
    );
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "x"}})).expect("a Secret");
    assert_forbidden(
        granted.create(&PostParams::default(), &secret).await,
        "writing Secrets",
    );

    // The dashboard names only metrics the binaries export.
    let mut exported = scrape(controller.admin_addr());
    exported.extend(scrape(dataplane.admin));
    let dashboard =
        std::fs::read_to_string(chart().join("files/dashboard.json")).expect("dashboard JSON");
    let queried = metric_names(&dashboard);
    assert!(queried.len() > 15, "the dashboard queries {queried:?}");
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no binary exports: {missing:?}"
    );
    // Propagation is measured from the change, not guessed.
    let (_, text) = http_get(controller.admin_addr(), "localhost", "/metrics").expect("metrics");
    let acked: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("pier_controller_change_to_ack_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(acked >= 1, "no change-to-ack sample: {text}");

    drop(dataplane);
    controller.stop().await;
}

// ---------------------------------------------------------------- helpers

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn chart() -> PathBuf {
    repo().join("charts/pier")
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

async fn helm_binary() -> PathBuf {
    tokio::task::spawn_blocking(binaries::helm)
        .await
        .expect("the lookup does not panic")
        .unwrap_or_else(|e| panic!("providing helm: {e}"))
}

/// Runs helm against the control plane; panics with its output on failure.
fn run_helm(_helm: &Path, cp: &ControlPlane, args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cp.helm(&args).unwrap_or_else(|e| panic!("{e}"))
}

/// `helm install pier charts/pier` into [`NAMESPACE`], created by helm.
fn install(helm: &Path, cp: &ControlPlane, extra: &[&str]) {
    let mut args = vec![
        "install".to_owned(),
        "pier".into(),
        path_arg(&chart()),
        "--namespace".into(),
        NAMESPACE.into(),
        "--create-namespace".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    run_helm(helm, cp, &args);
}

/// The objects of a multi-document YAML stream, empty documents skipped.
fn documents(yaml: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in yaml.lines() {
        if line == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|doc| serde_saphyr::from_str::<Value>(doc).expect("valid YAML"))
        .filter(|value| !value.is_null())
        .collect()
}

fn describe(object: &Value) -> String {
    format!(
        "{} {}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["namespace"].as_str().unwrap_or("-"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn namespaces_of(objects: &[Value]) -> BTreeSet<String> {
    let mut namespaces: BTreeSet<String> = objects
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str().map(str::to_owned))
        .collect();
    namespaces.insert(NAMESPACE.to_owned());
    namespaces
}

async fn ensure_namespace(cp: &ControlPlane, name: &str) {
    let api: Api<Namespace> = Api::all(cp.client());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("a Namespace");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// Server-side apply with `dryRun=All`: the server validates and admits the
/// object exactly as for a real apply, and stores nothing.
async fn dry_run_apply(cp: &ControlPlane, object: &Value) -> Result<(), String> {
    let api_version = object["apiVersion"].as_str().ok_or("no apiVersion")?;
    let kind = object["kind"].as_str().ok_or("no kind")?;
    let name = object["metadata"]["name"].as_str().ok_or("no name")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let client = cp.client();
    let (resource, caps) = kube::discovery::pinned_kind(&client, &gvk)
        .await
        .map_err(|e| format!("discovering {api_version} {kind}: {e}"))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or(NAMESPACE);
            Api::namespaced_with(client, ns, &resource)
        }
        Scope::Cluster => Api::all_with(client, &resource),
    };
    let params = PatchParams::apply("pier-chart-test").force().dry_run();
    api.patch(name, &params, &Patch::Apply(object))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A CRD that accepts any object of its kind (a stand-in for an operator's).
fn open_crd(group: &str, kind: &str, plural: &str) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            }],
        },
    }))
    .expect("a CRD")
}

fn routes_as(client: &kube::Client) -> Api<StaticRoute> {
    Api::namespaced(client.clone(), "default")
}

fn assert_forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("the controller's identity must not reach {what}: {other:?}"),
    }
}

/// `pier_*` metric names a dashboard's queries mention.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("pier_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric names an admin port's `/metrics` exports: sample names, and
/// for each declared family the names its samples may take.
fn scrape(addr: SocketAddr) -> BTreeSet<String> {
    let (status, body) = http_get(addr, "localhost", "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    let mut names = BTreeSet::new();
    for line in body.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            match kind {
                "counter" => {
                    names.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {}
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}
