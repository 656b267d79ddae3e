//! Cluster mode: snapshots pushed by the controller (see
//! `pier_snapshot::wire`), applied atomically and acknowledged.
//!
//! ```text
//!  start ─► stored snapshot? ─yes─► serve it (static stability)
//!    │
//!    └─► connect (TLS, h2, bearer token) ─► Hello ─► for each pushed snapshot:
//!          consistent? ─► Shared::apply ─► store to disk ─► Ack
//!          else ───────────────────────────────────────────► Ack(rejected)
//!        connection lost ─► back off (0.1 s doubling to 30 s) ─► connect again
//! ```
//!
//! While the controller is unreachable the dataplane keeps serving what it
//! has; a dataplane that starts without a controller serves its stored
//! snapshot.

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::BodyExt;
use http_body_util::channel::{Channel, Sender};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pier_snapshot::wire::{self, Ack, DataplaneMessage, Decoder, Hello, WireError};
use pier_snapshot::{Compiled, Snapshot};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use crate::dispatch::Shared;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the controller.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// `host:port` to connect to.
    addr: String,
    uri: Uri,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    token: String,
    /// This dataplane's name in the controller's metrics and status.
    name: String,
    /// Where the last applied snapshot is kept.
    store: Option<PathBuf>,
}

/// Why cluster mode cannot start or a session ended.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// `--controller` is not an `https://host:port` URL.
    #[error("--controller must be https://HOST:PORT, got {0:?}")]
    Url(String),
    /// The CA or token file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The TLS configuration is unusable.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Connecting or the stream failed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// HTTP/2 failed.
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
    /// The controller refused the stream.
    #[error("the controller answered {0}")]
    Status(StatusCode),
    /// The controller sent a malformed frame.
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl Upstream {
    /// Reads the flags' files and builds the TLS configuration.
    pub(crate) fn new(
        url: &str,
        ca: &Path,
        token_file: &Path,
        server_name: Option<&str>,
        name: String,
        store: Option<PathBuf>,
    ) -> Result<Self, ChannelError> {
        let uri: Uri = url.parse().map_err(|_| ChannelError::Url(url.to_owned()))?;
        let (Some("https"), Some(host), Some(port)) =
            (uri.scheme_str(), uri.host(), uri.port_u16())
        else {
            return Err(ChannelError::Url(url.to_owned()));
        };
        let addr = format!("{host}:{port}");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(server_name.unwrap_or(host).to_owned())
            .map_err(|_| ChannelError::Url(url.to_owned()))?;
        let read = |path: &Path, e: &dyn std::fmt::Display| ChannelError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| read(ca, &e))? {
            roots.add(cert.map_err(|e| read(ca, &e))?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| read(token_file, &e))?
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(read(token_file, &"the token file is empty"));
        }
        let uri = Uri::builder()
            .scheme("https")
            .authority(uri.authority().map_or(addr.as_str(), |a| a.as_str()))
            .path_and_query(wire::PATH)
            .build()
            .map_err(|_| ChannelError::Url(url.to_owned()))?;
        Ok(Self {
            addr,
            uri,
            server_name,
            tls: Arc::new(tls),
            token,
            name,
            store,
        })
    }

    /// The stored snapshot, if there is a usable one.
    pub(crate) fn stored(&self) -> Option<Snapshot> {
        let path = self.store.as_ref()?;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "stored snapshot unreadable");
                return None;
            }
        };
        match serde_json::from_slice::<Snapshot>(&bytes) {
            Ok(snapshot) if snapshot.is_consistent() => Some(snapshot),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "stored snapshot does not match its version; ignored");
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "stored snapshot does not parse; ignored");
                None
            }
        }
    }

    /// Keeps the applied snapshot for the next start: written beside the
    /// target and renamed over it, so a crash leaves the old or the new one.
    /// It holds private keys, so only this process's user may read it.
    fn store(&self, snapshot: &Snapshot) {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let Some(path) = &self.store else { return };
        let result = serde_json::to_vec(snapshot)
            .map_err(io::Error::other)
            .and_then(|json| {
                let tmp = path.with_extension("tmp");
                let _ = std::fs::remove_file(&tmp);
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?
                    .write_all(&json)?;
                std::fs::rename(&tmp, path)
            });
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "snapshot not stored");
        }
    }
}

/// Holds a stream to the controller until shutdown, reconnecting with
/// back-off.
pub(crate) async fn run(
    upstream: Upstream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let outcome = tokio::select! {
            outcome = session(&upstream, &shared) => outcome,
            _ = shutdown.changed() => return,
        };
        match outcome {
            Ok(applied) => {
                tracing::info!("controller closed the snapshot stream");
                if applied {
                    backoff = BACKOFF_MIN;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "controller unreachable; serving the current snapshot")
            }
        }
        shared
            .ctx
            .metrics
            .controller_connected
            .store(false, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One stream: returns whether any snapshot arrived on it.
async fn session(upstream: &Upstream, shared: &Shared) -> Result<bool, ChannelError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&upstream.addr))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(Arc::clone(&upstream.tls))
        .connect(upstream.server_name.clone(), tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .handshake(TokioIo::new(tls))
        .await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "controller connection ended");
        }
    });
    let result = stream(upstream, shared, &mut sender).await;
    driver.abort();
    result
}

async fn stream(
    upstream: &Upstream,
    shared: &Shared,
    sender: &mut hyper::client::conn::http2::SendRequest<Channel<Bytes, Infallible>>,
) -> Result<bool, ChannelError> {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
    let request = Request::post(upstream.uri.clone())
        .header(header::AUTHORIZATION, format!("Bearer {}", upstream.token))
        .body(body)
        .map_err(|_| ChannelError::Url(upstream.uri.to_string()))?;
    let serving = shared
        .ready
        .load(std::sync::atomic::Ordering::Relaxed)
        .then(|| shared.table.load().snapshot.version.clone());
    let hello = DataplaneMessage::Hello(Hello {
        dataplane: upstream.name.clone(),
        serving,
    });
    send(&mut tx, &hello).await?;
    let response = sender.send_request(request).await?;
    if response.status() != StatusCode::OK {
        return Err(ChannelError::Status(response.status()));
    }
    shared
        .ctx
        .metrics
        .controller_connected
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(controller = %upstream.addr, "connected to the controller");
    let mut body = response.into_body();
    let mut decoder = Decoder::default();
    let mut applied_any = false;
    while let Some(frame) = body.frame().await {
        let Some(data) = frame?.into_data().ok() else {
            continue;
        };
        decoder.push(&data);
        while let Some(snapshot) = decoder.decode::<Snapshot>()? {
            let ack = apply(upstream, shared, snapshot);
            applied_any |= ack.rejected.is_none();
            send(&mut tx, &DataplaneMessage::Ack(ack)).await?;
        }
    }
    Ok(applied_any)
}

async fn send(tx: &mut Sender<Bytes>, message: &DataplaneMessage) -> Result<(), ChannelError> {
    let frame = wire::encode(message)?;
    tx.send_data(Bytes::from(frame))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe).into())
}

/// Applies a pushed snapshot unless it is damaged.
fn apply(upstream: &Upstream, shared: &Shared, snapshot: Snapshot) -> Ack {
    let version = snapshot.version.clone();
    if !snapshot.is_consistent() {
        shared
            .ctx
            .metrics
            .snapshot_load_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Ack {
            version,
            rejected: Some("the snapshot does not match its version hash".to_owned()),
        };
    }
    // The first snapshot is applied even when it matches the empty table
    // (a cluster without routes): applying it is what makes the dataplane
    // ready.
    let ready = shared.ready.load(std::sync::atomic::Ordering::Relaxed);
    if !ready || shared.table.load().snapshot.version != version {
        upstream.store(&snapshot);
        shared.apply(Compiled {
            snapshot,
            errors: Vec::new(),
            unresolved: Vec::new(),
            warnings: Vec::new(),
        });
    }
    Ack {
        version,
        rejected: None,
    }
}
