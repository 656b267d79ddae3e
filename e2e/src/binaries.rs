//! Where the control-plane binaries come from.
//!
//! 1. `KUBEBUILDER_ASSETS`, when set, names a directory holding
//!    `kube-apiserver` and `etcd` (the layout controller-runtime's envtest and
//!    `setup-envtest` use). Both must be there; nothing is built then.
//! 2. Otherwise each tool is built once with the Go toolchain from the wrapper
//!    module committed under `e2e/go/<tool>/`, which pins its version, into a
//!    cache directory outside the repository:
//!    `${PIER_E2E_CACHE}`, else `${XDG_CACHE_HOME:-$HOME/.cache}/pier-e2e`,
//!    one subdirectory per tool and version
//!    (`kube-apiserver-v1.34.4/kube-apiserver`).
//!
//! Concurrent test processes share the cache safely: a builder holds an
//! exclusive `flock` on `<tool>-<version>/.lock` while it builds, writes
//! the binary under a temporary name and renames it into place, so a
//! reader sees either no binary or a complete one.
//!
//! `helm` is looked up in `KUBEBUILDER_ASSETS` too (envtest does not ship
//! it, so it is usually built).
//!
//! When neither source works the functions here return
//! [`HarnessError::MissingBinary`], whose message says how to fix it: tests
//! fail rather than skip.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use rustix::fs::{FlockOperation, flock};

use crate::HarnessError;
use crate::logs::tail;

/// Directory of envtest binaries; takes precedence over building.
pub const KUBEBUILDER_ASSETS: &str = "KUBEBUILDER_ASSETS";
/// Overrides the cache directory that built binaries go to.
pub const PIER_E2E_CACHE: &str = "PIER_E2E_CACHE";
/// Oldest Go release the wrapper modules under `e2e/go/` accept (their
/// dependencies declare `go 1.26.0`).
pub const MIN_GO: &str = "1.26";

/// A program the harness runs, built from a pinned Go module when
/// `KUBEBUILDER_ASSETS` does not provide it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tool {
    /// `kube-apiserver` from `k8s.io/kubernetes`.
    KubeApiserver,
    /// The etcd server from `go.etcd.io/etcd/server/v3`.
    Etcd,
    /// The helm CLI from `helm.sh/helm/v3`.
    Helm,
    /// `kube-controller-manager` from `k8s.io/kubernetes` (the node harness).
    KubeControllerManager,
    /// `kube-scheduler` from `k8s.io/kubernetes` (the node harness).
    KubeScheduler,
    /// `kubelet` from `k8s.io/kubernetes` (the node harness).
    Kubelet,
    /// `kube-proxy` from `k8s.io/kubernetes` (the node harness).
    KubeProxy,
    /// CoreDNS from `github.com/coredns/coredns`, the node's cluster DNS.
    CoreDns,
}

impl Tool {
    /// Every tool, in the order a full warm-up would build them.
    pub const ALL: [Tool; 8] = [
        Tool::KubeApiserver,
        Tool::Etcd,
        Tool::Helm,
        Tool::KubeControllerManager,
        Tool::KubeScheduler,
        Tool::Kubelet,
        Tool::KubeProxy,
        Tool::CoreDns,
    ];

    /// File name of the binary.
    pub const fn binary_name(self) -> &'static str {
        match self {
            Tool::KubeApiserver => "kube-apiserver",
            Tool::Etcd => "etcd",
            Tool::Helm => "helm",
            Tool::KubeControllerManager => "kube-controller-manager",
            Tool::KubeScheduler => "kube-scheduler",
            Tool::Kubelet => "kubelet",
            Tool::KubeProxy => "kube-proxy",
            Tool::CoreDns => "coredns",
        }
    }

    /// Whether the tool is one of the Kubernetes binaries, which share one
    /// wrapper module (`e2e/go/kubernetes/`) and so one dependency graph.
    const fn is_kubernetes(self) -> bool {
        !matches!(self, Tool::Etcd | Tool::Helm | Tool::CoreDns)
    }

    /// Name of the wrapper module directory under `e2e/go/`.
    const fn module_dir_name(self) -> &'static str {
        match self {
            Tool::Etcd => "etcd",
            Tool::Helm => "helm",
            Tool::CoreDns => "coredns",
            _ => "kubernetes",
        }
    }

    /// The Go module that provides the tool.
    pub const fn module(self) -> &'static str {
        match self {
            _ if self.is_kubernetes() => "k8s.io/kubernetes",
            Tool::Etcd => "go.etcd.io/etcd/server/v3",
            Tool::CoreDns => "github.com/coredns/coredns",
            _ => "helm.sh/helm/v3",
        }
    }

    /// The pinned version of [`Tool::module`]; the wrapper module's
    /// `go.mod` requires exactly this version (a unit test checks).
    pub const fn version(self) -> &'static str {
        match self {
            _ if self.is_kubernetes() => "v1.34.4",
            Tool::Etcd => "v3.6.16",
            Tool::CoreDns => "v1.15.0",
            _ => "v3.22.0",
        }
    }

    /// The main package `go build` compiles.
    pub const fn package(self) -> &'static str {
        match self {
            Tool::KubeApiserver => "k8s.io/kubernetes/cmd/kube-apiserver",
            Tool::KubeControllerManager => "k8s.io/kubernetes/cmd/kube-controller-manager",
            Tool::KubeScheduler => "k8s.io/kubernetes/cmd/kube-scheduler",
            Tool::Kubelet => "k8s.io/kubernetes/cmd/kubelet",
            Tool::KubeProxy => "k8s.io/kubernetes/cmd/kube-proxy",
            Tool::Etcd => "go.etcd.io/etcd/server/v3",
            Tool::Helm => "helm.sh/helm/v3/cmd/helm",
            Tool::CoreDns => "github.com/coredns/coredns",
        }
    }

    /// The wrapper module directory in this repository.
    pub fn module_dir(self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("go")
            .join(self.module_dir_name())
    }

    /// Whether `KUBEBUILDER_ASSETS` must provide this tool when it is set
    /// (envtest's directories hold `kube-apiserver` and `etcd`, not `helm`).
    const fn required_in_assets(self) -> bool {
        matches!(self, Tool::KubeApiserver | Tool::Etcd)
    }

    /// Linker flags: strip symbol tables, and stamp the version the
    /// upstream release builds stamp, so that `/version` and
    /// `helm version` report the real release rather than a placeholder
    /// (helm checks a chart's `kubeVersion` against the server's).
    fn ldflags(self) -> String {
        let mut flags = vec!["-s".to_owned(), "-w".to_owned()];
        let mut set = |var: &str, value: &str| flags.push(format!("-X={var}={value}"));
        match self {
            _ if self.is_kubernetes() => {
                let version = self.version();
                let mut parts = version.trim_start_matches('v').split('.');
                let major = parts.next().unwrap_or_default();
                let minor = parts.next().unwrap_or_default();
                for pkg in [
                    "k8s.io/component-base/version",
                    "k8s.io/client-go/pkg/version",
                ] {
                    set(&format!("{pkg}.gitVersion"), version);
                    set(&format!("{pkg}.gitMajor"), major);
                    set(&format!("{pkg}.gitMinor"), minor);
                    set(&format!("{pkg}.gitTreeState"), "clean");
                }
            }
            Tool::Etcd | Tool::CoreDns => {}
            _ => {
                set("helm.sh/helm/v3/internal/version.version", self.version());
                // The Kubernetes version `helm template` assumes without a cluster.
                let mut parts = Tool::KubeApiserver
                    .version()
                    .trim_start_matches('v')
                    .split('.');
                let major = parts.next().unwrap_or_default();
                let minor = parts.next().unwrap_or_default();
                for pkg in [
                    "helm.sh/helm/v3/pkg/chartutil",
                    "helm.sh/helm/v3/pkg/lint/rules",
                ] {
                    set(&format!("{pkg}.k8sVersionMajor"), major);
                    set(&format!("{pkg}.k8sVersionMinor"), minor);
                }
            }
        }
        flags.join(" ")
    }
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.binary_name(), self.version())
    }
}

/// Path of `kube-apiserver`, building it first if needed (many minutes the
/// first time on a small machine, seconds once Go's build cache is warm).
///
/// # Errors
/// [`HarnessError::MissingBinary`] when neither source can provide it,
/// [`HarnessError::Build`] when the build fails.
pub fn kube_apiserver() -> Result<PathBuf, HarnessError> {
    binary(Tool::KubeApiserver)
}

/// Path of `etcd`, building it first if needed.
///
/// # Errors
/// As [`kube_apiserver`].
pub fn etcd() -> Result<PathBuf, HarnessError> {
    binary(Tool::Etcd)
}

/// Path of `helm`, building it first if needed.
///
/// # Errors
/// As [`kube_apiserver`].
pub fn helm() -> Result<PathBuf, HarnessError> {
    binary(Tool::Helm)
}

/// Path of `tool`: from `KUBEBUILDER_ASSETS` when set, otherwise from the
/// build cache, building it there first if needed.
///
/// # Errors
/// As [`kube_apiserver`].
pub fn binary(tool: Tool) -> Result<PathBuf, HarnessError> {
    if let Some(assets) = non_empty_env(KUBEBUILDER_ASSETS) {
        let path = PathBuf::from(&assets).join(tool.binary_name());
        if path.is_file() {
            return Ok(path);
        }
        if tool.required_in_assets() {
            return Err(missing(
                tool,
                format!(
                    "{KUBEBUILDER_ASSETS} is set to {} but {} does not exist",
                    PathBuf::from(assets).display(),
                    path.display()
                ),
            ));
        }
    }
    let cache = cache_dir().ok_or_else(|| {
        missing(
            tool,
            format!(
                "KUBEBUILDER_ASSETS is not set and there is no cache directory to build into \
                 (none of {PIER_E2E_CACHE}, XDG_CACHE_HOME, HOME is set)"
            ),
        )
    })?;
    build_cached(tool, &cache)
}

/// The cache directory built binaries go to: `${PIER_E2E_CACHE}`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/pier-e2e`; `None` when none of these
/// variables is set.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = non_empty_env(PIER_E2E_CACHE) {
        return Some(PathBuf::from(dir));
    }
    let base = match non_empty_env("XDG_CACHE_HOME") {
        Some(xdg) => PathBuf::from(xdg),
        None => PathBuf::from(non_empty_env("HOME")?).join(".cache"),
    };
    Some(base.join("pier-e2e"))
}

/// Returns `<cache>/<tool>-<version>/<tool>`, building it under an exclusive
/// lock if it is not there yet.
fn build_cached(tool: Tool, cache: &Path) -> Result<PathBuf, HarnessError> {
    let dir = cache.join(format!("{}-{}", tool.binary_name(), tool.version()));
    let target = dir.join(tool.binary_name());
    if target.is_file() {
        return Ok(target);
    }

    // Find Go before creating anything, so a machine without it gets the
    // actionable error and no stray directories.
    let go = find_go().ok_or_else(|| {
        missing(
            tool,
            "KUBEBUILDER_ASSETS is not set and no `go` command was found on PATH or at \
             /usr/local/go/bin/go"
                .to_owned(),
        )
    })?;

    fs::create_dir_all(&dir)
        .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
    let lock_path = dir.join(".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| HarnessError::io(format!("opening {}", lock_path.display()), e))?;
    tracing::debug!(lock = %lock_path.display(), "waiting for the build lock");
    flock(&lock, FlockOperation::LockExclusive)
        .map_err(|e| HarnessError::io(format!("locking {}", lock_path.display()), e.into()))?;

    // Another process may have finished the build while this one waited.
    if target.is_file() {
        return Ok(target);
    }
    let result = run_build(tool, &go, &dir, &target);
    // Unlocks; closing the file would too, this only makes the order explicit.
    drop(lock);
    result
}

/// Runs `go build` for `tool` into a temporary file in `dir` and renames it
/// to `target`. The caller holds the directory's lock.
fn run_build(tool: Tool, go: &Path, dir: &Path, target: &Path) -> Result<PathBuf, HarnessError> {
    remove_stale_temporaries(dir, tool);
    let tmp = dir.join(format!("{}.tmp.{}", tool.binary_name(), std::process::id()));
    let log_path = dir.join("build.log");
    let log = File::create(&log_path)
        .map_err(|e| HarnessError::io(format!("creating {}", log_path.display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| HarnessError::io(format!("duplicating {}", log_path.display()), e))?;
    let module_dir = tool.module_dir();

    tracing::info!(
        tool = tool.binary_name(),
        version = tool.version(),
        module_dir = %module_dir.display(),
        log = %log_path.display(),
        "building with go; the first kube-apiserver build takes many minutes"
    );
    let started = Instant::now();
    let status = Command::new(go)
        .current_dir(&module_dir)
        .env("CGO_ENABLED", "0")
        .arg("build")
        // The committed go.sum is complete; never rewrite go.mod/go.sum.
        .arg("-mod=readonly")
        .arg("-trimpath")
        .arg(format!("-ldflags={}", tool.ldflags()))
        .arg("-o")
        .arg(&tmp)
        .arg(tool.package())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .map_err(|e| HarnessError::io(format!("running {} build", go.display()), e))?;
    if !status.success() {
        // Best effort: a partial output is useless and the next build replaces it.
        let _ = fs::remove_file(&tmp);
        return Err(HarnessError::Build {
            tool: tool.binary_name(),
            version: tool.version(),
            module_dir,
            status,
            tail: tail(&log_path, 40),
            log: log_path,
        });
    }
    fs::rename(&tmp, target).map_err(|e| {
        HarnessError::io(
            format!("renaming {} to {}", tmp.display(), target.display()),
            e,
        )
    })?;
    tracing::info!(
        tool = tool.binary_name(),
        version = tool.version(),
        seconds = started.elapsed().as_secs(),
        path = %target.display(),
        "built"
    );
    Ok(target.to_owned())
}

/// Deletes temporary outputs of builds that died half-way. Only called
/// under the lock, when no build of this tool can be running.
fn remove_stale_temporaries(dir: &Path, tool: Tool) {
    let prefix = format!("{}.tmp.", tool.binary_name());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// `go` from PATH, else the usual tarball install location.
pub(crate) fn find_go() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("go"))
            .find(|candidate| candidate.is_file())
    });
    from_path.or_else(|| {
        let fallback = PathBuf::from("/usr/local/go/bin/go");
        fallback.is_file().then_some(fallback)
    })
}

fn missing(tool: Tool, reason: String) -> HarnessError {
    HarnessError::MissingBinary {
        tool: tool.binary_name(),
        version: tool.version(),
        reason,
        min_go: MIN_GO,
        cache: cache_dir().map_or_else(
            || format!("${PIER_E2E_CACHE} (set it, or HOME)"),
            |dir| dir.display().to_string(),
        ),
    }
}

fn non_empty_env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version a wrapper `go.mod` requires `module` at, from either
    /// `require module vX` or a line of a `require (...)` block.
    fn required_version(go_mod: &str, module: &str) -> Option<String> {
        go_mod.lines().find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let words = words.strip_prefix(&["require"]).unwrap_or(&words);
            match words {
                [m, v, ..] if *m == module => Some((*v).to_owned()),
                _ => None,
            }
        })
    }

    #[test]
    fn wrapper_modules_pin_the_versions_the_cache_is_keyed_by() {
        for tool in Tool::ALL {
            let dir = tool.module_dir();
            let go_mod = fs::read_to_string(dir.join("go.mod")).expect("wrapper go.mod");
            assert_eq!(
                required_version(&go_mod, tool.module()).as_deref(),
                Some(tool.version()),
                "{}/go.mod must require {} {}",
                dir.display(),
                tool.module(),
                tool.version()
            );
            assert!(
                dir.join("go.sum").is_file(),
                "{} has no go.sum",
                dir.display()
            );
            let tools_go = fs::read_to_string(dir.join("tools.go")).expect("wrapper tools.go");
            assert!(
                tools_go.contains(&format!("_ \"{}\"", tool.package())),
                "{}/tools.go must import {}",
                dir.display(),
                tool.package()
            );
        }
    }

    #[test]
    fn kube_apiserver_module_replaces_every_staging_module_with_a_published_version() {
        let go_mod = fs::read_to_string(Tool::KubeApiserver.module_dir().join("go.mod"))
            .expect("wrapper go.mod");
        let replaces: Vec<&str> = go_mod.lines().filter(|l| l.contains("=>")).collect();
        assert!(
            replaces.len() >= 30,
            "expected the staging replaces: {replaces:?}"
        );
        for line in replaces {
            assert!(
                line.trim_end().ends_with(" v0.34.4") && !line.contains("./"),
                "unexpected replace line: {line}"
            );
        }
    }

    #[test]
    fn ldflags_stamp_the_release_versions() {
        let api = Tool::KubeApiserver.ldflags();
        assert!(api.contains("-X=k8s.io/component-base/version.gitVersion=v1.34.4"));
        assert!(api.contains("-X=k8s.io/component-base/version.gitMinor=34"));
        let helm = Tool::Helm.ldflags();
        assert!(helm.contains("-X=helm.sh/helm/v3/internal/version.version=v3.22.0"));
        assert!(helm.contains("-X=helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=34"));
    }
}
