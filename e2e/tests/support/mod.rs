//! A whole Pier installation for one test: a real API server (the
//! harness), the controller in-process, and one dataplane in-process in
//! cluster mode, talking over TLS with a bearer token as in a cluster.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use pier_controller::Controller;
use pier_dataplane::{Args, Dataplane};
use pier_e2e::ControlPlane;
use tempfile::TempDir;

const TOKEN: &str = "e2e-snapshot-token";
/// Where the chart is installed; the controller's Leases live there.
pub const CHART_NAMESPACE: &str = "pier-system";

/// Polls `check` until it holds; panics naming `what` after 60 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Cluster {
    pub cp: ControlPlane,
    /// The controller's client: the chart's `pier-controller` service
    /// account, so every scenario runs under the chart's RBAC.
    controller_client: kube::Client,
    dir: TempDir,
    controller: Option<Controller>,
    /// Replicas started with leader election, by identity.
    pub replicas: Vec<(String, Controller)>,
    /// Kept across controller restarts so the dataplane finds it again.
    snapshot_addr: SocketAddr,
    dataplane: Option<Running>,
    /// Whether Gateway API is installed and served.
    gateway: bool,
}

impl Cluster {
    /// A control plane with Pier's CRDs, a controller and a dataplane.
    pub async fn start() -> Self {
        let mut cluster = Self::bare(false).await;
        cluster.start_controller().await;
        cluster.dataplane = Some(cluster.start_dataplane());
        cluster
    }

    /// As [`start`](Self::start), with the Gateway API CRDs installed from
    /// the upstream release and the chart and controller serving them.
    pub async fn start_with_gateway_api() -> Self {
        let mut cluster = Self::bare(true).await;
        cluster.start_controller().await;
        cluster.dataplane = Some(cluster.start_dataplane());
        cluster
    }

    /// Two controller replicas, `a` and `b`, electing a leader through a
    /// Lease, with the dataplane connected to the one that does not lead.
    pub async fn start_replicated() -> Self {
        Self::start_electing(&["a", "b"]).await
    }

    /// Controller replicas electing a leader, the dataplane connected to
    /// one that does not lead (or to the only one).
    pub async fn start_electing(identities: &[&str]) -> Self {
        let mut cluster = Self::bare(false).await;
        for identity in identities {
            let lease = pier_controller::LeaseConfig {
                namespace: CHART_NAMESPACE.into(),
                name: "pier-controller".into(),
                identity: (*identity).into(),
                duration: Duration::from_secs(2),
                renew: Duration::from_millis(300),
            };
            let listen = SocketAddr::from(([127, 0, 0, 1], 0));
            let controller = cluster.controller_with(listen, Some(lease)).await;
            cluster.replicas.push(((*identity).to_owned(), controller));
        }
        let leader = cluster.leader().await;
        let follower = cluster
            .replicas
            .iter()
            .find(|(identity, _)| *identity != leader)
            .or(cluster.replicas.first())
            .expect("a replica");
        cluster.snapshot_addr = follower.1.snapshot_addr();
        cluster.dataplane = Some(cluster.start_dataplane());
        cluster
    }

    /// The identity holding the election Lease, once one does.
    pub async fn leader(&self) -> String {
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(self.cp.client(), CHART_NAMESPACE);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let holder = leases
                .get_opt("pier-controller")
                .await
                .expect("lease read")
                .and_then(|l| l.spec?.holder_identity)
                .filter(|h| !h.is_empty());
            if let Some(holder) = holder {
                return holder;
            }
            assert!(Instant::now() < deadline, "no replica took the lease");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn bare(gateway: bool) -> Self {
        let cp = ControlPlane::start().await.expect("control plane starts");
        if gateway {
            // Upstream's CRDs come first, as a cluster operator installs
            // them before a chart that creates a GatewayClass.
            let crds = tokio::task::block_in_place(pier_e2e::gateway_api::standard_crds)
                .expect("the Gateway API CRDs from the Go module");
            cp.apply_crds(crds)
                .await
                .expect("Gateway API CRDs established");
        }
        // The chart brings the CRDs, the service account and its RBAC.
        let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/pier");
        let gateway_value = format!("gateway.enabled={gateway}");
        tokio::task::block_in_place(|| {
            cp.helm(&[
                "install",
                "pier",
                chart,
                "--namespace",
                CHART_NAMESPACE,
                "--create-namespace",
                // TLS Secrets of routes in `default` may be read.
                "--set",
                "rbac.secretNamespaces={default}",
                "--set",
                &gateway_value,
            ])
        })
        .expect("the chart installs");
        cp.install_pier_crds().await.expect("CRDs established");
        let controller_client = cp
            .client_for_service_account(CHART_NAMESPACE, "pier-controller")
            .await
            .expect("a client for the chart's controller service account");
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = cp
            .issue_serving_cert("pier-controller")
            .expect("snapshot service certificate");
        std::fs::write(dir.path().join("tls.crt"), cert).expect("write cert");
        std::fs::write(dir.path().join("tls.key"), key).expect("write key");
        std::fs::write(dir.path().join("ca.crt"), cp.ca_pem()).expect("write CA");
        std::fs::write(dir.path().join("token"), TOKEN).expect("write token");
        Self {
            cp,
            controller_client,
            dir,
            controller: None,
            replicas: Vec::new(),
            snapshot_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dataplane: None,
            gateway,
        }
    }

    /// Starts the controller on the snapshot address used so far.
    pub async fn start_controller(&mut self) {
        let controller = self.controller_with(self.snapshot_addr, None).await;
        self.snapshot_addr = controller.snapshot_addr();
        self.controller = Some(controller);
    }

    async fn controller_with(
        &self,
        snapshot_listen: SocketAddr,
        lease: Option<pier_controller::LeaseConfig>,
    ) -> Controller {
        let tls = pier_controller::tls_config(
            &self.dir.path().join("tls.crt"),
            &self.dir.path().join("tls.key"),
        )
        .expect("TLS config");
        Controller::start(
            self.controller_client.clone(),
            pier_controller::Config {
                namespaces: Vec::new(),
                secret_namespaces: vec!["default".to_owned()],
                coalesce: Duration::from_millis(50),
                class: pier_controller::Class::default(),
                snapshot_listen,
                tls,
                token: TOKEN.to_owned(),
                admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                lease,
                ingress: Some(pier_controller::IngressConfig {
                    controller: pier_compile::ingress::CONTROLLER.to_owned(),
                    publish_service: Some(("default".into(), "pier-dataplane".into())),
                }),
                gateway: self.gateway.then(|| pier_controller::GatewayConfig {
                    controller: pier_compile::gateway::CONTROLLER.to_owned(),
                    publish_service: Some(("default".into(), "pier-dataplane".into())),
                }),
            },
        )
        .await
        .expect("controller starts")
    }

    pub fn stop_controller(&mut self) {
        self.controller = None;
    }

    pub fn controller(&self) -> Option<&Controller> {
        self.controller.as_ref()
    }

    fn start_dataplane(&self) -> Running {
        let path = |name: &str| self.dir.path().join(name).to_string_lossy().into_owned();
        let url = format!("https://{}", self.snapshot_addr);
        let argv = [
            "pier-dataplane",
            "--controller",
            &url,
            "--controller-ca",
            &path("ca.crt"),
            "--controller-token-file",
            &path("token"),
            "--controller-server-name",
            "localhost",
            "--snapshot-store",
            &path("snapshot.json"),
            "--name",
            "dataplane-0",
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--shutdown-grace",
            "1s",
        ];
        let args = Args::try_parse_from(argv).expect("flags parse");
        Running::start(Dataplane::bind(args).expect("dataplane starts"))
    }

    /// Stops the dataplane and starts a new one with the same store.
    pub fn restart_dataplane(&mut self) {
        self.dataplane = None;
        self.dataplane = Some(self.start_dataplane());
    }

    /// A directory of files under the test's temp dir; returns its path.
    pub fn docroot(&self, name: &str, files: &[(&str, &str)]) -> String {
        let root: PathBuf = self.dir.path().join("docroots").join(name);
        std::fs::create_dir_all(&root).expect("docroot");
        for (file, contents) in files {
            std::fs::write(root.join(file), contents).expect("write file");
        }
        root.to_string_lossy().into_owned()
    }

    /// `GET path` on the dataplane's admin listener.
    pub fn admin(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.dataplane.as_ref()?.admin, "admin", path)
    }

    /// The dataplane's active snapshot (its admin `/snapshot`).
    pub fn snapshot(&self) -> Option<serde_json::Value> {
        let admin = self.dataplane.as_ref()?.admin;
        let (_, body) = http_get(admin, "admin", "/snapshot")?;
        serde_json::from_str(&body).ok()
    }

    /// `GET path` with `Host: host` from the dataplane: status and body,
    /// or `None` when the connection fails.
    pub fn get(&self, host: &str, path: &str) -> Option<(u16, String)> {
        http_get(self.dataplane.as_ref()?.addr, host, path)
    }

    /// As [`get`](Cluster::get), with more request fields (`Name: value`).
    pub fn get_with(&self, host: &str, path: &str, fields: &[&str]) -> Option<(u16, String)> {
        http_get_with(self.dataplane.as_ref()?.addr, host, path, fields)
    }
}

/// One `GET` on a new connection: status and body (de-chunked when the
/// answer is chunked), or `None` when the connection fails.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    http_get_with(addr, host, path, &[])
}

/// As [`http_get`], with more request fields (`Name: value`).
pub fn http_get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    fields: &[&str],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for field in fields {
        request.push_str(field);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

/// Joins the chunks of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// A dataplane running on its own thread until dropped.
pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn start(dataplane: Dataplane) -> Self {
        let addr = dataplane.listen_addr();
        let admin = dataplane.admin_addr().expect("admin address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            dataplane
                .run(async {
                    let _ = stopped.await;
                })
                .expect("dataplane runs");
        });
        Self {
            addr,
            admin,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A backend answering every request on its connections with `body`.
pub fn tiny_backend(body: &'static str) -> std::net::SocketAddr {
    tiny_backend_at(([127, 0, 0, 1], 0).into(), body)
}

pub fn tiny_backend_at(at: std::net::SocketAddr, body: &'static str) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(at).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A non-loopback IPv4 address of this machine: the source address the
/// kernel picks towards a few destinations (a UDP `connect` sends
/// nothing).
pub fn local_address() -> Option<std::net::IpAddr> {
    [
        "192.0.2.1:9",
        "10.255.255.254:9",
        "172.31.255.254:9",
        "8.8.8.8:9",
    ]
    .iter()
    .find_map(|to| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect(to).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    })
}

/// [`tiny_backend`] on a given address.
pub fn tiny_backend_on(ip: std::net::IpAddr, body: &'static str) -> std::net::SocketAddr {
    tiny_backend_at(std::net::SocketAddr::new(ip, 0), body)
}
