//! Pier's controller: watches route resources, compiles them with the same
//! pure function the dataplane's standalone mode uses, writes their status,
//! and pushes each new snapshot to every connected dataplane.
//!
//! ```text
//!  API server ──watch──► reflector stores ──► compile ──► Published snapshot
//!      ▲                                                     │ HTTP/2 + TLS + token
//!      └── status: Accepted, ResolvedRefs, Programmed ◄── acks ◄── dataplanes
//! ```
//!
//! [`Controller::start`] runs it inside a tokio runtime (the binary and the
//! end-to-end tests both use it).

mod admin;
mod channel;
mod fleet;
mod gateway;
mod ingress;
mod lease;
mod metrics;
mod reconcile;
mod status;
mod stores;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pier_snapshot::{Snapshot, wire};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::channel::{ChannelError, tls_config};
use crate::channel::{Published, Service};
use crate::fleet::Fleet;
pub use crate::lease::LeaseConfig;
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
pub use crate::stores::Class;
use crate::writer::StatusWriter;

/// What the controller needs to run.
#[derive(Debug)]
pub struct Config {
    /// Namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
    /// Namespaces whose `kubernetes.io/tls` and `Opaque` Secrets are
    /// watched; empty:
    /// none.
    pub secret_namespaces: Vec<String>,
    /// Quiet time that coalesces a burst of changes into one build.
    pub coalesce: Duration,
    /// Which routes this controller serves (`--class-name`,
    /// `--claim-unclassed`).
    pub class: Class,
    /// Where dataplanes connect for snapshots.
    pub snapshot_listen: SocketAddr,
    /// TLS of the snapshot service.
    pub tls: Arc<rustls::ServerConfig>,
    /// Bearer token dataplanes must present.
    pub token: String,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub admin_listen: SocketAddr,
    /// Leader election among replicas; `None`: this replica always leads
    /// (a single replica).
    pub lease: Option<LeaseConfig>,
    /// Ingress support; `None`: Ingresses and IngressClasses are not
    /// watched.
    pub ingress: Option<IngressConfig>,
    /// Gateway API support; `None`: its resources are not watched (the
    /// CRDs need not be installed).
    pub gateway: Option<GatewayConfig>,
}

/// How the controller serves Gateway API resources.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The `controllerName` of the GatewayClasses it runs
    /// (`pier.dev/gateway-controller`).
    pub controller: String,
    /// The dataplane's Service (`namespace`, `name`), whose addresses go
    /// into every Gateway's `status.addresses`.
    pub publish_service: Option<(String, String)>,
}

impl GatewayConfig {
    /// Pier's own GatewayClass controller, publishing no addresses.
    pub fn new() -> Self {
        Self {
            controller: pier_compile::gateway::CONTROLLER.to_owned(),
            publish_service: None,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// How the controller serves `networking.k8s.io/v1` Ingresses.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// The `spec.controller` of the IngressClasses it serves
    /// (`pier.dev/ingress-controller`).
    pub controller: String,
    /// The dataplane's Service (`namespace`, `name`), whose addresses go
    /// into every served Ingress's `status.loadBalancer`; `None`: that
    /// status is not written.
    pub publish_service: Option<(String, String)>,
}

impl IngressConfig {
    /// Pier's own IngressClass controller, publishing no status.
    pub fn new() -> Self {
        Self {
            controller: pier_compile::ingress::CONTROLLER.to_owned(),
            publish_service: None,
        }
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Why the controller cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The empty snapshot could not be encoded (a bug).
    #[error("cannot encode the initial snapshot: {0}")]
    Encode(#[from] wire::WireError),
}

/// A running controller; its tasks stop when it is dropped.
#[derive(Debug)]
pub struct Controller {
    snapshot_addr: SocketAddr,
    admin_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    election: Option<JoinHandle<()>>,
    _alive: watch::Sender<()>,
}

impl Controller {
    /// Binds the listeners and starts watching, serving and reconciling.
    ///
    /// # Errors
    /// A listener that cannot be bound.
    pub async fn start(client: kube::Client, config: Config) -> Result<Self, StartError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let snapshots = bind(config.snapshot_listen).await?;
        let admin = bind(config.admin_listen).await?;
        let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        let snapshot_addr = local(&snapshots, config.snapshot_listen);
        let admin_addr = local(&admin, config.admin_listen);

        let empty = Snapshot::empty();
        let (publish, published) = watch::channel(Arc::new(Published {
            version: empty.version.clone(),
            frame: Bytes::from(wire::encode(&empty)?),
        }));
        let (ready_tx, ready) = watch::channel(false);
        // Dropped with the controller: every task it spawned then ends,
        // connections included.
        let (alive_tx, alive) = watch::channel(());
        let fleet = Arc::new(Fleet::default());
        let (leader_tx, leader) = watch::channel(config.lease.is_none());
        let metrics = Arc::new(Metrics::default());
        let service = Arc::new(Service {
            token: config.token,
            published: published.clone(),
            fleet: Arc::clone(&fleet),
            metrics: Arc::clone(&metrics),
        });
        let changed = Arc::new(tokio::sync::Notify::new());
        let (status_tx, batches) = watch::channel(Arc::default());
        let reconciler = Reconciler {
            client: client.clone(),
            namespaces: config.namespaces,
            secret_namespaces: config.secret_namespaces,
            coalesce: config.coalesce,
            class: config.class,
            fleet: Arc::clone(&fleet),
            metrics: Arc::clone(&metrics),
            publish,
            ready: ready_tx,
            alive: alive.clone(),
            leader: leader.clone(),
            status: status_tx,
            changed: Arc::clone(&changed),
            lease: config.lease.clone(),
            ingress: config.ingress,
            gateway: config.gateway,
        };
        let writer = StatusWriter {
            client: client.clone(),
            metrics: Arc::clone(&metrics),
            recorder: kube::runtime::events::Recorder::new(
                client.clone(),
                kube::runtime::events::Reporter {
                    controller: "pier-controller".into(),
                    instance: config.lease.as_ref().map(|l| l.identity.clone()),
                },
            ),
            retry: changed,
        };
        let mut tasks = Vec::new();
        let mut election = None;
        if let Some(lease) = config.lease {
            election = Some(tokio::spawn(lease::elect(
                client.clone(),
                lease.clone(),
                leader_tx,
                alive.clone(),
            )));
            tasks.push(tokio::spawn(lease::report(
                client,
                lease,
                Arc::clone(&fleet),
                alive.clone(),
            )));
        }
        tasks.extend([
            tokio::spawn(reconciler.run()),
            tokio::spawn(writer.run(batches, alive.clone())),
            // Dataplanes get snapshots only once the stores are complete.
            tokio::spawn({
                let mut ready = ready.clone();
                async move {
                    if ready.wait_for(|r| *r).await.is_ok() {
                        channel::serve(snapshots, config.tls, service, alive).await;
                    }
                }
            }),
            tokio::spawn(admin::serve(
                admin, fleet, metrics, published, ready, leader,
            )),
        ]);
        tracing::info!(snapshots = %snapshot_addr, admin = %admin_addr, "controller started");
        Ok(Self {
            snapshot_addr,
            admin_addr,
            tasks,
            election,
            _alive: alive_tx,
        })
    }

    /// Address of the snapshot service.
    pub fn snapshot_addr(&self) -> SocketAddr {
        self.snapshot_addr
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stops the controller, giving up its lease (if it leads) before the
    /// tasks end, so another replica takes over at once.
    pub async fn stop(mut self) {
        drop(std::mem::replace(&mut self._alive, watch::channel(()).0));
        // The election task releases the lease on its way out.
        if let Some(election) = self.election.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(&self.election) {
            task.abort();
        }
    }
}
