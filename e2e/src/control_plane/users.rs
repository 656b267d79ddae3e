//! Credentials for tests: clients and kubeconfigs as a given user or
//! service account, and serving certificates from the cluster's CA.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ObjectMeta, PostParams};

use super::ControlPlane;
use super::kubeconfig::{Credentials, client_from_kubeconfig, write_file, write_kubeconfig};
use crate::HarnessError;

impl ControlPlane {
    /// Writes a kubeconfig that authenticates as `user` (certificate
    /// `CN`), member of `group` (`O`) if given, and returns its path. RBAC
    /// grants such a user nothing until bindings name it.
    ///
    /// # Errors
    /// On certificate or I/O errors.
    pub fn kubeconfig_for_user(
        &self,
        user: &str,
        group: Option<&str>,
    ) -> Result<PathBuf, HarnessError> {
        let n = self.minted.fetch_add(1, Ordering::Relaxed);
        let pair = self.pki.client(user, group)?;
        let users = self.dir.path().join("users");
        std::fs::create_dir_all(&users)
            .map_err(|e| HarnessError::io(format!("creating {}", users.display()), e))?;
        let cert = users.join(format!("user-{n}.crt"));
        let key = users.join(format!("user-{n}.key"));
        write_file(&cert, &pair.cert_pem)?;
        write_file(&key, &pair.key_pem)?;
        let path = users.join(format!("user-{n}.kubeconfig"));
        write_kubeconfig(
            &path,
            &self.server_url,
            &self.pki_dir().join("ca.crt"),
            Credentials::Certificate {
                cert: &cert,
                key: &key,
            },
        )?;
        Ok(path)
    }

    /// A client that authenticates as `user`, member of `group` if given;
    /// see [`ControlPlane::kubeconfig_for_user`].
    ///
    /// # Errors
    /// On certificate, I/O or client configuration errors.
    pub async fn client_for_user(
        &self,
        user: &str,
        group: Option<&str>,
    ) -> Result<kube::Client, HarnessError> {
        let path = self.kubeconfig_for_user(user, group)?;
        client_from_kubeconfig(&path).await
    }

    /// A client that authenticates as the service account `namespace/name`
    /// with a token from the TokenRequest API, exactly as a pod would. The
    /// service account is created if it does not exist (the namespace must).
    ///
    /// # Errors
    /// On API, I/O or client configuration errors.
    pub async fn client_for_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<kube::Client, HarnessError> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => {
                return Err(HarnessError::kube(
                    format!("creating service account {namespace}/{name}"),
                    e,
                ));
            }
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![self.server_url.clone()],
                expiration_seconds: Some(24 * 3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(|e| {
                HarnessError::kube(format!("requesting a token for {namespace}/{name}"), e)
            })?
            .status
            .map(|status| status.token)
            .unwrap_or_default();

        let n = self.minted.fetch_add(1, Ordering::Relaxed);
        let users = self.dir.path().join("users");
        std::fs::create_dir_all(&users)
            .map_err(|e| HarnessError::io(format!("creating {}", users.display()), e))?;
        let token_file = users.join(format!("sa-{n}.token"));
        write_file(&token_file, &token)?;
        let path = users.join(format!("sa-{n}.kubeconfig"));
        write_kubeconfig(
            &path,
            &self.server_url,
            &self.pki_dir().join("ca.crt"),
            Credentials::TokenFile(&token_file),
        )?;
        client_from_kubeconfig(&path).await
    }

    /// Issues a TLS serving certificate signed by the control plane's CA
    /// (see [`ControlPlane::ca_pem`]) for the DNS names `name` and
    /// `localhost` and the address `127.0.0.1`, for servers a test runs
    /// beside the control plane (a webhook, Pier's snapshot service).
    /// Returns the certificate and its PKCS#8 private key, both PEM.
    ///
    /// # Errors
    /// When `name` is not a valid DNS name, or on key generation errors.
    pub fn issue_serving_cert(&self, name: &str) -> Result<(String, String), HarnessError> {
        let mut dns_names = vec![name];
        if name != "localhost" {
            dns_names.push("localhost");
        }
        let pair = self
            .pki
            .serving(name, &dns_names, &[IpAddr::V4(Ipv4Addr::LOCALHOST)])?;
        Ok((pair.cert_pem, pair.key_pem))
    }
}
