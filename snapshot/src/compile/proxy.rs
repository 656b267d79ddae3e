//! `ProxyRoute` validation.

use std::net::SocketAddr;

use pier_crds::{HeaderOps, ProxyRoute, Timeouts};

use super::{Invalid, clean_path, header_value, host, hosts, path_rule};
use crate::model::{
    Action, Endpoint, HeaderEdits, PathRule, ProxyAction, ProxyTimeouts, Route, RouteKey,
};

/// Default time limits, in milliseconds (nginx's and Envoy's order of magnitude).
const CONNECT_MS: u64 = 2_000;
const RESPONSE_HEADER_MS: u64 = 30_000;
const IDLE_MS: u64 = 60_000;

/// Headers a route may not edit: the proxy owns framing and hop-by-hop
/// fields, and editing them would desynchronise the connection.
const RESERVED: [&str; 9] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "host",
];

pub(super) fn proxy_route(key: &RouteKey, resource: &ProxyRoute) -> Result<Route, Invalid> {
    if key.name.is_empty() {
        return Err(Invalid::Unnamed);
    }
    let spec = &resource.spec;
    let hosts = hosts(&spec.hosts)?;
    let path = path_rule(spec.path.as_ref())?;
    let mut endpoints = Vec::with_capacity(spec.backends.len());
    for backend in &spec.backends {
        let invalid = |why| Invalid::Backend {
            value: backend.address.clone(),
            why,
        };
        let address: SocketAddr = backend
            .address
            .parse()
            .map_err(|_| invalid("must be IP:PORT or [IPv6]:PORT"))?;
        if address.port() == 0 {
            return Err(invalid("must have a port other than 0"));
        }
        endpoints.push(Endpoint {
            address: address.to_string(),
            weight: backend.weight.unwrap_or(1),
        });
    }
    if endpoints.iter().all(|e| e.weight == 0) {
        return Err(Invalid::Backend {
            value: String::new(),
            why: "list has no backend with a weight above 0",
        });
    }
    let rewrite = spec.rewrite.clone().unwrap_or_default();
    let rewrite_prefix = match &rewrite.path_prefix {
        None => None,
        Some(value) if matches!(path, PathRule::Exact(_)) => {
            return Err(Invalid::Path {
                value: value.clone(),
                why: "rewrite.pathPrefix needs a PathPrefix match",
            });
        }
        Some(value) => Some(clean_path(value).map_err(|why| Invalid::Path {
            value: value.clone(),
            why,
        })?),
    };
    let rewrite_host = match &rewrite.host {
        None => None,
        Some(value) => Some(host(value).map_err(|why| Invalid::Host {
            value: value.clone(),
            why,
        })?),
    };
    Ok(Route {
        key: key.clone(),
        hosts,
        path,
        action: Action::Proxy(ProxyAction {
            endpoints,
            rewrite_prefix,
            rewrite_host,
            request_headers: edits(spec.request_headers.as_ref())?,
            response_headers: edits(spec.response_headers.as_ref())?,
            timeouts: timeouts(spec.timeouts.as_ref())?,
        }),
    })
}

fn edits(ops: Option<&HeaderOps>) -> Result<HeaderEdits, Invalid> {
    let Some(ops) = ops else {
        return Ok(HeaderEdits::default());
    };
    let pair = |h: &pier_crds::Header| -> Result<(String, String), Invalid> {
        let name = header_name(&h.name)?;
        let value = header_value(&h.value).map_err(|why| Invalid::Header {
            name: h.name.clone(),
            why,
        })?;
        Ok((name, value))
    };
    Ok(HeaderEdits {
        set: ops.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: ops.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: ops
            .remove
            .iter()
            .map(|n| header_name(n))
            .collect::<Result<_, _>>()?,
    })
}

/// A header name: an HTTP token, lower-cased, not one the proxy owns.
fn header_name(name: &str) -> Result<String, Invalid> {
    let invalid = |why| Invalid::Header {
        name: name.to_owned(),
        why,
    };
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(invalid("must be an HTTP token"));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) {
        return Err(invalid(
            "is managed by the proxy (use rewrite.host for Host)",
        ));
    }
    Ok(lower)
}

fn timeouts(given: Option<&Timeouts>) -> Result<ProxyTimeouts, Invalid> {
    let given = given.cloned().unwrap_or_default();
    let field = |name: &'static str, value: &Option<String>, default: u64| match value {
        None => Ok(default),
        Some(value) => millis(value).map_err(|why| Invalid::Timeout {
            field: name,
            value: value.clone(),
            why,
        }),
    };
    Ok(ProxyTimeouts {
        connect_ms: field("connect", &given.connect, CONNECT_MS)?,
        response_header_ms: field("responseHeader", &given.response_header, RESPONSE_HEADER_MS)?,
        idle_ms: field("idle", &given.idle, IDLE_MS)?,
    })
}

/// `500ms`, `2s`, `1m`, `1h` as milliseconds; zero is refused.
fn millis(value: &str) -> Result<u64, &'static str> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("needs a unit: ms, s, m or h")?;
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits.parse().map_err(|_| "must start with a number")?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err("has an unknown unit; use ms, s, m or h"),
    };
    match n.checked_mul(scale) {
        Some(0) => Err("must be above zero"),
        Some(ms) => Ok(ms),
        None => Err("is too long"),
    }
}
