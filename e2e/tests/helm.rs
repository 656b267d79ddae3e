//! The harness provides helm, and its kubeconfig works for it.

use std::process::Command;

use pier_e2e::ControlPlane;
use pier_e2e::binaries::{self, Tool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_reports_its_pinned_version_and_talks_to_the_control_plane() {
    let helm = tokio::task::spawn_blocking(binaries::helm)
        .await
        .expect("the lookup does not panic")
        .unwrap_or_else(|e| panic!("providing helm: {e}"));

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
