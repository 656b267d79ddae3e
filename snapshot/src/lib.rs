//! The snapshot: the one value that flows from the controller (or the
//! standalone loader) to every dataplane.
//!
//! ```text
//!  StaticRoute, ProxyRoute,  ──► compile() ──► Compiled { snapshot, errors, unresolved }
//!  Services, EndpointSlices,      (pure)          │             │
//!  Secrets (API server or files)                  │             └─► status conditions / logs
//!                                                 ▼
//!                                  Snapshot { version, routes, certificates }
//!                                  (immutable, serialisable, versioned
//!                                   by the hash of its content)
//! ```
//!
//! [`compile`] does no I/O: it validates each resource on its own, reports
//! the invalid ones as [`RouteError`]s and keeps every valid one, so one bad
//! resource never takes the others down. The controller and the
//! dataplane's standalone mode call the same function.

mod compile;
pub mod fnv;
mod model;
pub mod wire;

pub use compile::{Compiled, Invalid, Resources, RouteError, Unresolved, compile, path_regex};
pub use model::{
    Action, Balance, BufferMode, Buffering, Certificate, EjectionPolicy, Endpoint, HashKey,
    HeaderEdits, Matches, PathRule, ProxyAction, ProxyTimeouts, REDACTED, RetryPolicy, Route,
    RouteKey, RouteKind, RouteTls, Snapshot, StaticAction, UpstreamTls,
};
