//! The snapshot service: dataplanes hold one HTTP/2 stream each over TLS,
//! authenticated by a bearer token. The current snapshot goes out when a
//! dataplane connects and every new one when it is published; the
//! dataplane's acknowledgements come back on the same stream (see
//! `pier_snapshot::wire`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pier_snapshot::wire::{self, DataplaneMessage, Decoder};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::fleet::Fleet;
use crate::metrics::Metrics;

/// A dataplane must introduce itself within this time after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Snapshot frames queued per dataplane stream beyond what HTTP/2 flow
/// control holds; a dataplane that reads nothing holds up only its own
/// stream, and only the newest snapshot matters to it.
const QUEUED_FRAMES: usize = 2;

/// A published snapshot, encoded once for every dataplane.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) version: String,
    pub(crate) frame: Bytes,
}

/// Why the snapshot service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The TLS certificate or key could not be read.
    #[error("cannot read TLS material from {path}: {source}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate or key.
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The server's TLS configuration from PEM files, offering only HTTP/2.
///
/// # Errors
/// Unreadable files, or a key that does not fit the certificate.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ChannelError> {
    fn pem(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> ChannelError + '_ {
        move |source| ChannelError::Pem {
            path: path.display().to_string(),
            source,
        }
    }
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(pem(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(cert))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem(key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What every stream of the service shares.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) token: String,
    pub(crate) published: watch::Receiver<Arc<Published>>,
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Accepts dataplane connections until `alive` closes, which also ends
/// every open connection.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<Service>,
    alive: watch::Receiver<()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut stop = alive.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "snapshot service: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = Arc::clone(&service);
        let mut alive = alive.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "snapshot service: TLS handshake failed");
                    return;
                }
            };
            let handler = service_fn(move |req| {
                let service = Arc::clone(&service);
                async move { Ok::<_, Infallible>(handle(req, service, peer)) }
            });
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(20))
                .serve_connection(TokioIo::new(stream), handler);
            tokio::select! {
                result = conn => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "snapshot connection ended");
                },
                _ = alive.changed() => {}
            }
        });
    }
}

type StreamBody = Either<Channel<Bytes>, Empty<Bytes>>;

fn refuse(status: StatusCode) -> Response<StreamBody> {
    let mut res = Response::new(Either::Right(Empty::new()));
    *res.status_mut() = status;
    res
}

fn handle(req: Request<Incoming>, service: Arc<Service>, peer: SocketAddr) -> Response<StreamBody> {
    if req.uri().path() != wire::PATH {
        return refuse(StatusCode::NOT_FOUND);
    }
    if req.method() != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED);
    }
    if !authorized(req.headers(), &service.token) {
        tracing::warn!(%peer, "snapshot service: request without a valid token");
        return refuse(StatusCode::UNAUTHORIZED);
    }
    let (tx, body) = Channel::new(QUEUED_FRAMES);
    tokio::spawn(session(req.into_body(), tx, service, peer));
    Response::new(Either::Left(body))
}

/// Compares the bearer token in constant time.
fn authorized(headers: &http::HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let want = token.as_bytes();
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// One dataplane's stream: wait for its hello, push snapshots, record acks.
async fn session(
    mut incoming: Incoming,
    mut tx: Sender<Bytes>,
    service: Arc<Service>,
    peer: SocketAddr,
) {
    let mut decoder = Decoder::default();
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            match decoder.decode::<DataplaneMessage>() {
                Ok(Some(DataplaneMessage::Hello(hello))) => return Some(hello),
                Ok(Some(DataplaneMessage::Ack(_))) | Err(_) => return None,
                Ok(None) => {}
            }
            let frame = incoming.frame().await?.ok()?;
            decoder.push(frame.data_ref()?);
        }
    })
    .await;
    let Ok(Some(hello)) = hello else {
        tracing::warn!(%peer, "snapshot service: no valid hello; closing");
        return;
    };
    let id = service.fleet.connect(&hello.dataplane);
    tracing::info!(%peer, dataplane = %hello.dataplane, serving = ?hello.serving, "dataplane connected");

    let mut published = service.published.clone();
    let mut current = Some(Arc::clone(&published.borrow_and_update()));
    loop {
        if let Some(snapshot) = current.take() {
            if tx.send_data(snapshot.frame.clone()).await.is_err() {
                break;
            }
            service.metrics.pushed();
        }
        tokio::select! {
            changed = published.changed() => {
                if changed.is_err() {
                    break;
                }
                current = Some(Arc::clone(&published.borrow_and_update()));
            }
            frame = incoming.frame() => {
                let Some(Ok(frame)) = frame else { break };
                let Some(data) = frame.data_ref() else { continue };
                decoder.push(data);
                if !record_acks(&mut decoder, &service, id, &hello.dataplane) {
                    break;
                }
            }
        }
    }
    service.fleet.disconnect(id);
    tracing::info!(%peer, dataplane = %hello.dataplane, "dataplane disconnected");
}

/// Records every complete ack; false when the stream is unusable.
fn record_acks(decoder: &mut Decoder, service: &Service, id: u64, dataplane: &str) -> bool {
    loop {
        match decoder.decode::<DataplaneMessage>() {
            Ok(Some(DataplaneMessage::Ack(ack))) => {
                if let Some(reason) = &ack.rejected {
                    tracing::warn!(%dataplane, version = %ack.version, %reason, "dataplane rejected a snapshot");
                }
                let applied = ack.rejected.is_none();
                if let Some(latency) = service.fleet.ack(id, &ack.version, ack.rejected)
                    && applied
                {
                    service.metrics.acked(latency);
                }
            }
            Ok(Some(DataplaneMessage::Hello(_))) => {}
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(%dataplane, error = %e, "malformed frame from a dataplane");
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let mut headers = http::HeaderMap::new();
        assert!(!authorized(&headers, "s3cret"));
        for (value, ok) in [
            ("Bearer s3cret", true),
            ("Bearer s3cre", false),
            ("Bearer s3cret2", false),
            ("bearer s3cret", false),
            ("s3cret", false),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(authorized(&headers, "s3cret"), ok, "{value}");
        }
    }
}
