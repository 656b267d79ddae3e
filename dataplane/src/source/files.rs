//! Standalone mode: route manifests (StaticRoute, ProxyRoute, Ingress,
//! Gateway API's GatewayClass, Gateway, HTTPRoute and ReferenceGrant),
//! the Services and EndpointSlices they name and `kubernetes.io/tls`
//! Secrets from a directory (the same YAML a user would `kubectl apply`),
//! compiled by the same pure function the controller uses, and watched for
//! changes.
//!
//! ```text
//!  DIR/*.yaml ──parse──► StaticRoute / ProxyRoute / Ingress ──pier_compile::compile──► Shared::apply
//!      ▲                                                                      │
//!      └──────────── poll every --watch-interval (name, size, mtime) ─────────┘
//! ```
//!
//! A file that cannot be read or parsed keeps the last good snapshot active
//! (its routes cannot be told apart from the rest); a resource that parses
//! but is invalid is left out and reported, and the others are served.
//! Polling rather than inotify follows Kubernetes ConfigMap volumes, whose
//! files change by symlink swaps that inotify watches miss.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use pier_compile::Resources;
use pier_crds::gateway::{Gateway, GatewayClass, GatewayClassSpec, HTTPRoute, ReferenceGrant};
use pier_crds::{ProxyRoute, StaticRoute};
use pier_snapshot::Compiled;
use serde::Deserialize;
use tokio::sync::watch;

use crate::dispatch::Shared;

/// Why a routes directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory cannot be listed.
    #[error("cannot read routes directory {dir}: {source}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest cannot be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest is not valid YAML.
    #[error("{file}: {source}")]
    Yaml {
        /// The file.
        file: PathBuf,
        /// The YAML error, with line, column and the lines around them
        /// (boxed: it is large, and rare).
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A manifest's document does not match its kind's schema.
    #[error("{file}: document {document}: {source}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based index of the YAML document in the file.
        document: usize,
        /// What does not match.
        #[source]
        source: serde_json::Error,
    },
}

/// The kinds standalone mode understands; others are skipped with a warning.
#[derive(Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Reads and compiles every manifest in `dir` (`*.yaml`, `*.yml`, `*.json`,
/// in name order, several documents per file allowed).
pub fn load(dir: &Path) -> Result<Compiled, LoadError> {
    let mut resources = Resources {
        // Certificates are checked against the time of loading.
        now: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok()),
        ..Resources::default()
    };
    for file in manifests(dir)? {
        let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Read {
            file: file.clone(),
            source,
        })?;
        let documents: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).map_err(|source| LoadError::Yaml {
                file: file.clone(),
                source: Box::new(source),
            })?;
        for (i, value) in documents.into_iter().enumerate() {
            let parse_error = |source| LoadError::Parse {
                file: file.clone(),
                document: i + 1,
                source,
            };
            if value.is_null() {
                continue;
            }
            let meta = TypeMeta::deserialize(&value).map_err(parse_error)?;
            let r = &mut resources;
            match (meta.api_version.as_str(), meta.kind.as_str()) {
                ("pier.dev/v1alpha1", "StaticRoute") => {
                    let mut route: StaticRoute =
                        parse::<StaticRoute, _>(value).map_err(parse_error)?;
                    if !route.spec.root.starts_with('/') {
                        route.spec.root = relative_to(&file, &route.spec.root);
                    }
                    r.static_routes.push(Arc::new(route));
                }
                ("pier.dev/v1alpha1", "ProxyRoute") => {
                    r.proxy_routes
                        .push(parse::<ProxyRoute, _>(value).map_err(parse_error)?);
                }
                // Every Ingress is served, whatever its class: standalone
                // mode is the only controller there is.
                ("networking.k8s.io/v1", "Ingress") => {
                    r.ingresses
                        .push(parse::<Ingress, _>(value).map_err(parse_error)?);
                }
                ("networking.k8s.io/v1", "IngressClass") => {}
                // Every Gateway is served, whatever its class (see below).
                (GATEWAY_V1 | GATEWAY_V1BETA1, "GatewayClass") => r
                    .gateway_classes
                    .push(parse::<GatewayClass, _>(value).map_err(parse_error)?),
                (GATEWAY_V1 | GATEWAY_V1BETA1, "Gateway") => r
                    .gateways
                    .push(parse::<Gateway, _>(value).map_err(parse_error)?),
                (GATEWAY_V1 | GATEWAY_V1BETA1, "HTTPRoute") => r
                    .http_routes
                    .push(parse::<HTTPRoute, _>(value).map_err(parse_error)?),
                (GATEWAY_V1BETA1, "ReferenceGrant") => r
                    .reference_grants
                    .push(parse::<ReferenceGrant, _>(value).map_err(parse_error)?),
                ("v1", "Namespace") => r.namespaces.push(Arc::new(
                    serde_json::from_value(value).map_err(parse_error)?,
                )),
                ("v1", "Secret") => r
                    .secrets
                    .push(parse::<Secret, _>(value).map_err(parse_error)?),
                ("v1", "Service") => r
                    .services
                    .push(parse::<Service, _>(value).map_err(parse_error)?),
                ("discovery.k8s.io/v1", "EndpointSlice") => {
                    r.endpoint_slices
                        .push(parse::<EndpointSlice, _>(value).map_err(parse_error)?);
                }
                (api_version, kind) => tracing::warn!(
                    file = %file.display(),
                    document = i + 1,
                    api_version,
                    kind,
                    "skipping a manifest of a kind standalone mode does not serve"
                ),
            }
        }
    }
    serve_every_gateway(&mut resources);
    let compiled = pier_compile::compile(&resources);
    if !resources.gateways.is_empty() {
        log_gateway_report(&pier_compile::gateway::report(&resources, &compiled));
    }
    Ok(compiled)
}

const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";
const GATEWAY_V1BETA1: &str = "gateway.networking.k8s.io/v1beta1";

/// Standalone mode is the only controller there is: a Gateway whose class
/// is not in the directory gets one of Pier's.
fn serve_every_gateway(resources: &mut Resources) {
    for class in &mut resources.gateway_classes {
        if class.spec.controller_name != pier_compile::gateway::CONTROLLER {
            Arc::make_mut(class).spec.controller_name =
                pier_compile::gateway::CONTROLLER.to_owned();
        }
    }
    for gateway in &resources.gateways {
        let name = &gateway.spec.gateway_class_name;
        if !resources
            .gateway_classes
            .iter()
            .any(|c| c.metadata.name.as_ref() == Some(name))
        {
            let mut class = GatewayClass::new(name, GatewayClassSpec::default());
            class.spec.controller_name = pier_compile::gateway::CONTROLLER.to_owned();
            resources.gateway_classes.push(Arc::new(class));
        }
    }
}

/// What a cluster would put in status, logged: each condition that is not
/// as it should be.
fn log_gateway_report(report: &pier_compile::gateway::Report) {
    let bad = |c: &&pier_compile::gateway::Cond| c.status == (c.kind == "Conflicted");
    for gateway in &report.gateways {
        for listener in &gateway.listeners {
            for c in listener.conditions.iter().filter(bad) {
                tracing::warn!(gateway = %format_args!("{}/{}", gateway.namespace, gateway.name), listener = listener.name, condition = c.kind, reason = c.reason, message = c.message, "listener not served as written");
            }
        }
    }
    for route in &report.routes {
        for parent in &route.parents {
            for c in parent.conditions.iter().filter(bad) {
                tracing::warn!(route = %format_args!("HTTPRoute {}/{}", route.namespace, route.name), parent = parent.parent.name, condition = c.kind, reason = c.reason, message = c.message, "route not served as written");
            }
        }
    }
}

/// A namespaced object from its manifest, in `default` when it names no
/// namespace (as `kubectl apply` would put it).
fn parse<K, T>(mut value: serde_json::Value) -> Result<T, serde_json::Error>
where
    K: serde::de::DeserializeOwned,
    T: From<K>,
{
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.entry("namespace").or_insert_with(|| "default".into());
    }
    serde_json::from_value::<K>(value).map(T::from)
}

/// Resolves a relative `root` against the manifest's directory, collapsing
/// `.` and `..` lexically. A standalone convenience: in a cluster roots are
/// absolute paths in the pod, and the compiler refuses relative ones.
fn relative_to(manifest: &Path, root: &str) -> String {
    let base = manifest.parent().unwrap_or(Path::new("/"));
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
    let mut resolved = PathBuf::from("/");
    for part in base.join(root).components() {
        match part {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => resolved.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    resolved.to_string_lossy().into_owned()
}

fn manifests(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_dir = |source| LoadError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_manifest = [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext));
        // Skip dotfiles, such as ConfigMap volumes' `..data` entries.
        if is_manifest && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// What a change of the directory looks like from outside: names, sizes
/// and modification times of the manifests.
pub(crate) type Fingerprint = Option<Vec<(PathBuf, u64, SystemTime)>>;

/// Takes the directory's fingerprint. Take it *before* loading, so a change
/// made while the load runs is seen by the next poll.
pub(crate) fn fingerprint(dir: &Path) -> Fingerprint {
    let files = manifests(dir).ok()?;
    Some(
        files
            .into_iter()
            .filter_map(|file| {
                let meta = std::fs::metadata(&file).ok()?;
                Some((file, meta.len(), meta.modified().ok()?))
            })
            .collect(),
    )
}

/// Polls `dir` and applies every valid change until shutdown. `seen` is
/// the directory as last loaded and the resources that load left out; a
/// change to those is logged even when the snapshot stays the same.
pub(crate) async fn watch(
    dir: PathBuf,
    (mut seen, mut left_out): (Fingerprint, Vec<pier_snapshot::RouteError>),
    interval: Duration,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&dir) {
            Ok(compiled) if compiled.snapshot.version == shared.table.load().snapshot.version => {
                if compiled.errors != left_out {
                    crate::dispatch::log_left_out(&compiled.errors);
                    tracing::info!(
                        invalid = compiled.errors.len(),
                        "the routes left out changed; the snapshot did not"
                    );
                }
                shared
                    .ctx
                    .metrics
                    .snapshot_invalid_routes
                    .store(compiled.errors.len() as u64, Relaxed);
                left_out = compiled.errors;
            }
            Ok(compiled) => {
                left_out.clone_from(&compiled.errors);
                shared.apply(compiled);
            }
            Err(e) => {
                shared
                    .ctx
                    .metrics
                    .snapshot_load_errors
                    .fetch_add(1, Relaxed);
                tracing::error!(error = %e, "routes not reloaded; the last good snapshot stays active");
            }
        }
    }
}
