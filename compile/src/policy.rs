//! A route's request-phase rules (access lists, CORS, redirects): checked
//! here whatever resource they come from, so an Ingress annotation and a
//! ProxyRoute field mean the same thing.

use pier_snapshot::cidr::Cidr;
use pier_snapshot::{Cors, PathRule, Policy, Redirect, RedirectPath, RedirectTo};

use super::{Invalid, clean_path, header_value, host};

/// Methods a preflight may ask for when a route names none (those of
/// ingress-nginx's `cors-allow-methods` default).
pub(crate) const CORS_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
/// Request headers a preflight may ask for when a route names none.
pub(crate) const CORS_HEADERS: &str = "DNT, Keep-Alive, User-Agent, X-Requested-With, If-Modified-Since, Cache-Control, Content-Type, Range, Authorization";
/// How long a preflight answer may be cached when a route says nothing: 24 h.
pub(crate) const CORS_MAX_AGE: u64 = 86_400;

/// Checks networks and prints them the one way the dataplane reads them.
pub(crate) fn networks<'a>(
    field: &'static str,
    given: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, Invalid> {
    let mut out = Vec::new();
    for value in given {
        let cidr = Cidr::parse(value).map_err(|why| Invalid::Policy {
            field,
            value: value.to_owned(),
            why,
        })?;
        out.push(cidr);
    }
    out.sort();
    out.dedup();
    Ok(out.iter().map(Cidr::to_string).collect())
}

/// A route's `access`.
pub(crate) fn access(
    given: Option<&pier_crds::Access>,
) -> Result<(Vec<String>, Vec<String>), Invalid> {
    let Some(given) = given else {
        return Ok(Default::default());
    };
    Ok((
        networks("access.allow", given.allow.iter().map(String::as_str))?,
        networks("access.deny", given.deny.iter().map(String::as_str))?,
    ))
}

/// One CORS origin: `*`, or `scheme://host[:port]` with at most one
/// leading `*.` label.
pub(crate) fn origin(field: &'static str, value: &str) -> Result<String, Invalid> {
    let invalid = |why| Invalid::Policy {
        field,
        value: value.to_owned(),
        why,
    };
    let value = value.trim();
    if value == "*" {
        return Ok(value.to_owned());
    }
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| invalid("must be `*` or start with http:// or https://"))?;
    let name = match rest.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => name,
        _ => rest,
    };
    host(name).map_err(|_| invalid("must be an origin: scheme://host[:port], no path"))?;
    Ok(value.to_ascii_lowercase())
}

/// A comma-separated list for a CORS header: each item a token.
pub(crate) fn token_list<'a>(
    field: &'static str,
    items: impl IntoIterator<Item = &'a str>,
) -> Result<String, Invalid> {
    let mut out: Vec<&str> = Vec::new();
    for item in items {
        let item = item.trim();
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if item.is_empty() || !item.bytes().all(token) {
            return Err(Invalid::Policy {
                field,
                value: item.to_owned(),
                why: "must be a list of HTTP tokens",
            });
        }
        out.push(item);
    }
    Ok(out.join(", "))
}

/// A route's `cors`.
pub(crate) fn cors(given: Option<&pier_crds::Cors>) -> Result<Option<Cors>, Invalid> {
    let Some(given) = given else {
        return Ok(None);
    };
    let mut allow_origins = given
        .allow_origins
        .iter()
        .map(|o| origin("cors.allowOrigins", o))
        .collect::<Result<Vec<_>, _>>()?;
    if allow_origins.is_empty() {
        allow_origins.push("*".to_owned());
    }
    let max_age = match &given.max_age {
        None => CORS_MAX_AGE,
        Some(value) => pier_snapshot::units::duration(value)
            .map_err(|e| Invalid::Policy {
                field: "cors.maxAge",
                value: value.clone(),
                why: e.reason(),
            })?
            .as_secs(),
    };
    let list = |field, items: &[String], default: &str| {
        if items.is_empty() {
            Ok(default.to_owned())
        } else {
            token_list(field, items.iter().map(String::as_str))
        }
    };
    Ok(Some(Cors {
        allow_origins,
        allow_methods: list("cors.allowMethods", &given.allow_methods, CORS_METHODS)?,
        allow_headers: list("cors.allowHeaders", &given.allow_headers, CORS_HEADERS)?,
        expose_headers: list("cors.exposeHeaders", &given.expose_headers, "")?,
        allow_credentials: given.allow_credentials,
        max_age,
    }))
}

/// A redirect status: 301, 302, 303, 307 or 308.
pub(crate) fn redirect_status(field: &'static str, code: u16) -> Result<u16, Invalid> {
    match code {
        301 | 302 | 303 | 307 | 308 => Ok(code),
        _ => Err(Invalid::Policy {
            field,
            value: code.to_string(),
            why: "must be 301, 302, 303, 307 or 308",
        }),
    }
}

/// A redirect to a fixed URL: absolute (`https://…`) or an absolute path.
pub(crate) fn redirect_url(field: &'static str, value: &str) -> Result<String, Invalid> {
    let invalid = |why| Invalid::Policy {
        field,
        value: value.to_owned(),
        why,
    };
    let url = header_value(value).map_err(invalid)?;
    let absolute = url.starts_with("http://") || url.starts_with("https://");
    if !(absolute || url.starts_with('/')) || url.contains(' ') {
        return Err(invalid(
            "must be an http(s) URL or a path starting with `/`, without spaces",
        ));
    }
    Ok(url)
}

/// A route's `redirect`.
pub(crate) fn redirect(
    given: Option<&pier_crds::Redirect>,
    path: &PathRule,
) -> Result<Option<Redirect>, Invalid> {
    let Some(given) = given else {
        return Ok(None);
    };
    let status = redirect_status("redirect.statusCode", given.status_code.unwrap_or(302))?;
    if let Some(url) = &given.url {
        return Ok(Some(Redirect {
            status,
            to: RedirectTo::Url(redirect_url("redirect.url", url)?),
        }));
    }
    let scheme = match given.scheme.as_deref() {
        None => None,
        Some(s @ ("http" | "https")) => Some(s.to_owned()),
        Some(other) => {
            return Err(Invalid::Policy {
                field: "redirect.scheme",
                value: other.to_owned(),
                why: "must be http or https",
            });
        }
    };
    let hostname = match &given.hostname {
        None => None,
        Some(value) => Some(host(value).map_err(|why| Invalid::Host {
            value: value.clone(),
            why,
        })?),
    };
    let path_of = |value: &str| {
        clean_path(value).map_err(|why| Invalid::Path {
            value: value.to_owned(),
            why,
        })
    };
    let new_path = match &given.path {
        None => RedirectPath::Keep,
        Some(p) => match p.kind {
            pier_crds::RedirectPathType::ReplaceFullPath => RedirectPath::Full(path_of(&p.value)?),
            pier_crds::RedirectPathType::ReplacePrefixMatch => {
                if !matches!(path, PathRule::Prefix(_)) {
                    return Err(Invalid::Policy {
                        field: "redirect.path",
                        value: p.value.clone(),
                        why: "ReplacePrefixMatch needs a PathPrefix match",
                    });
                }
                RedirectPath::Prefix(path_of(&p.value)?)
            }
        },
    };
    Ok(Some(Redirect {
        status,
        to: RedirectTo::Parts {
            scheme,
            host: hostname,
            port: given.port.filter(|p| *p != 0),
            path: new_path,
        },
    }))
}

/// The policy of a `StaticRoute` or `ProxyRoute`.
pub(crate) fn of_spec(
    access_spec: Option<&pier_crds::Access>,
    cors_spec: Option<&pier_crds::Cors>,
    redirect_spec: Option<&pier_crds::Redirect>,
    path: &PathRule,
) -> Result<Policy, Invalid> {
    let (allow, deny) = access(access_spec)?;
    Ok(Policy {
        allow,
        deny,
        cors: cors(cors_spec)?,
        redirect: redirect(redirect_spec, path)?,
        // The caller's: they need the Secrets and the Services.
        basic_auth: None,
        forward_auth: None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pier_snapshot::{PathRule, RedirectPath, RedirectTo};

    use crate::{Action, Resources, compile};

    fn proxy(spec: &str) -> crate::Compiled {
        let route: pier_crds::ProxyRoute = serde_saphyr::from_str(&format!(
            "apiVersion: pier.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: r, namespace: default}}\nspec: {spec}\n"
        ))
        .expect("test manifest parses");
        compile(&Resources {
            proxy_routes: vec![Arc::new(route)],
            ..Resources::default()
        })
    }

    const TO: &str = r#"backends: [{address: "127.0.0.1:80"}]"#;

    #[test]
    fn route_policies_compile_normalised() {
        let out = proxy(&format!(
            r#"{{{TO}, path: {{value: /old}},
                access: {{allow: ["10.0.0.0/8", "10.0.0.0/8", "2001:db8::/32"], deny: [10.1.2.3]}},
                cors: {{allowOrigins: ["https://App.example.com"], allowMethods: [GET, POST], maxAge: 10m}},
                redirect: {{scheme: https, hostname: New.Example.com, path: {{type: ReplacePrefixMatch, value: /new}}, statusCode: 301}}}}"#
        ));
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let policy = &out.snapshot.routes[0].policy;
        assert_eq!(policy.allow, ["10.0.0.0/8", "2001:db8::/32"]);
        assert_eq!(policy.deny, ["10.1.2.3/32"]);
        let cors = policy.cors.as_ref().expect("cors");
        assert_eq!(cors.allow_origins, ["https://app.example.com"]);
        assert_eq!(cors.allow_methods, "GET, POST");
        assert_eq!(cors.allow_headers, super::CORS_HEADERS);
        assert_eq!(cors.max_age, 600);
        let redirect = policy.redirect.as_ref().expect("redirect");
        assert_eq!(redirect.status, 301);
        assert_eq!(
            redirect.to,
            RedirectTo::Parts {
                scheme: Some("https".into()),
                host: Some("new.example.com".into()),
                port: None,
                path: RedirectPath::Prefix("/new".into()),
            }
        );
        let out = proxy(&format!(
            r#"{{{TO}, redirect: {{url: "https://x.example/y"}}}}"#
        ));
        let redirect = out.snapshot.routes[0]
            .policy
            .redirect
            .as_ref()
            .expect("redirect");
        assert_eq!(
            (redirect.status, &redirect.to),
            (302, &RedirectTo::Url("https://x.example/y".into()))
        );
    }

    #[test]
    fn regex_rewrites_compile_and_check_their_groups() {
        let out = proxy(&format!(
            r#"{{{TO}, path: {{type: RegularExpression, value: "/api/.*"}}, rewrite: {{regex: {{pattern: "^/api/(.*)", replacement: "/v2/$1"}}}}}}"#
        ));
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert!(matches!(out.snapshot.routes[0].path, PathRule::Regex(_)));
        let Action::Proxy(action) = &out.snapshot.routes[0].action else {
            panic!("proxy");
        };
        assert_eq!(
            action.rewrite_regex.as_ref().expect("rewrite").replacement,
            "/v2/$1"
        );
    }

    #[test]
    fn bad_policies_are_reported_with_their_reason() {
        for (spec, reason) in [
            (r#"access: {allow: ["10.0.0.1/8"]}"#, "InvalidPolicy"),
            (r#"access: {deny: [example.com]}"#, "InvalidPolicy"),
            (
                r#"cors: {allowOrigins: ["app.example.com"]}"#,
                "InvalidPolicy",
            ),
            (
                r#"cors: {allowOrigins: ["https://a.example/path"]}"#,
                "InvalidPolicy",
            ),
            (r#"cors: {allowHeaders: ["X Bad"]}"#, "InvalidPolicy"),
            (r#"cors: {maxAge: forever}"#, "InvalidPolicy"),
            (r#"redirect: {statusCode: 200}"#, "InvalidPolicy"),
            (r#"redirect: {url: "ftp://x"}"#, "InvalidPolicy"),
            (
                r#"redirect: {path: {type: ReplacePrefixMatch, value: /x}}, path: {type: Exact, value: /a}"#,
                "InvalidPolicy",
            ),
            (
                r#"rewrite: {regex: {pattern: "(", replacement: /x}}"#,
                "InvalidPath",
            ),
            (
                r#"rewrite: {regex: {pattern: "^/(a)", replacement: "/$2"}}"#,
                "InvalidPath",
            ),
            (
                r#"rewrite: {pathPrefix: /p, regex: {pattern: "a", replacement: /b}}"#,
                "InvalidPath",
            ),
        ] {
            let out = proxy(&format!("{{{TO}, {spec}}}"));
            assert_eq!(out.errors.len(), 1, "{spec}");
            assert_eq!(out.errors[0].invalid.reason(), reason, "{spec}");
        }
    }
}
