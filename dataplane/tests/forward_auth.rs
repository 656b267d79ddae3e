//! Forward authentication over real sockets: an authentication service
//! (a thread here, as oauth2-proxy would be) judges each request by its
//! cookie before a ProxyRoute or a StaticRoute serves it, over HTTP/1.1
//! and HTTP/2.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use support::{Response, Running, named_backend, request, send, write};

/// The service: `session=good` is alice (200, `X-Set: alice`), a request
/// for `/forbidden` gets 403, any other 401 with a challenge. It keeps
/// the last check's head.
fn auth_service() -> (SocketAddr, Arc<Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(String::new()));
    let last = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let answer = if head.contains("x-original-url: http://app.test/forbidden") {
                "403 Forbidden\r\n"
            } else if head.contains("cookie: session=good") {
                "200 OK\r\nX-Set: alice\r\n"
            } else {
                "401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"sso\"\r\n"
            };
            *last.lock().unwrap_or_else(|e| e.into_inner()) = head;
            let _ = write!(
                stream,
                "HTTP/1.1 {answer}Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (addr, seen)
}

fn route(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: pier.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
    )
}

fn ask(pier: &Running, host: &str, path: &str, fields: &[&str]) -> Response {
    let req = request("GET", path, fields).replacen("Host: test", &format!("Host: {host}"), 1);
    send(&mut pier.connect(), &req)
}

#[test]
fn the_service_admits_refuses_and_fills_in_the_user() {
    let (auth, seen) = auth_service();
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "index.html", b"files");
    let app = route(
        "ProxyRoute",
        "app",
        &format!(
            "{{hosts: [app.test], backends: [{{address: \"{}\"}}], forwardAuth: {{url: \"http://{auth}/oauth2/auth\", responseHeaders: [X-Set]}}}}",
            named_backend("app")
        ),
    );
    let files = route(
        "StaticRoute",
        "files",
        &format!(
            "{{hosts: [files.test], root: {}, forwardAuth: {{url: \"http://{auth}/check\", signin: \"https://sso.test/start\"}}}}",
            dir.path().display()
        ),
    );
    let down = route(
        "ProxyRoute",
        "down",
        &format!(
            "{{hosts: [down.test], backends: [{{address: \"{}\"}}], forwardAuth: {{url: \"http://127.0.0.1:1/check\"}}}}",
            named_backend("down")
        ),
    );
    let pier = Running::start(
        &[
            ("app.yaml", &app),
            ("files.yaml", &files),
            ("down.yaml", &down),
        ],
        &[],
    );

    // No session: the service's 401 and its challenge.
    let res = ask(&pier, "app.test", "/", &[]);
    assert_eq!(res.status, 401);
    assert_eq!(res.header("www-authenticate"), Some("Bearer realm=\"sso\""));
    // A session: served, the user taken from the answer, a forged one dropped.
    let res = ask(
        &pier,
        "app.test",
        "/items?x=1",
        &["Cookie: session=good", "X-Set: mallory"],
    );
    assert_eq!(
        (res.status, res.text().as_str()),
        (200, "app /items?x=1 alice")
    );
    let check = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        check.starts_with("get /oauth2/auth http/1.1\r\n"),
        "{check}"
    );
    for field in [
        "x-original-url: http://app.test/items?x=1",
        "x-original-method: get",
        "x-forwarded-for: 127.0.0.1",
        "cookie: session=good",
    ] {
        assert!(check.contains(field), "{field} in {check}");
    }
    assert_eq!(
        ask(&pier, "app.test", "/forbidden", &["Cookie: session=good"]).status,
        403
    );

    // A 401 on a route with a sign-in page goes there.
    let res = ask(&pier, "files.test", "/", &[]);
    assert_eq!(res.status, 302);
    assert_eq!(
        res.header("location"),
        Some("https://sso.test/start?rd=http%3A%2F%2Ffiles.test%2F")
    );
    let res = ask(&pier, "files.test", "/", &["Cookie: session=good"]);
    assert_eq!((res.status, res.text().as_str()), (200, "files"));

    // No service answering: closed, never open.
    assert_eq!(
        ask(&pier, "down.test", "/", &["Cookie: session=good"]).status,
        500
    );

    // HTTP/2 waits for the same check.
    support::with_h2(&pier, |mut sender| async move {
        for (cookie, status) in [(None, 401), (Some("session=good"), 200)] {
            let mut req = http::Request::builder().uri("http://app.test/");
            if let Some(cookie) = cookie {
                req = req.header("cookie", cookie);
            }
            let req = req.body(Full::new(Bytes::new())).expect("request");
            let res = sender.send_request(req).await.expect("response");
            assert_eq!(res.status(), status);
        }
    });
    let metrics = pier.admin("/metrics").text();
    assert!(
        metrics.contains("pier_dataplane_forward_auth_denied_total"),
        "{metrics}"
    );
}
