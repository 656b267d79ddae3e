//! `StaticRoute` and the pieces every route kind shares.
//!
//! CEL rules (`#[x_kube(validation = …)]`) let the API server refuse what
//! its schema can judge; the rest is reported in status by the compiler.

// kube's `KubeSchema` derive re-declares each struct, `pub`, inside a
// function; every type here is re-exported from the crate root anyway.
#![allow(unreachable_pub)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Serves files from a directory mounted into the dataplane.
///
/// The matched path prefix is stripped before the file is looked up, like
/// nginx's `alias`: with `path: {type: PathPrefix, value: /assets}` and
/// `root: /srv/a`, the request `/assets/x.png` reads `/srv/a/x.png`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[kube(
    group = "pier.dev",
    version = "v1alpha1",
    kind = "StaticRoute",
    doc = "A StaticRoute serves files from a directory mounted into the dataplane for the hosts and path it matches (ETag, Last-Modified, Range, precompressed siblings). Its status reports Accepted, ResolvedRefs and Programmed.",
    plural = "staticroutes",
    shortname = "sroute",
    category = "pier",
    namespaced,
    status = "RouteStatus",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Path","type":"string","jsonPath":".spec.path.value"}"#,
    printcolumn = r#"{"name":"Root","type":"string","jsonPath":".spec.root"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StaticRouteSpec {
    /// Which Pier installation serves this route: the controller whose
    /// `--class-name` equals it (default `pier`). Absent: the controllers
    /// that claim unclassed routes (`--claim-unclassed`, the default), as
    /// an Ingress without `ingressClassName` goes to the default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub class_name: Option<String>,

    /// Host names this route answers for. Exact names (`www.example.com`) or
    /// one leading wildcard label (`*.cdn.example.com`, matching any name
    /// below it). Empty or absent: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253), regex(pattern = HOST_PATTERN)))]
    pub hosts: Vec<String>,

    /// Which request paths the route matches. Absent: `PathPrefix /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,

    /// Absolute path of the directory in the dataplane that files are served from.
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("root must be an absolute path in the dataplane"))]
    #[schemars(length(min = 1, max = 4096))]
    pub root: String,

    /// File served for a request naming a directory. Default `index.html`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.contains('/') && self != '.' && self != '..'").message("index must be a file name, without '/'"))]
    #[schemars(length(min = 1, max = 255))]
    pub index: Option<String>,

    /// `Cache-Control` header value sent with every file of this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.matches('[\\r\\n\\x00]')").message("cacheControl must not contain CR, LF or NUL"))]
    #[schemars(length(max = 1024))]
    pub cache_control: Option<String>,

    /// Serve `FILE.br` or `FILE.gz` instead of `FILE` when it exists and the
    /// client accepts that encoding.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub precompressed: bool,

    /// Path, relative to `root`, served with status 200 when the requested
    /// file does not exist (single-page applications).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("fallback must start with '/'"))]
    #[schemars(length(max = 4096))]
    pub fallback: Option<String>,

    /// HTTPS for the route's hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
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
}

/// HTTPS for a route's hosts: the certificate, and what plain HTTP gets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteTls {
    /// A `kubernetes.io/tls` Secret in the route's namespace whose
    /// certificate covers the route's hosts.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Answer plain-HTTP requests with `308 Permanent Redirect` to the
    /// same URL over HTTPS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect: bool,
    /// `Strict-Transport-Security` value sent on HTTPS responses, such as
    /// `max-age=31536000; includeSubDomains`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.matches('[\\r\\n\\x00]')").message("hsts must not contain CR, LF or NUL"))]
    #[schemars(length(max = 256))]
    pub hsts: Option<String>,
}

/// Host names: DNS labels, optionally behind one leading `*.` wildcard
/// label (Gateway API's hostname shape).
pub(crate) const HOST_PATTERN: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Gateway API's path match: a type and a value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'RegularExpression' || self.value.startsWith('/')").message("path must start with '/'"))]
pub struct PathMatch {
    /// How `value` is compared with the request path. Default `PathPrefix`.
    #[serde(default, rename = "type")]
    pub kind: PathMatchType,
    /// The path to match; it starts with `/`. For `RegularExpression`, a
    /// regular expression (Rust `regex` syntax) that must match the whole
    /// decoded path.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

impl Default for PathMatch {
    fn default() -> Self {
        Self {
            kind: PathMatchType::PathPrefix,
            value: "/".to_owned(),
        }
    }
}

/// How a [`PathMatch`] compares paths.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PathMatchType {
    /// Matches the value and every path below it, element by element:
    /// `/abc` matches `/abc`, `/abc/` and `/abc/d`, not `/abcd`.
    #[default]
    PathPrefix,
    /// Matches the value exactly.
    Exact,
    /// A regular expression matching the whole decoded path (anchored at
    /// both ends). Checked after exact paths and before prefixes, in route
    /// age order, as nginx checks `location ~` blocks.
    RegularExpression,
}

/// Status every Pier route reports: conditions `Accepted`, `ResolvedRefs`
/// and `Programmed`, each with its `observedGeneration`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// Current conditions of the route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// The schema of `status.conditions`, as Kubernetes' own types declare a
/// `[]metav1.Condition`: a list map keyed by `type` (so server-side apply
/// merges one condition at a time), and each field validated as
/// `metav1.Condition` validates it.
fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Current conditions of the route: Accepted, ResolvedRefs and Programmed, one of each type.",
        "type": "array",
        "maxItems": 8,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "description": "One aspect of the route's state (metav1.Condition).",
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {
                    "description": "The aspect: Accepted, ResolvedRefs or Programmed.",
                    "type": "string",
                    "maxLength": 316,
                    "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
                },
                "status": {
                    "description": "True, False or Unknown.",
                    "type": "string",
                    "enum": ["True", "False", "Unknown"]
                },
                "observedGeneration": {
                    "description": "The metadata.generation the condition was set for: older than the route's generation means not yet reconciled.",
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0
                },
                "lastTransitionTime": {
                    "description": "When the status last changed.",
                    "type": "string",
                    "format": "date-time"
                },
                "reason": {
                    "description": "Why, in CamelCase: a value tools can match on.",
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 1024,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
                },
                "message": {
                    "description": "Why, for people.",
                    "type": "string",
                    "maxLength": 32768
                }
            }
        }
    })
}
