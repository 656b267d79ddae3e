//! What a route checks or answers before its action, the same on every
//! route kind: client access lists, CORS and redirects.

// kube's `KubeSchema` derive re-declares each struct, `pub`, inside a
// function; every type here is re-exported from the crate root anyway.
#![allow(unreachable_pub)]

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::route::HOST_PATTERN;

/// Which clients may use the route, by address. A refused client gets 403.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Networks admitted (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
    /// Empty or absent: every client not denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 2, max = 43)))]
    pub allow: Vec<String>,
    /// Networks refused, checked before `allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 2, max = 43)))]
    pub deny: Vec<String>,
}

/// Cross-origin resource sharing: preflight requests (`OPTIONS` with
/// `Access-Control-Request-Method`) are answered with 204 by the
/// dataplane; other responses to an allowed origin carry
/// `Access-Control-Allow-Origin`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Origins allowed: `https://app.example.com`, one leading wildcard
    /// label (`https://*.example.com`), or `*` for any. Absent: `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 2048)))]
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for. Absent: `GET, PUT, POST, DELETE,
    /// PATCH, OPTIONS`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 32)))]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for. Absent: the common ones
    /// (`DNT`, `User-Agent`, `X-Requested-With`, `If-Modified-Since`,
    /// `Cache-Control`, `Content-Type`, `Range`, `Authorization`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub allow_headers: Vec<String>,
    /// Response headers the page's script may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub expose_headers: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (then a `*` origin is
    /// answered with the request's own origin, as browsers require).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer, such as `20m`.
    /// Absent: `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32))]
    pub max_age: Option<String>,
}

/// Answer every request of the route with a redirect: to a fixed `url`
/// (nginx's `return 301 URL`), or to the request's URL with the parts
/// given replaced (Gateway API's `RequestRedirect`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.url) || !(has(self.scheme) || has(self.hostname) || has(self.port) || has(self.path))").message("a redirect gives a url or the parts to replace, not both"))]
pub struct Redirect {
    /// The whole new URL (`https://example.com/new`) or an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub url: Option<String>,
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 'http' || self == 'https'").message("scheme must be http or https"))]
    pub scheme: Option<String>,
    /// The host name of the new URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub hostname: Option<String>,
    /// The port of the new URL. Absent: the scheme's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// How the path changes. Absent: it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<RedirectPath>,
    /// 301, 302, 303, 307 or 308. Absent: 302.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in [301, 302, 303, 307, 308]").message("statusCode must be 301, 302, 303, 307 or 308"))]
    pub status_code: Option<u16>,
}

/// The path of a redirect.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedirectPath {
    /// `ReplaceFullPath` or `ReplacePrefixMatch` (the matched prefix
    /// replaced; PathPrefix routes only).
    #[serde(rename = "type")]
    pub kind: RedirectPathType,
    /// The new path or prefix, starting with `/`.
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("the redirect path must start with '/'"))]
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// How a redirect's path is made.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RedirectPathType {
    /// The whole path replaced.
    ReplaceFullPath,
    /// The matched prefix replaced.
    ReplacePrefixMatch,
}

/// HTTP Basic authentication: requests without a user and password of the
/// Secret get 401 with `WWW-Authenticate: Basic realm="…"`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// A Secret in the route's namespace. Its `auth` key holds htpasswd
    /// lines (`user:hash`, as `htpasswd -B` or `htpasswd` writes them);
    /// without that key, each key is a user and its value the hash.
    /// Hashes: bcrypt (`$2y$`, `$2b$`, `$2a$`), Apache MD5 (`$apr1$`) or
    /// SHA-1 (`{SHA}`).
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub secret_name: String,
    /// The realm browsers show. Absent: `Authentication Required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r#"^[^"\\\x00-\x1f\x7f]+$"#)
    )]
    pub realm: Option<String>,
}

/// Forward authentication (nginx's `auth_request`, the pattern of
/// oauth2-proxy and Authelia): before the route serves a request, the
/// dataplane asks `url` with the request's own fields. A 2xx answer lets
/// it through; 401 and 403 are passed to the client (401 becomes a
/// redirect to `signin` when given); anything else, or no answer, is 500.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardAuth {
    /// `http://NAME.NAMESPACE.svc[.cluster.local][:PORT]/PATH` (a Service:
    /// the check goes to its ready endpoints) or `http://IP[:PORT]/PATH`.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://')").message("forwardAuth.url must be an http:// URL"))]
    pub url: String,
    /// The method of the check. Absent: `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<crate::HttpMethod>,
    /// Fields of a 2xx answer copied onto the request the route serves
    /// (`X-Auth-Request-User`, …); a client's own fields of these names
    /// are dropped, so they cannot be forged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub response_headers: Vec<String>,
    /// Where a 401 sends the browser instead (`?rd=` the original URL is
    /// appended): the sign-in page of the authentication service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub signin: Option<String>,
}
