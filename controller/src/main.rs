//! The `pier-controller` binary: flags, logging, the Kubernetes client,
//! then [`pier_controller::Controller`] until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

/// Pier's controller: watches routes, writes their status, pushes snapshots
/// to dataplanes.
#[derive(Debug, clap::Parser)]
#[command(name = "pier-controller", version, about)]
struct Args {
    /// Namespace to watch (repeat for several); none: all namespaces.
    #[arg(long = "namespace", env = "PIER_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,

    /// Address of the snapshot service dataplanes connect to.
    #[arg(long, env = "PIER_SNAPSHOT_LISTEN", default_value = "0.0.0.0:9443")]
    snapshot_listen: SocketAddr,

    /// PEM certificate chain of the snapshot service.
    #[arg(long, env = "PIER_SNAPSHOT_TLS_CERT")]
    snapshot_tls_cert: PathBuf,

    /// PEM private key of the snapshot service.
    #[arg(long, env = "PIER_SNAPSHOT_TLS_KEY")]
    snapshot_tls_key: PathBuf,

    /// File holding the bearer token dataplanes must present.
    #[arg(long, env = "PIER_SNAPSHOT_TOKEN_FILE")]
    snapshot_token_file: PathBuf,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "PIER_ADMIN", default_value = "0.0.0.0:9902")]
    admin: SocketAddr,

    /// Quiet time that coalesces a burst of changes into one build.
    #[arg(long, env = "PIER_COALESCE", default_value = "100ms", value_parser = millis)]
    coalesce: Duration,

    /// Log format: `text` or `json`.
    #[arg(long, env = "PIER_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,

    /// Log filter, in `tracing` `EnvFilter` syntax.
    #[arg(long, env = "PIER_LOG", default_value = "info")]
    log: String,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn millis(s: &str) -> Result<Duration, String> {
    let n = s.trim().strip_suffix("ms").unwrap_or(s.trim());
    n.parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("{s:?} is not a duration in milliseconds such as 100ms"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid --log filter {:?}", args.log))?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    let token = std::fs::read_to_string(&args.snapshot_token_file)
        .with_context(|| format!("reading {}", args.snapshot_token_file.display()))?
        .trim()
        .to_owned();
    anyhow::ensure!(!token.is_empty(), "the snapshot token file is empty");
    let tls = pier_controller::tls_config(&args.snapshot_tls_cert, &args.snapshot_tls_key)?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let _controller = pier_controller::Controller::start(
        client,
        pier_controller::Config {
            namespaces: args.namespaces,
            coalesce: args.coalesce,
            snapshot_listen: args.snapshot_listen,
            tls,
            token,
            admin_listen: args.admin,
        },
    )
    .await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    Ok(())
}
