//! End-to-end test harness: a real kube-apiserver and etcd on loopback,
//! started per test the way controller-runtime's envtest does.
//!
//! ```no_run
//! # async fn example() -> Result<(), pier_e2e::HarnessError> {
//! let cp = pier_e2e::ControlPlane::start().await?;
//! cp.install_pier_crds().await?;
//! let client = cp.client(); // administrator
//! // … use `client`, or point helm at `cp.kubeconfig_path()` …
//! # Ok(()) }
//! ```
//!
//! Binaries come from `KUBEBUILDER_ASSETS` or are built once from the Go
//! modules pinned under `e2e/go/` into a cache outside the repository; see
//! [`binaries`]. Without either, [`ControlPlane::start`] fails with a
//! message saying what to install: tests never skip silently.
//!
//! Each [`ControlPlane`] has its own ports, certificates and temporary
//! directory, so tests that start one can run in parallel.
//!
//! A [`Cluster`] adds a real node (kubelet on containerd, kube-proxy,
//! controller-manager, scheduler, CoreDNS) that runs pods from images
//! [`image::build`] makes; one runs at a time per machine.

pub mod binaries;
mod control_plane;
mod error;
pub mod gateway_api;
pub mod image;
mod logs;
pub mod node;
mod pki;
mod process;

pub use control_plane::{
    APISERVER_START_TIMEOUT, CRD_ESTABLISHED_TIMEOUT, ControlPlane, ETCD_START_TIMEOUT, Options,
};
pub use error::HarnessError;
pub use node::Cluster;
