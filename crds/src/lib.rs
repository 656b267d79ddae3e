//! Pier's API: the custom resources users apply, group `pier.dev`, version
//! `v1alpha1`.
//!
//! ```text
//!   StaticRoute (YAML, kubectl apply / routes dir)
//!        │  serde
//!        ▼
//!   pier_crds::StaticRoute ──► pier_compile::compile ──► Snapshot ──► dataplane
//! ```
//!
//! The types follow the Kubernetes API conventions: camelCase fields,
//! PascalCase enum values and Gateway API's path match shape. They carry no
//! behaviour; validation that a schema cannot express happens in
//! `pier_compile::compile`, which reports errors per resource.
//!
//! The CRD YAML under `crds/yaml/` is generated from these types by
//! `cargo run -p pier-crds --bin crdgen -- --write`; a test fails when the
//! committed files drift.

mod affinity;
pub mod gateway;
mod policy;
mod proxy;
mod route;

pub use affinity::{Affinity, AffinityCookie, SameSite};
pub use policy::{Access, BasicAuth, Cors, ForwardAuth, Redirect, RedirectPath, RedirectPathType};
pub use proxy::{
    Backend, BackendTls, Balancer, BalancerType, Buffering, BufferingMode, Ejection, Empty, HashOn,
    Header, HeaderMatch, HeaderOps, HttpMethod, ProxyRoute, ProxyRouteSpec, QueryParam,
    RegexRewrite, RequestBuffering, Retries, RetryOn, Rewrite, Sendfile, Timeouts, ValueMatch,
};
pub use route::{
    Condition, PathMatch, PathMatchType, RouteStatus, RouteTls, StaticRoute, StaticRouteSpec, Time,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every Pier resource.
pub const GROUP: &str = "pier.dev";
/// API version of every Pier resource.
pub const VERSION: &str = "v1alpha1";

/// Every CRD of the API with the file name it is committed under in `crds/yaml/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("staticroutes.pier.dev.yaml", StaticRoute::crd()),
        ("proxyroutes.pier.dev.yaml", ProxyRoute::crd()),
    ]
}

/// Renders a CRD the way it is committed: YAML with a leading document marker.
///
/// # Errors
/// Only when serde-saphyr cannot serialise the value, which for a CRD built by
/// kube's derive would be a bug in the types.
pub fn render(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    Ok(format!("---\n{}", serde_saphyr::to_string(crd)?))
}
