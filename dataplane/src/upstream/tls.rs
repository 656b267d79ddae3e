//! TLS towards a route's backends: the route's CA and server name.

use std::hash::Hasher as _;
use std::sync::Arc;

use tokio::net::TcpStream;

/// TLS towards a route's backends.
pub(crate) struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    /// Tells this route's TLS connections apart in the pools from plain
    /// ones, and from those of routes verifying other names or CAs.
    id: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    pub(crate) fn new(tls: &pier_snapshot::UpstreamTls) -> Option<Self> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            rustls::pki_types::CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()).flatten()
        {
            // A CA rustls cannot use is left out: fewer anchors trust less.
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone()).ok()?;
        let mut key = tls.server_name.as_bytes().to_vec();
        key.extend_from_slice(tls.ca_pem.as_bytes());
        Some(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
            id: {
                let mut h = pier_snapshot::fnv::Fnv::default();
                h.write(&key);
                h.finish() | 1
            },
        })
    }

    /// Tells this TLS apart in the idle pools (never 0, which is plain).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The handshake on a connected socket.
    pub(crate) fn connect(&self, tcp: TcpStream) -> tokio_rustls::Connect<TcpStream> {
        self.connector.connect(self.name.clone(), tcp)
    }
}
