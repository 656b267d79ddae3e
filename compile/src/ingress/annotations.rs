//! ingress-nginx's annotations (`nginx.ingress.kubernetes.io/…`): which
//! ones Pier reads and what each becomes, in one table ([`TABLE`]) that
//! the README's support table is checked against.
//!
//! An annotation Pier does not support is never silently dropped:
//! - a snippet (`*-snippet`) refuses the Ingress: Pier runs no
//!   configuration text (injected nginx configuration was CVE-2025-1974);
//! - one that restricts access (authentication, rate limits, WAF) refuses
//!   the Ingress too, since serving it without would admit what it refuses;
//! - any other is reported as a warning (an Event on the Ingress) and the
//!   Ingress is served without it.

use std::collections::BTreeMap;

use pier_crds::{
    Affinity, AffinityCookie, BalancerType, BufferingMode, Cors, ForwardAuth, HashOn, HttpMethod,
    SameSite,
};

use crate::policy;
use pier_snapshot::Invalid;

pub use super::table::{PREFIX, Support, TABLE, support};
use Support::{Ignored, Refused, Supported};

/// What an Ingress's annotations ask for, checked.
#[derive(Debug, Default)]
pub(crate) struct Annotations {
    /// Paths are regular expressions (`use-regex`, or implied by
    /// `rewrite-target`).
    pub(crate) regex: bool,
    pub(crate) rewrite_target: Option<String>,
    /// `Some(false)`: no redirect to HTTPS even with TLS.
    pub(crate) ssl_redirect: Option<bool>,
    pub(crate) force_ssl_redirect: bool,
    /// A fixed redirect: URL and status.
    pub(crate) redirect: Option<(String, u16)>,
    pub(crate) app_root: Option<String>,
    /// `None`: no limit (`0`).
    pub(crate) body_size: Option<u64>,
    pub(crate) buffering: Option<BufferingMode>,
    pub(crate) request_buffering: Option<bool>,
    pub(crate) connect_s: Option<u64>,
    pub(crate) read_s: Option<u64>,
    pub(crate) send_s: Option<u64>,
    pub(crate) tries: Option<u32>,
    pub(crate) balancer: Option<BalancerType>,
    pub(crate) hash_on: Option<HashOn>,
    /// `affinity: cookie` and its `session-cookie-*` settings.
    pub(crate) affinity: Option<Affinity>,
    pub(crate) allow: Vec<String>,
    pub(crate) deny: Vec<String>,
    pub(crate) cors: Option<Cors>,
    pub(crate) backend_https: bool,
    /// `proxy-ssl-secret`: namespace (when given) and name.
    pub(crate) ssl_secret: Option<(Option<String>, String)>,
    pub(crate) ssl_name: Option<String>,
    /// `auth-type: basic`.
    pub(crate) basic_auth: Option<Basic>,
    /// `auth-url` and its options.
    pub(crate) forward_auth: Option<ForwardAuth>,
    pub(crate) upstream_vhost: Option<String>,
    /// `x-forwarded-prefix`: the `X-Forwarded-Prefix` sent upstream.
    pub(crate) forwarded_prefix: Option<String>,
    pub(crate) canary: Option<Canary>,
    /// What is served without: one line per annotation.
    pub(crate) warnings: Vec<String>,
}

/// `auth-type: basic`'s settings.
#[derive(Debug, Default, Clone)]
pub(crate) struct Basic {
    /// `auth-secret`: its namespace when given, its name.
    pub(crate) namespace: Option<String>,
    pub(crate) secret: String,
    pub(crate) realm: Option<String>,
}

/// A canary Ingress's selection.
#[derive(Debug, Default, Clone)]
pub(crate) struct Canary {
    /// Share of `total` sent to the canary.
    pub(crate) weight: u32,
    pub(crate) total: u32,
    /// Requests with this header and value (a pattern when the last is
    /// true) go to the canary.
    pub(crate) header: Option<(String, String, bool)>,
    /// Requests whose cookie of this name is `always` go to the canary
    /// (after `header`).
    pub(crate) cookie: Option<String>,
}

/// ingress-nginx's default `proxy-body-size`: 1 MiB.
pub(crate) const BODY_SIZE: u64 = 1 << 20;

/// Reads an Ingress's annotations.
pub(crate) fn parse(all: Option<&BTreeMap<String, String>>) -> Result<Annotations, Invalid> {
    let mut out = Annotations {
        body_size: Some(BODY_SIZE),
        ..Annotations::default()
    };
    let Some(all) = all else {
        return Ok(out);
    };
    let found = Found::new(all);
    let ours = |name: &str| found.get(name);
    // Refusals first, so the reason given is the one that matters.
    for full in all.keys() {
        let Some(name) = full.strip_prefix(PREFIX) else {
            continue;
        };
        match support(name) {
            Some(Refused) if name.ends_with("-snippet") => {
                return Err(Invalid::Snippet { name: full.clone() });
            }
            Some(Refused) => return Err(Invalid::UnsupportedAccess { name: full.clone() }),
            Some(Ignored) => out.warnings.push(format!(
                "annotation {full} is not supported; the Ingress is served without it"
            )),
            None => out.warnings.push(format!(
                "annotation {full} is unknown to Pier; the Ingress is served without it"
            )),
            Some(Supported) => {}
        }
    }
    let flag = |name: &str| -> Result<Option<bool>, Invalid> {
        match ours(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(bad(name, other, "must be \"true\" or \"false\"")),
        }
    };
    let on_off = |name: &str| -> Result<Option<bool>, Invalid> {
        match ours(name) {
            None => Ok(None),
            Some("on") => Ok(Some(true)),
            Some("off") => Ok(Some(false)),
            Some(other) => Err(bad(name, other, "must be \"on\" or \"off\"")),
        }
    };
    let seconds = |name: &str| -> Result<Option<u64>, Invalid> {
        ours(name)
            .map(|v| match v.parse::<u64>() {
                Ok(s) if s > 0 => Ok(s),
                _ => Err(bad(name, v, "must be a whole number of seconds above 0")),
            })
            .transpose()
    };
    let code = |name: &str, default: u16| -> Result<u16, Invalid> {
        match ours(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u16>()
                .ok()
                .and_then(|c| policy::redirect_status("", c).ok())
                .ok_or_else(|| bad(name, v, "must be 301, 302, 303, 307 or 308")),
        }
    };

    out.regex = flag("use-regex")?.unwrap_or(false);
    if let Some(target) = ours("rewrite-target") {
        out.rewrite_target = Some(target.to_owned());
        out.regex = true;
    }
    out.ssl_redirect = flag("ssl-redirect")?;
    out.force_ssl_redirect = flag("force-ssl-redirect")?.unwrap_or(false);
    if let Some(url) = ours("permanent-redirect") {
        let status = code("permanent-redirect-code", 301)?;
        out.redirect = Some((policy::redirect_url("permanent-redirect", url)?, status));
    } else if let Some(url) = ours("temporal-redirect") {
        let status = code("temporal-redirect-code", 302)?;
        out.redirect = Some((policy::redirect_url("temporal-redirect", url)?, status));
    }
    if let Some(root) = ours("app-root") {
        if !root.starts_with('/') || root == "/" || root.contains(['?', '#', ' ']) {
            return Err(bad("app-root", root, "must be a path other than `/`"));
        }
        out.app_root = Some(root.to_owned());
    }
    if let Some(size) = ours("proxy-body-size") {
        out.body_size = match nginx_size(size) {
            Some(0) => None,
            Some(bytes) => Some(bytes),
            None => {
                return Err(bad(
                    "proxy-body-size",
                    size,
                    "must be a size such as 8m, 512k or 0",
                ));
            }
        };
    }
    out.buffering = on_off("proxy-buffering")?.map(|on| {
        if on {
            BufferingMode::Hybrid
        } else {
            BufferingMode::Stream
        }
    });
    out.request_buffering = on_off("proxy-request-buffering")?;
    out.connect_s = seconds("proxy-connect-timeout")?;
    out.read_s = seconds("proxy-read-timeout")?;
    out.send_s = seconds("proxy-send-timeout")?;
    if let Some(tries) = ours("proxy-next-upstream-tries") {
        out.tries = Some(
            tries
                .parse::<u32>()
                .map_err(|_| bad("proxy-next-upstream-tries", tries, "must be a whole number"))?,
        );
    }
    out.balancer = match ours("load-balance") {
        None | Some("round_robin") => None,
        Some("ewma") => Some(BalancerType::LeastRequest),
        Some(other) => return Err(bad("load-balance", other, "must be round_robin or ewma")),
    };
    if let Some(by) = ours("upstream-hash-by") {
        out.hash_on = Some(hash_by(by).ok_or_else(|| {
            bad(
                "upstream-hash-by",
                by,
                "must be one of $request_uri, $uri, $remote_addr, $binary_remote_addr, $http_NAME, $cookie_NAME",
            )
        })?);
    }
    out.affinity = affinity(&found, &flag)?;
    let ranges = |name: &'static str| -> Result<Vec<String>, Invalid> {
        match ours(name) {
            None => Ok(Vec::new()),
            Some(list) => policy::networks(name, list.split(',').filter(|s| !s.trim().is_empty())),
        }
    };
    out.allow = ranges("whitelist-source-range")?;
    out.allow.extend(ranges("allowlist-source-range")?);
    out.deny = ranges("denylist-source-range")?;
    if flag("enable-cors")?.unwrap_or(false) {
        out.cors = Some(cors(&found, &flag)?);
    }
    match ours("backend-protocol")
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("HTTP") => {}
        Some("HTTPS") => out.backend_https = true,
        Some(other) => {
            return Err(bad(
                "backend-protocol",
                other,
                "is not supported yet (HTTP and HTTPS are); serving it as HTTP would fail every request",
            ));
        }
    }
    if let Some(secret) = ours("proxy-ssl-secret") {
        out.ssl_secret = Some(match secret.split_once('/') {
            Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
            None => (None, secret.to_owned()),
        });
    }
    out.ssl_name = ours("proxy-ssl-name").map(str::to_owned);
    out.basic_auth = basic_auth(&found, &mut out.warnings)?;
    out.forward_auth = forward_auth(&found)?;
    if on_off("proxy-ssl-verify")? == Some(false) {
        out.warnings.push(format!(
            "annotation {PREFIX}proxy-ssl-verify is \"off\", but Pier always verifies backend certificates"
        ));
    }
    out.upstream_vhost = ours("upstream-vhost").map(str::to_owned);
    out.forwarded_prefix = ours("x-forwarded-prefix").map(str::to_owned);
    match ours("proxy-http-version") {
        None | Some("1.1") => {}
        Some(other) => out.warnings.push(format!(
            "annotation {PREFIX}proxy-http-version is {other:?}, but Pier speaks HTTP/1.1 to backends"
        )),
    }
    if flag("canary")?.unwrap_or(false) {
        let number = |name: &str, default: u32| -> Result<u32, Invalid> {
            ours(name).map_or(Ok(default), |v| {
                v.parse::<u32>()
                    .map_err(|_| bad(name, v, "must be a whole number"))
            })
        };
        let total = number("canary-weight-total", 100)?;
        let weight = number("canary-weight", 0)?;
        if total == 0 || weight > total {
            return Err(bad(
                "canary-weight",
                &weight.to_string(),
                "must lie between 0 and canary-weight-total (above 0)",
            ));
        }
        // ingress-nginx searches the value for the pattern (unanchored).
        let header = ours("canary-by-header").map(|name| {
            match (
                ours("canary-by-header-value"),
                ours("canary-by-header-pattern"),
            ) {
                (None, Some(pattern)) => (name.to_owned(), format!("(?s).*(?:{pattern}).*"), true),
                (value, _) => (name.to_owned(), value.unwrap_or("always").to_owned(), false),
            }
        });
        let cookie = ours("canary-by-cookie").map(str::to_owned);
        if let Some(name) = &cookie
            && (name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(bad(
                "canary-by-cookie",
                name,
                "must be a cookie name of letters, digits, `-`, `_` and `.`",
            ));
        }
        out.canary = Some(Canary {
            weight,
            total,
            header,
            cookie,
        });
    }
    Ok(out)
}

/// An Ingress's annotations, read by their names without the prefix.
/// Built once per Ingress: a lookup allocates nothing.
struct Found<'a>(BTreeMap<&'a str, &'a str>);

impl<'a> Found<'a> {
    fn new(all: &'a BTreeMap<String, String>) -> Self {
        Self(
            all.iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(PREFIX)?, v.trim())))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.get(name).copied()
    }
}

/// `auth-type: basic` with `auth-secret`, `auth-secret-type` and
/// `auth-realm`.
fn basic_auth(found: &Found<'_>, warnings: &mut Vec<String>) -> Result<Option<Basic>, Invalid> {
    let secret = found.get("auth-secret");
    match found.get("auth-type") {
        Some("basic") => {}
        Some(other) => {
            return Err(bad(
                "auth-type",
                other,
                "is not supported (basic is); serving the Ingress without it would admit everyone",
            ));
        }
        None => {
            if secret.is_some() {
                warnings.push(format!(
                    "annotation {PREFIX}auth-secret has no effect without {PREFIX}auth-type: basic"
                ));
            }
            return Ok(None);
        }
    }
    if let Some(kind) = found.get("auth-secret-type")
        && !matches!(kind, "auth-file" | "auth-map")
    {
        return Err(bad(
            "auth-secret-type",
            kind,
            "must be auth-file or auth-map",
        ));
    }
    let secret = secret.ok_or_else(|| bad("auth-type", "basic", "needs auth-secret"))?;
    let (namespace, name) = match secret.split_once('/') {
        Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
        None => (None, secret.to_owned()),
    };
    Ok(Some(Basic {
        namespace,
        secret: name,
        realm: found.get("auth-realm").map(str::to_owned),
    }))
}

/// `auth-url` with `auth-method`, `auth-response-headers` and
/// `auth-signin`.
fn forward_auth(found: &Found<'_>) -> Result<Option<ForwardAuth>, Invalid> {
    let Some(url) = found.get("auth-url") else {
        return Ok(None);
    };
    let method = match found.get("auth-method") {
        None => None,
        Some(m) => Some(
            HttpMethod::ALL
                .into_iter()
                .find(|h| h.as_str().eq_ignore_ascii_case(m))
                .ok_or_else(|| bad("auth-method", m, "must be an HTTP method"))?,
        ),
    };
    let response_headers = found
        .get("auth-response-headers")
        .map(|v| {
            v.split(',')
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(ForwardAuth {
        url: url.to_owned(),
        method,
        response_headers,
        signin: found.get("auth-signin").map(str::to_owned),
    }))
}

/// An annotation's value refused, and why.
fn bad(name: &str, value: &str, why: &'static str) -> Invalid {
    Invalid::Annotation {
        name: format!("{PREFIX}{name}"),
        value: value.to_owned(),
        why,
    }
}

/// `enable-cors`'s options, with ingress-nginx's defaults.
fn cors(
    found: &Found<'_>,
    flag: &dyn Fn(&str) -> Result<Option<bool>, Invalid>,
) -> Result<Cors, Invalid> {
    let ours = |name: &str| found.get(name);
    let list = |name: &str| -> Vec<String> {
        ours(name)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let max_age = match ours("cors-max-age") {
        None => "1728000s".to_owned(),
        Some(v) if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() => format!("{v}s"),
        Some(v) => {
            return Err(bad("cors-max-age", v, "must be a whole number of seconds"));
        }
    };
    Ok(Cors {
        allow_origins: list("cors-allow-origin"),
        allow_methods: list("cors-allow-methods"),
        allow_headers: list("cors-allow-headers"),
        expose_headers: list("cors-expose-headers"),
        allow_credentials: flag("cors-allow-credentials")?.unwrap_or(true),
        max_age: Some(max_age),
    })
}

/// nginx's size syntax: digits with an optional `k`, `m` or `g` (powers of
/// 1024).
fn nginx_size(value: &str) -> Option<u64> {
    let lower = value.to_ascii_lowercase();
    let (digits, shift) = match lower.as_bytes().last()? {
        b'k' => (&lower[..lower.len() - 1], 10),
        b'm' => (&lower[..lower.len() - 1], 20),
        b'g' => (&lower[..lower.len() - 1], 30),
        _ => (lower.as_str(), 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `affinity: cookie` with its `session-cookie-*` annotations. Sessions
/// stay on their endpoint while it serves (`affinity-mode: persistent`;
/// `balanced` is taken as that), and move, with a new cookie, when it
/// fails or goes (`session-cookie-change-on-failure: true`).
fn affinity(
    found: &Found<'_>,
    flag: &dyn Fn(&str) -> Result<Option<bool>, Invalid>,
) -> Result<Option<Affinity>, Invalid> {
    match found.get("affinity") {
        None => return Ok(None),
        Some("cookie") => {}
        Some(other) => return Err(bad("affinity", other, "must be cookie")),
    }
    if let Some(mode) = found.get("affinity-mode")
        && !matches!(mode, "balanced" | "persistent")
    {
        return Err(bad("affinity-mode", mode, "must be balanced or persistent"));
    }
    let seconds = |name: &str| -> Result<Option<String>, Invalid> {
        let Some(value) = found.get(name) else {
            return Ok(None);
        };
        match value.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Some(format!("{n}s"))),
            _ => Err(bad(
                name,
                value,
                "must be a whole number of seconds above 0",
            )),
        }
    };
    let max_age = match seconds("session-cookie-max-age")? {
        Some(age) => Some(age),
        None => seconds("session-cookie-expires")?,
    };
    let same_site = match found.get("session-cookie-samesite") {
        None => None,
        Some("Strict") => Some(SameSite::Strict),
        Some("Lax") => Some(SameSite::Lax),
        Some("None") => Some(SameSite::None),
        Some(other) => {
            return Err(bad(
                "session-cookie-samesite",
                other,
                "must be None, Lax or Strict",
            ));
        }
    };
    Ok(Some(Affinity {
        cookie: AffinityCookie {
            name: Some(
                found
                    .get("session-cookie-name")
                    .unwrap_or("INGRESSCOOKIE")
                    .to_owned(),
            ),
            path: found.get("session-cookie-path").map(str::to_owned),
            max_age,
            secure: flag("session-cookie-secure")?,
            http_only: Some(true),
            same_site,
        },
    }))
}

/// `upstream-hash-by`'s variables that name one request property.
fn hash_by(value: &str) -> Option<HashOn> {
    let empty = Some(pier_crds::Empty {});
    match value {
        "$request_uri" | "$uri" => Some(HashOn {
            uri: empty,
            ..HashOn::default()
        }),
        "$remote_addr" | "$binary_remote_addr" => Some(HashOn {
            source_ip: empty,
            ..HashOn::default()
        }),
        _ => {
            let name = |rest: &str| {
                (!rest.is_empty()
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
                .then(|| rest.to_owned())
            };
            if let Some(header) = value.strip_prefix("$http_") {
                // nginx spells `X-User` as `$http_x_user`.
                Some(HashOn {
                    header: Some(name(header)?.replace('_', "-")),
                    ..HashOn::default()
                })
            } else if let Some(cookie) = value.strip_prefix("$cookie_") {
                Some(HashOn {
                    cookie: Some(name(cookie)?),
                    ..HashOn::default()
                })
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
