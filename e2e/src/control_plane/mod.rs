//! A throw-away Kubernetes control plane: etcd and kube-apiserver on
//! loopback, started with the flags controller-runtime's envtest uses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use tempfile::TempDir;

mod kubeconfig;
mod users;

use self::kubeconfig::{Credentials, client_from_kubeconfig, write_file, write_kubeconfig};
use crate::HarnessError;
use crate::binaries;
use crate::pki::{self, Pki};
use crate::process::Process;

/// How long etcd may take to accept connections.
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long kube-apiserver may take until `/readyz` answers `ok`. Generous:
/// several control planes may start at once on a two-core machine.
pub const APISERVER_START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long [`ControlPlane::apply_crds`] waits for each CRD to be Established.
pub const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);

/// The Service address range (`--service-cluster-ip-range`), as envtest.
pub(crate) const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";
/// The `kubernetes` Service's address: the first of that range.
const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Field manager of the harness's server-side applies.
const FIELD_MANAGER: &str = "pier-e2e";
/// Startups retried when another process grabbed a port between the
/// harness choosing it and the component binding it.
const START_ATTEMPTS: u32 = 3;
/// Interval between readiness probes.
const POLL: Duration = Duration::from_millis(200);
/// Time allowed for one `/readyz` request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How [`ControlPlane::start_with`] sets up the API server.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Options {
    /// The address kube-apiserver binds and advertises (etcd stays on
    /// loopback). Loopback by default; a node's pods need an address they
    /// can reach, such as the node bridge's (see [`crate::Node`]).
    pub address: Ipv4Addr,
    /// Whether pods will run: turns the `ServiceAccount` admission plugin
    /// on, which mounts service-account tokens into pods and needs the
    /// `default` service accounts a controller-manager creates.
    pub pods: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            address: Ipv4Addr::LOCALHOST,
            pods: false,
        }
    }
}

/// A running etcd and kube-apiserver, private to one test.
///
/// Everything lives in a temporary directory: etcd's data, the certificates,
/// the kubeconfig and both components' logs (`etcd.log`,
/// `kube-apiserver.log`). Dropping the value kills both processes and
/// removes the directory.
///
/// Authentication is by client certificate signed by the control plane's
/// CA; [`ControlPlane::client`] is an administrator (`O=system:masters`).
/// Authorization is RBAC, so clients made with
/// [`ControlPlane::client_for_user`] or
/// [`ControlPlane::client_for_service_account`] can do only what RBAC
/// objects grant them. There is no controller-manager, scheduler or
/// kubelet: namespaces, RBAC, CRDs and custom resources behave as in a
/// cluster, pods never run. As in envtest, the `ServiceAccount` admission
/// plugin is off, since no controller creates the `default` service
/// accounts it would require.
pub struct ControlPlane {
    apiserver: Process,
    etcd: Process,
    pki: Pki,
    server_url: String,
    kubeconfig: PathBuf,
    client: kube::Client,
    minted: AtomicU64,
    /// Removed when dropped, after both processes are dead (see `Drop`).
    dir: TempDir,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until
    /// the API server reports ready.
    ///
    /// The binaries come from [`binaries`]: `KUBEBUILDER_ASSETS`, or a
    /// one-time Go build into the cache (which can take many minutes the
    /// first time).
    ///
    /// # Errors
    /// When a binary is missing (the message says how to provide it), when
    /// a component exits or is not ready in time (the message quotes the
    /// logs), or on I/O and certificate errors.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_with(Options::default()).await
    }

    /// As [`ControlPlane::start`], with the API server set up by `options`.
    ///
    /// # Errors
    /// As [`ControlPlane::start`].
    pub async fn start_with(options: Options) -> Result<Self, HarnessError> {
        let started = Instant::now();
        let (etcd_bin, apiserver_bin) = tokio::task::spawn_blocking(|| {
            Ok::<_, HarnessError>((binaries::etcd()?, binaries::kube_apiserver()?))
        })
        .await
        .map_err(|e| HarnessError::io("looking up the binaries", std::io::Error::other(e)))??;

        let dir = tempfile::Builder::new()
            .prefix("pier-e2e-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the control plane's temporary directory", e))?;
        let files = write_pki(dir.path(), options.address)?;

        let mut attempt = 1;
        loop {
            match Self::start_once(&etcd_bin, &apiserver_bin, &dir, &files, options, attempt).await
            {
                Ok(Started {
                    etcd,
                    apiserver,
                    server_url,
                    kubeconfig,
                    client,
                }) => {
                    tracing::info!(
                        server = %server_url,
                        dir = %dir.path().display(),
                        seconds = started.elapsed().as_secs_f32(),
                        "control plane ready"
                    );
                    return Ok(Self {
                        apiserver,
                        etcd,
                        pki: files.pki,
                        server_url,
                        kubeconfig,
                        client,
                        minted: AtomicU64::new(0),
                        dir,
                    });
                }
                Err(Attempt::PortTaken(component)) if attempt < START_ATTEMPTS => {
                    tracing::warn!(
                        component,
                        attempt,
                        "port taken before it was bound; retrying"
                    );
                    attempt += 1;
                }
                Err(Attempt::PortTaken(_)) => {
                    return Err(HarnessError::io(
                        "starting the control plane",
                        std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            format!("ports were taken by other processes {START_ATTEMPTS} times"),
                        ),
                    ));
                }
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
    }

    /// One startup on freshly chosen ports.
    async fn start_once(
        etcd_bin: &Path,
        apiserver_bin: &Path,
        dir: &TempDir,
        files: &PkiFiles,
        options: Options,
        attempt: u32,
    ) -> Result<Started, Attempt> {
        let [etcd_client, etcd_peer, secure_port] = free_ports()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let data_dir = dir.path().join(format!("etcd-data-{attempt}"));
        let etcd_args = vec![
            "--name=default".to_owned(),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync".to_owned(),
        ];
        let mut etcd = Process::spawn("etcd", etcd_bin, &etcd_args, dir.path().join("etcd.log"))?;
        wait_for_etcd(&mut etcd, etcd_client).await?;

        let address = options.address;
        let server_url = format!("https://{address}:{secure_port}");
        let p = |name: &str| files.dir.join(name).display().to_string();
        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!(
                "--cert-dir={}",
                dir.path().join("apiserver-certs").display()
            ),
            format!("--secure-port={secure_port}"),
            format!("--bind-address={address}"),
            format!("--advertise-address={address}"),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--allow-privileged=true".to_owned(),
            "--authorization-mode=RBAC".to_owned(),
            if options.pods {
                "--enable-admission-plugins=ServiceAccount".to_owned()
            } else {
                // No controller creates `default` service accounts (see the type's docs).
                "--disable-admission-plugins=ServiceAccount".to_owned()
            },
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--service-account-issuer={server_url}"),
            format!("--service-account-key-file={}", p("service-account.pub")),
            format!(
                "--service-account-signing-key-file={}",
                p("service-account.key")
            ),
            format!("--api-audiences={server_url}"),
        ];
        let mut apiserver = Process::spawn(
            "kube-apiserver",
            apiserver_bin,
            &apiserver_args,
            dir.path().join("kube-apiserver.log"),
        )?;

        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &server_url,
            &files.dir.join("ca.crt"),
            Credentials::Certificate {
                cert: &files.dir.join("admin.crt"),
                key: &files.dir.join("admin.key"),
            },
        )?;
        let client = client_from_kubeconfig(&kubeconfig).await?;
        wait_for_apiserver(&mut apiserver, &mut etcd, &client).await?;
        Ok(Started {
            etcd,
            apiserver,
            server_url,
            kubeconfig,
            client,
        })
    }

    /// An administrator client (`O=system:masters`, never restricted by RBAC).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kubeconfig file for the administrator, for tools such as helm or
    /// kubectl. It refers to certificate files in the same temporary
    /// directory, so it is valid while `self` lives.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The PEM certificate of the CA that signed the API server's serving
    /// certificate and every client certificate.
    pub fn ca_pem(&self) -> String {
        self.pki.ca_pem()
    }

    /// The temporary directory holding data, certificates and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The kube-apiserver log file.
    pub fn apiserver_log(&self) -> &Path {
        self.apiserver.log_path()
    }

    /// The etcd log file.
    pub fn etcd_log(&self) -> &Path {
        self.etcd.log_path()
    }

    /// Server-side applies `crds` and waits until each is Established, so
    /// that its resources can be used at once.
    ///
    /// # Errors
    /// On API errors, or when a CRD is not Established within
    /// [`CRD_ESTABLISHED_TIMEOUT`].
    pub async fn apply_crds(
        &self,
        crds: impl IntoIterator<Item = CustomResourceDefinition>,
    ) -> Result<(), HarnessError> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut names = Vec::new();
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .map_err(|e| HarnessError::kube(format!("applying CRD {name}"), e))?;
            names.push(name);
        }
        for name in names {
            let established = await_condition(api.clone(), &name, conditions::is_crd_established());
            match tokio::time::timeout(CRD_ESTABLISHED_TIMEOUT, established).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(HarnessError::Wait {
                        what: format!("CRD {name} to be Established"),
                        source: e,
                    });
                }
                Err(_) => {
                    return Err(HarnessError::Timeout {
                        what: format!("CRD {name} becoming Established"),
                        timeout: CRD_ESTABLISHED_TIMEOUT,
                    });
                }
            }
        }
        Ok(())
    }

    /// Applies every CRD of Pier's API ([`pier_crds::all`]) and waits until
    /// they are Established.
    ///
    /// # Errors
    /// As [`ControlPlane::apply_crds`].
    pub async fn install_pier_crds(&self) -> Result<(), HarnessError> {
        self.apply_crds(pier_crds::all().into_iter().map(|(_, crd)| crd))
            .await
    }

    /// Runs the pinned helm against this API server (its kubeconfig, and
    /// helm's cache and configuration inside the control plane's temporary
    /// directory); returns its standard output.
    ///
    /// # Errors
    /// When helm cannot be provided or started, or exits with an error (the
    /// message quotes its output).
    pub fn helm(&self, args: &[&str]) -> Result<String, HarnessError> {
        let helm = crate::binaries::helm()?;
        let out = std::process::Command::new(helm)
            .arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .args(args)
            .env("HELM_CACHE_HOME", self.dir().join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir().join("helm/config"))
            .env("HELM_DATA_HOME", self.dir().join("helm/data"))
            .output()
            .map_err(|e| HarnessError::io("running helm", e))?;
        if !out.status.success() {
            return Err(HarnessError::Helm {
                args: args.join(" "),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("dir", &self.dir.path())
            .field("etcd", &self.etcd)
            .field("apiserver", &self.apiserver)
            .finish_non_exhaustive()
    }
}

impl Drop for ControlPlane {
    /// Kills the API server, then etcd; the temporary directory is removed
    /// afterwards, when the `dir` field is dropped.
    fn drop(&mut self) {
        self.apiserver.stop();
        self.etcd.stop();
    }
}

/// The parts of a successful startup.
struct Started {
    etcd: Process,
    apiserver: Process,
    server_url: String,
    kubeconfig: PathBuf,
    client: kube::Client,
}

/// Why one startup attempt failed.
enum Attempt {
    /// The named component could not bind a port the harness had chosen.
    PortTaken(&'static str),
    /// Anything else: not retried.
    Failed(HarnessError),
}

impl From<HarnessError> for Attempt {
    fn from(e: HarnessError) -> Self {
        Attempt::Failed(e)
    }
}

/// The CA and the key material written for the API server and the admin.
struct PkiFiles {
    pki: Pki,
    dir: PathBuf,
}

/// Makes the CA, the API server's serving certificate, the service-account
/// key pair and the admin's client certificate, and writes them to
/// `<dir>/pki/`.
fn write_pki(dir: &Path, address: Ipv4Addr) -> Result<PkiFiles, HarnessError> {
    let pki = Pki::new()?;
    let pki_dir = dir.join("pki");
    std::fs::create_dir_all(&pki_dir)
        .map_err(|e| HarnessError::io(format!("creating {}", pki_dir.display()), e))?;
    // Loopback, plus the in-cluster names and address a real API server's
    // certificate carries.
    let serving = pki.serving(
        "kube-apiserver",
        &[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        &[
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(address),
            IpAddr::V4(KUBERNETES_SERVICE_IP),
        ],
    )?;
    let admin = pki.client("pier-e2e-admin", Some("system:masters"))?;
    let (sa_private, sa_public) = pki::service_account_key()?;
    for (name, contents) in [
        ("ca.crt", pki.ca_pem()),
        ("apiserver.crt", serving.cert_pem),
        ("apiserver.key", serving.key_pem),
        ("admin.crt", admin.cert_pem),
        ("admin.key", admin.key_pem),
        ("service-account.key", sa_private),
        ("service-account.pub", sa_public),
    ] {
        write_file(&pki_dir.join(name), &contents)?;
    }
    Ok(PkiFiles { pki, dir: pki_dir })
}

/// `N` distinct free loopback ports. All the listeners are held until all
/// are chosen, so the ports differ; another process may still take one
/// before the components bind it, which [`ControlPlane::start`] retries.
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N], HarnessError> {
    let mut listeners = Vec::with_capacity(N);
    for _ in 0..N {
        listeners.push(
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(|e| HarnessError::io("choosing a free loopback port", e))?,
        );
    }
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading a listener's port", e))?
            .port();
    }
    Ok(ports)
}

/// The outcome for a component that exited: a retry if it lost a port race.
fn exited(process: &Process, component: &'static str, status: std::process::ExitStatus) -> Attempt {
    if process.log_text().contains("address already in use") {
        Attempt::PortTaken(component)
    } else {
        Attempt::Failed(process.exited(status))
    }
}

/// Waits until etcd accepts connections on its client port.
async fn wait_for_etcd(etcd: &mut Process, port: u16) -> Result<(), Attempt> {
    let deadline = Instant::now() + ETCD_START_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = etcd.exit_status()? {
            return Err(exited(etcd, "etcd", status));
        }
        let last_check = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) => format!("connecting to {addr}: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(Attempt::Failed(HarnessError::NotReady {
                component: "etcd",
                timeout: ETCD_START_TIMEOUT,
                last_check,
                etcd_tail: etcd.log_tail(),
                apiserver_tail: "    (not started)".to_owned(),
            }));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the API server's `/readyz` answers `ok`, failing early if
/// either process exits.
async fn wait_for_apiserver(
    apiserver: &mut Process,
    etcd: &mut Process,
    client: &kube::Client,
) -> Result<(), Attempt> {
    let deadline = Instant::now() + APISERVER_START_TIMEOUT;
    loop {
        if let Some(status) = apiserver.exit_status()? {
            return Err(exited(apiserver, "kube-apiserver", status));
        }
        if let Some(status) = etcd.exit_status()? {
            return Err(Attempt::Failed(etcd.exited(status)));
        }
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| {
                HarnessError::kube("building the /readyz request", kube::Error::HttpError(e))
            })?;
        let last_check =
            match tokio::time::timeout(PROBE_TIMEOUT, client.request_text(request)).await {
                Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                Ok(Ok(body)) => format!("/readyz answered {body:?}"),
                Ok(Err(e)) => format!("/readyz failed: {e}"),
                Err(_) => format!("/readyz did not answer within {PROBE_TIMEOUT:?}"),
            };
        if Instant::now() >= deadline {
            return Err(Attempt::Failed(HarnessError::NotReady {
                component: "kube-apiserver",
                timeout: APISERVER_START_TIMEOUT,
                last_check,
                etcd_tail: etcd.log_tail(),
                apiserver_tail: apiserver.log_tail(),
            }));
        }
        tokio::time::sleep(POLL).await;
    }
}
