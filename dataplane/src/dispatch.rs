//! The request path, in named phases, the same for every front end:
//!
//! 1. **accept**: count the request on its connection;
//! 2. **normalise**: decode the path, refuse hostile ones (400/414);
//! 3. **route**: host then path on the active table (404 when none);
//! 4. **request filters**: the route's request phase (`filter`), which
//!    may answer itself (the HTTPS redirect);
//! 5. **handle**: files answer here, then the response filters run; a
//!    proxy route goes back to its front end as a [`ProxyTarget`], which
//!    runs the exchange (`proxy`) and the response filters on its answer;
//! 6. **log**: the body's guard records status, duration and bytes when
//!    the response ends.
//!
//! Every phase here is synchronous: static files need no await, so the
//! HTTP/1.1 engine calls [`Shared::dispatch`] directly and the future hyper
//! polls is a ready value, with no allocation for it.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use pier_snapshot::Compiled;

use crate::body::{Activity, Body, Done};
use crate::context::Context;
use crate::files::{self, FileRequest};
use crate::filter::{self, Decision};
use crate::http::path::{self, PathError};
use crate::metrics::RouteMetrics;
use crate::routing;
use crate::table::{Entry, Handler, Table};
use crate::upstream;

/// State shared by every worker and the admin server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) table: ArcSwap<Table>,
    /// What the layers below read and count into.
    pub(crate) ctx: Arc<Context>,
    /// Set once a snapshot is active (listeners are bound before any
    /// request can ask).
    pub(crate) ready: AtomicBool,
    /// Set when shutdown begins; `/readyz` then fails so load balancers stop
    /// sending new connections while in-flight requests finish.
    pub(crate) draining: AtomicBool,
    /// The `--max-connections` limit.
    pub(crate) max_connections: usize,
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
    pub(crate) fn new(ctx: Context, max_connections: usize) -> Self {
        Self {
            table: ArcSwap::from_pointee(Table::empty()),
            ctx: Arc::new(ctx),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            max_connections,
        }
    }

    /// Makes a compiled snapshot active. In-flight requests finish on the
    /// table they started with.
    pub(crate) fn apply(&self, compiled: Compiled) {
        log_left_out(&compiled.errors);
        for unresolved in &compiled.unresolved {
            tracing::warn!(
                route = %unresolved.key,
                reason = unresolved.reason,
                message = %unresolved.message,
                "route reference unresolved"
            );
        }
        for warning in &compiled.warnings {
            tracing::warn!(
                route = %warning.key,
                reason = warning.reason,
                message = %warning.message,
                "route served without part of what it asks for"
            );
        }
        let version = compiled.snapshot.version.clone();
        let routes = compiled.snapshot.routes.len();
        let previous = self.table.load();
        let table = Table::new(
            compiled.snapshot,
            Some(&previous),
            &self.ctx.metrics.upstream_connections,
        );
        self.table.store(Arc::new(table));
        let m = &self.ctx.metrics;
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
    /// `secure`: the request came over TLS; `client` gives the client's
    /// address, and is called only by a route that checks it.
    pub(crate) fn dispatch<B>(
        &self,
        req: &Request<B>,
        activity: Option<&Arc<Activity>>,
        secure: bool,
        client: &dyn Fn() -> Option<IpAddr>,
    ) -> Dispatch {
        // Phase 1: accept.
        let started = Instant::now();
        if let Some(activity) = activity {
            activity.request_started();
        }
        let done = |route: Arc<RouteMetrics>, res: Response<Body>| {
            logged(res, route, started, activity.map(Arc::clone))
        };
        let unrouted = || Arc::clone(&self.ctx.metrics.unrouted);

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
            query: uri.query(),
        };
        let Some(found) = table.router.lookup(&lookup) else {
            return Dispatch::Respond(done(unrouted(), files::status(StatusCode::NOT_FOUND)));
        };
        let entry = &table.routes[found.route];

        // Phase 4: request filters.
        let pass = match entry.filters.on_request(&filter::Request {
            host,
            uri,
            method: req.method(),
            headers: req.headers(),
            path: &path,
            prefix_len: found.prefix_len,
            secure,
            client,
        }) {
            Decision::Pass(pass) => pass,
            Decision::Answer(res) => {
                return Dispatch::Respond(done(Arc::clone(&entry.metrics), *res));
            }
            Decision::Check(check) => {
                let (check, pass) = *check;
                return Dispatch::Check(Box::new(Pending {
                    target: ProxyTarget::new(table, &found, path, started, pass),
                    check,
                    activity: activity.map(Arc::clone),
                }));
            }
        };

        // Phase 5: handle.
        let handled = self.handle(req, entry, &path, found.prefix_len, &pass, started);
        match handled {
            Some(res) => Dispatch::Respond(done(Arc::clone(&entry.metrics), res)),
            None => Dispatch::Proxy(Box::new(ProxyTarget::new(
                table, &found, path, started, pass,
            ))),
        }
        // Phase 6: log, when the body ends (`Done`).
    }

    /// Phase 5 for a request that passed the request filters: a static
    /// route's response (through the response filters), or `None` for a
    /// proxy route, whose exchange the front end drives.
    fn handle<B>(
        &self,
        req: &Request<B>,
        entry: &Entry,
        path: &[u8],
        prefix_len: usize,
        pass: &filter::Pass,
        started: Instant,
    ) -> Option<Response<Body>> {
        let Handler::Static(static_files) = &entry.handler else {
            return None;
        };
        let uri = req.uri();
        let mut res = static_files.serve(
            &FileRequest {
                method: req.method(),
                headers: req.headers(),
                raw_path: uri.path(),
                query: uri.query(),
                rel: &path[prefix_len..],
                now: started,
            },
            &self.ctx.files,
            &self.ctx.metrics.file_cache,
        );
        entry.filters.on_response(res.headers_mut(), pass);
        Some(res)
    }

    /// Phase 4, its last step: sends a request's forward-authentication
    /// check, then answers it as [`dispatch`](Shared::dispatch) would. An
    /// admitted request gets the fields the route copies from the answer,
    /// so the front end proxies it with them.
    pub(crate) async fn check<B>(&self, pending: Box<Pending>, req: &mut Request<B>) -> Dispatch {
        let Pending {
            target,
            mut check,
            activity,
        } = *pending;
        let entry = target.entry();
        let done = |res: Response<Body>| {
            let route = Arc::clone(&entry.metrics);
            Dispatch::Respond(logged(res, route, target.started, activity.clone()))
        };
        // Only a route with forward authentication asks for a check.
        let Some(forward) = entry.filters.forward() else {
            return done(files::status(StatusCode::INTERNAL_SERVER_ERROR));
        };
        let timeout = self.ctx.upstream.check_timeout;
        let answer = match check.endpoint {
            Some(addr) => {
                upstream::check::ask(addr, std::mem::take(&mut check.request), timeout).await
            }
            None => None,
        };
        let counters = &crate::metrics::FORWARD_AUTH;
        match forward.verdict(&check, answer.as_ref().map(|a| (a.status, &a.headers))) {
            filter::Verdict::Refuse(res) => {
                let mut res = *res;
                let counter = if res.status() == StatusCode::INTERNAL_SERVER_ERROR {
                    &counters.failed
                } else {
                    &counters.denied
                };
                counter.fetch_add(1, Relaxed);
                entry.filters.on_response(res.headers_mut(), &target.pass);
                done(res)
            }
            filter::Verdict::Admit(copied) => {
                counters.admitted.fetch_add(1, Relaxed);
                forward.admit(copied, req.headers_mut());
                let handled = self.handle(
                    req,
                    entry,
                    &target.path,
                    target.prefix_len,
                    &target.pass,
                    target.started,
                );
                match handled {
                    Some(res) => done(res),
                    None => Dispatch::Proxy(Box::new(target)),
                }
            }
        }
    }
}

/// Phase 6, armed: the response's body ends the request in the route's
/// counters (`Done`).
fn logged(
    res: Response<Body>,
    route: Arc<RouteMetrics>,
    started: Instant,
    activity: Option<Arc<Activity>>,
) -> Response<Body> {
    let status = res.status().as_u16();
    res.map(|body| {
        body.with_done(Done {
            route,
            status,
            started,
            activity,
        })
    })
}

/// A request waiting for its forward-authentication check.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Where it goes once admitted.
    target: ProxyTarget,
    check: filter::Check,
    activity: Option<Arc<Activity>>,
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
    /// The request waits for its forward-authentication check: the front
    /// end awaits [`Shared::check`], which gives one of the others.
    Check(Box<Pending>),
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
    /// What the request phase found (TLS, an allowed CORS origin), for
    /// the response phase.
    pub(crate) pass: filter::Pass,
}

impl ProxyTarget {
    fn new(
        table: arc_swap::Guard<Arc<Table>>,
        found: &routing::Match,
        path: std::borrow::Cow<'_, [u8]>,
        started: Instant,
        pass: filter::Pass,
    ) -> Self {
        Self {
            table: arc_swap::Guard::into_inner(table),
            route: found.route,
            prefix_len: found.prefix_len,
            path: path.into_owned(),
            started,
            pass,
        }
    }

    pub(crate) fn entry(&self) -> &Entry {
        &self.table.routes[self.route]
    }
}
