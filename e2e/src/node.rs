//! A real Kubernetes node on this machine, beside the control plane: the
//! control plane of [`ControlPlane`] plus kube-controller-manager,
//! kube-scheduler, a kubelet on Debian's containerd and runc with CNI,
//! kube-proxy in iptables mode, and CoreDNS as the cluster DNS. Pods run
//! from images imported into containerd (no registry), with
//! `imagePullPolicy: Never`.
//!
//! ```text
//!   host (root netns)                         pods (netns made by CNI)
//!   ┌──────────────────────────────────┐      ┌──────────────┐
//!   │ etcd            127.0.0.1        │      │ 10.213.0.x   │
//!   │ kube-apiserver  10.213.0.1 ◀─────┼──────┤ (veth)       │
//!   │ coredns :53     10.213.0.1       │      └──────────────┘
//!   │ kubelet, kube-proxy, kcm, sched  │        bridge pier-e2e0
//!   │ containerd (private socket)      │        10.213.0.1/24
//!   └──────────────────────────────────┘
//! ```
//!
//! All traffic stays on the machine: the Service range is routed onto the
//! bridge, and a forwarding guard drops anything from the bridge bound
//! elsewhere. One node runs at a time on a machine (an exclusive lock in
//! the cache directory): the bridge, iptables and cgroups are the host's.
//! Dropping the [`Cluster`] stops every component, removes the pods'
//! containers, mounts and cgroups, the chains kubelet and kube-proxy leave,
//! the bridge, and restores the sysctls the node changed.

pub mod config;
mod host;

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as NodeObject, Pod};
use kube::api::{Api, ListParams};
use rustix::fs::{FlockOperation, flock};
use tempfile::TempDir;

use crate::binaries::{self, Tool};
use crate::control_plane::{ControlPlane, Options, free_ports};
use crate::process::Process;
use crate::{HarnessError, logs};
use config::{KubeletFiles, NETWORK};
use host::Host;

/// The node's name.
pub const NODE_NAME: &str = "pier-e2e-node";
/// How long a component may take to become ready.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(250);

/// A control plane with one real node. Fields drop in order: the node's
/// components first, then the control plane, then the machine-wide lock.
#[derive(Debug)]
pub struct Cluster {
    node: Node,
    cp: ControlPlane,
    _lock: File,
}

/// The node's processes and files.
#[derive(Debug)]
struct Node {
    /// Started in this order, stopped in the reverse.
    components: Vec<Process>,
    containerd: Process,
    containerd_sock: PathBuf,
    pod_logs: PathBuf,
    dir: TempDir,
    /// Restores the host last (see `Drop`).
    host: Option<Host>,
}

impl Cluster {
    /// Starts the control plane and the node, imports `images` (a
    /// docker-save tarball holding the pause image, see [`crate::image`])
    /// into containerd, and waits until the node is Ready and kube-proxy
    /// and CoreDNS answer.
    ///
    /// # Errors
    /// When a binary or host command is missing or fails, or a component is
    /// not ready within [`NODE_START_TIMEOUT`]; the message quotes its log.
    pub async fn start(images: &Path) -> Result<Self, HarnessError> {
        let started = Instant::now();
        let lock = machine_lock()?;
        tokio::task::spawn_blocking(|| {
            for tool in [
                Tool::KubeControllerManager,
                Tool::KubeScheduler,
                Tool::Kubelet,
                Tool::KubeProxy,
                Tool::CoreDns,
            ] {
                binaries::binary(tool)?;
            }
            Ok::<_, HarnessError>(())
        })
        .await
        .map_err(|e| HarnessError::io("building the node binaries", std::io::Error::other(e)))??;
        let host = Host::prepare(NETWORK)?;
        let cp = ControlPlane::start_with(Options {
            address: NETWORK.gateway,
            pods: true,
        })
        .await?;
        let cache = binaries::cache_dir().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("node-")
            .tempdir_in(&cache)
            .map_err(|e| HarnessError::io("creating the node directory", e))?;
        let (containerd, containerd_sock) = start_containerd(dir.path()).await?;
        let mut node = Node {
            components: Vec::new(),
            containerd,
            containerd_sock,
            pod_logs: dir.path().join("pod-logs"),
            dir,
            host: Some(host),
        };
        node.import(images)?;
        node.start_components(&cp).await?;
        tracing::info!(seconds = started.elapsed().as_secs_f32(), "node ready");
        Ok(Self {
            node,
            cp,
            _lock: lock,
        })
    }

    /// The control plane.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// An administrator client.
    pub fn client(&self) -> kube::Client {
        self.cp.client()
    }

    /// The last lines of every container's log on the node, for failure
    /// messages.
    pub fn pod_logs(&self) -> String {
        let mut text = String::new();
        let mut files = Vec::new();
        collect_files(&self.node.pod_logs, &mut files);
        files.sort();
        for file in files {
            text.push_str(&format!("--- {}\n", file.display()));
            text.push_str(&logs::tail(&file, 15));
            text.push('\n');
        }
        text
    }

    /// Imports another docker-save tarball into the node's containerd.
    ///
    /// # Errors
    /// When `ctr` fails.
    pub fn import(&self, images: &Path) -> Result<(), HarnessError> {
        self.node.import(images)
    }

    /// Waits until `count` pods matching `selector` in `namespace` are
    /// Ready and none other is still starting or stopping.
    ///
    /// # Errors
    /// [`HarnessError::Timeout`] after `timeout`, quoting the pod logs.
    pub async fn wait_for_ready_pods(
        &self,
        namespace: &str,
        selector: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Pod>, HarnessError> {
        let pods: Api<Pod> = Api::namespaced(self.client(), namespace);
        let deadline = Instant::now() + timeout;
        loop {
            let list = pods
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| HarnessError::kube(format!("listing pods {selector}"), e))?;
            let ready: Vec<Pod> = list.items.iter().filter(|p| is_ready(p)).cloned().collect();
            if ready.len() == count && list.items.len() == count {
                return Ok(ready);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "{count} ready pods {selector} in {namespace} (have {} of {}); pod logs:\n{}",
                        ready.len(),
                        list.items.len(),
                        self.pod_logs()
                    ),
                    timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Whether the pod runs, is Ready and is not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl Node {
    fn import(&self, images: &Path) -> Result<(), HarnessError> {
        let sock = self.containerd_sock.display().to_string();
        let tar = images.display().to_string();
        host::run(
            "ctr",
            &["--address", &sock, "-n", "k8s.io", "images", "import", &tar],
        )
    }

    /// CoreDNS, kube-controller-manager, kube-scheduler, the kubelet and
    /// kube-proxy, each waited for before the next.
    async fn start_components(&mut self, cp: &ControlPlane) -> Result<(), HarnessError> {
        let dir = self.dir.path().to_owned();
        let pki = cp.pki_dir();
        let kubeconfig = cp.kubeconfig_path().display().to_string();
        let path = |p: &Path| p.display().to_string();
        let write = |name: &str, text: String| -> Result<PathBuf, HarnessError> {
            let file = dir.join(name);
            std::fs::write(&file, text)
                .map_err(|e| HarnessError::io(format!("writing {}", file.display()), e))?;
            Ok(file)
        };

        let corefile = write("Corefile", config::corefile(&NETWORK, cp.kubeconfig_path()))?;
        self.spawn(Tool::CoreDns, &["-conf".into(), path(&corefile)])?;
        let dns = SocketAddr::from((NETWORK.gateway, 53));
        self.wait("coredns", || {
            TcpStream::connect_timeout(&dns, Duration::from_secs(1))
                .map(drop)
                .map_err(|e| format!("connecting to {dns}: {e}"))
        })
        .await?;

        let [
            kcm_port,
            scheduler_port,
            kubelet_port,
            kubelet_healthz,
            proxy_healthz,
            proxy_metrics,
        ] = free_ports()?;
        self.spawn(
            Tool::KubeControllerManager,
            &[
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                format!("--root-ca-file={}", path(&pki.join("ca.crt"))),
                format!(
                    "--service-account-private-key-file={}",
                    path(&pki.join("service-account.key"))
                ),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcm_port}"),
                "--controllers=*,-nodeipam,-cloud-node-lifecycle".into(),
            ],
        )?;
        self.spawn(
            Tool::KubeScheduler,
            &[
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={scheduler_port}"),
            ],
        )?;

        let cni_dir = dir.join("cni");
        std::fs::create_dir_all(&cni_dir)
            .map_err(|e| HarnessError::io("creating the CNI directory", e))?;
        write("cni/10-pier-e2e.conflist", config::cni(&NETWORK))?;
        // Pods resolve cluster names only; the host's resolvers stay out.
        let resolv = write("resolv.conf", String::new())?;
        let kubelet_config = write(
            "kubelet.yaml",
            config::kubelet(
                &NETWORK,
                kubelet_port,
                kubelet_healthz,
                KubeletFiles {
                    containerd_sock: &self.containerd_sock,
                    client_ca: &pki.join("ca.crt"),
                    resolv_conf: &resolv,
                    pod_logs: &self.pod_logs,
                },
            ),
        )?;
        self.spawn(
            Tool::Kubelet,
            &[
                format!("--config={}", path(&kubelet_config)),
                format!("--kubeconfig={kubeconfig}"),
                format!("--root-dir={}", path(&dir.join("kubelet"))),
                format!("--cert-dir={}", path(&dir.join("kubelet-pki"))),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={}", NETWORK.gateway),
            ],
        )?;
        let nodes: Api<NodeObject> = Api::all(cp.client());
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        loop {
            self.check_running()?;
            let node = nodes.get_opt(NODE_NAME).await.ok().flatten();
            let ready = node
                .as_ref()
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready("kubelet", format!("node {NODE_NAME} not Ready")));
            }
            tokio::time::sleep(POLL).await;
        }

        let proxy_config = write(
            "kube-proxy.yaml",
            config::kube_proxy(
                &NETWORK,
                cp.kubeconfig_path(),
                NODE_NAME,
                proxy_healthz,
                proxy_metrics,
            ),
        )?;
        self.spawn(
            Tool::KubeProxy,
            &[format!("--config={}", path(&proxy_config))],
        )?;
        let healthz = SocketAddr::from(([127, 0, 0, 1], proxy_healthz));
        self.wait("kube-proxy", || {
            http_status(healthz, "/healthz").and_then(|status| match status {
                200 => Ok(()),
                other => Err(format!("/healthz answered {other}")),
            })
        })
        .await
    }

    fn spawn(&mut self, tool: Tool, args: &[String]) -> Result<(), HarnessError> {
        let program = binaries::binary(tool)?;
        let name = tool.binary_name();
        let log = self.dir.path().join(format!("{name}.log"));
        self.components
            .push(Process::spawn(name, &program, args, log)?);
        Ok(())
    }

    /// Fails if a component has exited.
    fn check_running(&mut self) -> Result<(), HarnessError> {
        for process in self
            .components
            .iter_mut()
            .chain(std::iter::once(&mut self.containerd))
        {
            if let Some(status) = process.exit_status()? {
                return Err(process.exited(status));
            }
        }
        Ok(())
    }

    /// Waits until `check` passes for the last component started.
    async fn wait(
        &mut self,
        component: &'static str,
        mut check: impl FnMut() -> Result<(), String>,
    ) -> Result<(), HarnessError> {
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        loop {
            self.check_running()?;
            let last = match check() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(self.not_ready(component, last));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn not_ready(&self, component: &'static str, last_check: String) -> HarnessError {
        let log = self.dir.path().join(format!("{component}.log"));
        HarnessError::NodeNotReady {
            component,
            timeout: NODE_START_TIMEOUT,
            last_check,
            tail: logs::tail(&log, 30),
            log,
        }
    }

    /// Kills every container's task and removes the containers, so that
    /// their shims, mounts and network namespaces go before containerd.
    fn remove_containers(&self) {
        let sock = self.containerd_sock.display().to_string();
        let ctr = |args: &[&str]| {
            let mut all = vec!["--address", &sock, "-n", "k8s.io"];
            all.extend_from_slice(args);
            host::output("ctr", &all).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "ctr failed");
                String::new()
            })
        };
        let ids = ctr(&["containers", "ls", "-q"]);
        tracing::debug!(
            containers = ids.lines().count(),
            "removing the node's containers"
        );
        for id in ids.lines().filter(|l| !l.is_empty()) {
            ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
        }
        for id in ids.lines().filter(|l| !l.is_empty()) {
            ctr(&["tasks", "rm", "-f", id]);
            ctr(&["containers", "rm", id]);
        }
        // What ctr could not end: the shims of this containerd and every
        // process below them (a pod's processes are the shim's children).
        host::kill_trees(|cmdline| cmdline.contains("containerd-shim") && cmdline.contains(&sock));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        while let Some(mut process) = self.components.pop() {
            process.stop();
        }
        self.remove_containers();
        self.containerd.stop();
        host::unmount_under(self.dir.path());
        // Network namespaces of sandboxes, which containerd bind-mounts.
        for netns in ["/run/netns", "/var/run/netns"] {
            host::unmount_under(Path::new(netns));
            host::remove_matching(Path::new(netns), "cni-");
        }
        self.host.take();
    }
}

/// Starts containerd with its own configuration, root, state and socket
/// under `dir`, and waits for the socket.
async fn start_containerd(dir: &Path) -> Result<(Process, PathBuf), HarnessError> {
    let root = dir.join("containerd");
    std::fs::create_dir_all(&root)
        .map_err(|e| HarnessError::io("creating containerd's directory", e))?;
    let config_file = dir.join("containerd.toml");
    std::fs::write(&config_file, config::containerd(&root, &dir.join("cni")))
        .map_err(|e| HarnessError::io("writing containerd's configuration", e))?;
    let program = which("containerd")?;
    let mut process = Process::spawn(
        "containerd",
        &program,
        &["--config".into(), config_file.display().to_string()],
        dir.join("containerd.log"),
    )?;
    let sock = root.join("containerd.sock");
    let deadline = Instant::now() + NODE_START_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if let Some(status) = process.exit_status()? {
            return Err(process.exited(status));
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::NodeNotReady {
                component: "containerd",
                timeout: NODE_START_TIMEOUT,
                last_check: format!("{} does not accept connections", sock.display()),
                tail: process.log_tail(),
                log: process.log_path().to_owned(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    Ok((process, sock))
}

/// The exclusive lock that keeps one node per machine; waits for it.
fn machine_lock() -> Result<File, HarnessError> {
    let cache = binaries::cache_dir().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&cache)
        .map_err(|e| HarnessError::io(format!("creating {}", cache.display()), e))?;
    let path = cache.join("node.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| HarnessError::io(format!("opening {}", path.display()), e))?;
    flock(&file, FlockOperation::LockExclusive)
        .map_err(|e| HarnessError::io(format!("locking {}", path.display()), e.into()))?;
    Ok(file)
}

/// A program on PATH, installing the node's Debian packages first when
/// it is missing (`e2e/scripts/packages.sh`).
pub(crate) fn which(program: &str) -> Result<PathBuf, HarnessError> {
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/packages.sh");
    host::run("bash", &[&script.display().to_string()])?;
    find().ok_or_else(|| HarnessError::Command {
        command: format!("{} (looking for {program})", script.display()),
        output: format!("{program} is still not on PATH"),
    })
}

/// `GET path` over HTTP/1.1 with a short timeout; the status code.
fn http_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {head:?}"))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => collect_files(&path, out),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
}
