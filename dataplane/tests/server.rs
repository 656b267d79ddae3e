//! Server behaviour over real sockets: keep-alive, h2c, limits, snapshot
//! reloads, graceful shutdown, admin endpoints.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::{Logs, Running, request, send, static_route, with_h2, write};

fn site(flags: &[&str]) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "index.html", b"v1");
    write(dir.path(), "big.bin", &vec![9u8; 8 << 20]);
    let spec = format!("{{root: {}}}", dir.path().display());
    (
        Running::start(&[("site.yaml", &static_route("site", &spec))], flags),
        dir,
    )
}

/// Polls until `check` holds; the dataplane applies changes asynchronously.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let (pier, _dir) = site(&[]);
    let mut stream = pier.connect();
    for _ in 0..50 {
        let res = send(&mut stream, &request("GET", "/", &[]));
        assert_eq!(res.status, 200);
        assert_eq!(res.body, b"v1");
    }
}

#[test]
fn h2c_prior_knowledge_is_served() {
    let (pier, _dir) = site(&[]);
    with_h2(&pier, |mut sender| async move {
        for path in ["/", "/big.bin"] {
            let req = http::Request::get(format!("http://test{path}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            let res = sender.send_request(req).await.expect("response");
            assert_eq!(res.status(), 200);
            assert_eq!(res.version(), http::Version::HTTP_2);
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(body.len(), if path == "/" { 2 } else { 8 << 20 });
        }
        let head = http::Request::head("http://test/big.bin")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let res = sender.send_request(head).await.expect("head response");
        assert_eq!(res.headers()["content-length"], "8388608");
    });
}

#[test]
fn oversized_headers_get_431() {
    let (pier, _dir) = site(&["--max-header-size", "8KiB"]);
    let big = format!("X-Big: {}", "a".repeat(9000));
    let res = pier.get("/", &[&big]);
    assert_eq!(res.status, 431);
}

#[test]
fn connections_over_the_limit_get_503() {
    let (pier, _dir) = site(&["--max-connections", "2"]);
    let mut held: Vec<_> = (0..2)
        .map(|_| {
            let mut s = pier.connect();
            assert_eq!(send(&mut s, &request("GET", "/", &[])).status, 200);
            s
        })
        .collect();
    let refused = pier.get("/", &[]);
    assert_eq!(refused.status, 503);
    held.clear();
    assert!(eventually(|| pier.get("/", &[]).status == 200));
    // At least the refused one; retries while closes were in flight add more.
    let metrics = pier.admin("/metrics").text();
    let rejected: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pier_dataplane_connections_rejected_total "))
        .and_then(|v| v.parse().ok())
        .expect("rejected counter");
    assert!(rejected >= 1, "{metrics}");
}

#[test]
fn route_changes_apply_and_invalid_files_keep_the_last_good_snapshot() {
    let (pier, _dir) = site(&[]);
    let v1_snapshot = pier.admin("/snapshot").text();

    let other_dir = tempfile::tempdir().expect("dir");
    write(other_dir.path(), "index.html", b"other");
    let other = format!(
        "{{root: {}, path: {{value: /other}}}}",
        other_dir.path().display()
    );
    std::fs::write(
        pier.routes.join("other.yaml"),
        static_route("other", &other),
    )
    .expect("write");
    assert!(eventually(|| pier.get("/other/", &[]).body == b"other"));

    // A broken file: nothing changes, the error is counted.
    std::fs::write(
        pier.routes.join("broken.yaml"),
        "kind: StaticRoute\nspec: [unclosed",
    )
    .expect("write");
    assert!(eventually(|| metrics_show(
        &pier,
        "pier_dataplane_snapshot_load_errors_total 1"
    )));
    assert_eq!(pier.get("/other/", &[]).body, b"other");
    assert_eq!(pier.get("/", &[]).body, b"v1");

    // An invalid resource in a valid file is left out; the others stay.
    std::fs::write(
        pier.routes.join("broken.yaml"),
        static_route("bad", "{root: relative, path: {value: nope}}"),
    )
    .expect("write");
    assert!(eventually(|| metrics_show(
        &pier,
        "pier_dataplane_snapshot_invalid_routes 1"
    )));
    assert_eq!(pier.get("/other/", &[]).body, b"other");

    // Removing the route removes it.
    std::fs::remove_file(pier.routes.join("other.yaml")).expect("remove");
    assert!(eventually(|| pier.get("/other/", &[]).status == 404));
    assert_eq!(
        pier.admin("/snapshot").text(),
        v1_snapshot,
        "back to the first snapshot"
    );
}

#[test]
fn in_flight_downloads_survive_a_snapshot_swap() {
    let (pier, dir) = site(&["--read-chunk", "64KiB"]);
    let (mut stream, received) = start_big_download(&pier);
    // Swap to a snapshot without the route while the body is in flight.
    std::fs::write(
        pier.routes.join("site.yaml"),
        static_route(
            "site",
            &format!(
                "{{root: {}, path: {{value: /elsewhere}}}}",
                dir.path().display()
            ),
        ),
    )
    .expect("write");
    assert!(eventually(|| pier.get("/", &[]).status == 404));
    let received = finish_download(&mut stream, received, 8 << 20);
    assert_eq!(received, 8 << 20, "download cut after {received} bytes");
}

/// True when `/metrics` has a line containing `needle`.
fn metrics_show(pier: &Running, needle: &str) -> bool {
    pier.admin("/metrics").text().contains(needle)
}

/// Starts `GET /big.bin` and reads its first 4 KiB; returns the stream and
/// how many body bytes arrived.
fn start_big_download(pier: &Running) -> (std::net::TcpStream, usize) {
    let mut stream = pier.connect();
    stream
        .write_all(request("GET", "/big.bin", &[]).as_bytes())
        .expect("send");
    let mut first = [0u8; 4096];
    stream.read_exact(&mut first).expect("first bytes");
    (stream, 4096 - head_len(&first))
}

/// Reads until the body of `total` bytes is complete or the peer closes;
/// returns the body bytes received.
fn finish_download(stream: &mut std::net::TcpStream, mut received: usize, total: usize) -> usize {
    let mut buf = [0u8; 65536];
    while received < total {
        let n = stream.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        received += n;
    }
    received
}

fn head_len(bytes: &[u8]) -> usize {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .expect("head in the first 4 KiB")
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests_and_refuses_new_ones() {
    let (mut pier, _dir) = site(&["--read-chunk", "64KiB"]);
    let (mut stream, received) = start_big_download(&pier);
    let addr = pier.addr;
    pier.begin_shutdown();
    assert!(eventually(|| std::net::TcpStream::connect(addr).is_err()));
    let received = finish_download(&mut stream, received, 8 << 20);
    assert_eq!(received, 8 << 20, "the in-flight download completed");
}

#[test]
fn shutdown_closes_idle_keep_alive_connections_at_once() {
    // A grace period far longer than the test: idle connections must not
    // wait for it, and the in-flight download must be let finish.
    let (mut pier, _dir) = site(&["--shutdown-grace", "60s", "--read-chunk", "64KiB"]);
    let mut idle = pier.connect();
    assert_eq!(send(&mut idle, &request("GET", "/", &[])).status, 200);
    let (mut busy, received) = start_big_download(&pier);
    let started = Instant::now();
    pier.begin_shutdown();
    let mut buf = [0u8; 1];
    assert_eq!(idle.read(&mut buf).expect("closed, not timed out"), 0);
    assert!(started.elapsed() < Duration::from_secs(5));
    let received = finish_download(&mut busy, received, 8 << 20);
    assert_eq!(received, 8 << 20, "the in-flight download completed");
}

#[test]
fn drain_fails_readiness_first_and_keeps_accepting_for_the_delay() {
    // Long enough that every check below runs inside the delay.
    let (mut pier, _dir) = site(&["--drain-delay", "10s"]);
    let mut kept = pier.connect();
    assert_eq!(send(&mut kept, &request("GET", "/", &[])).status, 200);
    assert_eq!(pier.admin("/readyz").status, 200);
    pier.begin_shutdown();
    assert!(eventually(|| pier.admin("/readyz").status == 503));
    assert_eq!(pier.admin("/healthz").status, 200, "alive while draining");
    // A kept-alive connection is answered and told to close.
    let res = send(&mut kept, &request("GET", "/", &[]));
    assert_eq!(res.status, 200);
    assert_eq!(res.header("connection"), Some("close"));
    // A new connection is still accepted and served, then closed.
    let res = pier.get("/", &[]);
    assert_eq!(res.status, 200);
    assert_eq!(res.header("connection"), Some("close"));
    // After the delay the listener closes.
    let addr = pier.addr;
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the listener closes after the delay"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_dataplane_on_the_same_address_fails_with_addr_in_use() {
    use clap::Parser;
    let (pier, _dir) = site(&[]);
    let routes = pier.routes.to_string_lossy().into_owned();
    // Each of the three listeners in turn takes the first one's address.
    for (index, taken) in [(4, pier.addr), (6, pier.tls), (8, pier.admin)] {
        let addr = taken.to_string();
        let mut argv = vec![
            "pier-dataplane",
            "--routes",
            &routes,
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ];
        argv[index] = &addr;
        let args = pier_dataplane::Args::try_parse_from(argv).expect("flags parse");
        let err = pier_dataplane::Dataplane::bind(args).expect_err("the address is taken");
        let text = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(text.contains(&addr), "names the address: {text}");
        assert!(text.contains("AddrInUse"), "{text}");
    }
    assert_eq!(pier.get("/", &[]).status, 200, "the first keeps serving");
}

#[test]
fn a_route_left_out_is_logged_even_when_the_snapshot_stays_the_same() {
    let logs = Logs::capture();
    let (pier, _dir) = site(&[]);
    let version = pier.admin("/metrics").text();
    let version = version
        .lines()
        .find(|l| l.starts_with("pier_dataplane_snapshot_info"))
        .expect("snapshot info")
        .to_owned();
    // Invalid on its own: left out, so the snapshot does not change.
    let broken = static_route("broken", "{root: /srv, path: {value: no-slash}}");
    write(&pier.routes, "broken.yaml", broken.as_bytes());
    assert!(eventually(|| pier
        .admin("/metrics")
        .text()
        .contains("pier_dataplane_snapshot_invalid_routes 1")));
    assert!(
        pier.admin("/metrics").text().contains(&version),
        "same snapshot"
    );
    assert!(
        eventually(|| {
            let text = logs.text();
            text.contains("route left out of the snapshot") && text.contains("default/broken")
        }),
        "logged:\n{}",
        logs.text()
    );
}

#[test]
fn admin_reports_health_readiness_and_metrics() {
    let (pier, _dir) = site(&[]);
    assert_eq!(pier.admin("/healthz").status, 200);
    assert_eq!(pier.admin("/readyz").status, 200);
    pier.get("/", &[]);
    pier.get("/missing", &[]);
    pier.get("/%2e%2e/x", &[]);
    let metrics = pier.admin("/metrics").text();
    for needle in [
        "pier_dataplane_requests_total{route=\"default/site\",code=\"200\"} 1",
        "pier_dataplane_requests_total{route=\"default/site\",code=\"404\"} 1",
        "pier_dataplane_requests_total{route=\"\",code=\"400\"} 1",
        "pier_dataplane_request_duration_seconds_count{route=\"default/site\"} 2",
        "pier_dataplane_response_body_bytes_total{route=\"default/site\"} 2",
        "pier_dataplane_connections_open ",
        "pier_dataplane_allocator_allocated_bytes ",
        "pier_dataplane_allocator_resident_bytes ",
        "pier_dataplane_snapshot_info{version=\"",
        "pier_dataplane_snapshot_routes 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }
    let snapshot: serde_json::Value =
        serde_json::from_slice(&pier.admin("/snapshot").body).expect("snapshot JSON");
    assert_eq!(snapshot["routes"][0]["key"]["name"], "site");
    let allocator = pier.admin("/debug/allocator");
    assert_eq!(allocator.status, 200);
    assert!(
        allocator.text().contains("Allocated:"),
        "jemalloc's statistics"
    );
}
