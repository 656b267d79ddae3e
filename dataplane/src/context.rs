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
    /// `--forward-auth-timeout`: the longest a forward-authentication
    /// check may take.
    pub(crate) check_timeout: Duration,
    /// `--via`: the `Via` element (`1.1 NAME`) proxied messages get.
    pub(crate) via: Option<HeaderValue>,
    /// `--max-header-size`, also the largest response head accepted.
    pub(crate) max_header_size: usize,
    /// Body buffering limits (`--buffer-memory`, `--buffer-disk`,
    /// `--spill-dir`) and their counters.
    pub(crate) buffers: Arc<Budget>,
}

#[cfg(test)]
impl Context {
    /// The flags' defaults, with no disk for buffers: for unit tests that
    /// drive a front end in-process.
    pub(crate) fn for_tests() -> Self {
        use crate::files::CacheConfig;
        Self {
            metrics: Metrics::default(),
            files: FileLimits {
                chunk: 64 * 1024,
                max_ranges: 16,
                cache: CacheConfig {
                    valid: Duration::ZERO,
                    max_entries: 1,
                    content_max: 0,
                },
            },
            upstream: UpstreamSettings {
                idle: 8,
                idle_timeout: Duration::from_secs(60),
                check_timeout: Duration::from_secs(5),
                via: None,
                max_header_size: 16 * 1024,
                buffers: Arc::new(Budget::new(1 << 20, 0, None)),
            },
        }
    }
}
