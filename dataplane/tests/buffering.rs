//! Body buffering over real sockets: backends that send faster than their
//! clients read, with the process's memory and disk caps small enough to
//! be reached, and uploads held back from the backend.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{Running, read_response, request, send, with_h2};

const BLOCK: usize = 64 * 1024;

/// Block `i` of a test body: a fixed pseudo-random block with `i` in its
/// first eight bytes, so a reordered, repeated or lost block shows.
fn block(i: u64) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut b: Vec<u8> = (0..BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    b[..8].copy_from_slice(&i.to_le_bytes());
    b
}

/// What a bulk backend saw of one exchange.
#[derive(Debug)]
struct Served {
    /// The whole body was written (the proxy took it).
    finished: Instant,
}

/// A backend answering every request with `blocks` × 64 KiB, sized or
/// chunked, as fast as the socket takes them. With `fail_after`, it closes
/// after that many blocks.
fn bulk_backend(
    blocks: u64,
    chunked: bool,
    fail_after: Option<u64>,
) -> (SocketAddr, mpsc::Receiver<Served>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut stream = stream;
                loop {
                    // The request head.
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let head = if chunked {
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                            blocks * BLOCK as u64
                        )
                    };
                    if stream.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    for i in 0..blocks {
                        if fail_after == Some(i) {
                            return;
                        }
                        let data = block(i);
                        let ok = if chunked {
                            stream
                                .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                                .and_then(|()| stream.write_all(&data))
                                .and_then(|()| stream.write_all(b"\r\n"))
                        } else {
                            stream.write_all(&data)
                        };
                        if ok.is_err() {
                            return;
                        }
                    }
                    if chunked && stream.write_all(b"0\r\n\r\n").is_err() {
                        return;
                    }
                    let _ = tx.send(Served {
                        finished: Instant::now(),
                    });
                }
            });
        }
    });
    (addr, rx)
}

fn start(backend: SocketAddr, buffering: &str, flags: &[&str]) -> Running {
    let route = format!(
        "apiVersion: pier.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: bulk, namespace: default}}\nspec: {{backends: [{{address: \"{backend}\"}}], buffering: {buffering}}}\n"
    );
    Running::start(&[("bulk.yaml", &route)], flags)
}

fn metric(pier: &Running, name: &str) -> u64 {
    let text = pier.admin("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends a GET and reads the response head; the body is left to read.
fn get(pier: &Running) -> (TcpStream, String) {
    let mut stream = pier.connect();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
        .write_all(request("GET", "/bulk", &[]).as_bytes())
        .expect("send");
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("head");
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// Reads and checks `blocks` blocks; `pace` sleeps after each one.
fn read_blocks(stream: &mut TcpStream, from: u64, to: u64, pace: Duration) {
    let mut buf = vec![0; BLOCK];
    for i in from..to {
        stream.read_exact(&mut buf).expect("body block");
        assert!(buf == block(i), "block {i} arrived intact and in order");
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
}

/// Reads 64 KiB blocks at about 1 MiB/s until the backend says it is done
/// or `limit` passes; returns how many blocks were read by then.
fn read_slowly_until_done(
    stream: &mut TcpStream,
    served: &mpsc::Receiver<Served>,
    limit: Duration,
) -> (u64, Option<Served>) {
    let started = Instant::now();
    let mut read = 0;
    while started.elapsed() < limit {
        read_blocks(stream, read, read + 1, Duration::from_millis(62));
        read += 1;
        if let Ok(done) = served.try_recv() {
            return (read, Some(done));
        }
    }
    (read, None)
}

#[test]
fn a_slow_client_gets_every_byte_while_the_backend_is_released_in_seconds() {
    let spill = tempfile::tempdir().expect("spill dir");
    let spill_arg = spill.path().to_string_lossy().into_owned();
    // 256 MiB, read at 1 MiB/s.
    let blocks = 4096;
    let (backend, served) = bulk_backend(blocks, false, None);
    let pier = start(
        backend,
        "{mode: Hybrid, memory: 64Ki, disk: 1Gi}",
        &[
            "--spill-dir",
            &spill_arg,
            "--buffer-memory",
            "1MiB",
            "--buffer-disk",
            "1GiB",
        ],
    );
    let (mut stream, head) = get(&pier);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-length: 268435456"), "{head}");
    let asked = Instant::now();
    let (read, done) = read_slowly_until_done(&mut stream, &served, Duration::from_secs(20));
    let done = done.expect("the backend finished while the client was still reading");
    assert!(
        done.finished - asked < Duration::from_secs(15),
        "backend held {:?}",
        done.finished - asked
    );
    assert!(
        read < blocks / 8,
        "the client had read only {read} blocks by then"
    );
    assert!(metric(&pier, "pier_dataplane_buffer_spilled_bytes_total") > 128 << 20);
    assert!(metric(&pier, "pier_dataplane_buffer_memory_bytes") <= (1 << 20) + (16 << 10));
    assert_eq!(metric(&pier, "pier_dataplane_buffer_spill_files"), 1);
    assert_eq!(
        std::fs::read_dir(spill.path()).expect("spill dir").count(),
        0,
        "spill files are unlinked"
    );
    read_blocks(&mut stream, read, blocks, Duration::ZERO);
    // The spill file goes with its body.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&pier, "pier_dataplane_buffer_spill_files") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&pier, "pier_dataplane_buffer_spill_files"), 0);
    assert_eq!(metric(&pier, "pier_dataplane_buffer_disk_bytes"), 0);
    assert!(metric(&pier, "pier_dataplane_upstream_held_seconds_count") >= 1);
}

#[test]
fn the_process_caps_hold_and_full_buffers_slow_the_backends_down() {
    let spill = tempfile::tempdir().expect("spill dir");
    let spill_arg = spill.path().to_string_lossy().into_owned();
    let blocks = 1024; // 64 MiB each
    let (backend, served) = bulk_backend(blocks, true, None);
    let pier = start(
        backend,
        "{mode: Hybrid, memory: 1Mi, disk: 1Gi}",
        &[
            "--spill-dir",
            &spill_arg,
            "--buffer-memory",
            "256KiB",
            "--buffer-disk",
            "4MiB",
        ],
    );
    let mut clients: Vec<TcpStream> = (0..4).map(|_| get(&pier).0).collect();
    // Nobody reads: the buffers fill up to the caps, then the backends wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&pier, "pier_dataplane_buffer_backpressure_total") < 4 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(&pier, "pier_dataplane_buffer_backpressure_total") >= 4);
    let memory = metric(&pier, "pier_dataplane_buffer_memory_bytes");
    assert!(
        memory <= (256 << 10) + 4 * (16 << 10),
        "memory {memory} within the budget"
    );
    let disk = metric(&pier, "pier_dataplane_buffer_disk_bytes");
    assert!(disk <= 4 << 20, "disk {disk} within the cap");
    assert!(served.try_recv().is_err(), "no backend could finish");
    for client in &mut clients {
        read_chunked(client, blocks);
    }
    assert_eq!(served.iter().take(4).count(), 4);
}

/// Reads a chunked body of `blocks` test blocks, checking every byte.
fn read_chunked(stream: &mut TcpStream, blocks: u64) {
    let mut body = Vec::with_capacity(BLOCK * 2);
    let mut next = 0;
    let mut reader = BufReader::new(stream);
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).expect("chunk size");
        let n = usize::from_str_radix(size.trim(), 16).expect("hex size");
        if n == 0 {
            let mut end = String::new();
            reader.read_line(&mut end).expect("last line");
            break;
        }
        let at = body.len();
        body.resize(at + n, 0);
        reader.read_exact(&mut body[at..]).expect("chunk");
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf).expect("crlf");
        while body.len() >= BLOCK {
            assert!(body[..BLOCK] == block(next), "block {next} intact");
            body.drain(..BLOCK);
            next += 1;
        }
    }
    assert_eq!(next, blocks);
    assert!(body.is_empty());
}

#[test]
fn an_unusable_spill_directory_degrades_to_streaming() {
    let blocks = 512; // 32 MiB
    let (backend, served) = bulk_backend(blocks, false, None);
    let pier = start(
        backend,
        "{mode: Hybrid}",
        &["--spill-dir", "/nonexistent/pier-spill"],
    );
    let (mut stream, head) = get(&pier);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Slow for a while, so the body would spill.
    read_blocks(&mut stream, 0, 16, Duration::from_millis(30));
    assert!(
        served.try_recv().is_err(),
        "the backend is held: nothing spilled"
    );
    read_blocks(&mut stream, 16, blocks, Duration::ZERO);
    assert!(served.recv_timeout(Duration::from_secs(5)).is_ok());
    assert!(metric(&pier, "pier_dataplane_buffer_spill_errors_total") >= 1);
    assert_eq!(
        metric(&pier, "pier_dataplane_buffer_spilled_bytes_total"),
        0
    );
    assert!(metric(&pier, "pier_dataplane_buffer_backpressure_total") > 0);
}

#[test]
fn stream_mode_holds_the_backend_to_the_clients_pace() {
    let blocks = 1024; // 64 MiB: more than the sockets hold
    let (backend, served) = bulk_backend(blocks, false, None);
    let pier = start(backend, "{mode: Stream}", &[]);
    let (mut stream, _) = get(&pier);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        served.try_recv().is_err(),
        "the backend waits for the client"
    );
    read_blocks(&mut stream, 0, blocks, Duration::ZERO);
    assert!(served.recv_timeout(Duration::from_secs(5)).is_ok());
    assert_eq!(metric(&pier, "pier_dataplane_buffered_bodies_total"), 0);
}

#[test]
fn buffer_mode_sends_a_length_and_turns_a_broken_body_into_a_502() {
    let (backend, _) = bulk_backend(16, true, None);
    let pier = start(backend, "{mode: Buffer}", &[]);
    let mut stream = pier.connect();
    let res = send(&mut stream, &request("GET", "/bulk", &[]));
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("content-length"),
        Some("1048576"),
        "{:?}",
        res.headers
    );
    assert!(res.header("transfer-encoding").is_none());
    assert!(res.body == (0..16).flat_map(block).collect::<Vec<u8>>());

    let (broken, _) = bulk_backend(16, true, Some(8));
    let pier = start(broken, "{mode: Buffer}", &[]);
    let res = pier.get("/bulk", &[]);
    assert_eq!(res.status, 502, "a clean error, not a cut body");
}

/// A backend that reads one request with its body and answers with what
/// it got; reports when the head arrived.
fn upload_backend() -> (SocketAddr, mpsc::Receiver<(Instant, String, usize)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read_exact(&mut byte).is_err() {
                    break;
                }
                head.push(byte[0]);
            }
            let arrived = Instant::now();
            let head = String::from_utf8_lossy(&head).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            let _ = stream.read_exact(&mut body);
            if head.contains("transfer-encoding: chunked") {
                // Read to the last chunk before answering.
                let mut raw = Vec::new();
                while !raw.ends_with(b"0\r\n\r\n") {
                    if stream.read_exact(&mut byte).is_err() {
                        break;
                    }
                    raw.push(byte[0]);
                }
            }
            let answer = format!("got {length}");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = tx.send((arrived, head, length));
        }
    });
    (addr, rx)
}

#[test]
fn a_buffered_upload_reaches_the_backend_only_when_complete() {
    let (backend, seen) = upload_backend();
    // Buffered by default: no requestBody given.
    let pier = start(backend, "{maxBodySize: 1Mi}", &[]);
    for chunked in [false, true] {
        let mut stream = pier.connect();
        let framing = if chunked {
            "transfer-encoding: chunked\r\n".to_owned()
        } else {
            "content-length: 30000\r\n".to_owned()
        };
        write!(stream, "POST /up HTTP/1.1\r\nhost: t\r\n{framing}\r\n").expect("head");
        let mut last_started = Instant::now();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(300));
            last_started = Instant::now();
            let part = vec![b'x'; 10_000];
            if chunked {
                write!(stream, "{:x}\r\n", part.len()).expect("size");
                stream.write_all(&part).expect("part");
                stream.write_all(b"\r\n").expect("crlf");
            } else {
                stream.write_all(&part).expect("part");
            }
        }
        if chunked {
            stream.write_all(b"0\r\n\r\n").expect("last chunk");
        }
        let res = read_response(&mut stream, false);
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), "got 30000");
        let (arrived, head, length) = seen.recv_timeout(Duration::from_secs(5)).expect("seen");
        assert!(
            arrived >= last_started,
            "the backend saw nothing before the last part was being sent"
        );
        assert_eq!(length, 30_000);
        assert!(
            !head.contains("transfer-encoding"),
            "sent with its length: {head}"
        );
    }
}

#[test]
fn bodies_over_max_body_size_get_413() {
    let (backend, seen) = upload_backend();
    let pier = start(backend, "{maxBodySize: 1Ki}", &[]);
    let mut stream = pier.connect();
    let res = send(
        &mut stream,
        "POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 2000\r\n\r\n",
    );
    assert_eq!(res.status, 413);
    let mut stream = pier.connect();
    let big = vec![b'y'; 1500];
    write!(
        stream,
        "POST /up HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5dc\r\n"
    )
    .expect("head");
    stream.write_all(&big).expect("chunk");
    stream.write_all(b"\r\n0\r\n\r\n").expect("end");
    let res = read_response(&mut stream, false);
    assert_eq!(res.status, 413);
    // A body within the limit passes.
    let mut stream = pier.connect();
    let res = send(
        &mut stream,
        "POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello",
    );
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "got 5");
    drop(seen);
}

fn h2_request(
    method: &str,
    path: &str,
    body: &[u8],
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://t{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            body,
        )))
        .expect("request")
}

#[test]
fn http2_clients_get_the_buffer_too() {
    use http_body_util::BodyExt;
    let spill = tempfile::tempdir().expect("spill dir");
    let spill_arg = spill.path().to_string_lossy().into_owned();
    let blocks = 1024; // 64 MiB
    let (backend, served) = bulk_backend(blocks, false, None);
    let pier = start(backend, "{mode: Hybrid}", &["--spill-dir", &spill_arg]);
    with_h2(&pier, |mut sender| async move {
        let res = sender
            .send_request(h2_request("GET", "/bulk", b""))
            .await
            .expect("response");
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers().get("content-length").map(|v| v.as_bytes()),
            Some(&b"67108864"[..])
        );
        let mut body = res.into_body();
        let mut got = Vec::new();
        let mut next = 0;
        let started = Instant::now();
        let mut released = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            let Ok(data) = frame.into_data() else {
                continue;
            };
            got.extend_from_slice(&data);
            while got.len() >= BLOCK {
                assert!(got[..BLOCK] == block(next), "block {next} intact");
                got.drain(..BLOCK);
                next += 1;
            }
            if released.is_none() {
                if served.try_recv().is_ok() {
                    released = Some((started.elapsed(), next));
                } else if started.elapsed() < Duration::from_secs(15) {
                    // About 1 MiB/s until the backend is done.
                    tokio::time::sleep(Duration::from_millis(data.len() as u64 / 1024)).await;
                }
            }
        }
        assert_eq!(next, blocks);
        let (after, read) = released.expect("the backend was released");
        assert!(after < Duration::from_secs(10), "backend held {after:?}");
        assert!(read < blocks / 2, "while the client had read {read} blocks");
    });
    assert!(metric(&pier, "pier_dataplane_buffer_spilled_bytes_total") > 16 << 20);
}

#[test]
fn http2_uploads_are_limited_and_buffered() {
    let (backend, seen) = upload_backend();
    let pier = start(backend, "{requestBody: Buffer, maxBodySize: 64Ki}", &[]);
    with_h2(&pier, |mut sender| async move {
        let res = sender
            .send_request(h2_request("POST", "/up", &vec![b'z'; 100_000]))
            .await
            .expect("response");
        assert_eq!(res.status(), 413);
        let res = sender
            .send_request(h2_request("POST", "/up", &vec![b'z'; 30_000]))
            .await
            .expect("response");
        assert_eq!(res.status(), 200);
    });
    let (_, head, length) = seen.recv_timeout(Duration::from_secs(5)).expect("seen");
    assert_eq!(length, 30_000, "{head}");
}

#[test]
fn idle_upstream_connections_close_after_the_idle_timeout() {
    let (backend, _) = upload_backend_keepalive();
    let pier = start(
        backend,
        "{mode: Hybrid}",
        &["--upstream-idle-timeout", "500ms"],
    );
    let res = pier.get("/any", &[]);
    assert_eq!(res.status, 200);
    let idle = || metric(&pier, "pier_dataplane_upstream_idle_connections");
    // The connection goes back to the pool just after the client has the
    // response's last byte; it shows within the timeout's 500 ms.
    let seen_idle = Instant::now();
    while idle() == 0 && seen_idle.elapsed() < Duration::from_millis(400) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(idle(), 1, "the connection was pooled");
    let deadline = Instant::now() + Duration::from_secs(5);
    while idle() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(idle(), 0);
}

/// A keep-alive backend answering every request with "ok".
fn upload_backend_keepalive() -> (SocketAddr, ()) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut stream = stream;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n"
                        && stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, ())
}

#[test]
fn refused_http2_uploads_do_not_count_against_the_backend() {
    use http_body_util::BodyExt;
    let (backend, _seen) = upload_backend();
    let pier = start(backend, "{maxBodySize: 1Ki}", &[]);
    with_h2(&pier, |mut sender| async move {
        for _ in 0..8 {
            // A streamed body without a length, over the limit.
            let (mut tx, body) =
                http_body_util::channel::Channel::<bytes::Bytes, std::convert::Infallible>::new(4);
            tokio::spawn(async move {
                for _ in 0..4 {
                    if tx
                        .send_data(bytes::Bytes::from(vec![b'q'; 1000]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let req = http::Request::post("http://t/up")
                .body(body.boxed())
                .expect("request");
            let res = sender.send_request(req).await.expect("response");
            assert_eq!(res.status(), 413);
        }
    });
    assert_eq!(metric(&pier, "pier_dataplane_upstream_ejections_total"), 0);
}
