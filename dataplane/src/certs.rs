//! A snapshot's server certificates by SNI name: exact names, then the
//! nearest wildcard. Built with the table, read by the TLS front end at
//! each handshake.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A snapshot's certificates by SNI name, built with its table.
#[derive(Default)]
pub(crate) struct Certificates {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Certificates {
    /// Loads the snapshot's certificates. The compiler checked each one;
    /// one that still fails here (a damaged snapshot) is left out, logged
    /// by name only.
    pub(crate) fn new(certificates: &[pier_snapshot::Certificate]) -> Self {
        let mut out = Self::default();
        for certificate in certificates {
            let key = match certified(
                certificate.chain_pem.as_bytes(),
                certificate.key_pem.as_bytes(),
            ) {
                Ok(key) => Arc::new(key),
                Err(why) => {
                    tracing::warn!(certificate = %certificate.name, why, "certificate left out");
                    continue;
                }
            };
            for host in &certificate.hosts {
                let table = match host.strip_prefix("*.") {
                    Some(suffix) => (&mut out.wildcard, suffix),
                    None => (&mut out.exact, host.as_str()),
                };
                table
                    .0
                    .entry(table.1.into())
                    .or_insert_with(|| Arc::clone(&key));
            }
        }
        out
    }

    /// The certificate for an SNI name: the exact name, then the nearest
    /// wildcard.
    pub(crate) fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let mut buf = [0u8; 256];
        let lower = buf.get_mut(..name.len())?;
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        let name = std::str::from_utf8(lower).ok()?;
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(key) = self.exact.get(name) {
            return Some(key);
        }
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(key) = self.wildcard.get(rest) {
                return Some(key);
            }
        }
        None
    }
}

/// A chain and key from PEM, checked to belong together.
pub(crate) fn certified(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, &'static str> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| "the certificate is not valid PEM")?;
    if chain.is_empty() {
        return Err("no certificate");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| "no PEM private key")?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(|_| "the key does not match the certificate, or cannot sign")
}
