//! What compiling gives besides the snapshot: the resources left out and
//! the references that did not resolve, which become status conditions.

use crate::model::{RouteKey, Snapshot};

/// The result of compiling (`pier_compile::compile`): a snapshot of every valid route, and one error
/// for each resource left out.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The routes that compiled.
    pub snapshot: Snapshot,
    /// The resources that did not, in key order.
    pub errors: Vec<RouteError>,
    /// Routes in the snapshot with references that did not resolve (a
    /// missing Service, no ready endpoints), in key order.
    pub unresolved: Vec<Unresolved>,
    /// What resources ask for and are served without (an unsupported
    /// Ingress annotation), in key order.
    pub warnings: Vec<Warning>,
}

/// Something a resource asks for that Pier serves it without: worth an
/// Event, never silence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The resource (rule 0).
    pub key: RouteKey,
    /// `UnsupportedAnnotation`, or `CanaryUnmatched`.
    pub reason: &'static str,
    /// What is left out.
    pub message: String,
}

/// A route whose references did not all resolve: it is served, with what
/// did resolve (and 503 when nothing did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// The route.
    pub key: RouteKey,
    /// The `reason` of its `ResolvedRefs=False` condition:
    /// `BackendNotFound`, `NoReadyEndpoints` or `InvalidCertificateRef`.
    pub reason: &'static str,
    /// What did not resolve.
    pub message: String,
}

/// Why one resource was left out of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteError {
    /// The resource.
    pub key: RouteKey,
    /// `metadata.generation` of the resource, for `observedGeneration`.
    pub generation: Option<i64>,
    /// What is wrong with it.
    pub invalid: Invalid,
}

/// What makes a resource invalid. [`Invalid::reason`] gives the
/// status-condition reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// The resource has no name.
    #[error("the resource has no metadata.name")]
    Unnamed,
    /// A path match value is unusable.
    #[error("path {value:?} {why}")]
    Path {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A host name is unusable.
    #[error("host {value:?} {why}")]
    Host {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `root` is unusable.
    #[error("root {value:?} {why}")]
    Root {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `index` is unusable.
    #[error("index {value:?} {why}")]
    Index {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `fallback` is unusable.
    #[error("fallback {value:?} {why}")]
    Fallback {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A value that becomes a header is not a valid header value.
    #[error("{field} {why}")]
    HeaderValue {
        /// The spec field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A backend is unusable.
    #[error("backend {value:?} {why}")]
    Backend {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A header name or value is unusable.
    #[error("header {name:?} {why}")]
    Header {
        /// The header name as given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The balancer settings are inconsistent.
    #[error("balancer: {why}")]
    Balancer {
        /// What is wrong.
        why: &'static str,
    },
    /// A timeout is unusable.
    #[error("timeout {field} {value:?} {why}")]
    Timeout {
        /// The spec field.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A size is unusable.
    #[error("buffering.{field} {value:?} {why}")]
    Size {
        /// The spec field.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An access list, CORS or redirect setting is unusable.
    #[error("{field} {value:?} {why}")]
    Policy {
        /// The spec field.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The users of a route's basic authentication cannot be read.
    #[error("basicAuth: Secret {secret} {why}")]
    Auth {
        /// The Secret, `namespace/name`.
        secret: String,
        /// What is wrong with it (never a hash).
        why: String,
    },
    /// An Ingress annotation has a value Pier cannot use.
    #[error("annotation {name} {value:?} {why}")]
    Annotation {
        /// The annotation's name.
        name: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A snippet annotation: configuration text for another proxy, which
    /// Pier never runs (injected nginx configuration was CVE-2025-1974).
    #[error(
        "annotation {name} is refused: Pier runs no configuration snippets; say what the snippet did with Pier's fields or annotations"
    )]
    Snippet {
        /// The annotation's name.
        name: String,
    },
    /// An annotation that restricts who may use the route and that Pier
    /// does not support: serving the route without it would open it.
    #[error(
        "annotation {name} is not supported, and serving the Ingress without it would admit requests it refuses"
    )]
    UnsupportedAccess {
        /// The annotation's name.
        name: String,
    },
    /// Another route already serves one of this route's host and path pairs.
    #[error("host {host:?} and path {path:?} are already served by {winner}")]
    Conflict {
        /// The contested host (`*` for any host).
        host: String,
        /// The contested path.
        path: String,
        /// The route that keeps them.
        winner: RouteKey,
    },
}

impl Invalid {
    /// The `reason` of the route's `Accepted=False` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unnamed => "InvalidMetadata",
            Self::Path { .. } => "InvalidPath",
            Self::Host { .. } => "InvalidHost",
            Self::Root { .. } => "InvalidRoot",
            Self::Index { .. } => "InvalidIndex",
            Self::Fallback { .. } => "InvalidFallback",
            Self::HeaderValue { .. } | Self::Header { .. } => "InvalidHeaderValue",
            Self::Backend { .. } => "InvalidBackend",
            Self::Timeout { .. } => "InvalidTimeout",
            Self::Balancer { .. } => "InvalidBalancer",
            Self::Size { .. } => "InvalidBuffering",
            Self::Policy { .. } => "InvalidPolicy",
            Self::Auth { .. } => "InvalidAuth",
            Self::Annotation { .. } => "InvalidAnnotation",
            Self::Snippet { .. } => "SnippetRefused",
            Self::UnsupportedAccess { .. } => "UnsupportedAnnotation",
            Self::Conflict { .. } => "Conflict",
        }
    }
}
