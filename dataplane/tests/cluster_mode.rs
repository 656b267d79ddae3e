//! Cluster mode without a reachable controller: the stored snapshot is
//! served (static stability), a damaged one is refused, and readiness says
//! which.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use clap::Parser;
use pier_compile::Resources;
use pier_crds::StaticRoute;
use pier_dataplane::{Args, Dataplane};
use pier_snapshot::Snapshot;
use support::{static_route, write};

/// A CA certificate file: cluster mode refuses to start without one.
fn ca_file(dir: &std::path::Path) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("CA");
    let path = dir.join("ca.crt");
    std::fs::write(&path, cert.pem()).expect("write CA");
    path.to_string_lossy().into_owned()
}

fn snapshot_for(root: &std::path::Path) -> Snapshot {
    let manifest = static_route("site", &format!("{{root: {}}}", root.display()));
    let route: StaticRoute = serde_saphyr::from_str(&manifest).expect("manifest");
    pier_compile::compile(&Resources {
        static_routes: vec![std::sync::Arc::new(route)],
        ..Resources::default()
    })
    .snapshot
}

struct Started {
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts a dataplane whose controller does not answer.
fn start(dir: &std::path::Path, store: &std::path::Path) -> Started {
    let token = dir.join("token");
    std::fs::write(&token, "t").expect("token");
    let ca = ca_file(dir);
    let store = store.to_string_lossy().into_owned();
    let token = token.to_string_lossy().into_owned();
    let args = Args::try_parse_from([
        "pier-dataplane",
        "--controller",
        "https://127.0.0.1:9",
        "--controller-ca",
        &ca,
        "--controller-token-file",
        &token,
        "--snapshot-store",
        &store,
        "--listen",
        "127.0.0.1:0",
        "--listen-tls",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ])
    .expect("flags");
    let dataplane = Dataplane::bind(args).expect("starts without a controller");
    let addr = dataplane.listen_addr();
    let admin = dataplane.admin_addr().expect("admin");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = dataplane.run(async {
            let _ = stopped.await;
        });
    });
    Started {
        addr,
        admin,
        _stop: stop,
    }
}

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    for _ in 0..100 {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).expect("send");
            let mut response = String::new();
            stream.read_to_string(&mut response).expect("read");
            let (head, body) = response.split_once("\r\n\r\n").expect("a response");
            let status = head
                .split(' ')
                .nth(1)
                .expect("status")
                .parse()
                .expect("code");
            return (status, body.to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{addr} never accepted");
}

#[test]
fn a_stored_snapshot_is_served_while_the_controller_is_away() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("site");
    write(&root, "index.html", b"from the store");
    let store = dir.path().join("snapshot.json");
    let snapshot = snapshot_for(&root);
    std::fs::write(&store, serde_json::to_vec(&snapshot).expect("json")).expect("store");

    let pier = start(dir.path(), &store);
    assert_eq!(get(pier.addr, "/"), (200, "from the store".to_owned()));
    assert_eq!(get(pier.admin, "/readyz").0, 200);
    let metrics = get(pier.admin, "/metrics").1;
    assert!(
        metrics.contains("pier_dataplane_controller_connected 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("version=\"{}\"", snapshot.version)),
        "{metrics}"
    );
}

#[test]
fn a_damaged_stored_snapshot_is_ignored_and_the_dataplane_is_not_ready() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("site");
    write(&root, "index.html", b"never");
    let store = dir.path().join("snapshot.json");
    let mut snapshot = snapshot_for(&root);
    snapshot.version = "0000000000000000".into();
    std::fs::write(&store, serde_json::to_vec(&snapshot).expect("json")).expect("store");

    let pier = start(dir.path(), &store);
    assert_eq!(get(pier.admin, "/readyz").0, 503);
    assert_eq!(get(pier.addr, "/").0, 404);
}
