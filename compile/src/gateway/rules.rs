//! An HTTPRoute rule in `ProxyRoute`'s terms: one spec per match, with the
//! rule's filters and backends. Hosts and TLS come from the listeners.
//!
//! | HTTPRoute | ProxyRoute |
//! |---|---|
//! | `matches[].path` (`Exact`, `PathPrefix`, `RegularExpression`) | `path` |
//! | `matches[].headers`, `queryParams` (`Exact`, `RegularExpression`), `method` | `headers`, `queryParams`, `methods` |
//! | `RequestHeaderModifier`, `ResponseHeaderModifier` | `requestHeaders`, `responseHeaders` |
//! | `RequestRedirect` | `redirect` |
//! | `URLRewrite` (`hostname`, `ReplacePrefixMatch`, `ReplaceFullPath`) | `rewrite.host`, `rewrite.pathPrefix`, `rewrite.regex` |
//! | `backendRefs` (Services, weighted; other namespaces by ReferenceGrant) | `backends` |
//! | `timeouts.backendRequest` (else `request`) | `timeouts.responseHeader` |

use pier_crds::gateway::{HeaderModifier, HttpRouteMatch, HttpRouteRule, PathModifier};
use pier_crds::{
    Backend, Header, HeaderMatch, HeaderOps, HttpMethod, PathMatch, PathMatchType, ProxyRouteSpec,
    QueryParam, Redirect, RedirectPath, RedirectPathType, RegexRewrite, Rewrite, Timeouts,
    ValueMatch,
};

use super::grants::Grants;

/// A rule lowered: one spec per match, and the backend references that
/// did not resolve (the ResolvedRefs reason and message).
#[derive(Debug, Default)]
pub(super) struct Lowered {
    pub(super) specs: Vec<ProxyRouteSpec>,
    /// Per backend of each spec: its Service's namespace when it is not
    /// the route's (a ReferenceGrant allowed it).
    pub(super) namespaces: Vec<Option<String>>,
    pub(super) refs: Vec<(&'static str, String)>,
}

/// Lowers one rule; `Err` says what Pier does not support in it (the
/// route's `Accepted=False`, reason `UnsupportedValue`).
pub(super) fn lower(
    route_ns: &str,
    rule: &HttpRouteRule,
    grants: &Grants<'_>,
) -> Result<Lowered, String> {
    let mut base = ProxyRouteSpec::default();
    for filter in &rule.filters {
        match filter.kind.as_str() {
            "RequestHeaderModifier" => {
                base.request_headers = filter.request_header_modifier.as_ref().map(ops)
            }
            "ResponseHeaderModifier" => {
                base.response_headers = filter.response_header_modifier.as_ref().map(ops)
            }
            "RequestRedirect" => {
                let r = filter.request_redirect.clone().unwrap_or_default();
                base.redirect = Some(Redirect {
                    url: None,
                    scheme: r.scheme,
                    hostname: r.hostname,
                    port: r.port.and_then(|p| u16::try_from(p).ok()),
                    path: r.path.as_ref().map(redirect_path).transpose()?,
                    status_code: Some(
                        r.status_code
                            .and_then(|c| u16::try_from(c).ok())
                            .unwrap_or(302),
                    ),
                });
            }
            "URLRewrite" => {
                let r = filter.url_rewrite.clone().unwrap_or_default();
                let mut rewrite = Rewrite {
                    host: r.hostname,
                    ..Rewrite::default()
                };
                match r.path.as_ref().map(|p| (p.kind.as_str(), p)) {
                    None => {}
                    Some(("ReplacePrefixMatch", p)) => {
                        rewrite.path_prefix =
                            Some(p.replace_prefix_match.clone().unwrap_or_else(|| "/".into()))
                    }
                    Some(("ReplaceFullPath", p)) => {
                        let path = p.replace_full_path.clone().unwrap_or_else(|| "/".into());
                        if path.contains('$') {
                            return Err(format!("URLRewrite path {path:?} contains `$`"));
                        }
                        rewrite.regex = Some(RegexRewrite {
                            pattern: "^.*$".to_owned(),
                            replacement: path,
                        });
                    }
                    Some((other, _)) => return Err(format!("URLRewrite path type {other}")),
                }
                base.rewrite = Some(rewrite);
            }
            other => return Err(format!("filter {other} is not supported")),
        }
    }
    if let Some(t) = &rule.timeouts {
        base.timeouts = Some(Timeouts {
            response_header: t.backend_request.clone().or(t.request.clone()),
            ..Timeouts::default()
        });
    }
    let mut out = Lowered::default();
    for backend in &rule.backend_refs {
        let ns = backend.namespace.as_deref().unwrap_or(route_ns);
        let name = &backend.name;
        if !backend.filters.is_empty() {
            return Err(format!("filters on backendRef {name} are not supported"));
        }
        if backend.group.as_deref().is_some_and(|g| !g.is_empty())
            || backend.kind.as_deref().is_some_and(|k| k != "Service")
        {
            out.refs.push((
                "InvalidKind",
                format!("backendRef {name} is not a core Service"),
            ));
            continue;
        }
        if ns != route_ns && !grants.allows("HTTPRoute", route_ns, "", "Service", ns, name) {
            out.refs.push((
                "RefNotPermitted",
                format!(
                    "Service {ns}/{name} is in another namespace and no ReferenceGrant there allows it"
                ),
            ));
            continue;
        }
        let Some(port) = backend.port.and_then(|p| u16::try_from(p).ok()) else {
            out.refs
                .push(("BackendNotFound", format!("backendRef {name} needs a port")));
            continue;
        };
        base.backends.push(Backend {
            service: Some(name.clone()),
            port: Some(port),
            address: None,
            weight: Some(u32::try_from(backend.weight.unwrap_or(1)).unwrap_or(0)),
        });
        out.namespaces.push((ns != route_ns).then(|| ns.to_owned()));
    }
    // Weights of 0 only: requests get no backend (503), as with none.
    if base.backends.iter().all(|b| b.weight == Some(0)) {
        base.backends.clear();
        out.namespaces.clear();
    }
    let default = [HttpRouteMatch::default()];
    let matches = if rule.matches.is_empty() {
        &default[..]
    } else {
        &rule.matches
    };
    for m in matches {
        let mut spec = base.clone();
        one_match(m, &mut spec)?;
        out.specs.push(spec);
    }
    Ok(out)
}

fn one_match(m: &HttpRouteMatch, spec: &mut ProxyRouteSpec) -> Result<(), String> {
    let path = m.path.clone().unwrap_or_default();
    let kind = match path.kind.as_deref().unwrap_or("PathPrefix") {
        "PathPrefix" => PathMatchType::PathPrefix,
        "Exact" => PathMatchType::Exact,
        "RegularExpression" => PathMatchType::RegularExpression,
        other => return Err(format!("path match type {other}")),
    };
    spec.path = Some(PathMatch {
        kind,
        value: path.value.unwrap_or_else(|| "/".to_owned()),
    });
    for h in &m.headers {
        spec.headers.push(HeaderMatch {
            name: h.name.clone(),
            value: h.value.clone(),
            kind: Some(value_match(h.kind.as_deref(), "header")?),
        });
    }
    for q in &m.query_params {
        spec.query_params.push(QueryParam {
            name: q.name.clone(),
            value: q.value.clone(),
            kind: Some(value_match(q.kind.as_deref(), "query parameter")?),
        });
    }
    if let Some(method) = &m.method {
        let parsed = HttpMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == method)
            .ok_or_else(|| format!("method {method}"))?;
        spec.methods.push(parsed);
    }
    Ok(())
}

fn value_match(kind: Option<&str>, what: &str) -> Result<ValueMatch, String> {
    match kind.unwrap_or("Exact") {
        "Exact" => Ok(ValueMatch::Exact),
        "RegularExpression" => Ok(ValueMatch::RegularExpression),
        other => Err(format!("{what} match type {other} is not supported")),
    }
}

fn ops(m: &HeaderModifier) -> HeaderOps {
    let pairs = |given: &[pier_crds::gateway::NameValue]| {
        given
            .iter()
            .map(|h| Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    HeaderOps {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.clone(),
    }
}

fn redirect_path(p: &PathModifier) -> Result<RedirectPath, String> {
    Ok(match p.kind.as_str() {
        "ReplaceFullPath" => RedirectPath {
            kind: RedirectPathType::ReplaceFullPath,
            value: p.replace_full_path.clone().unwrap_or_else(|| "/".into()),
        },
        "ReplacePrefixMatch" => RedirectPath {
            kind: RedirectPathType::ReplacePrefixMatch,
            value: p.replace_prefix_match.clone().unwrap_or_else(|| "/".into()),
        },
        other => return Err(format!("RequestRedirect path type {other}")),
    })
}
