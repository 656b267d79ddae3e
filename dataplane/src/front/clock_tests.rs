//! The HTTP/1.1 engine's timeouts on a paused clock: each fires at its
//! deadline exactly, not a millisecond early, with no wall-clock wait.
//! Pier and its clients run in-process on one runtime over loopback; the
//! clock only moves when every task is waiting, straight to the next timer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use pier_compile::Resources;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::h1::{self, Limits};
use crate::context::Context;
use crate::dispatch::Shared;

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const MS: Duration = Duration::from_millis(1);

/// The HTTP/1.1 engine on a loopback port, serving `routes` (ProxyRoute
/// manifests).
async fn pier(routes: &[String]) -> (SocketAddr, Arc<Shared>) {
    let shared = Arc::new(Shared::new(Context::for_tests(), 100));
    let proxy_routes = routes
        .iter()
        .map(|yaml| Arc::new(serde_saphyr::from_str(yaml).expect("a ProxyRoute")))
        .collect();
    let compiled = pier_compile::compile(&Resources {
        proxy_routes,
        ..Resources::default()
    });
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
    shared.apply(compiled);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = Limits {
        header_timeout: HEADER_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        max_header_size: 16 * 1024,
        send_chunk: 64 * 1024,
    };
    let serving = Arc::clone(&shared);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let shared = Arc::clone(&serving);
            tokio::spawn(async move {
                let idle = AtomicBool::new(false);
                h1::serve(&mut stream, &shared, &limits, &idle).await;
            });
        }
    });
    (addr, shared)
}

/// A backend that answers `/fast` at once and never answers anything else.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf).await {
                    if buf[..n].starts_with(b"GET /fast ") {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfast";
                        if conn.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn proxy_route(backend: SocketAddr, timeouts: &str) -> String {
    format!(
        "apiVersion: pier.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: app, namespace: default}}\n\
         spec: {{backends: [{{address: \"{backend}\"}}], timeouts: {{{timeouts}}}}}\n"
    )
}

/// Sends one request and reads its response: status and body.
async fn exchange(client: &mut TcpStream, path: &str) -> (u16, Vec<u8>) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n");
    client.write_all(request.as_bytes()).await.expect("send");
    let mut seen = Vec::new();
    let end = loop {
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut buf = [0u8; 1024];
        let n = client.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before a response head");
        seen.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
    let status = head[9..12].parse().expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().expect("length"));
    let mut body = seen.split_off(end);
    while body.len() < length {
        let mut buf = [0u8; 1024];
        let n = client.read(&mut buf).await.expect("read body");
        assert!(n > 0, "closed mid-body");
        body.extend_from_slice(&buf[..n]);
    }
    (status, body)
}

/// True while the connection is open with nothing to read.
fn open(client: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(client.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Waits for the server to close the connection; how long that took.
async fn closed(client: &mut TcpStream) -> Duration {
    let since = Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(client.read(&mut buf).await.expect("read"), 0, "closed");
    since.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_slow_request_head_is_cut_off_at_the_header_timeout() {
    let (addr, shared) = pier(&[]).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: te")
        .await
        .expect("part of a head");
    tokio::time::sleep(HEADER_TIMEOUT - MS).await;
    assert!(open(&client), "still open 1 ms before the deadline");
    let waited = closed(&mut client).await;
    assert_eq!(waited, MS, "closed at the deadline");
    assert_eq!(shared.ctx.metrics.connections_timed_out.load(Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_gets_the_header_timeout_and_a_kept_one_the_idle_timeout() {
    let (addr, shared) = pier(&[]).await;
    // Silent from the start: the header timeout, not the longer idle one.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(closed(&mut silent).await, HEADER_TIMEOUT);

    // After a response the connection waits for the next request for the
    // idle timeout, counted from the response.
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(exchange(&mut kept, "/").await.0, 404, "no routes");
    tokio::time::sleep(IDLE_TIMEOUT - MS).await;
    assert!(open(&kept), "still open 1 ms before the idle timeout");
    assert_eq!(exchange(&mut kept, "/").await.0, 404, "and still usable");
    let waited = closed(&mut kept).await;
    assert_eq!(waited, IDLE_TIMEOUT, "the second wait started afresh");
    assert_eq!(shared.ctx.metrics.connections_timed_out.load(Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_does_not_answer_gets_504_at_the_response_header_timeout() {
    let backend = backend().await;
    let (addr, _shared) = pier(&[proxy_route(backend, "responseHeader: 2s")]).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(
        exchange(&mut client, "/fast").await,
        (200, b"fast".to_vec())
    );

    let since = Instant::now();
    let (status, _) = exchange(&mut client, "/slow").await;
    assert_eq!(status, 504);
    assert_eq!(
        since.elapsed(),
        Duration::from_secs(2),
        "no earlier, no retry"
    );
    let mut client = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(
        exchange(&mut client, "/fast").await.0,
        200,
        "the route still works"
    );
}
