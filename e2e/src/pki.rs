//! Keys and certificates for one control plane, made with rcgen.
//!
//! One CA signs everything: the API server's serving certificate (for
//! `127.0.0.1` and `localhost`) and the client certificates users
//! authenticate with (`CN` = user name, `O` = group). The API server trusts
//! the same CA for clients through `--client-ca-file`. All keys are ECDSA
//! P-256.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::HarnessError;

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Debug)]
pub(crate) struct CertAndKey {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// The certificate authority of one control plane.
#[derive(Debug)]
pub(crate) struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// Makes a fresh CA.
    pub(crate) fn new() -> Result<Self, HarnessError> {
        let key = KeyPair::generate().map_err(|e| HarnessError::cert("the CA key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("pier-e2e-ca", None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, key)
            .map_err(|e| HarnessError::cert("the CA certificate", e))?;
        Ok(Self { ca })
    }

    /// The CA certificate, PEM.
    pub(crate) fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A serving certificate for `dns_names` and `ips` (its subject's `CN`
    /// is `common_name`).
    pub(crate) fn serving(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ips: &[IpAddr],
    ) -> Result<CertAndKey, HarnessError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, None);
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for name in dns_names {
            let name = (*name)
                .to_owned()
                .try_into()
                .map_err(|e| HarnessError::cert(format!("the DNS name {name}"), e))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.leaf(&format!("a serving certificate for {common_name}"), params)
    }

    /// A client certificate for `user`, member of `group` if given.
    /// `system:masters` makes an administrator that RBAC never restricts.
    pub(crate) fn client(
        &self,
        user: &str,
        group: Option<&str>,
    ) -> Result<CertAndKey, HarnessError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(user, group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(&format!("a client certificate for {user}"), params)
    }

    fn leaf(&self, what: &str, mut params: CertificateParams) -> Result<CertAndKey, HarnessError> {
        let key = KeyPair::generate().map_err(|e| HarnessError::cert(what, e))?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.ca)
            .map_err(|e| HarnessError::cert(what, e))?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A key pair for signing and verifying service-account tokens: the private
/// key as PKCS#8 PEM (`--service-account-signing-key-file`) and the public
/// key as SubjectPublicKeyInfo PEM (`--service-account-key-file`; the API
/// server does not read EC public keys out of a PKCS#8 file).
pub(crate) fn service_account_key() -> Result<(String, String), HarnessError> {
    let key = KeyPair::generate().map_err(|e| HarnessError::cert("the service-account key", e))?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(organization) = organization {
        dn.push(DnType::OrganizationName, organization);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}
