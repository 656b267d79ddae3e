//! Session affinity: a client's requests keep going to the endpoint that
//! served its first one, by a cookie the dataplane sets.

// kube's `KubeSchema` derive re-declares each struct, `pub`, inside a
// function; every type here is re-exported from the crate root anyway.
#![allow(unreachable_pub)]

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Session affinity. The balancer picks a client's first endpoint; the
/// response sets a cookie naming it (an opaque hash of the endpoint's
/// identity, the pod name, so every dataplane replica reads it alike), and
/// later requests with the cookie go there while it is ready and not
/// ejected. When it is gone, the balancer picks again and the cookie is
/// replaced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    /// The cookie that carries the endpoint.
    pub cookie: AffinityCookie,
}

/// The affinity cookie's attributes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AffinityCookie {
    /// The cookie's name. Absent: `pier-affinity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = COOKIE_NAME_PATTERN))]
    pub name: Option<String>,
    /// Its `Path`. Absent: `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = COOKIE_PATH_PATTERN))]
    pub path: Option<String>,
    /// Its `Max-Age`, as a duration (`48h`). Absent: a session cookie,
    /// dropped when the browser closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,9}(s|m|h)$"))]
    pub max_age: Option<String>,
    /// Sent with `Secure`. Absent: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    /// Sent with `HttpOnly`. Absent: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
    /// Its `SameSite`. Absent: not sent (browsers take `Lax`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<SameSite>,
}

/// A cookie's `SameSite` attribute.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SameSite {
    /// Sent on same-site requests only.
    Strict,
    /// Also on top-level navigations from other sites.
    Lax,
    /// On every request (browsers require `secure` with it).
    None,
}

/// A cookie name: an HTTP token.
const COOKIE_NAME_PATTERN: &str = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$";
/// A cookie path: an absolute path without `;`, spaces or controls.
const COOKIE_PATH_PATTERN: &str = r"^/[!-:<-~]*$";
