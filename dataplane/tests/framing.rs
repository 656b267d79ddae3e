//! How a chunked request body reaches a backend (RFC 9112 §7.1): every
//! deviation from the grammar is a 400 that closes the connection with no
//! byte of the request sent upstream, and a valid body goes out in Pier's
//! own framing, never the client's.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use support::Running;

/// A backend that records every byte it receives on each connection and
/// answers `200 ok` once a chunked body has ended.
fn recording_backend() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                    let ended = seen
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .is_some_and(|at| {
                            let head = String::from_utf8_lossy(&seen[..at]).to_ascii_lowercase();
                            let body = &seen[at + 4..];
                            match head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                            {
                                Some(n) => n.trim().parse().is_ok_and(|n: usize| body.len() >= n),
                                None => {
                                    (body.starts_with(b"0\r\n")
                                        || body.windows(4).any(|w| w == b"\n0\r\n"))
                                        && body.ends_with(b"\r\n\r\n")
                                }
                            }
                        });
                    if ended {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        break;
                    }
                }
                let _ = tx.send(seen);
            });
        }
    });
    (addr, rx)
}

fn pier(backend: SocketAddr, buffering: &str) -> Running {
    let route = format!(
        "apiVersion: pier.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: app, namespace: default}}\n\
         spec: {{backends: [{{address: \"{backend}\"}}], buffering: {{{buffering}}}}}\n"
    );
    Running::start(&[("route.yaml", &route)], &[])
}

/// Sends `body` after a chunked POST head; everything the client got back
/// before the connection closed.
fn post_chunked(pier: &Running, body: &[u8]) -> String {
    let mut stream: TcpStream = pier.connect();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut request =
        b"POST /up HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    request.extend_from_slice(body);
    stream.write_all(&request).expect("send");
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    String::from_utf8_lossy(&all).into_owned()
}

/// Each malformed form the outside review found, and more.
const MALFORMED: &[(&[u8], &str)] = &[
    (b"1\r0\r\nx\r\n0\r\n\r\n", "a CR inside the size line"),
    (
        b"5;\x01\r\nhello\r\n0\r\n\r\n",
        "an extension outside the grammar",
    ),
    (
        b"5;a=\"b\r\nhello\r\n0\r\n\r\n",
        "an unclosed quoted extension",
    ),
    (b"5\nhello\r\n0\r\n\r\n", "a bare LF ending the size line"),
    (b"5\r\nhello\n0\r\n\r\n", "a bare LF after the data"),
    (
        b"0\r\nGET /admin HTTP/1.1\r\n\r\n",
        "a request line as a trailer",
    ),
    (
        b"0\r\nContent Length: 5\r\n\r\n",
        "a field name with a space",
    ),
    (
        b"0\r\nA\nGET /admin HTTP/1.1\r\nHost: t\r\n\r\n",
        "a trailer ended by a bare LF, a request after it",
    ),
];

#[test]
fn malformed_chunked_bodies_get_400_and_no_byte_reaches_the_backend() {
    let (backend, seen) = recording_backend();
    let pier = pier(backend, "");
    for (body, why) in MALFORMED {
        let answer = post_chunked(&pier, body);
        assert!(answer.starts_with("HTTP/1.1 400"), "{why}: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "{why}: one answer, then the close; nothing after the body was parsed: {answer}"
        );
    }
    assert!(
        seen.recv_timeout(Duration::from_millis(200)).is_err(),
        "with request bodies buffered (the default), the backend saw no connection"
    );
}

#[test]
fn malformed_chunked_bodies_are_cut_before_the_bad_bytes_when_streamed() {
    let (backend, seen) = recording_backend();
    let pier = pier(backend, "requestBody: Stream");
    for (body, why) in MALFORMED {
        let answer = post_chunked(&pier, body);
        assert!(answer.starts_with("HTTP/1.1 4"), "{why}: {answer}");
        // Streaming sends the head before the body is read; what follows
        // it upstream is only what Pier framed itself from valid chunks,
        // and never a last chunk: the backend sees an unfinished body.
        let got = seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the head went");
        let got = String::from_utf8_lossy(&got);
        let body_sent = &got[got.find("\r\n\r\n").expect("a head") + 4..];
        assert!(!body_sent.contains("0\r\n\r\n"), "{why}: {got:?}");
        assert!(!body_sent.contains("admin"), "{why}: {got:?}");
    }
}

#[test]
fn valid_chunked_bodies_go_upstream_in_pier_s_framing() {
    let (backend, seen) = recording_backend();
    let pier = pier(backend, "requestBody: Stream");
    let answer = post_chunked(
        &pier,
        b"5;name=\"v;x\"\r\nhello\r\n006 ; a = b\r\n world\r\n0;last\r\nX-Checksum: abc\r\nContent-Length: 1\r\n\r\n",
    );
    let got = seen.recv_timeout(Duration::from_secs(10)).expect("request");
    let got = String::from_utf8_lossy(&got);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer} after the backend got {got:?}"
    );
    let (head, body) = got.split_once("\r\n\r\n").expect("a head");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(
        body, "5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n",
        "own size lines, no extensions, only the trailer fields a backend may act on"
    );

    // Buffered (the default), the same body goes with its length.
    let (backend, seen) = recording_backend();
    let pier_buffered = self::pier(backend, "");
    let mut stream = pier_buffered.connect();
    stream
        .write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;e\r\nhello\r\n0\r\n\r\n")
        .expect("send");
    let res = support::read_response(&mut stream, false);
    assert_eq!(res.status, 200);
    drop(stream);
    drop(pier_buffered);
    let got = seen.recv_timeout(Duration::from_secs(10)).expect("request");
    let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(got.contains("content-length: 5\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
}
