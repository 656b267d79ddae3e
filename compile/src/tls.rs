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

    pub(super) fn get(&self, namespace: &str, name: &str) -> Option<&'a Secret> {
        self.0.get(&(namespace, name)).copied()
    }

    /// Whether Secret `namespace/name` holds a certificate and key that
    /// can be served at `now`, or why not.
    pub(super) fn usable(
        &self,
        namespace: &str,
        name: &str,
        now: Option<i64>,
    ) -> Result<(), String> {
        check(
            &format!("{namespace}/{name}"),
            self.get(namespace, name),
            now,
        )
        .map(drop)
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
    /// The Secret is `spec.secretName` in `namespace`: the route's, or the
    /// Gateway's for a Gateway API route.
    pub(super) fn resolve(
        &mut self,
        route: &Route,
        namespace: &str,
        spec: &pier_crds::RouteTls,
    ) -> Result<RouteTls, String> {
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
/// X.509 certificate, read by `x509-parser`; `None` when it is not one.
pub(super) fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
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
    fn dates_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn a_certificate_s_validity_is_read_and_garbage_is_not() {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2026, 12, 1);
        params.not_after = rcgen::date_time_ymd(2050, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        assert_eq!(
            validity(cert.der()).map(|(from, to)| (rfc3339(from), rfc3339(to))),
            Some((
                "2026-12-01T00:00:00Z".to_owned(),
                "2050-01-01T00:00:00Z".to_owned()
            ))
        );
        assert_eq!(validity(b"\x30\x84\xff\xff\xff\xff"), None);
        assert_eq!(validity(b""), None);
    }
}
