//! Unit tests of the HTTP/1.1 engine's pure parts and its size.

use super::*;

#[test]
fn the_h2_preface_is_recognised_from_its_first_byte() {
    assert!(could_be_h2(b"P"));
    assert!(could_be_h2(b"PRI * HTTP/2.0\r\n"));
    assert!(could_be_h2(H2_PREFACE));
    assert!(!could_be_h2(b""));
    assert!(!could_be_h2(b"POST / HTTP/1.1\r\n"));
    assert!(!could_be_h2(b"GET / HTTP/1.1\r\n"));
}

/// An idle keep-alive connection costs its task (this future inside
/// tokio's 128-byte-aligned task cell), its socket's registration and
/// its entry in the worker's table: about 870 bytes in all
/// (`bench/static.sh`). This future is the part code changes grow:
/// request state belongs in the boxed `Conn::request`, not here.
#[tokio::test]
async fn an_idle_connection_keeps_its_task_small() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut stream = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let shared = Arc::new(Shared::new(crate::context::Context::for_tests(), 1));
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_header_size: 1024,
        send_chunk: 1024,
    };
    let idle = AtomicBool::new(false);
    let serving = serve(&mut stream, &shared, &limits, &idle);
    let size = std::mem::size_of_val(&serving);
    assert!(
        size <= 320,
        "the HTTP/1.1 connection future grew to {size} bytes"
    );
}
