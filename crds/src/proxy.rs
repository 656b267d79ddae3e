//! `ProxyRoute`: requests passed to backends (Services or fixed
//! addresses), with balancers, rewriting, header operations, timeouts,
//! retries, passive health, X-Sendfile, TLS and body buffering.

// kube's `KubeSchema` derive re-declares each struct, `pub`, inside a
// function; every type here is re-exported from the crate root anyway.
#![allow(unreachable_pub)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::route::{HOST_PATTERN, PathMatch, RouteStatus, RouteTls};

/// Passes matching requests to backends.
///
/// The matched path prefix can be replaced (`rewrite.pathPrefix`) and the
/// upstream `Host` set (`rewrite.host`); `X-Forwarded-For`, `-Proto` and
/// `-Host` are added, hop-by-hop headers removed both ways.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "pier.dev",
    version = "v1alpha1",
    kind = "ProxyRoute",
    doc = "A ProxyRoute passes the requests it matches to backends (Services or fixed addresses), balanced, retried and buffered as its spec says. Its status reports Accepted, ResolvedRefs and Programmed.",
    plural = "proxyroutes",
    shortname = "proute",
    category = "pier",
    namespaced,
    status = "RouteStatus",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Path","type":"string","jsonPath":".spec.path.value"}"#,
    printcolumn = r#"{"name":"Services","type":"string","jsonPath":".spec.backends[*].service"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRouteSpec {
    /// Which Pier installation serves this route: the controller whose
    /// `--class-name` equals it (default `pier`). Absent: the controllers
    /// that claim unclassed routes (`--claim-unclassed`, the default), as
    /// an Ingress without `ingressClassName` goes to the default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub class_name: Option<String>,

    /// Host names this route answers for, as for `StaticRoute`. Empty or
    /// absent: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253), regex(pattern = HOST_PATTERN)))]
    pub hosts: Vec<String>,

    /// Which request paths the route matches. Absent: `PathPrefix /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,

    /// Request methods the route matches. Empty or absent: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<HttpMethod>,

    /// Request headers that must all be present with these values (names
    /// compared without case; exactly, or a whole-value regular
    /// expression). A route with header or method matches is tried before
    /// one without on the same host and path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,

    /// Query parameters that must all be present with these values, as
    /// sent (names compared with case; the first occurrence of a name
    /// counts; exactly, or a whole-value regular expression). Tried after
    /// method and header matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<QueryParam>,

    /// Where requests go; each request goes to one, by weight.
    #[schemars(length(min = 1, max = 64))]
    pub backends: Vec<Backend>,

    /// How a backend is chosen. Absent: `RoundRobin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer: Option<Balancer>,

    /// Session affinity by cookie, over whichever balancer picks a
    /// client's first endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<crate::Affinity>,

    /// Changes to the request's path and `Host` on the way to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,

    /// Which clients may use the route, by address (403 for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<crate::Access>,

    /// HTTP Basic authentication against the users of a Secret (401 for
    /// the others), checked after `access`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<crate::BasicAuth>,

    /// Forward authentication: each request first checked by an
    /// authentication service, after `basicAuth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_auth: Option<crate::ForwardAuth>,

    /// Cross-origin requests: preflights answered, responses marked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<crate::Cors>,

    /// Answer every request with a redirect instead of serving it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<crate::Redirect>,

    /// Headers changed on the request sent to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderOps>,

    /// Headers changed on the response sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderOps>,

    /// Time limits towards the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// Sending a failed request again, to another endpoint. Absent: one
    /// retry after a connection failure (nothing was sent, so any request
    /// is safe to send again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,

    /// Passive health: an endpoint that fails this often in a row is left
    /// out for a while. Absent: 5 failures, 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection: Option<Ejection>,

    /// X-Sendfile: a backend may answer with an `X-Sendfile` or
    /// `X-Accel-Redirect` header naming a file below `roots`, which the
    /// dataplane then serves itself (ranges, validators and all) instead
    /// of the backend's body. Absent: the headers pass through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sendfile: Option<Sendfile>,

    /// HTTPS for the route's hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,

    /// TLS towards the backends. Absent: plain HTTP.
    #[serde(
        default,
        rename = "backendTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_tls: Option<BackendTls>,

    /// How response (and optionally request) bodies are held between
    /// backend and client. Absent: `Hybrid` with 64Ki in memory and 1Gi on
    /// disk per response, request bodies streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffering: Option<Buffering>,
}

/// Body buffering between backend and client.
///
/// A slow client should neither hold a backend connection nor grow the
/// dataplane's memory: with `Hybrid`, the backend's response is read as
/// fast as it comes, the first `memory` bytes kept in RAM and the rest
/// spilled to an unlinked temporary file up to `disk`; past that the
/// backend is slowed down (backpressure), never failed. The process-wide
/// caps are dataplane flags (`--buffer-memory`, `--buffer-disk`); when
/// they are reached, data goes to disk earlier, then backpressure.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Buffering {
    /// `Hybrid` (default), `Buffer` or `Stream`.
    #[serde(default)]
    pub mode: BufferingMode,
    /// Bytes of each response kept in memory, such as `64Ki` (the
    /// default) or `1Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub memory: Option<String>,
    /// Bytes of each response spilled to disk beyond `memory`. Default `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub disk: Option<String>,
    /// `Buffer` (the default): a request body is read whole (memory, then
    /// disk, within the same limits) before the backend is contacted, so a
    /// slow upload never holds a backend connection (nginx's
    /// `proxy_request_buffering on`). `Stream` relays it as it arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<RequestBuffering>,
    /// Largest request body accepted, such as `10Mi`; a larger one gets
    /// `413 Content Too Large`. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub max_body_size: Option<String>,
}

/// How a response body travels from backend to client.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BufferingMode {
    /// Memory up to `memory`, then disk up to `disk`, sent to the client
    /// as it arrives: the backend is released as soon as it has sent.
    #[default]
    Hybrid,
    /// Store and forward: the whole response is read (memory, then disk)
    /// before its head goes to the client, which then gets an exact
    /// `Content-Length`, and a backend failing mid-body becomes a clean
    /// 502 rather than a cut response. A response larger than
    /// `memory` + `disk` is streamed from where the buffer filled.
    Buffer,
    /// Cut-through with one bounded buffer per exchange: the backend
    /// sends only as fast as the client reads (for event streams and
    /// long polls).
    Stream,
}

/// How a request body travels from client to backend: `Buffer` (the
/// default: read whole first, so a slow upload holds no backend) or
/// `Stream` (relayed as it arrives).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RequestBuffering {
    /// Relayed as it arrives.
    Stream,
    /// Read whole before the backend is contacted (default).
    #[default]
    Buffer,
}

/// TLS towards a route's backends, verified against a CA.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendTls {
    /// A Secret in the route's namespace whose `ca.crt` holds the PEM CA
    /// certificates the backends' certificates must chain to.
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret_name: String,
    /// The name sent as SNI and required in the backends' certificates.
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub server_name: String,
}

/// Files a backend may hand back to the dataplane to serve.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || size(self.roots) > 0").message("sendfile needs at least one root when enabled"))]
pub struct Sendfile {
    /// Whether the headers are acted on.
    pub enabled: bool,
    /// Absolute directories in the dataplane; a named file must lie below
    /// one of them after normalisation and symlink resolution, or the
    /// response is refused with 502.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 4096)))]
    #[x_kube(validation = Rule::new("self.all(r, r.startsWith('/'))").message("sendfile roots must be absolute paths"))]
    pub roots: Vec<String>,
}

/// HTTP methods a route can match (Gateway API's set).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    /// `GET`
    GET,
    /// `HEAD`
    HEAD,
    /// `POST`
    POST,
    /// `PUT`
    PUT,
    /// `DELETE`
    DELETE,
    /// `CONNECT`
    CONNECT,
    /// `OPTIONS`
    OPTIONS,
    /// `TRACE`
    TRACE,
    /// `PATCH`
    PATCH,
}

impl HttpMethod {
    /// Every method.
    pub const ALL: [Self; 9] = [
        Self::GET,
        Self::HEAD,
        Self::POST,
        Self::PUT,
        Self::DELETE,
        Self::CONNECT,
        Self::OPTIONS,
        Self::TRACE,
        Self::PATCH,
    ];

    /// The method as it appears on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GET => "GET",
            Self::HEAD => "HEAD",
            Self::POST => "POST",
            Self::PUT => "PUT",
            Self::DELETE => "DELETE",
            Self::CONNECT => "CONNECT",
            Self::OPTIONS => "OPTIONS",
            Self::TRACE => "TRACE",
            Self::PATCH => "PATCH",
        }
    }
}

/// Retries: how many, and after which failures. A response status is
/// retried only for requests without a body and with an idempotent method
/// (the body has already streamed to the first endpoint).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Further tries after the first, each on another endpoint.
    #[schemars(range(max = 5))]
    pub attempts: u32,
    /// Which failures are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub on: Vec<RetryOn>,
}

/// A retryable failure.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RetryOn {
    /// The connection could not be opened (refused, unreachable, timeout).
    ConnectFailure,
    /// The backend answered 502.
    Status502,
    /// The backend answered 503.
    Status503,
    /// The backend answered 504.
    Status504,
}

/// Passive health settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ejection {
    /// Failures in a row (connection failures, 502, 503, 504) that eject
    /// an endpoint.
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: u32,
    /// How long an ejected endpoint is left out, such as `10s`.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub duration: String,
}

/// One backend: a Service of the route's namespace (its ready endpoints),
/// or a fixed address (standalone mode and tests).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.service) != has(self.address)").message("a backend names either a service or an address"))]
#[x_kube(validation = Rule::new("!has(self.service) || has(self.port)").message("a service backend needs a port"))]
pub struct Backend {
    /// A Service in the route's namespace; requests go to its ready
    /// endpoints (EndpointSlices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub service: Option<String>,
    /// The Service port (its `port`, not the target port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// `IP:PORT` or `[IPv6]:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub address: Option<String>,
    /// Share of requests relative to the other backends; 0 takes none.
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1_000_000))]
    pub weight: Option<u32>,
}

/// How a backend is chosen.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.type == 'ConsistentHash') == has(self.hashOn)").message("hashOn is required with ConsistentHash and only then"))]
#[x_kube(validation = Rule::new("!has(self.boundedLoad) || self.type == 'ConsistentHash'").message("boundedLoad applies to ConsistentHash only"))]
pub struct Balancer {
    /// The algorithm.
    #[serde(default, rename = "type")]
    pub kind: BalancerType,
    /// What a request is hashed on (`ConsistentHash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// With `ConsistentHash`, no endpoint takes more than this many times
    /// the mean load; requests move on along the ring instead (consistent
    /// hashing with bounded loads). At least 1.0; absent: unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub bounded_load: Option<f64>,
}

/// Balancing algorithms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BalancerType {
    /// Smooth weighted round-robin (nginx's): requests follow the weights
    /// evenly interleaved, not in bursts.
    #[default]
    RoundRobin,
    /// A ring of endpoints keyed by their stable identity (pod name), so
    /// a key keeps its endpoint across replicas and pod restarts.
    ConsistentHash,
    /// Power of two choices: of two random endpoints, the one with fewer
    /// requests in flight (relative to its weight).
    LeastRequest,
}

/// The request property a consistent hash uses; exactly one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.uri) ? 1 : 0) + (has(self.header) ? 1 : 0) + (has(self.cookie) ? 1 : 0) + (has(self.sourceIP) ? 1 : 0) == 1").message("hashOn takes exactly one of uri, header, cookie, sourceIP"))]
pub struct HashOn {
    /// The request path and query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<Empty>,
    /// A request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = TOKEN_PATTERN))]
    pub header: Option<String>,
    /// A cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = TOKEN_PATTERN))]
    pub cookie: Option<String>,
    /// The client's IP address.
    #[serde(default, rename = "sourceIP", skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<Empty>,
}

/// An empty object: a choice without parameters (`uri: {}`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Empty {}

/// Changes to the request on the way to the backend.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    /// Replaces the matched path prefix: with `path: {value: /api}` and
    /// `pathPrefix: /v2`, `/api/users` reaches the backend as `/v2/users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("rewrite.pathPrefix must start with '/'"))]
    #[schemars(length(max = 1024))]
    pub path_prefix: Option<String>,
    /// The `Host` sent to the backend. Absent: the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub host: Option<String>,
    /// Replaces the whole path when an expression finds a match in it, as
    /// nginx's `rewrite`: `{pattern: "^/api/(.*)", replacement: "/$1"}`.
    /// Not with `pathPrefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<RegexRewrite>,
}

/// A path rewrite by regular expression (Rust `regex` syntax).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegexRewrite {
    /// Searched for in the decoded path (unanchored: use `^` and `$`).
    #[schemars(length(min = 1, max = 1024))]
    pub pattern: String,
    /// The new path, with `$1`…`$9` or `${name}` for the expression's
    /// groups; it starts with `/`.
    #[x_kube(validation = Rule::new("self.startsWith('/') || self.startsWith('$')").message("rewrite.regex.replacement must start with '/' or a group"))]
    #[schemars(length(min = 1, max = 1024))]
    pub replacement: String,
}

/// Header changes: `set` replaces, `add` appends, `remove` deletes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOps {
    /// Headers replacing any of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub set: Vec<Header>,
    /// Headers appended to those of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub add: Vec<Header>,
    /// Names of headers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256), regex(pattern = TOKEN_PATTERN)))]
    pub remove: Vec<String>,
}

/// A query parameter name and value, as they appear in the request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryParam {
    /// The name, without `&`, `=`, `#` or spaces.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[^&=#\s]+$"))]
    pub name: String,
    /// The value (without `&`, `#` or spaces when `Exact`), or the
    /// expression.
    #[schemars(length(max = 1024))]
    pub value: String,
    /// How `value` is compared. Absent: `Exact`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ValueMatch>,
}

/// A request header a route matches on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// The name: an HTTP token, compared without case.
    #[schemars(length(min = 1, max = 256), regex(pattern = TOKEN_PATTERN))]
    pub name: String,
    /// The value, or the expression.
    #[x_kube(validation = Rule::new("!self.matches('[\\r\\n\\x00]')").message("header values must not contain CR, LF or NUL"))]
    #[schemars(length(max = 4096))]
    pub value: String,
    /// How `value` is compared. Absent: `Exact`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ValueMatch>,
}

/// How a header or query value is compared.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ValueMatch {
    /// Byte for byte.
    #[default]
    Exact,
    /// A Rust `regex` that must match the whole value (linear time, at
    /// most 256 KiB compiled).
    RegularExpression,
}

/// A header name and value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// The name: an HTTP token.
    #[schemars(length(min = 1, max = 256), regex(pattern = TOKEN_PATTERN))]
    pub name: String,
    /// The value; CR, LF and NUL are refused.
    #[x_kube(validation = Rule::new("!self.matches('[\\\\r\\\\n\\\\x00]')").message("header values must not contain CR, LF or NUL"))]
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// Time limits towards the backend, as durations such as `500ms`, `2s`, `1m`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Establishing a connection. Default `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub connect: Option<String>,
    /// From the request sent to the response head received. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub response_header: Option<String>,
    /// Longest silence while a body is transferred. Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub idle: Option<String>,
}

/// An HTTP token (RFC 9110): header names.
const TOKEN_PATTERN: &str = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$";
/// A size: digits and an optional binary (`Ki`, `Mi`, `Gi`, `Ti`) or
/// decimal (`k`, `M`, `G`, `T`) suffix, as in Kubernetes quantities.
const SIZE_PATTERN: &str = r"^[0-9]{1,15}(Ki|Mi|Gi|Ti|k|M|G|T)?$";
/// A duration: digits and one unit.
const DURATION_PATTERN: &str = r"^[0-9]{1,9}(ms|s|m|h)$";
