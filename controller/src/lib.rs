//! Pier's controller. For now it holds the piece every later part builds
//! on: turning the route resources it will watch into a snapshot with the
//! same pure function the dataplane's standalone mode uses.
//!
//! ```text
//!  API server ──watch──► reflector stores ──► pier_snapshot::compile ──► push to dataplanes
//!                         (control-plane issue)                        (control-plane issue)
//! ```

use pier_snapshot::{Compiled, Resources};

/// Compiles the resources currently in the stores into a snapshot.
pub fn build(resources: &Resources) -> Compiled {
    pier_snapshot::compile(resources)
}
