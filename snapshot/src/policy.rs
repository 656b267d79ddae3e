//! A route's request-phase rules: access lists, CORS and redirects, the
//! same for every route kind.

use serde::{Deserialize, Serialize};

/// The request-phase rules of a route, run in this order: access lists,
/// CORS preflight, redirect, basic authentication, forward
/// authentication.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Client networks admitted, as [`cidr`](crate::cidr) prints them;
    /// empty: any client. Others get 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Client networks refused with 403, checked before `allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// HTTP Basic authentication, checked after the redirects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// Forward authentication, checked last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_auth: Option<ForwardAuth>,
    /// Cross-origin requests: preflights answered, responses marked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Every request is answered with a redirect instead of the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
}

impl Policy {
    /// True when the route checks nothing before its action.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
            && self.deny.is_empty()
            && self.basic_auth.is_none()
            && self.forward_auth.is_none()
            && self.cors.is_none()
            && self.redirect.is_none()
    }
}

/// HTTP Basic authentication: who may use the route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The `realm` of `WWW-Authenticate` (checked to fit in a quoted
    /// string).
    pub realm: String,
    /// The users, by name, each with its password hash as htpasswd writes
    /// it: bcrypt (`$2y$`, `$2b$`, `$2a$`), Apache MD5 (`$apr1$`) or
    /// SHA-1 (`{SHA}`), checked by the compiler.
    pub users: Vec<User>,
}

/// A user of [`BasicAuth`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub name: String,
    pub hash: String,
}

/// Forward authentication: where each request is checked first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ForwardAuth {
    /// The authentication service's addresses (`ip:port`), tried in turn;
    /// empty: every check fails (500), never open.
    pub endpoints: Vec<String>,
    /// The `Host` of the check.
    pub host: String,
    /// Its path and query.
    pub path: String,
    /// Its method.
    pub method: String,
    /// Fields of a 2xx answer copied onto the request, lower-case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<String>,
    /// Where a 401 redirects, `rd=` the original URL appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signin: Option<String>,
}

/// A redirect answered by the dataplane itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// Where to.
    pub to: RedirectTo,
}

/// The `Location` of a redirect.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RedirectTo {
    /// This URL, as it is (an absolute URL or an absolute path, checked to
    /// be a header value).
    Url(String),
    /// The request's own URL with these parts replaced; the query is kept.
    Parts {
        /// `http` or `https`; `None`: the request's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheme: Option<String>,
        /// `None`: the request's host, without its port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// `None`: the scheme's default port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// The path.
        #[serde(default)]
        path: RedirectPath,
    },
}

/// The path of a [`RedirectTo::Parts`] redirect.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RedirectPath {
    /// The request's path.
    #[default]
    Keep,
    /// This path.
    Full(String),
    /// The route's matched prefix replaced by this (Prefix routes).
    Prefix(String),
}

/// Cross-origin resource sharing, the way browsers check it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Origins allowed (`https://a.example`, `https://*.example.com`), or
    /// `*` for any.
    pub allow_origins: Vec<String>,
    /// `Access-Control-Allow-Methods` of a preflight answer.
    pub allow_methods: String,
    /// `Access-Control-Allow-Headers` of a preflight answer.
    pub allow_headers: String,
    /// `Access-Control-Expose-Headers`; empty: not sent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expose_headers: String,
    /// `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: bool,
    /// How long a browser may keep a preflight answer, in seconds.
    pub max_age: u64,
}
