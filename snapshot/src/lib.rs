//! The snapshot: the one value that flows from the controller (or the
//! standalone loader) to every dataplane, and the wire it travels on.
//!
//! ```text
//!  pier-compile::compile (pure) ──► Compiled { snapshot, errors, unresolved }
//!                                               │
//!                                               ▼
//!                                  Snapshot { version, routes, certificates }
//!                                  (immutable, serialisable, versioned
//!                                   by the hash of its content)
//!                                               │ wire (length-prefixed JSON)
//!                                               ▼
//!                                          every dataplane
//! ```
//!
//! This crate knows no Kubernetes object: the dataplane's serving core
//! depends on it alone, and only the compiler (`pier-compile`) reads
//! `StaticRoute`, `ProxyRoute`, Services, EndpointSlices and Secrets.

pub mod cidr;
pub mod fnv;
mod model;
mod outcome;
pub mod path;
mod policy;
pub mod units;
pub mod wire;

pub use model::{
    Action, Affinity, Balance, BufferMode, Buffering, Certificate, EjectionPolicy, Endpoint,
    HashKey, HeaderEdits, Matches, PathRule, ProxyAction, ProxyTimeouts, REDACTED, RegexRewrite,
    RetryPolicy, Route, RouteKey, RouteKind, RouteTls, Snapshot, StaticAction, UpstreamTls,
};
pub use outcome::{Compiled, Invalid, RouteError, Unresolved, Warning};
pub use path::{path_regex, rewrite_regex};
pub use policy::{BasicAuth, Cors, ForwardAuth, Policy, Redirect, RedirectPath, RedirectTo, User};
