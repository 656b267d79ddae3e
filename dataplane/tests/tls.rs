//! HTTPS over real sockets: certificates from `kubernetes.io/tls` Secret
//! manifests in the routes directory, chosen by SNI, ALPN, rotation, broken
//! Secrets, redirects and HSTS, and keys never shown.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::{Logs, Running, static_route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// A test CA issuing leaf certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        Self { issuer }
    }

    /// A leaf for `names`, valid from `not_before` to `not_after` (years).
    fn leaf(&self, names: &[&str], years: (i32, i32)) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("names");
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// A client trusting this CA, offering `versions`.
    fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.issuer.pem().as_bytes()).expect("CA PEM");
        roots.add(ca).expect("root");
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    /// A client offering `alpn` whose every handshake is a full one: a
    /// resumed session shows the certificate of the session it resumes,
    /// not the one served now.
    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut config = self.client(rustls::DEFAULT_VERSIONS);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.resumption = rustls::client::Resumption::disabled();
        TlsConnector::from(Arc::new(config))
    }
}

/// A Secret manifest as a user would apply it.
fn secret(name: &str, cert: &str, key: &str) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    )
}

/// Handshakes with SNI `name`, sends a GET, returns the subject names of
/// the certificate served, the ALPN protocol and the response text.
async fn fetch(
    pier: &Running,
    connector: &TlsConnector,
    name: &str,
    path: &str,
) -> std::io::Result<(Vec<u8>, Option<Vec<u8>>, String)> {
    let tcp = tokio::net::TcpStream::connect(pier.tls).await?;
    let server = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
    let mut tls = connector.connect(server, tcp).await?;
    let (_, session) = tls.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    if alpn.as_deref() == Some(b"h2") {
        return Ok((leaf, alpn, String::new()));
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await?;
    Ok((leaf, alpn, String::from_utf8_lossy(&response).into_owned()))
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("PEM")
        .to_vec()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn sni_picks_the_certificate_alpn_the_protocol_and_rotation_takes_effect() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("temp dir");
    support::write(dir.path(), "index.html", b"secure site");
    let root = dir.path().display().to_string();
    let (a_cert, a_key) = ca.leaf(&["a.example"], (2020, 2090));
    let (b_cert, b_key) = ca.leaf(&["*.b.example"], (2020, 2090));
    let pier = Running::start(
        &[
            (
                "a.yaml",
                &static_route(
                    "a",
                    &format!(
                        "{{root: \"{root}\", hosts: [a.example], tls: {{secretName: a-tls, hsts: \"max-age=600\"}}}}"
                    ),
                ),
            ),
            (
                "b.yaml",
                &static_route(
                    "b",
                    &format!(
                        "{{root: \"{root}\", hosts: [\"*.b.example\"], tls: {{secretName: b-tls, redirect: true}}}}"
                    ),
                ),
            ),
            ("a-tls.yaml", &secret("a-tls", &a_cert, &a_key)),
            ("b-tls.yaml", &secret("b-tls", &b_cert, &b_key)),
        ],
        &[],
    );
    let http1 = ca.connector(&[b"http/1.1"]);
    let h2 = ca.connector(&[b"h2", b"http/1.1"]);
    runtime().block_on(async {
        let (leaf, alpn, text) = fetch(&pier, &http1, "a.example", "/").await.expect("a");
        assert_eq!(leaf, der(&a_cert), "a.example gets its own certificate");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("secure site"), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("strict-transport-security: max-age=600"),
            "{text}"
        );
        let (leaf, _, _) = fetch(&pier, &http1, "x.b.example", "/").await.expect("b");
        assert_eq!(
            leaf,
            der(&b_cert),
            "a wildcard name gets the wildcard certificate"
        );
        let (_, alpn, _) = fetch(&pier, &h2, "a.example", "/").await.expect("h2");
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "ALPN offers h2");
        // No certificate for the name and no default: the handshake fails.
        assert!(fetch(&pier, &http1, "other.example", "/").await.is_err());
    });
    // Plain HTTP: redirected where the route asks, HSTS only over TLS.
    let res = pier.request("GET /x?y=1 HTTP/1.1\r\nHost: x.b.example:8080\r\n\r\n");
    assert_eq!(res.status, 308);
    assert_eq!(res.header("location"), Some("https://x.b.example/x?y=1"));
    let res = pier.request("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("strict-transport-security"), None);

    // Rotation: a new certificate in the Secret reaches new connections
    // without a restart; a connection made before keeps working.
    let (new_cert, new_key) = ca.leaf(&["a.example"], (2021, 2091));
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(pier.tls)
            .await
            .expect("connect");
        let name = ServerName::try_from("a.example").expect("name");
        let mut old = http1.connect(name, tcp).await.expect("old connection");
        std::fs::write(
            pier.routes.join("a-tls.yaml"),
            secret("a-tls", &new_cert, &new_key),
        )
        .expect("rotate");
        let mut rotated = false;
        for _ in 0..100 {
            let (leaf, _, _) = fetch(&pier, &http1, "a.example", "/").await.expect("a");
            if leaf == der(&new_cert) {
                rotated = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(rotated, "the rotated certificate is served");
        old.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            .await
            .expect("old connection still writes");
        let mut response = Vec::new();
        old.read_to_end(&mut response)
            .await
            .expect("old connection still reads");
        assert!(response.starts_with(b"HTTP/1.1 200"));
    });
    let metrics = pier.admin("/metrics").text();
    assert!(
        metrics.contains("pier_dataplane_tls_certificate_expiry_timestamp_seconds{certificate=\"default/a-tls\",host=\"a.example\"} 3818448000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pier_dataplane_tls_handshakes_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pier_dataplane_tls_no_certificate_total 1"),
        "{metrics}"
    );
}

#[test]
fn broken_secrets_are_reported_and_keys_never_shown() {
    let logs = Logs::capture();
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("temp dir");
    support::write(dir.path(), "index.html", b"site");
    let root = dir.path().display().to_string();
    let (good_cert, good_key) = ca.leaf(&["good.example"], (2020, 2090));
    let (other_cert, _) = ca.leaf(&["mismatch.example"], (2020, 2090));
    let (expired_cert, expired_key) = ca.leaf(&["expired.example"], (2000, 2001));
    let route = |name: &str, host: &str| {
        static_route(
            name,
            &format!("{{root: \"{root}\", hosts: [{host}], tls: {{secretName: {name}-tls}}}}"),
        )
    };
    let pier = Running::start(
        &[
            ("good.yaml", &route("good", "good.example")),
            ("good-tls.yaml", &secret("good-tls", &good_cert, &good_key)),
            ("mismatch.yaml", &route("mismatch", "mismatch.example")),
            (
                "mismatch-tls.yaml",
                &secret("mismatch-tls", &other_cert, &good_key),
            ),
            ("expired.yaml", &route("expired", "expired.example")),
            (
                "expired-tls.yaml",
                &secret("expired-tls", &expired_cert, &expired_key),
            ),
            ("badpem.yaml", &route("badpem", "badpem.example")),
            (
                "badpem-tls.yaml",
                &secret(
                    "badpem-tls",
                    "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----",
                    &good_key,
                ),
            ),
            ("missing.yaml", &route("missing", "missing.example")),
        ],
        &[],
    );
    let connector = ca.connector(&[b"http/1.1"]);
    runtime().block_on(async {
        let (leaf, _, text) = fetch(&pier, &connector, "good.example", "/")
            .await
            .expect("good");
        assert_eq!(leaf, der(&good_cert));
        assert!(text.ends_with("site"), "{text}");
        for broken in [
            "mismatch.example",
            "expired.example",
            "badpem.example",
            "missing.example",
        ] {
            assert!(
                fetch(&pier, &connector, broken, "/").await.is_err(),
                "{broken} has no certificate to serve"
            );
        }
    });
    // The routes still serve plain HTTP.
    let res = pier.request("GET / HTTP/1.1\r\nHost: expired.example\r\n\r\n");
    assert_eq!(res.status, 200);
    // No key anywhere the dataplane shows things.
    let key_line = good_key.lines().nth(1).expect("a key line");
    for page in ["/snapshot", "/metrics"] {
        let text = pier.admin(page).text();
        assert!(!text.contains(key_line), "{page} shows a private key");
    }
    assert!(pier.admin("/snapshot").text().contains("<redacted>"));
    // Logs say what is wrong, and carry no key either.
    let logged = logs.text();
    assert!(
        logged.contains("the private key does not match the certificate"),
        "{logged}"
    );
    assert!(
        logged.contains("expired at 2001-01-01T00:00:00Z"),
        "{logged}"
    );
    assert!(!logged.contains(key_line), "a private key was logged");
}

/// An HTTPS backend with a certificate for `name` from `ca`, answering
/// every request with "over tls"; counts its TLS connections.
fn tls_backend(ca: &Ca, name: &str) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let (cert, key) = ca.leaf(&[name], (2020, 2090));
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"over tls")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
    });
    (addr, connections)
}

fn ca_secret(name: &str, ca: &Ca) -> String {
    let indent: String = ca
        .issuer
        .pem()
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\nstringData:\n  ca.crt: |\n{indent}"
    )
}

#[test]
fn backends_are_reached_over_tls_verified_against_the_routes_ca() {
    let ca = Ca::new();
    let stranger = Ca::new();
    let (addr, connections) = tls_backend(&ca, "backend.example");
    let route = |name: &str, path: &str, tls: &str| {
        format!(
            "apiVersion: pier.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: {name}, namespace: default}}\nspec: {{path: {{value: {path}}}, backends: [{{address: \"{addr}\"}}], backendTLS: {tls}}}\n"
        )
    };
    let pier = Running::start(
        &[
            (
                "good.yaml",
                &route(
                    "good",
                    "/good",
                    "{caSecretName: ca, serverName: backend.example}",
                ),
            ),
            (
                "name.yaml",
                &route(
                    "name",
                    "/name",
                    "{caSecretName: ca, serverName: other.example}",
                ),
            ),
            (
                "stranger.yaml",
                &route(
                    "stranger",
                    "/stranger",
                    "{caSecretName: stranger, serverName: backend.example}",
                ),
            ),
            (
                "missing.yaml",
                &route(
                    "missing",
                    "/missing",
                    "{caSecretName: nowhere, serverName: backend.example}",
                ),
            ),
            ("ca.yaml", &ca_secret("ca", &ca)),
            ("stranger-ca.yaml", &ca_secret("stranger", &stranger)),
        ],
        &[],
    );
    let mut stream = pier.connect();
    for _ in 0..5 {
        let res = support::send(&mut stream, &support::request("GET", "/good", &[]));
        assert_eq!((res.status, res.text()), (200, "over tls".to_owned()));
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one TLS connection, kept alive and reused"
    );
    // A certificate for another name, or from another CA, or no CA at all:
    // never trusted, never plain text.
    for path in ["/name", "/stranger", "/missing"] {
        assert_eq!(pier.get(path, &[]).status, 502, "{path}");
    }
}

#[test]
fn sessions_resume_by_ticket() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("temp dir");
    support::write(dir.path(), "index.html", b"site");
    let root = dir.path().display().to_string();
    let (cert, key) = ca.leaf(&["a.example"], (2020, 2090));
    let pier = Running::start(
        &[
            (
                "a.yaml",
                &static_route(
                    "a",
                    &format!(
                        "{{root: \"{root}\", hosts: [a.example], tls: {{secretName: a-tls}}}}"
                    ),
                ),
            ),
            ("a-tls.yaml", &secret("a-tls", &cert, &key)),
        ],
        &[],
    );
    // The same client config twice: the second handshake resumes.
    let connector = TlsConnector::from(Arc::new(ca.client(rustls::DEFAULT_VERSIONS)));
    runtime().block_on(async {
        for _ in 0..2 {
            let (_, _, text) = fetch(&pier, &connector, "a.example", "/")
                .await
                .expect("fetch");
            assert!(text.ends_with("site"), "{text}");
        }
    });
    let metrics = pier.admin("/metrics").text();
    assert!(
        metrics.contains("pier_dataplane_tls_handshakes_total{result=\"full\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pier_dataplane_tls_handshakes_total{result=\"resumed\"} 1"),
        "{metrics}"
    );

    // TLS 1.2 clients are served too.
    let connector = TlsConnector::from(Arc::new(ca.client(&[&rustls::version::TLS12])));
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(pier.tls)
            .await
            .expect("connect");
        let name = ServerName::try_from("a.example").expect("name");
        let tls = connector
            .connect(name, tcp)
            .await
            .expect("a TLS 1.2 handshake");
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
    });
}
