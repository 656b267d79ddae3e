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

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::{HeaderValue, Response, StatusCode, Uri};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::body::Body;
use crate::h2::{self, Timeouts};
use crate::service::Shared;

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

/// A snapshot's certificates by SNI name, built with its table.
#[derive(Default)]
pub(crate) struct Certificates {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Certificates {
    /// Loads the snapshot's certificates. The compiler checked each one;
    /// one that still fails here (a damaged snapshot) is left out, logged
    /// by name only.
    pub(crate) fn new(certificates: &[pier_snapshot::Certificate]) -> Self {
        let mut out = Self::default();
        for certificate in certificates {
            let key = match certified(
                certificate.chain_pem.as_bytes(),
                certificate.key_pem.as_bytes(),
            ) {
                Ok(key) => Arc::new(key),
                Err(why) => {
                    tracing::warn!(certificate = %certificate.name, why, "certificate left out");
                    continue;
                }
            };
            for host in &certificate.hosts {
                let table = match host.strip_prefix("*.") {
                    Some(suffix) => (&mut out.wildcard, suffix),
                    None => (&mut out.exact, host.as_str()),
                };
                table
                    .0
                    .entry(table.1.into())
                    .or_insert_with(|| Arc::clone(&key));
            }
        }
        out
    }

    /// The certificate for an SNI name: the exact name, then the nearest
    /// wildcard.
    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let mut buf = [0u8; 256];
        let lower = buf.get_mut(..name.len())?;
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        let name = std::str::from_utf8(lower).ok()?;
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(key) = self.exact.get(name) {
            return Some(key);
        }
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(key) = self.wildcard.get(rest) {
                return Some(key);
            }
        }
        None
    }
}

/// A chain and key from PEM, checked to belong together.
fn certified(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, &'static str> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| "the certificate is not valid PEM")?;
    if chain.is_empty() {
        return Err("no certificate");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| "no PEM private key")?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(|_| "the key does not match the certificate, or cannot sign")
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
            self.shared.metrics.tls_no_certificate.fetch_add(1, Relaxed);
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
    let metrics = &shared.metrics;
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

/// `308 Permanent Redirect` to the same URL over HTTPS (on the standard
/// port: behind a Service, clients reach the TLS listener on 443).
pub(crate) fn redirect(host: &str, uri: &Uri) -> Response<Body> {
    let name = match host.strip_prefix('[') {
        // An IPv6 literal keeps its brackets.
        Some(rest) => rest.find(']').map_or(host, |end| &host[..end + 2]),
        None => host.split(':').next().unwrap_or(host),
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = HeaderValue::try_from(format!("https://{name}{target}")) {
        res.headers_mut().insert(http::header::LOCATION, location);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_path_and_query_and_drop_the_port() {
        let uri: Uri = "/a/b?c=1".parse().expect("uri");
        let location = |host| {
            redirect(host, &uri).headers()[http::header::LOCATION]
                .to_str()
                .expect("ascii")
                .to_owned()
        };
        assert_eq!(location("example.com"), "https://example.com/a/b?c=1");
        assert_eq!(location("example.com:8080"), "https://example.com/a/b?c=1");
        assert_eq!(location("[::1]:8080"), "https://[::1]/a/b?c=1");
        assert_eq!(location("[::1]"), "https://[::1]/a/b?c=1");
        assert_eq!(redirect("x", &uri).status(), 308);
    }
}
