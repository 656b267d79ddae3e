//! The admin listener: `/metrics` (Prometheus), `/healthz`, and `/readyz`
//! (ready once every route store has listed its resources), over HTTP/1.1.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::channel::Published;
use crate::fleet::Fleet;
use crate::metrics::Metrics;

/// Serves admin requests until the task is aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    published: watch::Receiver<Arc<Published>>,
    ready: watch::Receiver<bool>,
    leader: watch::Receiver<bool>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (fleet, metrics) = (Arc::clone(&fleet), Arc::clone(&metrics));
        let (published, ready, leader) = (published.clone(), ready.clone(), leader.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let res = match req.uri().path() {
                    "/metrics" => {
                        let version = published.borrow().version.clone();
                        let leading = *leader.borrow();
                        text(StatusCode::OK, metrics.render(&fleet, &version, leading))
                    }
                    "/healthz" => text(StatusCode::OK, "ok\n".into()),
                    "/readyz" if *ready.borrow() => text(StatusCode::OK, "ready\n".into()),
                    "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
                    _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
                };
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

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
