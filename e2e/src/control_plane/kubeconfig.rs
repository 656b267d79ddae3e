//! Kubeconfig files and the clients made from them.

use std::path::Path;

use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};

use crate::HarnessError;

pub(super) fn write_file(path: &Path, contents: &str) -> Result<(), HarnessError> {
    std::fs::write(path, contents)
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
}

/// How a kubeconfig authenticates.
pub(super) enum Credentials<'a> {
    Certificate { cert: &'a Path, key: &'a Path },
    TokenFile(&'a Path),
}

/// Writes a kubeconfig with one cluster, user and context, referring to the
/// given files by absolute path.
pub(super) fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca: &Path,
    credentials: Credentials<'_>,
) -> Result<(), HarnessError> {
    let name = "pier-e2e".to_owned();
    let file = |p: &Path| Some(p.display().to_string());
    let auth_info = match credentials {
        Credentials::Certificate { cert, key } => AuthInfo {
            client_certificate: file(cert),
            client_key: file(key),
            ..AuthInfo::default()
        },
        Credentials::TokenFile(token) => AuthInfo {
            token_file: file(token),
            ..AuthInfo::default()
        },
    };
    let config = Kubeconfig {
        api_version: Some("v1".to_owned()),
        kind: Some("Config".to_owned()),
        clusters: vec![NamedCluster {
            name: name.clone(),
            cluster: Some(Cluster {
                server: Some(server_url.to_owned()),
                certificate_authority: file(ca),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: name.clone(),
            auth_info: Some(auth_info),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: name.clone(),
            context: Some(Context {
                cluster: name.clone(),
                user: Some(name.clone()),
                namespace: Some("default".to_owned()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(name),
        ..Kubeconfig::default()
    };
    let yaml =
        serde_saphyr::to_string(&config).map_err(|source| HarnessError::KubeconfigWrite {
            path: path.to_owned(),
            source,
        })?;
    write_file(path, &yaml)
}

pub(super) async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, HarnessError> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    kube::Client::try_from(config)
        .map_err(|e| HarnessError::kube(format!("building a client from {}", path.display()), e))
}
