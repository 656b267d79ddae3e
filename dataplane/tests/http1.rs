//! The HTTP/1.1 engine over real sockets: pipelining, request bodies the
//! static handler does not want, HTTP/1.0, refused heads, exact bodies
//! whether written inline or with sendfile, and idle connections that hold
//! no buffers.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Response, Running, read_response, request, send, static_route, write};

/// Bytes that differ at every offset, so a misplaced region shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ (i >> 8) as u8).collect()
}

const SIZES: [usize; 7] = [0, 1, 16_000, 16_383, 16_384, 16_385, (3 << 20) + 7];

fn site() -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "a.txt", b"alpha");
    write(dir.path(), "b.txt", b"bravo!");
    for size in SIZES {
        write(dir.path(), &format!("f{size}.bin"), &pattern(size));
    }
    let spec = format!("{{root: {}}}", dir.path().display());
    let pier = Running::start(&[("site.yaml", &static_route("site", &spec))], &[]);
    (pier, dir)
}

/// Reads until the server closes the connection.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("read until close");
    all
}

/// Splits a byte stream into responses (bodies by Content-Length; none for
/// the HEAD requests at the given positions).
fn responses(mut bytes: &[u8], heads: &[usize]) -> Vec<Response> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = parsed.parse(bytes) else {
            panic!(
                "incomplete response in {:?}",
                String::from_utf8_lossy(bytes)
            );
        };
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into()))
            .collect();
        let status = parsed.code.expect("status");
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().expect("length"));
        let length = if heads.contains(&out.len()) {
            0
        } else {
            length
        };
        out.push(Response {
            status,
            headers,
            body: bytes[len..len + length].to_vec(),
        });
        bytes = &bytes[len + length..];
    }
    out
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (pier, _dir) = site();
    let mut stream = pier.connect();
    let batch = [
        request("GET", "/a.txt", &[]),
        request("GET", "/b.txt", &[]),
        request("HEAD", "/a.txt", &[]),
        request("GET", "/missing", &[]),
        request("GET", "/b.txt", &["Connection: close"]),
    ]
    .concat();
    stream.write_all(batch.as_bytes()).expect("send");
    let got = responses(&read_to_close(&mut stream), &[2]);
    let summary: Vec<(u16, &[u8])> = got.iter().map(|r| (r.status, &r.body[..])).collect();
    assert_eq!(
        summary,
        [
            (200, &b"alpha"[..]),
            (200, b"bravo!"),
            (200, b""),
            (404, b""),
            (200, b"bravo!")
        ]
    );
    assert_eq!(
        got[2].header("content-length"),
        Some("5"),
        "HEAD keeps the length"
    );
    assert_eq!(got[4].header("connection"), Some("close"));
}

#[test]
fn small_request_bodies_are_skipped_and_the_connection_kept() {
    let (pier, _dir) = site();
    let mut stream = pier.connect();
    let with_body = "GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world";
    let res = send(&mut stream, with_body);
    assert_eq!((res.status, &res.body[..]), (200, &b"alpha"[..]));
    assert_eq!(res.header("connection"), None);
    // The body was not taken for the next request.
    let res = send(&mut stream, &request("GET", "/b.txt", &[]));
    assert_eq!((res.status, &res.body[..]), (200, &b"bravo!"[..]));

    // A POST to a static route: 405, and still in step afterwards.
    let post = "POST /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc";
    assert_eq!(send(&mut stream, post).status, 405);
    assert_eq!(
        send(&mut stream, &request("GET", "/a.txt", &[])).status,
        200
    );
}

#[test]
fn chunked_or_large_bodies_end_the_connection_after_the_answer() {
    let (pier, _dir) = site();
    let cases = [
        "POST /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "PUT /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\npartial",
        "PUT /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    ];
    for case in cases {
        let mut stream = pier.connect();
        stream.write_all(case.as_bytes()).expect("send");
        let got = responses(&read_to_close(&mut stream), &[]);
        assert_eq!(got.len(), 1, "{case:?}");
        assert_eq!(got[0].status, 405, "{case:?}");
        assert_eq!(got[0].header("connection"), Some("close"), "{case:?}");
    }
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let (pier, _dir) = site();
    let mut stream = pier.connect();
    stream
        .write_all(b"GET /a.txt HTTP/1.0\r\n\r\n")
        .expect("send");
    let got = responses(&read_to_close(&mut stream), &[]);
    assert_eq!((got[0].status, &got[0].body[..]), (200, &b"alpha"[..]));
    assert_eq!(got[0].header("connection"), Some("close"));

    let mut stream = pier.connect();
    let keep = "GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    let res = send(&mut stream, keep);
    assert_eq!(res.header("connection"), Some("keep-alive"));
    assert_eq!(send(&mut stream, keep).body, b"alpha");
}

#[test]
fn malformed_heads_are_refused_with_a_clear_status_and_closed() {
    let (pier, _dir) = site();
    let cases: [(&[u8], u16); 10] = [
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n continued\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
    ];
    for (case, status) in cases {
        let mut stream = pier.connect();
        stream.write_all(case).expect("send");
        let got = responses(&read_to_close(&mut stream), &[]);
        let case = String::from_utf8_lossy(case);
        assert_eq!(got.len(), 1, "{case:?}");
        assert_eq!(got[0].status, status, "{case:?}");
        assert_eq!(got[0].header("connection"), Some("close"), "{case:?}");
    }
    assert_eq!(pier.get("/a.txt", &[]).status, 200, "still serving");
}

#[test]
fn bodies_are_exact_whether_written_inline_or_with_sendfile() {
    let (pier, _dir) = site();
    let mut stream = pier.connect();
    for size in SIZES {
        let res = send(&mut stream, &request("GET", &format!("/f{size}.bin"), &[]));
        assert_eq!(res.status, 200, "size {size}");
        assert_eq!(res.header("content-length"), Some(&*size.to_string()));
        assert!(res.body == pattern(size), "body of {size} bytes differs");
    }

    // Ranges deep in the big file, single and multipart, on the same connection.
    let big = (3 << 20) + 7;
    let whole = pattern(big);
    let res = send(
        &mut stream,
        &request(
            "GET",
            &format!("/f{big}.bin"),
            &["Range: bytes=1000000-2999999"],
        ),
    );
    assert_eq!(res.status, 206);
    assert!(res.body == whole[1_000_000..3_000_000]);

    let res = send(
        &mut stream,
        &request(
            "GET",
            &format!("/f{big}.bin"),
            &["Range: bytes=0-99999,2000000-2500000,-5"],
        ),
    );
    assert_eq!(res.status, 206);
    let body = &res.body[..];
    for part in [
        &whole[..100_000],
        &whole[2_000_000..=2_500_000],
        &whole[big - 5..],
    ] {
        assert!(
            body.windows(part.len()).any(|w| w == part),
            "a multipart part of {} bytes is missing",
            part.len()
        );
    }
    assert!(res.text().ends_with("--\r\n"));
}

#[test]
fn idle_keep_alive_connections_hold_no_buffers() {
    let (pier, _dir) = site();
    let mut idle: Vec<TcpStream> = (0..20).map(|_| pier.connect()).collect();
    for stream in &mut idle {
        assert_eq!(send(stream, &request("GET", "/a.txt", &[])).status, 200);
    }
    // A head arriving in pieces holds a buffer until it is complete.
    let mut slow = pier.connect();
    slow.write_all(b"GET /a.txt HTTP/1.1\r\n").expect("send");
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = pier.admin("/metrics").text();
        if metrics.contains("pier_dataplane_connections_open 21\n")
            && metrics.contains("pier_dataplane_connections_active 1\n")
        {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "gauges never settled:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(metrics.contains("pier_dataplane_connections_active 1\n"));
    slow.write_all(b"Host: t\r\n\r\n").expect("send");
    assert_eq!(read_response(&mut slow, false).status, 200);
    drop(idle);
}
