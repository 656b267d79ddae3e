//! Session affinity by cookie over real sockets: the first response sets
//! the cookie, later requests with it stay on their endpoint over HTTP/1.1
//! and HTTP/2, and a session whose endpoint goes away moves, with a new
//! cookie.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::{Response, Running, named_backend, request, send, with_h2};

fn route(backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    format!(
        "apiVersion: pier.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: app, namespace: default}}\nspec: {{backends: [{}], affinity: {{cookie: {{name: sid, maxAge: 1h}}}}}}\n",
        list.join(", ")
    )
}

fn get(pier: &Running, cookie: Option<&str>) -> Response {
    let field = cookie.map(|c| format!("Cookie: theme=dark; {c}"));
    let headers: Vec<&str> = field.iter().map(String::as_str).collect();
    send(&mut pier.connect(), &request("GET", "/", &headers))
}

/// Who answered (the backend's name).
fn who(res: &Response) -> String {
    assert_eq!(res.status, 200, "{}", res.text());
    res.text().split(' ').next().unwrap_or("").to_owned()
}

/// The `name=value` of a response's affinity cookie, and its attributes.
fn set_cookie(res: &Response) -> Option<(String, String)> {
    let set = res.header("set-cookie")?;
    let (pair, attributes) = set.split_once("; ")?;
    Some((pair.to_owned(), attributes.to_owned()))
}

#[test]
fn a_client_keeps_its_endpoint_by_cookie_over_both_protocols() {
    let pier = Running::start(
        &[(
            "app.yaml",
            &route(&[named_backend("a"), named_backend("b")]),
        )],
        &[],
    );
    let first = get(&pier, None);
    let (pair, attributes) = set_cookie(&first).expect("the first response sets the cookie");
    assert!(pair.starts_with("sid=") && pair.len() == 4 + 16, "{pair}");
    assert_eq!(attributes, "Path=/; Max-Age=3600; HttpOnly");
    let home = who(&first);

    // With the cookie: the same endpoint every time, and no new cookie.
    for _ in 0..6 {
        let res = get(&pier, Some(&pair));
        assert_eq!(who(&res), home);
        assert_eq!(res.header("set-cookie"), None);
    }
    // Without it the balancer spreads requests, each told where it went.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let res = get(&pier, None);
        assert!(set_cookie(&res).is_some());
        seen.insert(who(&res));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // A cookie that names no endpoint is replaced.
    let res = get(&pier, Some("sid=0123456789abcdef"));
    assert!(set_cookie(&res).is_some_and(|(p, _)| p != "sid=0123456789abcdef"));

    // HTTP/2 reads and sets the same cookie.
    let cookie = format!("theme=dark; {pair}");
    with_h2(&pier, |mut sender| async move {
        for (with, marked) in [(Some(cookie.as_str()), false), (None, true)] {
            let mut req = http::Request::builder().uri("http://test/");
            if let Some(c) = with {
                req = req.header("cookie", c);
            }
            let req = req.body(Full::new(Bytes::new())).expect("request");
            let res = sender.send_request(req).await.expect("response");
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers().contains_key("set-cookie"), marked);
            let body = res.into_body().collect().await.expect("body").to_bytes();
            if with.is_some() {
                assert!(body.starts_with(home.as_bytes()), "{body:?}");
            }
        }
    });
}

/// A backend that answers one request, as `name`, then closes its
/// listener: `gone` receives once it refuses connections.
fn one_shot(name: &'static str) -> (SocketAddr, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (gone, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                )
                .as_bytes(),
            );
        }
        drop(listener);
        let _ = gone.send(());
    });
    (addr, rx)
}

#[test]
fn a_session_whose_endpoint_is_gone_moves_with_a_new_cookie() {
    let (doomed, gone) = one_shot("doomed");
    let pier = Running::start(&[("app.yaml", &route(&[doomed, named_backend("b")]))], &[]);
    // Round robin reaches the one-shot endpoint within two requests.
    let pair = (0..2)
        .map(|_| get(&pier, None))
        .find(|res| who(res) == "doomed")
        .and_then(|res| set_cookie(&res))
        .expect("the doomed endpoint answered once")
        .0;
    gone.recv().expect("the endpoint closed");
    // Its connection is refused: the retry goes to the other endpoint,
    // which the new cookie names.
    let res = get(&pier, Some(&pair));
    assert_eq!(who(&res), "b");
    let (moved, _) = set_cookie(&res).expect("a new cookie");
    assert_ne!(moved, pair);
    let res = get(&pier, Some(&moved));
    assert_eq!(who(&res), "b");
    assert_eq!(res.header("set-cookie"), None);
}
