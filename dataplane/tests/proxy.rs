//! ProxyRoute over real sockets: local backends (hyper servers and raw
//! sockets) behind a dataplane in standalone mode.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use support::{Running, request, send, with_h2};

/// A backend that answers every request with a description of it.
struct Backend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

/// Starts a backend named `name` on its own thread.
fn backend(name: &'static str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(name, req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    Backend { addr, connections }
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<AnyBody>, std::convert::Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    let method = req.method().to_string();
    // Hand a file back to the proxy when the test asks for it.
    let handoff: Vec<(&'static str, http::HeaderValue)> = [
        ("x-test-sendfile", "x-sendfile"),
        ("x-test-accel", "x-accel-redirect"),
    ]
    .into_iter()
    .filter_map(|(asked, header)| Some((header, req.headers().get(asked)?.clone())))
    .collect();
    let mut headers: Vec<String> = req
        .headers()
        .iter()
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
        .collect();
    headers.sort();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let text = format!(
        "backend={name}\nmethod={method}\npath={path}\n{}\nbody={}",
        headers.join("\n"),
        String::from_utf8_lossy(&body)
    );
    let mut res = if path.starts_with("/chunked") {
        // A body of unknown length: hyper sends it chunked.
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(2);
        tokio::spawn(async move {
            let _ = tx.send_data(Bytes::from("first-")).await;
            let _ = tx.send_data(Bytes::from(text)).await;
        });
        Response::new(body.boxed())
    } else if let Some(size) = path.strip_prefix("/big/") {
        let size: usize = size.parse().unwrap_or(0);
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        Response::new(Full::new(Bytes::from(data)).boxed())
    } else {
        Response::new(Full::new(Bytes::from(text)).boxed())
    };
    if !handoff.is_empty() {
        res = Response::new(Full::new(Bytes::from_static(b"backend body")).boxed());
        for (name, value) in handoff {
            res.headers_mut().insert(name, value);
        }
        let headers = res.headers_mut();
        headers.insert(
            "content-type",
            http::HeaderValue::from_static("application/x-download"),
        );
        headers.insert("set-cookie", http::HeaderValue::from_static("got=1"));
        headers.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    }
    res.headers_mut()
        .insert("server", http::HeaderValue::from_static("backend-server"));
    res.headers_mut().insert(
        "x-backend",
        http::HeaderValue::from_str(name).expect("name"),
    );
    Ok(res)
}

fn proxy_route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: pier.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
    )
}

fn start(spec: &str) -> Running {
    Running::start(&[("proxy.yaml", &proxy_route("app", spec))], &[])
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(name))
}

#[test]
fn round_robin_follows_the_weights() {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    let pier = start(&format!(
        "{{backends: [{{address: \"{}\"}}, {{address: \"{}\"}}, {{address: \"{}\", weight: 2}}]}}",
        a.addr, b.addr, c.addr
    ));
    let mut stream = pier.connect();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..1000 {
        let res = send(&mut stream, &request("GET", "/", &[]));
        assert_eq!(res.status, 200);
        *counts
            .entry(res.header("x-backend").unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!((counts["a"], counts["b"], counts["c"]), (250, 250, 500));
    // Upstream connections are kept alive and reused.
    for backend in [&a, &b, &c] {
        assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    }
    // Each endpoint has its own counters.
    for (backend, n) in [(&a, 250), (&b, 250), (&c, 500)] {
        let labels = format!("{{route=\"default/app\",endpoint=\"{}\"", backend.addr);
        assert_eq!(
            metric(
                &pier,
                &format!("pier_dataplane_upstream_requests_total{labels},code=\"200\"}}")
            ),
            n
        );
        assert_eq!(
            metric(
                &pier,
                &format!("pier_dataplane_upstream_request_duration_seconds_count{labels}}}")
            ),
            n
        );
        assert_eq!(
            metric(
                &pier,
                &format!(
                    "pier_dataplane_upstream_connections{{endpoint=\"{}\"}}",
                    backend.addr
                )
            ),
            1
        );
    }
}

#[test]
fn via_is_added_both_ways_when_configured() {
    let a = backend("a");
    let pier = Running::start(
        &[(
            "proxy.yaml",
            &proxy_route(
                "app",
                &format!("{{backends: [{{address: \"{}\"}}]}}", a.addr),
            ),
        )],
        &["--via", "pier"],
    );
    let res = pier.get("/", &["Via: 1.0 edge"]);
    assert!(
        res.text().contains("\nvia: 1.0 edge, 1.1 pier\n"),
        "{}",
        res.text()
    );
    assert_eq!(res.header("via"), Some("1.1 pier"));
}

#[test]
fn an_absolute_form_target_is_the_host_sent_upstream() {
    // RFC 9112 §3.2.2: the target's authority wins over the Host field,
    // for routing and for every host the backend sees.
    let a = backend("a");
    let pier = start(&format!(
        "{{hosts: [app.test], backends: [{{address: \"{}\"}}]}}",
        a.addr
    ));
    let res = pier.request(
        "GET http://app.test/x HTTP/1.1\r\nHost: internal-admin.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(res.status, 200);
    let text = res.text();
    assert!(text.contains("\nhost: app.test\n"), "{text}");
    assert!(text.contains("\nx-forwarded-host: app.test\n"), "{text}");
    assert!(text.contains(";host=app.test;"), "{text}");
    assert!(!text.contains("internal-admin"), "{text}");
}

#[test]
fn requests_are_rewritten_and_forwarded_headers_added() {
    let a = backend("a");
    let pier = start(&format!(
        "{{path: {{value: /api}}, backends: [{{address: \"{}\"}}],
          rewrite: {{pathPrefix: /v2, host: internal.example}},
          requestHeaders: {{set: [{{name: X-Env, value: prod}}], remove: [X-Debug]}},
          responseHeaders: {{remove: [Server], add: [{{name: X-Served-By, value: pier}}]}}}}",
        a.addr
    ));
    let res = pier.get(
        "/api/users?id=7",
        &[
            "X-Debug: 1",
            "X-Forwarded-For: 10.0.0.1",
            "Connection: keep-alive, X-Hop",
            "X-Hop: secret",
        ],
    );
    assert_eq!(res.status, 200);
    let text = res.text();
    assert_eq!(field(&text, "path="), Some("/v2/users?id=7"), "{text}");
    assert!(text.contains("\nhost: internal.example\n"), "{text}");
    assert!(text.contains("\nx-env: prod\n"), "{text}");
    assert!(
        text.contains("\nx-forwarded-for: 10.0.0.1, 127.0.0.1\n"),
        "{text}"
    );
    assert!(text.contains("\nx-forwarded-proto: http\n"), "{text}");
    assert!(text.contains("\nx-forwarded-host: test\n"), "{text}");
    assert!(
        text.contains("\nforwarded: for=127.0.0.1;host=test;proto=http\n"),
        "{text}"
    );
    assert!(!text.contains("\nvia:"), "no Via unless --via: {text}");
    assert!(!text.contains("x-debug"), "{text}");
    assert!(
        !text.contains("x-hop"),
        "hop-by-hop named in Connection: {text}"
    );
    assert_eq!(res.header("server"), None);
    assert_eq!(res.header("x-served-by"), Some("pier"));
    // Outside the prefix: no route.
    assert_eq!(pier.get("/other", &[]).status, 404);
}

#[test]
fn request_bodies_are_relayed_sized_chunked_and_after_100_continue() {
    let a = backend("a");
    let pier = start(&format!("{{backends: [{{address: \"{}\"}}]}}", a.addr));
    let mut stream = pier.connect();
    let sized = "POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world";
    let res = send(&mut stream, sized);
    assert_eq!(field(&res.text(), "body="), Some("hello world"));
    let chunked = "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let res = send(&mut stream, chunked);
    assert_eq!(field(&res.text(), "body="), Some("hello world"));
    assert_eq!(field(&res.text(), "method="), Some("POST"));

    // Expect: 100-continue: the client waits for the interim answer.
    stream
        .write_all(
            b"PUT /e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .expect("send head");
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).expect("100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"data").expect("send body");
    let res = support::read_response(&mut stream, false);
    assert_eq!(field(&res.text(), "body="), Some("data"));

    // A malformed chunked body is refused, never forwarded.
    let mut stream = pier.connect();
    stream
        .write_all(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
        .expect("send");
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(!text.contains("backend=a"), "{text}");
}

#[test]
fn smuggling_attempts_get_400_and_are_never_forwarded() {
    let a = backend("a");
    let pier = start(&format!("{{backends: [{{address: \"{}\"}}]}}", a.addr));
    let attempts = [
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n",
    ];
    for attempt in attempts {
        let mut stream = pier.connect();
        stream.write_all(attempt.as_bytes()).expect("send");
        let mut all = Vec::new();
        let _ = stream.read_to_end(&mut all);
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 400"), "{attempt:?}: {text}");
    }
    assert_eq!(
        a.connections.load(Ordering::SeqCst),
        0,
        "no head was forwarded"
    );
    // Bad chunk sizes in the body: 400, and the bad chunk is not passed on.
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "ffffffffffffffffff\r\nx\r\n0\r\n\r\n",
    ] {
        let mut stream = pier.connect();
        let request =
            format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        stream.write_all(request.as_bytes()).expect("send");
        let mut all = Vec::new();
        let _ = stream.read_to_end(&mut all);
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 400"), "{body:?}: {text}");
    }
    assert_eq!(
        metric(&pier, "pier_dataplane_upstream_ejections_total"),
        0,
        "a client's bad body is not the endpoint's failure"
    );
    assert!(
        !pier.admin("/metrics").text().contains("code=\"200\""),
        "no request reached the backend and came back"
    );
}

#[test]
fn response_bodies_are_relayed_exactly_chunked_or_sized() {
    let a = backend("a");
    let pier = start(&format!("{{backends: [{{address: \"{}\"}}]}}", a.addr));
    let mut stream = pier.connect();
    stream
        .write_all(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !got.ends_with(b"0\r\n\r\n") {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("first-"), "{text}");
    // The connection still works after a chunked response.
    let res = send(&mut stream, &request("GET", "/big/1048583", &[]));
    let want: Vec<u8> = (0..1_048_583).map(|i| (i % 251) as u8).collect();
    assert!(res.body == want, "a 1 MiB body arrives intact");

    // An HTTP/1.0 client gets the chunked body de-chunked, then a close.
    let mut stream = pier.connect();
    stream
        .write_all(b"GET /chunked HTTP/1.0\r\nHost: t\r\n\r\n")
        .expect("send");
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("read to close");
    let text = String::from_utf8_lossy(&all);
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.contains("\r\n\r\nfirst-backend=a"), "{text}");
}

#[test]
fn an_unreachable_backend_gets_502() {
    // Nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let pier = start(&format!("{{backends: [{{address: \"{closed}\"}}]}}"));
    assert_eq!(pier.get("/", &[]).status, 502);
    // 504 at the response header timeout: `front::clock_tests`, on a paused
    // clock.
}

#[test]
fn a_backend_dying_mid_body_aborts_the_client_transfer() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b");
            // Closed with 990 bytes missing.
        }
    });
    let pier = start(&format!("{{backends: [{{address: \"{addr}\"}}]}}"));
    let mut stream = pier.connect();
    stream
        .write_all(request("GET", "/", &[]).as_bytes())
        .expect("send");
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("content-length: 1000"), "{text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert_eq!(
        body, "only ten b",
        "the transfer ends short and the connection closes"
    );
}

#[test]
fn consistent_hash_keeps_a_key_on_one_backend_and_spreads_keys() {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    let pier = start(&format!(
        "{{backends: [{{address: \"{}\"}}, {{address: \"{}\"}}, {{address: \"{}\"}}],
          balancer: {{type: ConsistentHash, hashOn: {{header: X-User}}}}}}",
        a.addr, b.addr, c.addr
    ));
    let mut stream = pier.connect();
    let mut owners = std::collections::HashMap::new();
    for user in 0..60 {
        for _ in 0..3 {
            let res = send(
                &mut stream,
                &request("GET", "/", &[&format!("X-User: user-{user}")]),
            );
            let backend = res.header("x-backend").unwrap_or("?").to_owned();
            let first = owners.entry(user).or_insert_with(|| backend.clone());
            assert_eq!(*first, backend, "user-{user} moved");
        }
    }
    let used: std::collections::HashSet<&String> = owners.values().collect();
    assert_eq!(used.len(), 3, "60 keys use every backend: {owners:?}");
}

#[test]
fn least_request_prefers_the_idle_backend() {
    let (a, b) = (backend("a"), backend("b"));
    let pier = start(&format!(
        "{{backends: [{{address: \"{}\"}}, {{address: \"{}\"}}], balancer: {{type: LeastRequest}}}}",
        a.addr, b.addr
    ));
    // One request held in flight on one backend (its answer takes 2 s) ...
    let addr = pier.addr;
    let holder = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        send(&mut stream, &request("GET", "/slow", &[]))
            .header("x-backend")
            .map(str::to_owned)
    });
    std::thread::sleep(Duration::from_millis(300));
    // ... so with two endpoints compared each time, every quick request
    // goes to the other one.
    let mut stream = pier.connect();
    let quick: Vec<String> = (0..20)
        .map(|_| {
            send(&mut stream, &request("GET", "/", &[]))
                .header("x-backend")
                .unwrap_or("?")
                .to_owned()
        })
        .collect();
    let busy = holder.join().expect("holder").expect("answered");
    assert!(
        quick.iter().all(|b| *b != busy),
        "quick requests went to the busy backend {busy}: {quick:?}"
    );
}

/// A backend that answers every request with `503`.
fn unavailable() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let answer =
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy";
                    if conn.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn metric(pier: &Running, name: &str) -> u64 {
    let text = pier.admin("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_dead_backend_is_failed_over_and_ejected() {
    let alive = backend("alive");
    let dead = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let pier = start(&format!(
        "{{backends: [{{address: \"{dead}\"}}, {{address: \"{}\"}}], ejection: {{consecutiveFailures: 3, duration: 1m}}}}",
        alive.addr
    ));
    let mut stream = pier.connect();
    for i in 0..20 {
        let res = send(&mut stream, &request("GET", "/", &[]));
        assert_eq!(res.status, 200, "request {i} saw the dead backend");
        assert_eq!(res.header("x-backend"), Some("alive"));
    }
    // Three connect failures were retried, then the endpoint was left out.
    assert_eq!(metric(&pier, "pier_dataplane_upstream_ejections_total"), 1);
    assert_eq!(metric(&pier, "pier_dataplane_upstream_retries_total"), 3);
    let dead = format!("{{route=\"default/app\",endpoint=\"{dead}\"}}");
    assert_eq!(
        metric(
            &pier,
            &format!("pier_dataplane_upstream_endpoint_ejections_total{dead}")
        ),
        1
    );
    assert_eq!(
        metric(
            &pier,
            &format!("pier_dataplane_upstream_endpoint_retries_total{dead}")
        ),
        3
    );
}

#[test]
fn retryable_statuses_go_to_another_endpoint_for_idempotent_requests_only() {
    let good = backend("good");
    let busy = unavailable();
    let pier = start(&format!(
        "{{backends: [{{address: \"{busy}\"}}, {{address: \"{}\"}}],
          retries: {{attempts: 1, on: [Status503]}}, ejection: {{consecutiveFailures: 1000, duration: 1s}}}}",
        good.addr
    ));
    let mut stream = pier.connect();
    for _ in 0..6 {
        let res = send(&mut stream, &request("GET", "/", &[]));
        assert_eq!(res.status, 200, "a GET is retried past the 503");
    }
    // A POST with a body is not repeated: some reach the busy backend.
    let statuses: Vec<u16> = (0..6)
        .map(|_| {
            send(
                &mut stream,
                "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
            )
            .status
        })
        .collect();
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}

#[test]
fn when_every_endpoint_is_ejected_they_are_tried_anyway() {
    let flaky = unavailable();
    let pier = start(&format!(
        "{{backends: [{{address: \"{flaky}\"}}], ejection: {{consecutiveFailures: 1, duration: 1h}}}}"
    ));
    for _ in 0..3 {
        // Ejected after the first, still tried: the client gets the
        // backend's own answer, not an empty 503 from Pier.
        let res = pier.get("/", &[]);
        assert_eq!((res.status, &res.body[..]), (503, &b"busy"[..]));
    }
}

#[test]
fn websocket_upgrades_are_tunnelled_both_ways() {
    // A backend that accepts the upgrade, then echoes upper-cased bytes.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        *record.lock().expect("lock") = String::from_utf8_lossy(&head).into_owned();
        let _ = conn.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n",
        );
        let mut buf = [0u8; 1024];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                return;
            }
            let _ = conn.write_all(&buf[..n].to_ascii_uppercase());
        }
    });
    let pier = start(&format!("{{backends: [{{address: \"{addr}\"}}]}}"));
    let mut stream = pier.connect();
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).expect("read"), 1, "closed early");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("connection: upgrade"),
        "{head}"
    );
    for message in ["hello", "again"] {
        stream.write_all(message.as_bytes()).expect("send");
        let mut echo = vec![0u8; message.len()];
        stream.read_exact(&mut echo).expect("echo");
        assert_eq!(echo, message.to_uppercase().as_bytes());
    }
    let forwarded = seen.lock().expect("lock").to_lowercase();
    assert!(forwarded.contains("upgrade: websocket"), "{forwarded}");
    assert!(forwarded.contains("connection: upgrade"), "{forwarded}");
}

#[test]
fn x_sendfile_serves_files_below_the_roots_and_refuses_everything_else() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path().join("files");
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    support::write(&files, "a.bin", &data);
    support::write(&files, "a b.txt", b"spaced");
    support::write(&files, "sub/dir/x", b"x");
    support::write(dir.path(), "secret/key", b"TOP SECRET");
    std::os::unix::fs::symlink("../secret/key", files.join("escape")).expect("symlink");
    std::os::unix::fs::symlink("a.bin", files.join("inside")).expect("symlink");
    let files = files.display().to_string();
    let a = backend("a");
    let pier = start(&format!(
        "{{backends: [{{address: \"{}\"}}], sendfile: {{enabled: true, roots: [\"{files}\"]}}}}",
        a.addr
    ));
    let mut stream = pier.connect();
    let mut get = |method: &str, header: &str, extra: &[&str]| {
        let mut headers = vec![header];
        headers.extend_from_slice(extra);
        send(&mut stream, &request(method, "/download", &headers))
    };

    let res = get("GET", &format!("X-Test-Sendfile: {files}/a.bin"), &[]);
    assert_eq!(res.status, 200);
    assert_eq!(res.body, data, "the file, not the backend's body");
    assert_eq!(res.header("content-length"), Some("1000"));
    assert_eq!(res.header("content-type"), Some("application/x-download"));
    assert_eq!(res.header("set-cookie"), Some("got=1"));
    assert_eq!(res.header("accept-ranges"), Some("bytes"));
    assert_eq!(res.header("x-sendfile"), None);
    assert_eq!(res.header("x-accel-buffering"), None);
    let etag = res.header("etag").expect("an ETag").to_owned();

    // Every static feature: ranges, validators, HEAD.
    let res = get(
        "GET",
        &format!("X-Test-Sendfile: {files}/a.bin"),
        &["Range: bytes=10-19"],
    );
    assert_eq!(res.status, 206);
    assert_eq!(res.body, &data[10..20]);
    assert_eq!(res.header("content-range"), Some("bytes 10-19/1000"));
    let res = get(
        "GET",
        &format!("X-Test-Sendfile: {files}/a.bin"),
        &[&format!("If-None-Match: {etag}")],
    );
    assert_eq!(res.status, 304);
    let res = get("HEAD", &format!("X-Test-Sendfile: {files}/a.bin"), &[]);
    assert_eq!((res.status, res.body.len()), (200, 0));
    assert_eq!(res.header("content-length"), Some("1000"));
    // A POST the backend answered with a file gets the file.
    let res = get("POST", &format!("X-Test-Sendfile: {files}/a.bin"), &[]);
    assert_eq!((res.status, res.body.len()), (200, 1000));

    // nginx's header is a URI path; a symlink inside the root is fine.
    let res = get("GET", &format!("X-Test-Accel: {files}/a%20b.txt?x=1"), &[]);
    assert_eq!((res.status, res.text()), (200, "spaced".to_owned()));
    let res = get("GET", &format!("X-Test-Sendfile: {files}/inside"), &[]);
    assert_eq!((res.status, res.body.len()), (200, 1000));

    // Missing files and directories are 404; nothing outside is served.
    assert_eq!(
        get("GET", &format!("X-Test-Sendfile: {files}/nope"), &[]).status,
        404
    );
    assert_eq!(
        get("GET", &format!("X-Test-Sendfile: {files}/sub"), &[]).status,
        404
    );
    let tricks = [
        format!("X-Test-Sendfile: {files}/../secret/key"),
        format!("X-Test-Sendfile: {files}/escape"),
        format!("X-Test-Sendfile: {}/secret/key", dir.path().display()),
        format!("X-Test-Sendfile: {files}x/key"),
        format!("X-Test-Accel: {files}/%2e%2e/secret/key"),
        "X-Test-Sendfile: /etc/passwd".to_owned(),
    ];
    for trick in &tricks {
        // A refusal closes the client connection, as every 502 does.
        let res = pier.get("/download", &[trick]);
        assert_eq!(res.status, 502, "{trick}");
        assert!(!res.text().contains("SECRET"), "{trick}");
    }
    assert_eq!(
        metric(&pier, "pier_dataplane_sendfile_refused_total"),
        tricks.len() as u64
    );
    assert_eq!(metric(&pier, "pier_dataplane_sendfile_total"), 9);
    // The backend's small bodies were read with their heads: one
    // connection served every answer.
    assert_eq!(a.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn without_sendfile_the_headers_pass_through() {
    let a = backend("a");
    let pier = start(&format!("{{backends: [{{address: \"{}\"}}]}}", a.addr));
    let res = pier.get("/", &["X-Test-Sendfile: /etc/passwd"]);
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "backend body");
    assert_eq!(res.header("x-sendfile"), Some("/etc/passwd"));
}

async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> (u16, http::HeaderMap, Result<Bytes, String>) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://test{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req
        .body(Full::new(Bytes::from_static(body)))
        .expect("request");
    let res = sender.send_request(req).await.expect("response head");
    assert_eq!(res.version(), http::Version::HTTP_2);
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    (status, headers, body)
}

#[test]
fn http2_clients_are_proxied_with_the_same_rules() {
    let a = backend("a");
    let dir = tempfile::tempdir().expect("temp dir");
    support::write(dir.path(), "file.bin", &[7u8; 3000]);
    let pier = start(&format!(
        "{{path: {{value: /api}}, backends: [{{address: \"{}\"}}], rewrite: {{pathPrefix: /}},
          requestHeaders: {{set: [{{name: X-Env, value: prod}}]}},
          responseHeaders: {{remove: [Server]}},
          sendfile: {{enabled: true, roots: [\"{}\"]}}}}",
        a.addr,
        dir.path().display()
    ));
    let file = format!("{}/file.bin", dir.path().display());
    let connections = Arc::clone(&a.connections);
    with_h2(&pier, |mut sender| async move {
        let (status, headers, body) =
            h2_send(&mut sender, "GET", "/api/users?id=7", &[], b"").await;
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body.expect("body")).into_owned();
        assert_eq!(field(&text, "path="), Some("/users?id=7"), "{text}");
        assert!(text.contains("\nhost: test\n"), "{text}");
        assert!(text.contains("\nx-env: prod\n"), "{text}");
        assert!(text.contains("\nx-forwarded-for: 127.0.0.1\n"), "{text}");
        assert!(
            text.contains("\nforwarded: for=127.0.0.1;host=test;proto=http\n"),
            "{text}"
        );
        assert_eq!(headers.get("server"), None);
        assert_eq!(headers["x-backend"], "a");

        // Bodies both ways, sized and chunked, large and small.
        let (status, _, body) = h2_send(&mut sender, "POST", "/api/post", &[], b"hello h2").await;
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body.expect("body")).into_owned();
        assert_eq!(field(&text, "body="), Some("hello h2"), "{text}");
        assert_eq!(field(&text, "method="), Some("POST"), "{text}");
        let (_, headers, body) = h2_send(&mut sender, "GET", "/api/big/300000", &[], b"").await;
        let body = body.expect("body");
        assert_eq!(body.len(), 300_000);
        assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        assert_eq!(headers["content-length"], "300000");
        let (_, _, body) = h2_send(&mut sender, "GET", "/api/chunked", &[], b"").await;
        assert!(body.expect("body").starts_with(b"first-backend=a"));
        let (status, headers, body) = h2_send(&mut sender, "HEAD", "/api/big/1234", &[], b"").await;
        assert_eq!((status, body.expect("body").len()), (200, 0));
        assert_eq!(headers["content-length"], "1234");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "one upstream connection carried every request so far"
        );

        // X-Sendfile over HTTP/2, ranges included.
        let handoff = [("x-test-sendfile", file.as_str()), ("range", "bytes=0-99")];
        let (status, _, body) = h2_send(&mut sender, "GET", "/api/dl", &handoff, b"").await;
        assert_eq!((status, body.expect("body").len()), (206, 100));

        // Concurrent streams share the pool.
        let mut streams = Vec::new();
        for i in 0..8 {
            let mut sender = sender.clone();
            streams.push(tokio::spawn(async move {
                h2_send(&mut sender, "GET", &format!("/api/c{i}"), &[], b"")
                    .await
                    .0
            }));
        }
        for stream in streams {
            assert_eq!(stream.await.expect("stream"), 200);
        }
    });
    let counted = metric(
        &pier,
        &format!(
            "pier_dataplane_upstream_requests_total{{route=\"default/app\",endpoint=\"{}\",code=\"200\"}}",
            a.addr
        ),
    );
    assert_eq!(
        counted,
        6 + 8,
        "every try counted, the 206 handoff as its backend's 200"
    );
}

#[test]
fn http2_streams_see_backend_failures_and_deaths() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b");
        }
    });
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let pier = Running::start(
        &[
            (
                "dies.yaml",
                &proxy_route(
                    "dies",
                    &format!("{{path: {{value: /dies}}, backends: [{{address: \"{addr}\"}}]}}"),
                ),
            ),
            (
                "closed.yaml",
                &proxy_route(
                    "closed",
                    &format!("{{path: {{value: /closed}}, backends: [{{address: \"{closed}\"}}]}}"),
                ),
            ),
            (
                "none.yaml",
                &proxy_route(
                    "none",
                    &format!(
                        "{{path: {{value: /none}}, backends: [{{address: \"{closed}\", weight: 0}}, {{address: \"{addr}\", weight: 0}}]}}"
                    ),
                ),
            ),
        ],
        &[],
    );
    with_h2(&pier, |mut sender| async move {
        let (status, _, body) = h2_send(&mut sender, "GET", "/dies", &[], b"").await;
        assert_eq!(status, 200);
        assert!(
            body.is_err(),
            "a short body is an error, not complete: {body:?}"
        );
        let (status, _, _) = h2_send(&mut sender, "GET", "/closed", &[], b"").await;
        assert_eq!(status, 502);
        // The connection survives both.
        let (status, _, _) = h2_send(&mut sender, "GET", "/closed", &[], b"").await;
        assert_eq!(status, 502);
    });
}
