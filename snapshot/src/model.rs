//! The snapshot's data model. Plain data: no behaviour beyond versioning.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::Policy;

/// Every compiled route and the certificates they serve, immutable once
/// built, with a version that is a hash of its content: two snapshots with
/// the same routes and certificates have the same version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Hex digest of `routes` and `certificates` (first 64 bits of SHA-256
    /// over their JSON form).
    pub version: String,
    /// Routes ordered by [`RouteKey`].
    pub routes: Vec<Route>,
    /// Certificates the routes' `tls` name, ordered by name. They hold
    /// private keys: see [`Snapshot::redacted`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Certificate>,
}

impl Snapshot {
    /// Builds a snapshot from routes, sorting them and computing the version.
    pub fn new(routes: Vec<Route>) -> Self {
        Self::with_certificates(routes, Vec::new())
    }

    /// Builds a snapshot from routes and the certificates they name.
    pub fn with_certificates(mut routes: Vec<Route>, mut certificates: Vec<Certificate>) -> Self {
        routes.sort_by(|a, b| a.key.cmp(&b.key));
        certificates.sort_by(|a, b| a.name.cmp(&b.name));
        let version = content_version(&routes, &certificates);
        Self {
            version,
            routes,
            certificates,
        }
    }

    /// A snapshot that routes nothing.
    pub fn empty() -> Self {
        Self::new(Vec::new())
    }

    /// True when `version` is the hash of the content; a decoded snapshot
    /// whose version does not match was altered or truncated on the way.
    pub fn is_consistent(&self) -> bool {
        content_version(&self.routes, &self.certificates) == self.version
    }

    /// The snapshot with every private key and password hash replaced by
    /// `"<redacted>"`, for showing (the dataplane's `/snapshot`): they
    /// never leave in the clear except over the authenticated snapshot
    /// channel and into the dataplane's own store.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        for certificate in &mut shown.certificates {
            certificate.key_pem = REDACTED.to_owned();
        }
        let users = shown
            .routes
            .iter_mut()
            .filter_map(|r| r.policy.basic_auth.as_mut());
        for user in users.flat_map(|auth| &mut auth.users) {
            user.hash = REDACTED.to_owned();
        }
        shown
    }
}

/// What stands in for a private key wherever one is shown.
pub const REDACTED: &str = "<redacted>";

fn content_version(routes: &[Route], certificates: &[Certificate]) -> String {
    // Hashed as it is serialised, through a small buffer: the JSON of
    // 10,000 routes (3 MB) is never held. Serialising plain structs,
    // strings and enums cannot fail; an error here would only drop bytes
    // from the hash input, never panic.
    let mut hashing = std::io::BufWriter::with_capacity(16 << 10, Hashing(Sha256::new()));
    let _ = serde_json::to_writer(&mut hashing, routes);
    if !certificates.is_empty() {
        let _ = serde_json::to_writer(&mut hashing, certificates);
    }
    // What is still buffered goes in by hand (no flush that could fail).
    let (Hashing(mut hasher), rest) = hashing.into_parts();
    hasher.update(rest.unwrap_or_else(std::io::WriterPanicked::into_inner));
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that feeds a hash.
struct Hashing(Sha256);

impl std::io::Write for Hashing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A certificate chain and its private key, from a `kubernetes.io/tls`
/// Secret, checked by the compiler: PEM that parses, a key that matches the
/// certificate, inside its validity period when compiled.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// `namespace/name` of the Secret.
    pub name: String,
    /// Host names (lower case, `*.` wildcards) it is served for: those of
    /// the routes naming it.
    pub hosts: Vec<String>,
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
    /// End of the leaf's validity, Unix seconds.
    pub not_after: i64,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key, whoever prints this.
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// HTTPS settings of a route whose certificate resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteTls {
    /// [`Certificate::name`] of its certificate.
    pub certificate: String,
    /// Plain-HTTP requests get a 308 to HTTPS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect: bool,
    /// `Strict-Transport-Security` for HTTPS responses, checked as a header
    /// value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
}

/// Which resource kind a route was compiled from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// A `StaticRoute`.
    StaticRoute,
    /// A `ProxyRoute`.
    ProxyRoute,
    /// A `networking.k8s.io/v1` `Ingress`: one route per host and path.
    Ingress,
    /// A Gateway API `HTTPRoute`: one route per rule, match and listener
    /// host set.
    HttpRoute,
}

impl RouteKind {
    /// The resource kind as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StaticRoute => "StaticRoute",
            Self::ProxyRoute => "ProxyRoute",
            Self::Ingress => "Ingress",
            Self::HttpRoute => "HTTPRoute",
        }
    }
}

/// Identity of the resource a route came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// Resource kind.
    pub kind: RouteKind,
    /// Namespace of the resource.
    pub namespace: String,
    /// Name of the resource.
    pub name: String,
    /// Which of the resource's routes: 0 for the one route of a
    /// `StaticRoute` or `ProxyRoute`; an Ingress numbers its host and
    /// path pairs from 0 in the order it lists them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rule: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl RouteKey {
    /// The key of a resource's first (or only) route.
    pub fn new(kind: RouteKind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            rule: 0,
        }
    }

    /// The key of the resource itself, whichever of its routes this is.
    pub fn resource(&self) -> Self {
        Self {
            rule: 0,
            ..self.clone()
        }
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)?;
        if self.rule > 0 {
            write!(f, " rule {}", self.rule)?;
        }
        Ok(())
    }
}

/// One compiled route: where it matches and what it does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The resource this route came from.
    pub key: RouteKey,
    /// Lower-case host names; `*.example.com` matches any name below
    /// `example.com`. Empty: any host.
    pub hosts: Vec<String>,
    /// Which paths match.
    pub path: PathRule,
    /// Further conditions on the request (ProxyRoute methods and headers).
    #[serde(default, skip_serializing_if = "Matches::is_empty")]
    pub matches: Matches,
    /// HTTPS, when the route names a certificate that resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
    /// What is checked or answered before the action (access lists,
    /// redirects, CORS).
    #[serde(default, skip_serializing_if = "Policy::is_empty")]
    pub policy: Policy,
    /// What the dataplane does with a matching request.
    pub action: Action,
}

/// Conditions besides host and path; all must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Matches {
    /// Upper-case methods, sorted; empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Lower-case header names with the exact values they must have,
    /// sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Query parameters (names compared with case) with the exact values
    /// they must have, sorted; the first occurrence of a name counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<(String, String)>,
    /// Lower-case header names with a regular expression (checked by
    /// [`value_regex`](crate::path::value_regex)) one of their values must
    /// match whole, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_patterns: Vec<(String, String)>,
    /// Query parameters with a regular expression their first value must
    /// match whole, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_patterns: Vec<(String, String)>,
}

impl Matches {
    /// True when every request matches.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
            && self.headers.is_empty()
            && self.query.is_empty()
            && self.header_patterns.is_empty()
            && self.query_patterns.is_empty()
    }

    /// Precedence among routes on the same host and path (Gateway API's):
    /// a method match first, then more header matches, then more query
    /// parameter matches, of either kind. Higher is tried first.
    pub fn specificity(&self) -> (bool, usize, usize) {
        (
            !self.methods.is_empty(),
            self.headers.len() + self.header_patterns.len(),
            self.query.len() + self.query_patterns.len(),
        )
    }
}

/// A validated path match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum PathRule {
    /// Matches the value and every path below it, element by element. Stored
    /// without a trailing slash, except for `/` itself.
    Prefix(String),
    /// Matches the value exactly.
    Exact(String),
    /// A regular expression that must match the whole decoded path; see
    /// [`path_regex`](crate::path_regex).
    Regex(String),
}

impl PathRule {
    /// The path or expression the rule compares with.
    pub fn value(&self) -> &str {
        match self {
            Self::Prefix(v) | Self::Exact(v) | Self::Regex(v) => v,
        }
    }
}

/// What a route does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Serve files from a directory.
    Static(StaticAction),
    /// Pass requests to backends (boxed: the larger of the two).
    Proxy(Box<ProxyAction>),
}

/// A validated `ProxyRoute` spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyAction {
    /// Where requests go, with their weights; at least one weight is above 0.
    pub endpoints: Vec<Endpoint>,
    /// How an endpoint is chosen.
    pub balancer: Balance,
    /// Replaces the matched prefix of the path (Prefix routes only).
    pub rewrite_prefix: Option<String>,
    /// Replaces the path when a regular expression finds a match in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_regex: Option<RegexRewrite>,
    /// The `Host` sent upstream; `None` keeps the client's.
    pub rewrite_host: Option<String>,
    /// Edits of the request sent upstream.
    pub request_headers: HeaderEdits,
    /// Edits of the response sent to the client.
    pub response_headers: HeaderEdits,
    /// Limits towards the backends, in milliseconds.
    pub timeouts: ProxyTimeouts,
    /// Further tries after a failure, each on another endpoint.
    pub retries: RetryPolicy,
    /// Passive health.
    pub ejection: EjectionPolicy,
    /// X-Sendfile: absolute directories the backend may name files in;
    /// empty: the feature is off and the headers pass through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sendfile_roots: Vec<String>,
    /// TLS towards the backends; `None`: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTls>,
    /// How bodies are held between backend and client.
    #[serde(default)]
    pub buffering: Buffering,
    /// Session affinity by cookie; `None`: every request is balanced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// Session affinity: the cookie that names a client's endpoint, and its
/// attributes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    /// The cookie's name (an HTTP token).
    pub cookie: String,
    /// Its `Path`.
    pub path: String,
    /// Its `Max-Age` in seconds; `None`: a session cookie.
    pub max_age_s: Option<u64>,
    pub secure: bool,
    pub http_only: bool,
    /// `Strict`, `Lax` or `None`; `None` (absent): not sent.
    pub same_site: Option<String>,
}

/// A path rewrite by regular expression, as nginx's `rewrite` does it:
/// when `pattern` finds a match in the decoded path, the path sent
/// upstream becomes `replacement` with `$1`…`$9` (and `${name}`) put in;
/// the query is kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegexRewrite {
    /// The expression, checked by [`path_regex`](crate::path_regex).
    pub pattern: String,
    /// The new path, starting with `/`.
    pub replacement: String,
}

/// Body buffering of a proxy route, sizes in bytes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Buffering {
    /// How response bodies travel.
    pub mode: BufferMode,
    /// Bytes of one body kept in memory.
    pub memory: u64,
    /// Bytes of one body spilled to disk beyond `memory`.
    pub disk: u64,
    /// Request bodies are read whole before the backend is contacted
    /// (the default).
    pub request_body: bool,
    /// Largest request body accepted (413 beyond); `None`: no limit.
    pub max_body_size: Option<u64>,
}

impl Buffering {
    /// Memory kept per body by default: 64 KiB.
    pub const MEMORY: u64 = 64 << 10;
    /// Disk used per body by default: 1 GiB.
    pub const DISK: u64 = 1 << 30;
}

impl Default for Buffering {
    fn default() -> Self {
        Self {
            mode: BufferMode::Hybrid,
            memory: Self::MEMORY,
            disk: Self::DISK,
            request_body: true,
            max_body_size: None,
        }
    }
}

/// How a response body travels from backend to client.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum BufferMode {
    /// Memory, then disk, sent as it arrives.
    #[default]
    Hybrid,
    /// Read whole before the head is sent.
    Buffer,
    /// Cut-through, one bounded buffer.
    Stream,
}

/// TLS towards a route's backends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// PEM CA certificates the backends' certificates must chain to; empty
    /// when the CA Secret did not resolve, so no backend is trusted (the
    /// route answers 502 rather than falling back to plain text).
    pub ca_pem: String,
    /// SNI and the name verified in the backends' certificates.
    pub server_name: String,
}

/// When a failed request is sent again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Further tries after the first.
    pub attempts: u32,
    /// Retry after a connection failure.
    pub connect_failure: bool,
    /// Retry after these backend statuses (idempotent requests without a
    /// body only).
    pub statuses: Vec<u16>,
}

/// When an endpoint is left out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EjectionPolicy {
    /// Failures in a row that eject.
    pub consecutive_failures: u32,
    /// For how long, in milliseconds.
    pub duration_ms: u64,
}

/// A balancing algorithm with its parameters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Balance {
    /// Smooth weighted round-robin.
    #[default]
    RoundRobin,
    /// A hash ring over endpoint identities.
    ConsistentHash {
        /// What is hashed.
        key: HashKey,
        /// Most load an endpoint takes, in thousandths of the mean
        /// (1250 = 1.25×); `None`: unbounded.
        bounded_load_permille: Option<u32>,
    },
    /// Power of two choices on requests in flight.
    LeastRequest,
}

/// The request property a consistent hash uses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    /// Path and query.
    Uri,
    /// A header, by lower-case name.
    Header(String),
    /// A cookie, by name.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
}

/// One place requests go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// `IP:PORT`, as a socket address prints it.
    pub address: String,
    /// Stable identity: the pod name for a Service endpoint (so a pod that
    /// restarts with a new IP keeps its place), the address otherwise.
    pub identity: String,
    /// Share of requests relative to the route's other endpoints.
    pub weight: u32,
}

/// Header edits, names lower-cased and values checked.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderEdits {
    /// Replace any header of the same name.
    pub set: Vec<(String, String)>,
    /// Append.
    pub add: Vec<(String, String)>,
    /// Delete.
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Proxy time limits in milliseconds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTimeouts {
    /// Establishing a connection.
    pub connect_ms: u64,
    /// From the request sent to the response head received.
    pub response_header_ms: u64,
    /// Longest silence while a body is transferred.
    pub idle_ms: u64,
}

/// A validated `StaticRoute` spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StaticAction {
    /// Absolute directory, without a trailing slash (except `/`).
    pub root: String,
    /// File name served for directories.
    pub index: String,
    /// `Cache-Control` value, already checked to be a valid header value.
    pub cache_control: Option<String>,
    /// Serve `.br` / `.gz` siblings by `Accept-Encoding`.
    pub precompressed: bool,
    /// Path below `root`, starting with `/`, served when a file is missing.
    pub fallback: Option<String>,
}
