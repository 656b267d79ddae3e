//! The request path, in named phases:
//!
//! 1. **accept**: count the request on its connection;
//! 2. **normalise**: decode the path, refuse hostile ones (400/414);
//! 3. **route**: host then path on the active table (404 when none);
//! 4. **handle**: the route's handler builds the response;
//! 5. **account**: the body's guard records status, duration and bytes
//!    when the response ends.
//!
//! Every phase is synchronous: static files need no await, so the HTTP/1.1
//! engine calls [`Shared::handle`] directly and the future hyper polls for
//! HTTP/2 is a ready value, with no allocation for it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pier_snapshot::Compiled;

use crate::body::{Body, Done};
use crate::files::path::{self, PathError};
use crate::files::{self, FileLimits, FileRequest};
use crate::h2::Activity;
use crate::metrics::{Metrics, RouteMetrics};
use crate::routing;
use crate::table::{Handler, Table};

/// State shared by every worker and the admin server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) table: ArcSwap<Table>,
    pub(crate) metrics: Metrics,
    pub(crate) files: FileLimits,
    /// Set once a snapshot is active (listeners are bound before any
    /// request can ask).
    pub(crate) ready: AtomicBool,
    /// Set when shutdown begins; `/readyz` then fails so load balancers stop
    /// sending new connections while in-flight requests finish.
    pub(crate) draining: AtomicBool,
    /// The `--max-connections` limit.
    pub(crate) max_connections: usize,
    /// Proxy settings from the flags.
    pub(crate) upstream: UpstreamSettings,
}

/// Proxy settings from the flags.
#[derive(Debug)]
pub(crate) struct UpstreamSettings {
    /// `--upstream-idle`: idle upstream connections kept per endpoint and
    /// worker.
    pub(crate) idle: usize,
    /// `--upstream-idle-timeout`: idle upstream connections unused this
    /// long are closed.
    pub(crate) idle_timeout: std::time::Duration,
    /// `--via`: the `Via` element (`1.1 NAME`) proxied messages get.
    pub(crate) via: Option<http::HeaderValue>,
    /// `--max-header-size`, also the largest response head accepted.
    pub(crate) max_header_size: usize,
    /// Body buffering limits (`--buffer-memory`, `--buffer-disk`,
    /// `--spill-dir`) and their counters.
    pub(crate) buffers: Arc<crate::spool::Budget>,
}

/// One warning per resource left out of a snapshot, with its reason.
pub(crate) fn log_left_out(errors: &[pier_snapshot::RouteError]) {
    for error in errors {
        tracing::warn!(
            route = %error.key,
            reason = error.invalid.reason(),
            error = %error.invalid,
            "route left out of the snapshot"
        );
    }
}

impl Shared {
    pub(crate) fn new(
        files: FileLimits,
        max_connections: usize,
        upstream: UpstreamSettings,
    ) -> Self {
        Self {
            table: ArcSwap::from_pointee(Table::empty()),
            metrics: Metrics::default(),
            files,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            max_connections,
            upstream,
        }
    }

    /// Makes a compiled snapshot active. In-flight requests finish on the
    /// table they started with.
    pub(crate) fn apply(&self, compiled: Compiled) {
        use std::sync::atomic::Ordering::Relaxed;
        log_left_out(&compiled.errors);
        for unresolved in &compiled.unresolved {
            tracing::warn!(
                route = %unresolved.key,
                reason = unresolved.reason,
                message = %unresolved.message,
                "route reference unresolved"
            );
        }
        let version = compiled.snapshot.version.clone();
        let routes = compiled.snapshot.routes.len();
        let previous = self.table.load();
        let table = Table::new(
            compiled.snapshot,
            Some(&previous),
            &self.metrics.upstream_connections,
        );
        self.table.store(Arc::new(table));
        let m = &self.metrics;
        m.snapshot_version.store(Arc::new(version.clone()));
        m.snapshot_invalid_routes
            .store(compiled.errors.len() as u64, Relaxed);
        m.snapshot_loads.fetch_add(1, Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        m.snapshot_applied_unix.store(now, Relaxed);
        // Serving a snapshot: ready (once the admin listener asks).
        self.ready.store(true, Relaxed);
        tracing::info!(%version, routes, invalid = compiled.errors.len(), "snapshot applied");
    }

    /// Answers one request, or says which proxy route takes it.
    /// `secure`: the request came over TLS.
    pub(crate) fn dispatch<B>(
        &self,
        req: &Request<B>,
        activity: Option<&Arc<Activity>>,
        secure: bool,
    ) -> Dispatch {
        // Phase 1: accept.
        let started = Instant::now();
        if let Some(activity) = activity {
            activity.request_started();
        }
        let done = |route: Arc<RouteMetrics>, res: Response<Body>| {
            let status = res.status().as_u16();
            res.map(|body| {
                body.with_done(Done {
                    route,
                    status,
                    started,
                    activity: activity.map(Arc::clone),
                })
            })
        };
        let unrouted = || Arc::clone(&self.metrics.unrouted);

        // Phase 2: normalise.
        let uri = req.uri();
        let path = match path::normalize(uri.path()) {
            Ok(path) => path,
            Err(e) => {
                tracing::debug!(path = uri.path(), error = %e, "refused request path");
                let code = match e {
                    PathError::TooLong => StatusCode::URI_TOO_LONG,
                    _ => StatusCode::BAD_REQUEST,
                };
                return Dispatch::Respond(done(unrouted(), files::status(code)));
            }
        };

        // Phase 3: route.
        let table = self.table.load();
        let host = uri
            .host()
            .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
            .unwrap_or("");
        let lookup = routing::Request {
            host,
            path: &path,
            method: req.method(),
            headers: req.headers(),
        };
        let Some(found) = table.router.lookup(&lookup) else {
            return Dispatch::Respond(done(unrouted(), files::status(StatusCode::NOT_FOUND)));
        };
        let entry = &table.routes[found.route];
        if entry.redirect && !secure {
            let res = crate::tls::redirect(host, uri);
            return Dispatch::Respond(done(Arc::clone(&entry.metrics), res));
        }

        // Phase 4: handle.
        let mut res = match &entry.handler {
            Handler::Proxy(_) => {
                let route = found.route;
                let prefix_len = found.prefix_len;
                return Dispatch::Proxy(Box::new(ProxyTarget {
                    table: arc_swap::Guard::into_inner(table),
                    route,
                    prefix_len,
                    path: path.into_owned(),
                    started,
                    secure,
                }));
            }
            Handler::Static(static_files) => static_files.serve(
                &FileRequest {
                    method: req.method(),
                    headers: req.headers(),
                    raw_path: uri.path(),
                    query: uri.query(),
                    rel: &path[found.prefix_len..],
                    now: started,
                },
                &self.files,
                &self.metrics.file_cache,
            ),
        };

        if let Some(hsts) = entry.hsts.as_ref().filter(|_| secure) {
            res.headers_mut()
                .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }

        // Phase 5: account (when the body ends).
        Dispatch::Respond(done(Arc::clone(&entry.metrics), res))
    }
}

/// What the request path decided. Lives on the stack for one request;
/// `Respond` is the hot static path, so it stays unboxed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Dispatch {
    /// A response built right away (files, errors).
    Respond(Response<Body>),
    /// A proxy route takes the request.
    Proxy(Box<ProxyTarget>),
}

/// A request bound for a proxy route.
#[derive(Debug)]
pub(crate) struct ProxyTarget {
    /// The table the route was found in, kept for the whole exchange.
    pub(crate) table: Arc<Table>,
    pub(crate) route: usize,
    /// Bytes of `path` the route's prefix matched.
    pub(crate) prefix_len: usize,
    /// The normalised request path.
    pub(crate) path: Vec<u8>,
    pub(crate) started: Instant,
    /// The request came over TLS.
    pub(crate) secure: bool,
}

impl ProxyTarget {
    pub(crate) fn entry(&self) -> &crate::table::Entry {
        &self.table.routes[self.route]
    }
}

/// The hyper service of one connection (HTTP/2, or HTTP/1.1 over TLS).
#[derive(Clone, Debug)]
pub(crate) struct Service {
    pub(crate) shared: Arc<Shared>,
    pub(crate) activity: Arc<Activity>,
    /// The client's address, for proxy routes (formatted once per
    /// connection).
    pub(crate) peer: Option<Arc<crate::proxy::Peer>>,
    /// The connection is TLS.
    pub(crate) secure: bool,
}

impl Service {
    /// A service for a new connection, with the activity its supervisor
    /// watches.
    pub(crate) fn new(
        shared: &Arc<Shared>,
        peer: Option<std::net::SocketAddr>,
        secure: bool,
    ) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity::new());
        let service = Self {
            shared: Arc::clone(shared),
            activity: Arc::clone(&activity),
            peer: peer.map(|a| Arc::new(crate::proxy::Peer::new(a))),
            secure,
        };
        (service, activity)
    }
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        match self
            .shared
            .dispatch(&req, Some(&self.activity), self.secure)
        {
            Dispatch::Respond(res) => Answer::Ready(Some(res)),
            Dispatch::Proxy(target) => Answer::Proxy(Box::pin(crate::h2::proxy::forward(
                Arc::clone(&self.shared),
                req,
                target,
                self.peer.clone(),
                Arc::clone(&self.activity),
            ))),
        }
    }
}

/// An HTTP/2 answer: ready at once (files: no allocation for the future),
/// or a proxied exchange. `Ready` is the hot static path, so it stays
/// unboxed, as in [`Dispatch`].
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    Ready(Option<Response<Body>>),
    Proxy(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Future for Answer {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            // Polled once: hyper does not poll a finished future again.
            Self::Ready(res) => Poll::Ready(Ok(res
                .take()
                .unwrap_or_else(|| files::status(StatusCode::INTERNAL_SERVER_ERROR)))),
            Self::Proxy(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}
