//! Certificates from `kubernetes.io/tls` Secrets: checked here, in the pure
//! compiler, so a broken Secret is reported in the route's status and never
//! reaches a dataplane.
//!
//! A certificate is usable when `tls.crt` holds at least one PEM
//! certificate (leaf first), `tls.key` one PEM private key that matches the
//! leaf (compared as SubjectPublicKeyInfo by rustls), and the compile time
//! lies inside the leaf's validity period. Messages name the Secret and the
//! problem, never key material.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{Invalid, header_value};
use pier_snapshot::{Certificate, Route, RouteTls};

/// Checks what a route's `tls` says by itself (the Secret is resolved
/// later): the HSTS value must be a header value.
pub(super) fn check_spec(spec: Option<&pier_crds::RouteTls>) -> Result<(), Invalid> {
    if let Some(hsts) = spec.and_then(|t| t.hsts.as_deref()) {
        header_value(hsts).map_err(|why| Invalid::HeaderValue {
            field: "tls.hsts",
            why,
        })?;
    }
    Ok(())
}

/// Secrets by namespace and name.
pub(super) struct Secrets<'a>(HashMap<(&'a str, &'a str), &'a Secret>);

impl<'a> Secrets<'a> {
    pub(super) fn index(secrets: &'a [std::sync::Arc<Secret>]) -> Self {
        Self(
            secrets
                .iter()
                .filter_map(|s| {
                    let namespace = s.metadata.namespace.as_deref().unwrap_or("default");
                    Some(((namespace, s.metadata.name.as_deref()?), &**s))
                })
                .collect(),
        )
    }

    fn get(&self, namespace: &str, name: &str) -> Option<&'a Secret> {
        self.0.get(&(namespace, name)).copied()
    }

    /// The PEM CA certificates in `ca.crt` of Secret `namespace/name`, or
    /// why they cannot be used.
    pub(super) fn ca(&self, namespace: &str, name: &str) -> Result<String, String> {
        let full = format!("{namespace}/{name}");
        let secret = self
            .get(namespace, name)
            .ok_or_else(|| format!("Secret {full} not found"))?;
        let pem = secret
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get("ca.crt"))
                    .map(|s| s.as_bytes().to_vec())
            })
            .ok_or_else(|| format!("Secret {full} has no ca.crt"))?;
        let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|_| format!("Secret {full}: ca.crt is not valid PEM"))?;
        if certs.is_empty() {
            return Err(format!("Secret {full}: ca.crt holds no certificate"));
        }
        String::from_utf8(pem).map_err(|_| format!("Secret {full}: ca.crt is not text"))
    }
}

/// The Secrets routes may name, each checked once, and the certificates
/// accepted routes use, with the hosts they are served for.
pub(super) struct Certificates<'a> {
    secrets: &'a Secrets<'a>,
    now: Option<i64>,
    checked: HashMap<String, Result<Certificate, String>>,
}

impl<'a> Certificates<'a> {
    pub(super) fn new(secrets: &'a Secrets<'a>, now: Option<i64>) -> Self {
        Self {
            secrets,
            now,
            checked: HashMap::new(),
        }
    }

    /// The route's HTTPS settings when the Secret it names holds a usable
    /// certificate (whose hosts then include the route's), or why not.
    pub(super) fn resolve(
        &mut self,
        route: &Route,
        spec: &pier_crds::RouteTls,
    ) -> Result<RouteTls, String> {
        let namespace = route.key.namespace.as_str();
        let name = format!("{namespace}/{}", spec.secret_name);
        let secret = self.secrets.get(namespace, &spec.secret_name);
        let now = self.now;
        let checked = self.checked.entry(name.clone()).or_insert_with(|| {
            check(&name, secret, now).map(|c| Certificate {
                name: name.clone(),
                hosts: Vec::new(),
                chain_pem: c.chain_pem,
                key_pem: c.key_pem,
                not_after: c.not_after,
            })
        });
        let certificate = checked.as_mut().map_err(|why| why.clone())?;
        // Duplicates go in `into_used`: a certificate thousands of routes
        // share must not cost a scan per host.
        certificate.hosts.extend(route.hosts.iter().cloned());
        Ok(RouteTls {
            certificate: name,
            redirect: spec.redirect,
            hsts: spec.hsts.as_deref().map(|h| h.trim().to_owned()),
        })
    }

    /// The certificates some route uses, hosts sorted.
    pub(super) fn into_used(self) -> Vec<Certificate> {
        self.checked
            .into_values()
            .filter_map(Result::ok)
            .map(|mut c| {
                c.hosts.sort_unstable();
                c.hosts.dedup();
                c
            })
            .collect()
    }
}

/// A certificate that passed every check.
pub(super) struct Checked {
    pub(super) chain_pem: String,
    pub(super) key_pem: String,
    pub(super) not_after: i64,
}

/// Checks the Secret a route names (`None`: not found) at Unix time `now`
/// (`None`: validity is not checked).
pub(super) fn check(
    name: &str,
    secret: Option<&Secret>,
    now: Option<i64>,
) -> Result<Checked, String> {
    let secret = secret.ok_or_else(|| format!("Secret {name} not found"))?;
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if kind != "kubernetes.io/tls" {
        return Err(format!(
            "Secret {name} is of type {kind}, not kubernetes.io/tls"
        ));
    }
    let field = |key: &str| -> Result<Vec<u8>, String> {
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone());
        let text = || {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.as_bytes().to_vec())
        };
        data.or_else(text)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("Secret {name} has no {key}"))
    };
    let chain_pem = field("tls.crt")?;
    let key_pem = field("tls.key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("Secret {name}: tls.crt is not valid PEM"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("Secret {name}: tls.crt holds no certificate"));
    };
    let (not_before, not_after) = validity(leaf)
        .ok_or_else(|| format!("Secret {name}: the certificate in tls.crt cannot be parsed"))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| format!("Secret {name}: tls.key holds no PEM private key"))?;
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(format!(
                "Secret {name}: the private key does not match the certificate"
            ));
        }
        // rustls' errors describe the problem, never the key's bytes.
        Err(e) => {
            return Err(format!(
                "Secret {name}: the private key cannot be used: {e}"
            ));
        }
    }
    if let Some(now) = now {
        if now > not_after {
            return Err(format!(
                "Secret {name}: the certificate expired at {}",
                rfc3339(not_after)
            ));
        }
        if now < not_before {
            return Err(format!(
                "Secret {name}: the certificate is not valid before {}",
                rfc3339(not_before)
            ));
        }
    }
    let text = |bytes: Vec<u8>, key: &str| {
        String::from_utf8(bytes).map_err(|_| format!("Secret {name}: {key} is not text"))
    };
    Ok(Checked {
        chain_pem: text(chain_pem, "tls.crt")?,
        key_pem: text(key_pem, "tls.key")?,
        not_after,
    })
}

/// The validity period (`notBefore`, `notAfter`, Unix seconds) of a DER
/// X.509 certificate: `Certificate → tbsCertificate → [version], serial,
/// signature, issuer, validity`. `None` when the structure is not that.
pub(super) fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (cert, _) = tlv(der, 0x30)?;
    let (tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest, 0xa0)?.1;
    }
    rest = tlv(rest, 0x02)?.1; // serialNumber
    rest = tlv(rest, 0x30)?.1; // signature
    rest = tlv(rest, 0x30)?.1; // issuer
    let (validity, _) = tlv(rest, 0x30)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Some((not_before, not_after))
}

/// One DER element of tag `tag`: its contents and what follows it.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    rest.split_at_checked(len)
}

/// A `UTCTime` (`YYMMDDHHMMSSZ`, years 1950–2049) or `GeneralizedTime`
/// (`YYYYMMDDHHMMSSZ`) as Unix seconds, and what follows it.
fn time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (tag, short) = match input.first()? {
        0x17 => (0x17, true),
        0x18 => (0x18, false),
        _ => return None,
    };
    let (text, rest) = tlv(input, tag)?;
    let digits = text.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        digits
            .get(range)?
            .iter()
            .try_fold(0i64, |n, &d| Some(n * 10 + i64::from(d - b'0')))
    };
    let (year, at) = if short {
        if digits.len() != 12 {
            return None;
        }
        let yy = number(0..2)?;
        (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
    } else {
        if digits.len() != 14 {
            return None;
        }
        (number(0..4)?, 4)
    };
    let field = |i: usize| number(at + 2 * i..at + 2 * i + 2);
    let (month, day, hour, minute, second) =
        (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second, rest))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub(super) fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_both_ways() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn both_time_forms_parse_and_garbage_does_not() {
        let utc = [
            0x17, 13, b'2', b'6', b'1', b'2', b'0', b'1', b'1', b'2', b'0', b'0', b'0', b'0', b'Z',
        ];
        assert_eq!(
            time(&utc).map(|(t, _)| rfc3339(t)),
            Some("2026-12-01T12:00:00Z".into())
        );
        let generalized = b"\x18\x0f20500101000000Z";
        assert_eq!(
            time(generalized).map(|(t, _)| rfc3339(t)),
            Some("2050-01-01T00:00:00Z".into())
        );
        assert_eq!(time(b"\x17\x0d261301120000Z"), None, "month 13");
        assert_eq!(time(b"\x17\x0d2612011200"), None, "truncated");
        assert_eq!(validity(b"\x30\x84\xff\xff\xff\xff"), None);
        assert_eq!(validity(b""), None);
    }
}
