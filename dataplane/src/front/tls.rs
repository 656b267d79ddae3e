//! HTTPS: rustls termination on `--listen-tls`, certificates chosen by SNI
//! from the active snapshot, HTTP/2 or HTTP/1.1 by ALPN.
//!
//! ```text
//!  accept ─► handshake (≤ --header-timeout) ─► SNI ─► Table::certificates
//!            (TLS 1.2/1.3, tickets rotated)      exact name, then *.parent,
//!                                                then --tls-default-cert
//!          ─► ALPN h2 ─► hyper HTTP/2 ┐
//!          └► http/1.1 ─► hyper HTTP/1 ┴► the same service as plain HTTP
//! ```
//!
//! Certificates travel in snapshots, so a Secret rotated in the cluster is
//! served to new connections as soon as the snapshot holding it is active;
//! open connections keep the certificate they were made with. Nothing is
//! restarted or reloaded. Private keys exist in memory as rustls signing
//! keys; no log line, metric, status or error message carries them.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::hyper::{self as h2, Timeouts};
use crate::certs::certified;
use crate::dispatch::Shared;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The default certificate or key file cannot be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The default certificate and key are not a usable pair.
    #[error("the default certificate cannot be used: {0}")]
    Certificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Picks the certificate for each handshake from the active table.
struct Resolver {
    shared: Arc<Shared>,
    default: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("default", &self.default.is_some())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.shared.table.load();
        let found = hello
            .server_name()
            .and_then(|name| table.certificates.find(name))
            .or(self.default.as_ref())
            .map(Arc::clone);
        if found.is_none() {
            self.shared
                .ctx
                .metrics
                .tls_no_certificate
                .fetch_add(1, Relaxed);
        }
        found
    }
}

/// The server configuration every TLS listener shares: TLS 1.2 and 1.3,
/// ALPN `h2` and `http/1.1`, session tickets with keys rotated by rustls
/// (every 6 hours), and an in-memory session cache of `session_cache`
/// entries for clients that resume by session ID.
pub(crate) fn config(
    shared: Arc<Shared>,
    default: Option<(&Path, &Path)>,
    session_cache: usize,
) -> Result<Arc<ServerConfig>, TlsError> {
    let default = match default {
        None => None,
        Some((cert, key)) => {
            let read = |file: &Path| {
                std::fs::read(file).map_err(|source| TlsError::Read {
                    file: file.to_owned(),
                    source,
                })
            };
            let key = certified(&read(cert)?, &read(key)?)
                .map_err(|why| TlsError::Certificate(why.to_owned()))?;
            Some(Arc::new(key))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { shared, default }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = ServerSessionMemoryCache::new(session_cache);
    Ok(Arc::new(config))
}

/// Serves one TLS connection: the handshake within the header timeout,
/// then HTTP/2 or HTTP/1.1 as ALPN chose.
pub(crate) async fn serve(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    builder: &hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    max_header_size: usize,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
) {
    let peer = stream.peer_addr().ok();
    let metrics = &shared.ctx.metrics;
    let tls = match tokio::time::timeout(timeouts.header, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics.tls_handshake_failures.fetch_add(1, Relaxed);
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics.tls_handshake_failures.fetch_add(1, Relaxed);
            metrics.connections_timed_out.fetch_add(1, Relaxed);
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let h2 = session.alpn_protocol() == Some(b"h2");
    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        metrics.tls_handshakes_resumed.fetch_add(1, Relaxed);
    } else {
        metrics.tls_handshakes_full.fetch_add(1, Relaxed);
    }
    let shared = Arc::clone(&shared);
    if h2 {
        h2::serve_h2(tls, peer, true, shared, builder, timeouts, shutdown).await;
    } else {
        h2::serve_h1(tls, peer, shared, max_header_size, timeouts, shutdown).await;
    }
}
