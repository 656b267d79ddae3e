//! Pier's dataplane: serves the routes of the active snapshot.
//!
//! ```text
//!               ┌──────────── control thread ─────────────┐
//!  routes dir  ─┤ source::files::watch       ┐            │
//!  controller  ─┤ source::controller::run    ┴► Shared::apply ─► ArcSwap<Table>
//!               │ admin: /metrics /healthz /readyz         │        │ lock-free load
//!               └──────────────────────────────────────────┘        ▼
//!  clients ──► worker threads (one runtime + SO_REUSEPORT listener each)
//!              front (h1 engine, hyper h2 / TLS) ─► dispatch phases
//!                 ─► files, or proxy (balance, upstream, spool) ─► Body
//! ```
//!
//! The modules are in one-way layers; ARCHITECTURE.md draws them.
//!
//! The serving core sees only the snapshot model: route resources reach it
//! through `pier_compile::compile`, the same pure function the controller
//! runs.

// The modules are layered one way: each imports only from the layers
// below it. `tests/layers.rs` holds the order and checks it;
// ARCHITECTURE.md draws it.
mod admin;
pub mod args;
mod balance;
mod body;
mod certs;
mod context;
mod dispatch;
mod files;
mod filter;
mod front;
mod http;
mod metrics;
mod pool;
mod proxy;
mod routing;
mod server;
mod source;
mod spool;
mod table;
mod upstream;

#[cfg(feature = "standalone")]
pub use crate::source::files as standalone;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::watch;

pub use crate::args::{Args, LogFormat};
use crate::context::{Context, UpstreamSettings};
use crate::dispatch::Shared;
use crate::files::{CacheConfig, FileLimits};
pub use crate::front::tls::TlsError;
use crate::front::{h1, tls};
use crate::metrics::Metrics;
use crate::server::ConnLimits;
use crate::source::controller as controlplane;
#[cfg(feature = "standalone")]
pub use crate::source::files::LoadError;

/// Why the dataplane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The routes directory could not be loaded.
    #[cfg(feature = "standalone")]
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The controller connection is misconfigured.
    #[error(transparent)]
    Controller(#[from] controlplane::ChannelError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A thread or runtime could not be started.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] io::Error),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Where snapshots come from.
#[derive(Debug)]
enum Source {
    /// Standalone: a routes directory, as it was when first loaded.
    #[cfg(feature = "standalone")]
    Routes {
        dir: std::path::PathBuf,
        loaded: standalone::Fingerprint,
        /// The resources the first load left out.
        left_out: Vec<pier_snapshot::RouteError>,
    },
    /// Cluster mode: the controller.
    Controller(Box<controlplane::Upstream>),
}

/// A dataplane with its listeners bound, ready to [`run`](Dataplane::run).
#[derive(Debug)]
pub struct Dataplane {
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    tls_listeners: Vec<std::net::TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    admin: std::net::TcpListener,
    admin_debug: bool,
    listen_addr: SocketAddr,
    tls_addr: SocketAddr,
    source: Source,
    /// How often the routes directory is checked (standalone only).
    #[cfg_attr(not(feature = "standalone"), allow(dead_code))]
    watch_interval: Duration,
    drain_delay: Duration,
    limits: ConnLimits,
}

impl Dataplane {
    /// Loads the routes and binds the listeners. Fails when the routes
    /// directory cannot be read or parsed, like `nginx -t`: there is no
    /// last good snapshot to fall back to yet.
    pub fn bind(args: Args) -> Result<Self, StartError> {
        // Destructured so that a flag nobody reads fails to compile.
        let Args {
            routes,
            controller,
            controller_ca,
            controller_token_file,
            controller_server_name,
            snapshot_store,
            name,
            listen,
            listen_tls,
            tls_default_cert,
            tls_default_key,
            tls_session_cache,
            admin,
            admin_debug,
            workers,
            max_connections,
            backlog,
            header_timeout,
            idle_timeout,
            max_header_size,
            max_concurrent_streams,
            shutdown_grace,
            drain_delay,
            watch_interval,
            read_chunk,
            file_cache_valid,
            file_cache_entries,
            file_cache_content,
            max_ranges,
            upstream_idle,
            upstream_idle_timeout,
            forward_auth_timeout,
            via,
            spill_dir,
            buffer_memory,
            buffer_disk,
            log_format: _,
            log: _,
        } = args;
        let workers = workers
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, usize::from);
        let ctx = Context {
            metrics: Metrics::default(),
            files: FileLimits {
                chunk: read_chunk,
                max_ranges: max_ranges.get(),
                cache: CacheConfig {
                    valid: file_cache_valid,
                    max_entries: file_cache_entries.get(),
                    content_max: file_cache_content as u64,
                },
            },
            upstream: UpstreamSettings {
                idle: upstream_idle,
                idle_timeout: upstream_idle_timeout,
                check_timeout: forward_auth_timeout,
                via: via.map(|name| name.0),
                max_header_size,
                buffers: Arc::new(spool::Budget::new(
                    buffer_memory as u64,
                    buffer_disk as u64,
                    (buffer_disk > 0).then(|| spill_dir.unwrap_or_else(std::env::temp_dir)),
                )),
            },
        };
        let shared = Arc::new(Shared::new(ctx, max_connections.get()));
        let source = match (routes, controller, controller_ca, controller_token_file) {
            #[cfg(feature = "standalone")]
            (Some(dir), ..) => {
                let loaded = standalone::fingerprint(&dir);
                let compiled = standalone::load(&dir)?;
                let left_out = compiled.errors.clone();
                shared.apply(compiled);
                Source::Routes {
                    dir,
                    loaded,
                    left_out,
                }
            }
            #[cfg(not(feature = "standalone"))]
            (Some(_), ..) => {
                return Err(StartError::Runtime(io::Error::other(
                    "this dataplane was built without the standalone routes source (cargo feature `standalone`); use --controller",
                )));
            }
            (None, Some(url), Some(ca), Some(token)) => {
                let name = name
                    .or_else(|| std::env::var("POD_NAME").ok())
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .unwrap_or_else(|| "pier-dataplane".to_owned());
                let upstream = controlplane::Upstream::new(
                    &url,
                    &ca,
                    &token,
                    controller_server_name.as_deref(),
                    name,
                    snapshot_store,
                )?;
                if let Some(stored) = upstream.stored() {
                    tracing::info!(version = %stored.version, "serving the stored snapshot until the controller answers");
                    shared.apply(pier_snapshot::Compiled {
                        snapshot: stored,
                        errors: Vec::new(),
                        unresolved: Vec::new(),
                        warnings: Vec::new(),
                    });
                }
                Source::Controller(Box::new(upstream))
            }
            // clap requires --routes or --controller with its CA and token.
            _ => {
                return Err(StartError::Runtime(io::Error::other(
                    "give --routes DIR, or --controller URL with --controller-ca and --controller-token-file",
                )));
            }
        };

        let backlog = i32::try_from(backlog.get()).unwrap_or(i32::MAX);
        let listeners =
            server::bind(listen, workers, backlog).map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        let listen_addr = listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or(listen);
        let tls_listeners =
            server::bind(listen_tls, workers, backlog).map_err(|source| StartError::Bind {
                addr: listen_tls,
                source,
            })?;
        let tls_addr = tls_listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or(listen_tls);
        let default_cert = tls_default_cert.as_deref().zip(tls_default_key.as_deref());
        let tls = tls::config(Arc::clone(&shared), default_cert, tls_session_cache)?;
        let admin = server::bind(admin, 1, 128)
            .map_err(|source| StartError::Bind {
                addr: admin,
                source,
            })?
            .pop()
            .ok_or_else(|| StartError::Runtime(io::Error::other("no admin listener")))?;
        Ok(Self {
            shared,
            listeners,
            tls_listeners,
            tls,
            admin,
            admin_debug,
            listen_addr,
            tls_addr,
            source,
            watch_interval,
            drain_delay,
            limits: ConnLimits {
                h1: h1::Limits {
                    header_timeout,
                    idle_timeout,
                    max_header_size,
                    send_chunk: read_chunk,
                },
                max_concurrent_streams,
                shutdown_grace,
            },
        })
    }

    /// Address of the client listener.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Address of the TLS listener.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` fails and
    /// connections are asked to close while the listeners still accept for
    /// the drain delay; then the listeners close and in-flight requests
    /// get the grace period to finish.
    pub fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let (stop, stopped) = watch::channel(false);
        let (drain, draining) = watch::channel(false);
        let mut workers = Vec::with_capacity(self.listeners.len());
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.tls));
        let pairs = self.listeners.into_iter().zip(self.tls_listeners);
        for (i, (listener, tls_listener)) in pairs.enumerate() {
            let worker = server::spawn_worker(
                i,
                listener,
                (tls_listener, acceptor.clone()),
                Arc::clone(&self.shared),
                self.limits,
                server::Signals {
                    drain: draining.clone(),
                    stop: stopped.clone(),
                },
            )
            .map_err(StartError::Runtime)?;
            workers.push(worker);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let shared = self.shared;
        runtime.block_on(async {
            let admin =
                tokio::net::TcpListener::from_std(self.admin).map_err(StartError::Runtime)?;
            tokio::spawn(admin::serve(
                admin,
                Arc::clone(&shared),
                self.admin_debug,
                stopped.clone(),
            ));
            match self.source {
                #[cfg(feature = "standalone")]
                Source::Routes {
                    dir,
                    loaded,
                    left_out,
                } => {
                    tokio::spawn(standalone::watch(
                        dir,
                        (loaded, left_out),
                        self.watch_interval,
                        Arc::clone(&shared),
                        stopped.clone(),
                    ));
                }
                Source::Controller(upstream) => {
                    tokio::spawn(controlplane::run(
                        *upstream,
                        Arc::clone(&shared),
                        stopped.clone(),
                    ));
                }
            }
            tracing::info!(listen = %self.listen_addr, tls = %self.tls_addr, workers = workers.len(), "serving");
            shutdown.await;
            tracing::info!(
                delay = ?self.drain_delay,
                "draining: not ready, connections asked to close, still accepting for the drain delay"
            );
            shared.draining.store(true, Relaxed);
            let _ = drain.send(true);
            tokio::time::sleep(self.drain_delay).await;
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            let _ = stop.send(true);
            Ok::<_, StartError>(())
        })?;
        for worker in workers {
            let _ = worker.join();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process can still be killed.
            std::future::pending::<()>().await;
        }
    }
}

/// How long jemalloc keeps freed pages before its background threads give
/// them back to the system (its default is 10 s): short, so RSS follows a
/// burst back down within seconds rather than holding its peak.
const DECAY_MS: isize = 1_000;

/// Turns on jemalloc's background purging, so freed memory goes back to
/// the system even when the process is idle, within [`DECAY_MS`].
pub fn tune_allocator() {
    use tikv_jemalloc_ctl::{Access, AsName};
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background purging not enabled");
    }
    let arenas = tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0);
    for decay in ["dirty_decay_ms", "muzzy_decay_ms"] {
        // The default of arenas made later, then each one made already
        // (those not made yet refuse it, and take the default).
        let default = format!("arenas.{decay}\0");
        if let Err(e) = default.as_str().name().write(DECAY_MS) {
            tracing::warn!(key = decay, error = %e, "jemalloc decay not set");
        }
        for i in 0..arenas {
            let _ = format!("arena.{i}.{decay}\0")
                .as_str()
                .name()
                .write(DECAY_MS);
        }
    }
}
