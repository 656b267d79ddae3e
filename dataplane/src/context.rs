//! What every layer of the request path below `dispatch` reads and
//! counts into: the metrics, the static file limits and the proxy's
//! settings from the flags. Shared by the workers behind one `Arc`; a
//! buffer's filler task holds a clone.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::files::FileLimits;
use crate::metrics::Metrics;
use crate::spool::Budget;

/// Metrics and limits of the request path.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) metrics: Metrics,
    pub(crate) files: FileLimits,
    pub(crate) upstream: UpstreamSettings,
}

/// Proxy settings from the flags.
#[derive(Debug)]
pub(crate) struct UpstreamSettings {
    /// `--upstream-idle`: idle upstream connections kept per endpoint and
    /// worker.
    pub(crate) idle: usize,
    /// `--upstream-idle-timeout`: idle upstream connections unused this
    /// long are closed.
    pub(crate) idle_timeout: Duration,
    /// `--via`: the `Via` element (`1.1 NAME`) proxied messages get.
    pub(crate) via: Option<HeaderValue>,
    /// `--max-header-size`, also the largest response head accepted.
    pub(crate) max_header_size: usize,
    /// Body buffering limits (`--buffer-memory`, `--buffer-disk`,
    /// `--spill-dir`) and their counters.
    pub(crate) buffers: Arc<Budget>,
}
