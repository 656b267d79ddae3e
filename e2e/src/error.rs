//! The one error type of the harness.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why the harness could not provide a binary or a running control plane.
///
/// Every variant that involves a child process carries the last lines of
/// its log, so a failing test says what went wrong without a rerun.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// Neither `KUBEBUILDER_ASSETS` nor a Go toolchain can provide a binary.
    #[error(
        "cannot provide {tool} {version}: {reason}\n\
         To fix this, either set KUBEBUILDER_ASSETS to a directory holding `kube-apiserver` \
         and `etcd` (the envtest layout, e.g. the directory `setup-envtest use -p path 1.34.x` \
         prints), or install Go {min_go} or newer (`go` on PATH) so the harness can build \
         them from the pinned modules in e2e/go/ into {cache}"
    )]
    MissingBinary {
        /// Binary name, e.g. `kube-apiserver`.
        tool: &'static str,
        /// Version the harness pins.
        version: &'static str,
        /// What was looked for and not found.
        reason: String,
        /// Oldest Go release the wrapper modules accept.
        min_go: &'static str,
        /// The cache directory builds go to (or why it is unknown).
        cache: String,
    },

    /// `go build` of a pinned tool failed.
    #[error(
        "building {tool} {version} with `go build` in {module_dir} failed ({status}); \
         full output in {log}, last lines:\n{tail}"
    )]
    Build {
        /// Binary name.
        tool: &'static str,
        /// Pinned version.
        version: &'static str,
        /// The wrapper module directory the build ran in.
        module_dir: PathBuf,
        /// Exit status of `go build`.
        status: ExitStatus,
        /// Where the build output was written.
        log: PathBuf,
        /// Last lines of that output.
        tail: String,
    },

    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Generating a key or certificate failed.
    #[error("generating {what}: {source}")]
    Certificate {
        /// Which key or certificate.
        what: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// A control-plane process exited while the harness waited for it.
    #[error("{component} exited during startup ({status}); last lines of {log}:\n{tail}")]
    Exited {
        /// `etcd` or `kube-apiserver`.
        component: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// Last lines of that log.
        tail: String,
    },

    /// A control-plane process did not become ready in time.
    #[error(
        "{component} was not ready after {timeout:?} (last check: {last_check}); \
         last lines of the etcd log:\n{etcd_tail}\n\
         last lines of the kube-apiserver log:\n{apiserver_tail}"
    )]
    NotReady {
        /// `etcd` or `kube-apiserver`.
        component: &'static str,
        /// How long the harness waited.
        timeout: Duration,
        /// The outcome of the last readiness probe.
        last_check: String,
        /// Last lines of the etcd log.
        etcd_tail: String,
        /// Last lines of the kube-apiserver log (empty if it was not started).
        apiserver_tail: String,
    },

    /// Writing a kubeconfig failed.
    #[error("writing kubeconfig {path}: {source}")]
    KubeconfigWrite {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_saphyr::SerializeError,
    },

    /// kube-rs could not turn a kubeconfig into a client configuration.
    #[error("loading kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),

    /// A Kubernetes API call failed.
    #[error("{context}: {source}")]
    Kube {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },

    /// Watching for a condition on the API server failed.
    #[error("waiting for {what}: {source}")]
    Wait {
        /// What the harness waited for.
        what: String,
        /// The underlying error.
        #[source]
        source: kube::runtime::wait::Error,
    },

    /// A condition the harness waits for on the API server did not hold in time.
    #[error("{what} did not happen within {timeout:?}")]
    Timeout {
        /// What the harness waited for.
        what: String,
        /// How long it waited.
        timeout: Duration,
    },

    /// A host command of the node harness (ip, iptables, ctr, the image
    /// script) exited with an error.
    #[error("`{command}` failed:\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard output and error.
        output: String,
    },

    /// A node component did not become ready in time.
    #[error(
        "{component} was not ready after {timeout:?} ({last_check}); last lines of {log}:\n{tail}"
    )]
    NodeNotReady {
        /// The component, e.g. `kubelet`.
        component: &'static str,
        /// How long the harness waited.
        timeout: Duration,
        /// The outcome of the last check.
        last_check: String,
        /// Its log file.
        log: PathBuf,
        /// Last lines of that log.
        tail: String,
    },

    /// helm exited with an error.
    #[error("helm {args} failed:\n{output}")]
    Helm {
        /// The arguments, space-separated.
        args: String,
        /// Its standard output and error.
        output: String,
    },
}

impl HarnessError {
    /// Wraps an I/O error with what the harness was doing.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps a kube error with what the harness was doing.
    pub(crate) fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            context: context.into(),
            source,
        }
    }

    /// Wraps an rcgen error with the key or certificate being made.
    pub(crate) fn cert(what: impl Into<String>, source: rcgen::Error) -> Self {
        Self::Certificate {
            what: what.into(),
            source,
        }
    }
}
