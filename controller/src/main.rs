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
#[command(
    name = "pier-controller",
    version,
    about,
    after_help = "Durations: a whole number and a unit, 100ms, 15s, 5m, or combined as 1m30s; a bare number is seconds.\n\
Every flag can also be set as PIER_ and its name in upper case (--coalesce: PIER_COALESCE)."
)]
struct Args {
    /// Namespace to watch (repeat for several); none: all namespaces.
    #[arg(long = "namespace", env = "PIER_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,

    /// Namespace whose `kubernetes.io/tls` and `Opaque` Secrets routes may
    /// name (`tls`, `backendTLS`, `basicAuth`; repeat for several). Only
    /// these are watched, so the controller needs read access to Secrets
    /// there and nowhere else; a route naming a Secret elsewhere is
    /// reported (`InvalidCertificateRef`, `InvalidAuth`).
    #[arg(
        long = "secret-namespace",
        env = "PIER_SECRET_NAMESPACES",
        value_delimiter = ','
    )]
    secret_namespaces: Vec<String>,

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
    #[arg(long, env = "PIER_COALESCE", default_value = "100ms", value_parser = duration)]
    coalesce: Duration,

    /// The class of routes this controller serves: those whose
    /// `spec.className` is this name.
    #[arg(long, env = "PIER_CLASS_NAME", default_value = "pier")]
    class_name: String,

    /// Also serve routes that name no class (turn off in all but one of
    /// several installations).
    #[arg(long, env = "PIER_CLAIM_UNCLASSED", default_value_t = true, action = clap::ArgAction::Set)]
    claim_unclassed: bool,

    /// Serve `networking.k8s.io/v1` Ingresses of the IngressClasses whose
    /// controller is --ingress-controller.
    #[arg(long, env = "PIER_INGRESS", default_value_t = true, action = clap::ArgAction::Set)]
    ingress: bool,

    /// The `spec.controller` of the IngressClasses this controller serves.
    #[arg(long, env = "PIER_INGRESS_CONTROLLER", default_value = pier_compile::ingress::CONTROLLER)]
    ingress_controller: String,

    /// Serve Gateway API resources (GatewayClass, Gateway, HTTPRoute,
    /// ReferenceGrant) of the GatewayClasses whose controllerName is
    /// --gateway-controller. Needs the Gateway API CRDs installed.
    #[arg(long, env = "PIER_GATEWAY", default_value_t = false, action = clap::ArgAction::Set)]
    gateway: bool,

    /// The `controllerName` of the GatewayClasses this controller runs.
    #[arg(long, env = "PIER_GATEWAY_CONTROLLER", default_value = pier_compile::gateway::CONTROLLER)]
    gateway_controller: String,

    /// NAMESPACE/NAME of the dataplane's Service: its addresses go into
    /// each served Ingress's status.loadBalancer and each Gateway's
    /// status.addresses (none: not written).
    #[arg(long, env = "PIER_PUBLISH_SERVICE", value_parser = namespaced_name)]
    publish_service: Option<(String, String)>,

    /// Elect one status writer among replicas with a Lease (turn off only
    /// for a single replica outside a cluster).
    #[arg(long, env = "PIER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,

    /// Namespace of the election Lease and the replica reports (default:
    /// $POD_NAMESPACE, which the chart sets, then `default`).
    #[arg(long, env = "PIER_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,

    /// Name of the election Lease.
    #[arg(long, env = "PIER_LEASE_NAME", default_value = "pier-controller")]
    lease_name: String,

    /// This replica's identity (default: $POD_NAME, which the chart sets,
    /// then the host name).
    #[arg(long, env = "PIER_IDENTITY")]
    identity: Option<String>,

    /// How long a leader holds the Lease without renewing it.
    #[arg(long, env = "PIER_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    lease_duration: Duration,

    /// How often the leader renews (and followers retry).
    #[arg(long, env = "PIER_LEASE_RENEW", default_value = "5s", value_parser = duration)]
    lease_renew: Duration,

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

/// `100ms`, `15s`, `1m30s` or a plain number of seconds: the parser the
/// dataplane's flags and the route resources use too.
fn duration(s: &str) -> Result<Duration, String> {
    pier_snapshot::units::duration(s)
        .map_err(|e| format!("{s:?} {e}: a duration such as 100ms, 15s or 1m30s"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid --log filter {:?}", args.log))?;
    // Colours only for a terminal; JSON with the message and fields at the
    // top level of each line, as log collectors index them.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
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
    let controller = pier_controller::Controller::start(
        client,
        pier_controller::Config {
            namespaces: args.namespaces,
            secret_namespaces: args.secret_namespaces,
            coalesce: args.coalesce,
            class: pier_controller::Class {
                name: args.class_name,
                claim_unclassed: args.claim_unclassed,
            },
            snapshot_listen: args.snapshot_listen,
            tls,
            token,
            admin_listen: args.admin,
            ingress: args.ingress.then(|| pier_controller::IngressConfig {
                controller: args.ingress_controller,
                publish_service: args.publish_service.clone(),
            }),
            gateway: args.gateway.then(|| pier_controller::GatewayConfig {
                controller: args.gateway_controller,
                publish_service: args.publish_service.clone(),
            }),
            lease: args.leader_elect.then(|| pier_controller::LeaseConfig {
                namespace: args
                    .lease_namespace
                    .or_else(|| std::env::var("POD_NAMESPACE").ok())
                    .unwrap_or_else(|| "default".to_owned()),
                name: args.lease_name,
                identity: args
                    .identity
                    .or_else(|| std::env::var("POD_NAME").ok())
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .unwrap_or_else(|| format!("pier-controller-{}", std::process::id())),
                duration: args.lease_duration,
                renew: args.lease_renew,
            }),
        },
    )
    .await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    controller.stop().await;
    Ok(())
}

/// `NAMESPACE/NAME`.
fn namespaced_name(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{value:?} is not NAMESPACE/NAME")),
    }
}
