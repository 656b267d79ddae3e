//! The admin listener: `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! `/snapshot` (the active snapshot as JSON) and `/debug/allocator`
//! (jemalloc's own statistics, size class by size class: where resident
//! memory sits), over HTTP/1.1. The last two tell more than a scraper
//! needs (every route, backend address and certificate name): they answer
//! loopback clients only, unless `--admin-debug` is given.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::Body;
use crate::dispatch::Shared;
use crate::table::Handler;

/// Serves admin requests until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    debug_for_all: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let shared = Arc::clone(&shared);
        let debug = debug_for_all || peer.ip().to_canonical().is_loopback();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let res = respond(&req, &shared, debug);
                async move { Ok::<_, Infallible>(res) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// Whether `path` tells more than monitoring needs.
fn is_debug(path: &str) -> bool {
    matches!(path, "/snapshot" | "/debug/allocator")
}

fn respond(req: &Request<Incoming>, shared: &Shared, debug: bool) -> Response<Body> {
    let path = req.uri().path();
    if is_debug(path) && !debug {
        return crate::files::status(StatusCode::FORBIDDEN);
    }
    match path {
        "/metrics" => {
            let table = shared.table.load();
            let routes = table.routes.iter().map(|e| (&*e.label, &*e.metrics));
            let upstreams = table.routes.iter().flat_map(|e| match &e.handler {
                Handler::Proxy(proxy) => Some(proxy.upstreams(&e.label)),
                Handler::Static(_) => None,
            });
            let mut text = shared.ctx.metrics.render(
                routes,
                upstreams.flatten(),
                &table.snapshot.certificates,
                table.routes.len(),
            );
            shared.ctx.upstream.buffers.render(&mut text);
            pier_telemetry::render_process(&mut text);
            pier_telemetry::render_build_info(
                &mut text,
                "pier-dataplane",
                env!("CARGO_PKG_VERSION"),
            );
            with_type(text, "text/plain; version=0.0.4; charset=utf-8")
        }
        "/healthz" => with_type("ok\n".to_owned(), "text/plain"),
        "/readyz" => {
            if shared.ready.load(Relaxed) && !shared.draining.load(Relaxed) {
                with_type("ready\n".to_owned(), "text/plain")
            } else {
                let mut res = with_type("not ready\n".to_owned(), "text/plain");
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                res
            }
        }
        // Keys are never shown.
        "/snapshot" => match serde_json::to_string_pretty(&shared.table.load().snapshot.redacted())
        {
            Ok(json) => with_type(json, "application/json"),
            Err(_) => crate::files::status(StatusCode::INTERNAL_SERVER_ERROR),
        },
        "/debug/allocator" => {
            let mut text = Vec::new();
            match tikv_jemalloc_ctl::stats_print::stats_print(&mut text, Default::default()) {
                Ok(()) => with_type(String::from_utf8_lossy(&text).into_owned(), "text/plain"),
                Err(_) => crate::files::status(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
        _ => crate::files::status(StatusCode::NOT_FOUND),
    }
}

fn with_type(body: String, content_type: &'static str) -> Response<Body> {
    let mut res = Response::new(Body::bytes(body));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_snapshot_and_allocator_are_debug_paths() {
        assert!(is_debug("/snapshot"));
        assert!(is_debug("/debug/allocator"));
        for open in ["/metrics", "/healthz", "/readyz", "/snapshot/", "/debug"] {
            assert!(!is_debug(open), "{open}");
        }
    }
}
