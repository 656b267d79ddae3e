//! A `ProxyRoute`'s choice of endpoint: its balancer and its session
//! affinity.

use pier_crds::{BalancerType, SameSite};
use pier_snapshot::{Affinity, Balance, HashKey, Invalid};

/// The affinity cookie's name when the route gives none.
pub(crate) const AFFINITY_COOKIE: &str = "pier-affinity";

pub(crate) fn balance(given: Option<&pier_crds::Balancer>) -> Result<Balance, Invalid> {
    let Some(given) = given else {
        return Ok(Balance::RoundRobin);
    };
    let invalid = |why| Invalid::Balancer { why };
    match given.kind {
        BalancerType::RoundRobin | BalancerType::LeastRequest if given.hash_on.is_some() => {
            Err(invalid("hashOn applies to ConsistentHash only"))
        }
        BalancerType::RoundRobin => Ok(Balance::RoundRobin),
        BalancerType::LeastRequest => Ok(Balance::LeastRequest),
        BalancerType::ConsistentHash => {
            let on = given
                .hash_on
                .as_ref()
                .ok_or(invalid("ConsistentHash needs hashOn"))?;
            let keys = [
                on.uri.as_ref().map(|_| HashKey::Uri),
                on.header
                    .as_ref()
                    .map(|h| HashKey::Header(h.to_ascii_lowercase())),
                on.cookie.as_ref().map(|c| HashKey::Cookie(c.clone())),
                on.source_ip.as_ref().map(|_| HashKey::SourceIp),
            ];
            let mut keys = keys.into_iter().flatten();
            let (Some(key), None) = (keys.next(), keys.next()) else {
                return Err(invalid(
                    "hashOn takes exactly one of uri, header, cookie, sourceIP",
                ));
            };
            let bounded_load_permille = match given.bounded_load {
                None => None,
                Some(load) if (1.0..=100.0).contains(&load) => Some((load * 1000.0).round() as u32),
                Some(_) => return Err(invalid("boundedLoad must be between 1.0 and 100")),
            };
            Ok(Balance::ConsistentHash {
                key,
                bounded_load_permille,
            })
        }
    }
}

/// Session affinity: the cookie and its attributes, checked.
pub(crate) fn affinity(given: Option<&pier_crds::Affinity>) -> Result<Option<Affinity>, Invalid> {
    let Some(given) = given else {
        return Ok(None);
    };
    let invalid = |why| Invalid::Balancer { why };
    let c = &given.cookie;
    let cookie = c.name.as_deref().unwrap_or(AFFINITY_COOKIE);
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if cookie.is_empty() || !cookie.bytes().all(tchar) {
        return Err(invalid("affinity.cookie.name must be an HTTP token"));
    }
    let path = c.path.as_deref().unwrap_or("/");
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b == b';' || !(0x21..=0x7e).contains(&b))
    {
        return Err(invalid(
            "affinity.cookie.path must be an absolute path without ';', spaces or controls",
        ));
    }
    let max_age_s = match &c.max_age {
        None => None,
        Some(v) => match pier_snapshot::units::duration(v) {
            Ok(d) if d.as_secs() > 0 => Some(d.as_secs()),
            _ => {
                return Err(invalid(
                    "affinity.cookie.maxAge must be a duration of a second or more",
                ));
            }
        },
    };
    let same_site = c.same_site.map(|s| match s {
        SameSite::Strict => "Strict",
        SameSite::Lax => "Lax",
        SameSite::None => "None",
    });
    Ok(Some(Affinity {
        cookie: cookie.to_owned(),
        path: path.to_owned(),
        max_age_s,
        // Browsers drop a `SameSite=None` cookie that is not `Secure`.
        secure: c.secure.unwrap_or(false) || same_site == Some("None"),
        http_only: c.http_only.unwrap_or(true),
        same_site: same_site.map(str::to_owned),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie(yaml: &str) -> Result<Option<Affinity>, Invalid> {
        let given: pier_crds::Affinity =
            serde_saphyr::from_str(&format!("cookie: {yaml}")).expect("an affinity");
        affinity(Some(&given))
    }

    #[test]
    fn affinity_has_safe_defaults_and_takes_every_attribute() {
        assert_eq!(affinity(None), Ok(None));
        let plain = cookie("{}").expect("valid").expect("affinity");
        assert_eq!(
            (plain.cookie.as_str(), plain.path.as_str()),
            (AFFINITY_COOKIE, "/")
        );
        assert!(plain.http_only && !plain.secure);
        assert_eq!((plain.max_age_s, plain.same_site), (None, None));
        let full = cookie(
            "{name: s, path: /app, maxAge: 2h, secure: true, httpOnly: false, sameSite: Strict}",
        )
        .expect("valid")
        .expect("affinity");
        assert_eq!(full.max_age_s, Some(7200));
        assert!(full.secure && !full.http_only);
        assert_eq!(full.same_site.as_deref(), Some("Strict"));
        let none = cookie("{sameSite: None}")
            .expect("valid")
            .expect("affinity");
        assert!(none.secure, "browsers drop SameSite=None without Secure");
    }

    #[test]
    fn affinity_refuses_what_a_cookie_cannot_carry() {
        for bad in [
            "{name: \"a b\"}",
            "{name: \"a;b\"}",
            "{path: app}",
            "{path: \"/a;b\"}",
            "{maxAge: 0s}",
            "{maxAge: soon}",
        ] {
            assert!(
                matches!(cookie(bad), Err(Invalid::Balancer { .. })),
                "{bad}"
            );
        }
    }
}
