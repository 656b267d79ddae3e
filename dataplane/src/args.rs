//! Command-line flags, each with an environment fallback, parsed into types.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

/// How every duration and size flag is written, shown after the flags.
pub(crate) const UNITS_HELP: &str = "Durations: a whole number and a unit, 500ms, 30s, 5m, 1h, or combined as 1m30s; a bare number is seconds.\n\
Sizes: Kubernetes quantities, 4096, 64Ki (or 64KiB) and 1Gi in powers of 1024, 10M and 1G in powers of 1000.\n\
Every flag can also be set as PIER_ and its name in upper case (--idle-timeout: PIER_IDLE_TIMEOUT).";

/// Pier's dataplane: serves the routes of a snapshot.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "pier-dataplane", version, about, after_help = UNITS_HELP)]
pub struct Args {
    /// Directory of route manifests to serve (standalone mode); watched for changes.
    #[arg(
        long,
        env = "PIER_ROUTES",
        required_unless_present = "controller",
        conflicts_with = "controller"
    )]
    pub routes: Option<PathBuf>,

    /// Controller to take snapshots from (cluster mode), as https://HOST:PORT.
    #[arg(long, env = "PIER_CONTROLLER", requires_all = ["controller_ca", "controller_token_file"])]
    pub controller: Option<String>,

    /// PEM CA certificate(s) that sign the controller's certificate.
    #[arg(long, env = "PIER_CONTROLLER_CA")]
    pub controller_ca: Option<PathBuf>,

    /// File holding the bearer token of the snapshot service.
    #[arg(long, env = "PIER_CONTROLLER_TOKEN_FILE")]
    pub controller_token_file: Option<PathBuf>,

    /// Name to verify in the controller's certificate (default: the URL's host).
    #[arg(long, env = "PIER_CONTROLLER_SERVER_NAME")]
    pub controller_server_name: Option<String>,

    /// File keeping the last applied snapshot, served at start while the
    /// controller is unreachable (cluster mode).
    #[arg(long, env = "PIER_SNAPSHOT_STORE")]
    pub snapshot_store: Option<PathBuf>,

    /// This dataplane's name for the controller (default: $POD_NAME, which
    /// the chart sets, then the host name).
    #[arg(long, env = "PIER_NAME")]
    pub name: Option<String>,

    /// Address for client traffic.
    #[arg(long, env = "PIER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address for HTTPS client traffic (TLS 1.2 and 1.3, HTTP/2 or
    /// HTTP/1.1 by ALPN), with certificates chosen by SNI from the routes'
    /// `tls` Secrets.
    #[arg(long, env = "PIER_LISTEN_TLS", default_value = "0.0.0.0:8443")]
    pub listen_tls: SocketAddr,

    /// PEM certificate chain served to TLS clients whose SNI names no
    /// route's certificate (or who send none); without it their handshake
    /// fails.
    #[arg(long, env = "PIER_TLS_DEFAULT_CERT", requires = "tls_default_key")]
    pub tls_default_cert: Option<PathBuf>,

    /// PEM private key of `--tls-default-cert`.
    #[arg(long, env = "PIER_TLS_DEFAULT_KEY", requires = "tls_default_cert")]
    pub tls_default_key: Option<PathBuf>,

    /// TLS sessions remembered per process for resumption by session ID
    /// (resumption by ticket needs none; ticket keys rotate every 6 hours).
    #[arg(long, env = "PIER_TLS_SESSION_CACHE", default_value = "4096")]
    pub tls_session_cache: usize,

    /// Address for /metrics, /healthz, /readyz, /snapshot and /debug/allocator.
    #[arg(long, env = "PIER_ADMIN", default_value = "0.0.0.0:9901")]
    pub admin: SocketAddr,

    /// Serve /snapshot (the routes, backends and certificate names) and
    /// /debug/allocator to every admin client; without it they answer
    /// only on loopback (`kubectl port-forward`, or a shell in the pod)
    /// and 403 elsewhere.
    #[arg(long, env = "PIER_ADMIN_DEBUG")]
    pub admin_debug: bool,

    /// Worker threads, each with its own listener (default: CPUs available to the process).
    #[arg(long, env = "PIER_WORKERS")]
    pub workers: Option<NonZeroUsize>,

    /// Most client connections open at once; more are answered 503 and closed.
    #[arg(long, env = "PIER_MAX_CONNECTIONS", default_value = "20000")]
    pub max_connections: NonZeroUsize,

    /// Listen backlog of each worker's socket (capped by net.core.somaxconn).
    #[arg(long, env = "PIER_BACKLOG", default_value = "4096")]
    pub backlog: NonZeroUsize,

    /// Time a new connection has to send its first request head (and its
    /// TLS handshake), and on HTTP/1.1 the time each later head may take
    /// once its first byte arrived; the wait between requests is
    /// `--idle-timeout`.
    #[arg(long, env = "PIER_HEADER_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub header_timeout: Duration,

    /// A connection with no request in flight for this long is closed.
    #[arg(long, env = "PIER_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub idle_timeout: Duration,

    /// Largest request head accepted (8KiB to 1MiB); larger ones get 431.
    #[arg(long, env = "PIER_MAX_HEADER_SIZE", default_value = "16KiB", value_parser = header_size)]
    pub max_header_size: usize,

    /// HTTP/2 streams a client may have open at once on one connection.
    #[arg(long, env = "PIER_MAX_CONCURRENT_STREAMS", default_value = "128")]
    pub max_concurrent_streams: u32,

    /// On SIGTERM, time given to in-flight requests before connections are
    /// closed, counted from the end of the drain delay.
    #[arg(long, env = "PIER_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// On SIGTERM, how long the dataplane goes on accepting connections
    /// after `/readyz` starts failing, so that load balancers and
    /// kube-proxy stop sending new connections before the listener closes.
    /// Meanwhile HTTP/1.1 responses close their connections and HTTP/2
    /// connections get GOAWAY, so clients move elsewhere. `0s` closes the
    /// listener at once.
    #[arg(long, env = "PIER_DRAIN_DELAY", default_value = "5s", value_parser = duration)]
    pub drain_delay: Duration,

    /// How often the routes directory is checked for changes.
    #[arg(long, env = "PIER_WATCH_INTERVAL", default_value = "1s", value_parser = duration)]
    pub watch_interval: Duration,

    /// Bytes read from a file per body chunk (the per-response file buffer).
    #[arg(long, env = "PIER_READ_CHUNK", default_value = "256KiB", value_parser = bytes)]
    pub read_chunk: usize,

    /// How long an open-file cache entry is trusted before the file is
    /// opened again; changed files are served within this time. `0s` turns
    /// the cache off.
    #[arg(long, env = "PIER_FILE_CACHE_VALID", default_value = "1s", value_parser = duration)]
    pub file_cache_valid: Duration,

    /// Open-file cache entries per worker (each holds a file descriptor).
    #[arg(long, env = "PIER_FILE_CACHE_ENTRIES", default_value = "4096")]
    pub file_cache_entries: NonZeroUsize,

    /// Files up to this size keep their contents in the open-file cache and
    /// leave with their response head in one write (at most this many bytes
    /// times --file-cache-entries per worker). `0` keeps no contents.
    #[arg(long, env = "PIER_FILE_CACHE_CONTENT", default_value = "16KiB", value_parser = bytes_or_zero)]
    pub file_cache_content: usize,

    /// Most ranges honoured in one request; with more the whole file is sent.
    #[arg(long, env = "PIER_MAX_RANGES", default_value = "16")]
    pub max_ranges: NonZeroUsize,

    /// Idle upstream (proxy) connections kept for reuse, per endpoint and
    /// worker; more are closed when their exchange ends.
    #[arg(long, env = "PIER_UPSTREAM_IDLE", default_value = "256")]
    pub upstream_idle: usize,

    /// Idle upstream connections unused this long are closed (checked
    /// every 10 s), so a burst's connections do not stay open for good.
    #[arg(long, env = "PIER_UPSTREAM_IDLE_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub upstream_idle_timeout: Duration,

    /// Longest a forward-authentication check may take, connecting
    /// included; past it the request gets 500
    /// (`pier_dataplane_forward_auth_failed_total`).
    #[arg(long, env = "PIER_FORWARD_AUTH_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub forward_auth_timeout: Duration,

    /// Adds `Via: 1.1 NAME` (RFC 9110 §7.6.3) to proxied requests and
    /// responses; NAME is a pseudonym such as `pier`. Absent: no `Via`.
    #[arg(long, env = "PIER_VIA", value_parser = via)]
    pub via: Option<Via>,

    /// Directory of spill files for buffered bodies (an emptyDir in a
    /// cluster). Files are created unlinked, so nothing is left behind.
    /// Absent: `$TMPDIR`, else `/tmp`.
    #[arg(long, env = "PIER_SPILL_DIR")]
    pub spill_dir: Option<std::path::PathBuf>,

    /// Memory for buffered bodies over the whole process; past it, bodies
    /// spill to disk earlier. A moving body may hold one 16 KiB working
    /// chunk beyond it, an HTTP/2 stream what it read back from disk (at
    /// most its 64 KiB send buffer).
    #[arg(long, env = "PIER_BUFFER_MEMORY", default_value = "64MiB", value_parser = bytes_or_zero)]
    pub buffer_memory: usize,

    /// Disk for spilled bodies over the whole process; past it, backends
    /// are slowed down (backpressure). `0` turns spilling off.
    #[arg(long, env = "PIER_BUFFER_DISK", default_value = "4GiB", value_parser = bytes_or_zero)]
    pub buffer_disk: usize,

    /// Log format: `text` for terminals, `json` for clusters.
    #[arg(long, env = "PIER_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter, in `tracing` `EnvFilter` syntax.
    #[arg(long, env = "PIER_LOG", default_value = "info")]
    pub log: String,
}

/// A `Via` element: `1.1` and a pseudonym.
#[derive(Clone, Debug)]
pub struct Via(pub(crate) http::HeaderValue);

fn via(s: &str) -> Result<Via, String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if s.is_empty() || s.len() > 64 || !s.bytes().all(token) {
        return Err(format!(
            "{s:?} is not a pseudonym (an HTTP token of at most 64 characters)"
        ));
    }
    http::HeaderValue::try_from(format!("1.1 {s}"))
        .map(Via)
        .map_err(|e| e.to_string())
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A duration flag: `250ms`, `10s`, `5m`, `1m30s` or a plain number of
/// seconds (the parser the route resources use too).
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    pier_snapshot::units::duration(s)
        .map_err(|e| format!("{s:?} {e}: a duration such as 500ms, 30s or 1m30s"))
}

/// A size flag above zero: `4096`, `64Ki`, `64KiB`, `1Gi`, `10M` (powers
/// of 1024 with `i`, of 1000 without, as Kubernetes quantities).
pub(crate) fn bytes(s: &str) -> Result<usize, String> {
    let n = pier_snapshot::units::size(s)
        .map_err(|e| format!("{s:?} {e}: a size such as 4096, 64Ki or 1Gi"))?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

fn header_size(s: &str) -> Result<usize, String> {
    let n = bytes(s)?;
    if n < 8192 {
        return Err(format!("{s:?} is below the minimum of 8KiB"));
    }
    if n > 1 << 20 {
        return Err(format!("{s:?} is above the maximum of 1MiB"));
    }
    Ok(n)
}

/// Like [`bytes`], with `0` allowed (a feature turned off).
fn bytes_or_zero(s: &str) -> Result<usize, String> {
    if s.trim() == "0" { Ok(0) } else { bytes(s) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert!(duration("5x").is_err());
        assert!(duration("s").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(bytes("4096"), Ok(4096));
        assert_eq!(bytes("64KiB"), Ok(65536));
        assert_eq!(bytes("64Ki"), Ok(65536));
        assert_eq!(bytes("1MiB"), Ok(1 << 20));
        assert!(bytes("0").is_err());
        assert!(bytes("1PB").is_err());
        assert_eq!(bytes("10M"), Ok(10_000_000), "decimal without the i");
        assert!(header_size("4KiB").is_err());
        assert!(header_size("2MiB").is_err());
        assert_eq!(header_size("64KiB"), Ok(64 << 10));
        assert_eq!(bytes_or_zero("0"), Ok(0));
    }
}
