//! `ProxyRoute` validation.

use std::net::SocketAddr;

use pier_crds::{Ejection, HeaderOps, ProxyRoute, Retries, RetryOn, Timeouts, ValueMatch};

use super::backends::{Backends, Unresolvable};
use super::balancing;
use super::{Invalid, Unresolved, clean_path, header_value, host, hosts, path_rule, root};
use pier_snapshot::{
    Action, BufferMode, Buffering, EjectionPolicy, Endpoint, HeaderEdits, Matches, PathRule,
    ProxyAction, ProxyTimeouts, RegexRewrite, RetryPolicy, Route, RouteKey, UpstreamTls,
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

/// Share of a backend's weight an endpoint gets is `weight × SCALE / n`
/// for its `n` endpoints, so backends keep their ratio whatever their size.
const SCALE: u64 = 1_000;

pub(super) fn proxy_route(
    key: &RouteKey,
    resource: &ProxyRoute,
    backends: &Backends<'_>,
    secrets: &super::tls::Secrets<'_>,
) -> Result<(Route, Option<Unresolved>), Invalid> {
    proxy_route_in(key, resource, &[], backends, secrets)
}

/// [`proxy_route`] with the namespace of each backend's Service when it is
/// not the route's (`namespaces[i]` for `backends[i]`): a Gateway API
/// route's, once a ReferenceGrant allowed it.
pub(super) fn proxy_route_in(
    key: &RouteKey,
    resource: &ProxyRoute,
    namespaces: &[Option<String>],
    backends: &Backends<'_>,
    secrets: &super::tls::Secrets<'_>,
) -> Result<(Route, Option<Unresolved>), Invalid> {
    if key.name.is_empty() {
        return Err(Invalid::Unnamed);
    }
    let spec = &resource.spec;
    let hosts = hosts(&spec.hosts)?;
    let path = path_rule(spec.path.as_ref())?;
    super::tls::check_spec(spec.tls.as_ref())?;
    if !spec.backends.is_empty() && spec.backends.iter().all(|b| b.weight == Some(0)) {
        return Err(Invalid::Backend {
            value: String::new(),
            why: "list has no backend with a weight above 0",
        });
    }
    let mut endpoints = Vec::new();
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    // A redirect answers without a backend.
    if spec.backends.is_empty() && spec.redirect.is_none() {
        problems.push((
            "BackendNotFound",
            "no backend to send requests to".to_owned(),
        ));
    }
    for (i, backend) in spec.backends.iter().enumerate() {
        let weight = u64::from(backend.weight.unwrap_or(1));
        match (&backend.service, backend.port, &backend.address) {
            (None, _, Some(address)) => {
                let invalid = |why| Invalid::Backend {
                    value: address.clone(),
                    why,
                };
                let address: SocketAddr = address
                    .parse()
                    .map_err(|_| invalid("must be IP:PORT or [IPv6]:PORT"))?;
                if address.port() == 0 {
                    return Err(invalid("must have a port other than 0"));
                }
                endpoints.push(Endpoint {
                    address: address.to_string(),
                    identity: address.to_string(),
                    weight: u32::try_from(weight * SCALE).unwrap_or(u32::MAX),
                });
            }
            (Some(service), Some(port), None) => {
                let namespace = namespaces
                    .get(i)
                    .and_then(Option::as_deref)
                    .unwrap_or(&key.namespace);
                match backends.resolve(namespace, service, port) {
                    Ok(resolved) => {
                        let n = resolved.len() as u64;
                        for (address, identity) in resolved {
                            let share = if weight == 0 {
                                0
                            } else {
                                (weight * SCALE / n).max(1)
                            };
                            endpoints.push(Endpoint {
                                address: address.to_string(),
                                identity,
                                weight: u32::try_from(share).unwrap_or(u32::MAX),
                            });
                        }
                    }
                    Err(Unresolvable::NotFound(why)) => problems.push((
                        "BackendNotFound",
                        format!("service {service} port {port}: {why}"),
                    )),
                    Err(Unresolvable::NoReady) => problems.push((
                        "NoReadyEndpoints",
                        format!("service {service} port {port} has no ready endpoints"),
                    )),
                }
            }
            _ => {
                return Err(Invalid::Backend {
                    value: backend
                        .service
                        .clone()
                        .or(backend.address.clone())
                        .unwrap_or_default(),
                    why: "must name a service with a port, or an address",
                });
            }
        }
    }
    let rewrite = spec.rewrite.clone().unwrap_or_default();
    let rewrite_prefix = match &rewrite.path_prefix {
        None => None,
        Some(value) if !matches!(path, PathRule::Prefix(_)) => {
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
    let rewrite_regex = match &rewrite.regex {
        None => None,
        Some(_) if rewrite_prefix.is_some() => {
            return Err(Invalid::Path {
                value: String::new(),
                why: "rewrite takes pathPrefix or regex, not both",
            });
        }
        Some(given) => Some(regex_rewrite(&given.pattern, &given.replacement)?),
    };
    let rewrite_host = match &rewrite.host {
        None => None,
        Some(value) => Some(host(value).map_err(|why| Invalid::Host {
            value: value.clone(),
            why,
        })?),
    };
    let upstream_tls = match &spec.backend_tls {
        None => None,
        Some(tls) => {
            let server_name = host(&tls.server_name).map_err(|why| Invalid::Host {
                value: tls.server_name.clone(),
                why,
            })?;
            // An unusable CA trusts nothing: the route answers 502, never
            // plain text.
            let ca_pem = match secrets.ca(&key.namespace, &tls.ca_secret_name) {
                Ok(pem) => pem,
                Err(why) => {
                    problems.push(("InvalidCertificateRef", format!("backendTLS: {why}")));
                    String::new()
                }
            };
            Some(UpstreamTls {
                ca_pem,
                server_name,
            })
        }
    };
    let mut policy = super::policy::of_spec(
        spec.access.as_ref(),
        spec.cors.as_ref(),
        spec.redirect.as_ref(),
        &path,
    )?;
    policy.basic_auth = super::auth::basic(spec.basic_auth.as_ref(), &key.namespace, secrets)?;
    if let Some((auth, problem)) =
        super::forward_auth::forward(spec.forward_auth.as_ref(), &key.namespace, backends)?
    {
        policy.forward_auth = Some(auth);
        problems.extend(problem);
    }
    let route = Route {
        key: key.clone(),
        hosts,
        path,
        matches: matches(spec)?,
        tls: None,
        policy,
        action: Action::Proxy(Box::new(ProxyAction {
            endpoints,
            balancer: balancing::balance(spec.balancer.as_ref())?,
            rewrite_prefix,
            rewrite_regex,
            rewrite_host,
            request_headers: edits(spec.request_headers.as_ref())?,
            response_headers: edits(spec.response_headers.as_ref())?,
            timeouts: timeouts(spec.timeouts.as_ref())?,
            retries: retries(spec.retries.as_ref()),
            ejection: ejection(spec.ejection.as_ref())?,
            sendfile_roots: sendfile_roots(spec.sendfile.as_ref())?,
            upstream_tls,
            buffering: buffering(spec.buffering.as_ref())?,
            affinity: balancing::affinity(spec.affinity.as_ref())?,
        })),
    };
    let unresolved = (!problems.is_empty()).then(|| Unresolved {
        key: key.clone(),
        // A missing Service is the more telling reason.
        reason: problems
            .iter()
            .map(|(reason, _)| *reason)
            .find(|r| *r == "BackendNotFound")
            .unwrap_or_else(|| problems.first().map_or("NoReadyEndpoints", |p| p.0)),
        message: problems
            .iter()
            .map(|(_, message)| message.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    });
    Ok((route, unresolved))
}

/// A regex rewrite: an expression the dataplane can compile and a
/// replacement that makes a path.
pub(crate) fn regex_rewrite(pattern: &str, replacement: &str) -> Result<RegexRewrite, Invalid> {
    let invalid = |value: &str, why| Invalid::Path {
        value: value.to_owned(),
        why,
    };
    let compiled = pier_snapshot::rewrite_regex(pattern).map_err(|why| invalid(pattern, why))?;
    if !(replacement.starts_with('/') || replacement.starts_with('$')) {
        return Err(invalid(
            replacement,
            "(a rewrite's replacement) must start with `/` or a group",
        ));
    }
    if replacement
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
    {
        return Err(invalid(
            replacement,
            "(a rewrite's replacement) must not contain spaces, control characters, `?` or `#`",
        ));
    }
    // Each `$n` must name a group the expression has.
    let groups = compiled.captures_len() - 1;
    let bytes = replacement.as_bytes();
    for (i, _) in replacement.match_indices('$') {
        if let Some(digit) = bytes.get(i + 1).filter(|b| b.is_ascii_digit())
            && usize::from(digit - b'0') > groups
        {
            return Err(invalid(
                replacement,
                "names a group the expression does not have",
            ));
        }
    }
    Ok(RegexRewrite {
        pattern: pattern.to_owned(),
        replacement: replacement.to_owned(),
    })
}

/// Methods and header matches, sorted so that equal conditions compare
/// equal (the conflict rule).
fn matches(spec: &pier_crds::ProxyRouteSpec) -> Result<Matches, Invalid> {
    let mut methods: Vec<String> = spec.methods.iter().map(|m| m.as_str().to_owned()).collect();
    methods.sort();
    methods.dedup();
    let pattern = |field: &'static str, value: &str| {
        pier_snapshot::path::value_regex(value)
            .map(drop)
            .map_err(|why| Invalid::Policy {
                field,
                value: value.to_owned(),
                why,
            })
    };
    let (mut headers, mut header_patterns) = (Vec::new(), Vec::new());
    for h in &spec.headers {
        let name = token(&h.name)?;
        if h.kind == Some(ValueMatch::RegularExpression) {
            pattern("headers.value", &h.value)?;
            header_patterns.push((name, h.value.clone()));
            continue;
        }
        let value = header_value(&h.value).map_err(|why| Invalid::Header {
            name: h.name.clone(),
            why,
        })?;
        headers.push((name, value));
    }
    let (mut query, mut query_patterns) = (Vec::new(), Vec::new());
    for q in &spec.query_params {
        let bad = |b: u8| b.is_ascii_whitespace() || b.is_ascii_control() || b"&#".contains(&b);
        if q.name.is_empty() || q.name.bytes().any(|b| bad(b) || b == b'=') {
            return Err(Invalid::Policy {
                field: "queryParams.name",
                value: q.name.clone(),
                why: "must be non-empty, without `&`, `=`, `#`, spaces or control characters",
            });
        }
        if q.kind == Some(ValueMatch::RegularExpression) {
            pattern("queryParams.value", &q.value)?;
            query_patterns.push((q.name.clone(), q.value.clone()));
            continue;
        }
        if q.value.bytes().any(bad) {
            return Err(Invalid::Policy {
                field: "queryParams.value",
                value: q.value.clone(),
                why: "must not contain `&`, `#`, spaces or control characters",
            });
        }
        query.push((q.name.clone(), q.value.clone()));
    }
    for list in [
        &mut headers,
        &mut query,
        &mut header_patterns,
        &mut query_patterns,
    ] {
        list.sort();
        list.dedup();
    }
    Ok(Matches {
        methods,
        headers,
        query,
        header_patterns,
        query_patterns,
    })
}

/// The X-Sendfile roots of an enabled `sendfile`; none when it is off.
fn sendfile_roots(given: Option<&pier_crds::Sendfile>) -> Result<Vec<String>, Invalid> {
    let Some(given) = given.filter(|s| s.enabled) else {
        return Ok(Vec::new());
    };
    if given.roots.is_empty() {
        return Err(Invalid::Root {
            value: String::new(),
            why: "list of sendfile is empty; an enabled sendfile needs a root",
        });
    }
    let mut roots = given
        .roots
        .iter()
        .map(|r| root(r))
        .collect::<Result<Vec<_>, _>>()?;
    roots.sort();
    roots.dedup();
    Ok(roots)
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

/// A header name to edit: a [`token`] the proxy does not own.
fn header_name(name: &str) -> Result<String, Invalid> {
    let lower = token(name)?;
    if RESERVED.contains(&lower.as_str()) {
        return Err(Invalid::Header {
            name: name.to_owned(),
            why: "is managed by the proxy (use rewrite.host for Host)",
        });
    }
    Ok(lower)
}

/// A header name: an HTTP token, lower-cased.
pub(crate) fn token(name: &str) -> Result<String, Invalid> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(Invalid::Header {
            name: name.to_owned(),
            why: "must be an HTTP token",
        });
    }
    Ok(name.to_ascii_lowercase())
}

/// Absent: one retry after a connection failure.
fn retries(given: Option<&Retries>) -> RetryPolicy {
    let Some(given) = given else {
        return RetryPolicy {
            attempts: 1,
            connect_failure: true,
            statuses: Vec::new(),
        };
    };
    let mut statuses: Vec<u16> = given
        .on
        .iter()
        .filter_map(|on| match on {
            RetryOn::ConnectFailure => None,
            RetryOn::Status502 => Some(502),
            RetryOn::Status503 => Some(503),
            RetryOn::Status504 => Some(504),
        })
        .collect();
    statuses.sort_unstable();
    statuses.dedup();
    RetryPolicy {
        attempts: given.attempts.min(5),
        connect_failure: given.on.contains(&RetryOn::ConnectFailure),
        statuses,
    }
}

/// Absent: 5 failures in a row eject for 10 s.
fn ejection(given: Option<&Ejection>) -> Result<EjectionPolicy, Invalid> {
    let Some(given) = given else {
        return Ok(EjectionPolicy {
            consecutive_failures: 5,
            duration_ms: 10_000,
        });
    };
    Ok(EjectionPolicy {
        consecutive_failures: given.consecutive_failures.max(1),
        duration_ms: millis(&given.duration).map_err(|why| Invalid::Timeout {
            field: "ejection.duration",
            value: given.duration.clone(),
            why,
        })?,
    })
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

fn buffering(given: Option<&pier_crds::Buffering>) -> Result<Buffering, Invalid> {
    let Some(given) = given else {
        return Ok(Buffering::default());
    };
    let field = |name: &'static str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| {
                bytes(v).map_err(|why| Invalid::Size {
                    field: name,
                    value: v.to_owned(),
                    why,
                })
            })
            .transpose()
    };
    Ok(Buffering {
        mode: match given.mode {
            pier_crds::BufferingMode::Hybrid => BufferMode::Hybrid,
            pier_crds::BufferingMode::Buffer => BufferMode::Buffer,
            pier_crds::BufferingMode::Stream => BufferMode::Stream,
        },
        memory: field("memory", &given.memory)?.unwrap_or(Buffering::MEMORY),
        disk: field("disk", &given.disk)?.unwrap_or(Buffering::DISK),
        request_body: given.request_body != Some(pier_crds::RequestBuffering::Stream),
        max_body_size: field("maxBodySize", &given.max_body_size)?,
    })
}

/// A Kubernetes-style size (`64Ki`, `1Gi`, `10M`, `4096`) in bytes.
pub(crate) fn bytes(value: &str) -> Result<u64, &'static str> {
    pier_snapshot::units::size(value).map_err(pier_snapshot::units::UnitError::reason)
}

/// `500ms`, `2s`, `1m`, `1m30s` as milliseconds; zero is refused.
fn millis(value: &str) -> Result<u64, &'static str> {
    let duration =
        pier_snapshot::units::duration(value).map_err(pier_snapshot::units::UnitError::reason)?;
    match u64::try_from(duration.as_millis()) {
        Ok(0) => Err("must be above zero"),
        Ok(ms) => Ok(ms),
        Err(_) => Err("is too long"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> pier_crds::ProxyRouteSpec {
        serde_saphyr::from_str(yaml).expect("a ProxyRoute spec")
    }

    #[test]
    fn value_patterns_are_kept_apart_from_exact_values_and_checked() {
        let m = matches(&spec(
            "{backends: [], headers: [{name: X-A, value: '1'}, {name: X-B, value: 'v[0-9]+', type: RegularExpression}], queryParams: [{name: q, value: 'a b', type: RegularExpression}]}",
        ))
        .expect("valid matches");
        assert_eq!(m.headers, [("x-a".to_owned(), "1".to_owned())]);
        assert_eq!(
            m.header_patterns,
            [("x-b".to_owned(), "v[0-9]+".to_owned())]
        );
        assert_eq!(m.query_patterns, [("q".to_owned(), "a b".to_owned())]);
        assert_eq!(m.specificity(), (false, 2, 1));
        for bad in [
            "{backends: [], headers: [{name: X-B, value: '(open', type: RegularExpression}]}",
            "{backends: [], queryParams: [{name: q, value: 'a{1000}{1000}', type: RegularExpression}]}",
            "{backends: [], queryParams: [{name: q, value: 'a b'}]}",
        ] {
            assert!(
                matches!(matches(&spec(bad)), Err(Invalid::Policy { .. })),
                "{bad}"
            );
        }
    }
}
