//! Test support: a dataplane started in-process on `127.0.0.1:0` with
//! routes in a temporary directory, and a raw HTTP/1.1 client that sends
//! bytes exactly as written (hostile paths included).

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use pier_dataplane::{Args, Dataplane};

/// A running dataplane; stopped when dropped.
pub struct Running {
    pub addr: SocketAddr,
    /// The TLS listener.
    pub tls: SocketAddr,
    pub admin: SocketAddr,
    pub routes: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts a dataplane on the manifests written by `setup` into the
    /// routes directory, with extra flags.
    pub fn start(manifests: &[(&str, &str)], flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let routes = dir.path().join("routes");
        std::fs::create_dir(&routes).expect("routes dir");
        for (name, text) in manifests {
            std::fs::write(routes.join(name), text).expect("write manifest");
        }
        let routes_arg = routes.to_string_lossy().into_owned();
        let mut argv = vec![
            "pier-dataplane",
            "--routes",
            &routes_arg,
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--watch-interval",
            "50ms",
        ];
        // Tests stop at once unless they are about the drain delay.
        if !flags.contains(&"--drain-delay") {
            argv.extend_from_slice(&["--drain-delay", "0s"]);
        }
        argv.extend_from_slice(flags);
        let args = Args::try_parse_from(argv).expect("flags parse");
        let dataplane = Dataplane::bind(args).expect("dataplane starts");
        let addr = dataplane.listen_addr();
        let tls = dataplane.tls_addr();
        let admin = dataplane.admin_addr().expect("admin addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            dataplane
                .run(async {
                    let _ = stopped.await;
                })
                .expect("dataplane runs");
        });
        Self {
            addr,
            tls,
            admin,
            routes,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Sends one request on a new connection.
    pub fn request(&self, request: &str) -> Response {
        let mut stream = self.connect();
        send(&mut stream, request)
    }

    /// `GET path` with extra header lines.
    pub fn get(&self, path: &str, headers: &[&str]) -> Response {
        self.request(&request("GET", path, headers))
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
    }

    /// Admin endpoint body.
    pub fn admin(&self, path: &str) -> Response {
        let mut stream = TcpStream::connect(self.admin).expect("connect admin");
        send(&mut stream, &request("GET", path, &[]))
    }

    /// Begins graceful shutdown and waits for the dataplane to stop.
    pub fn stop(mut self) {
        self.shutdown();
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    fn shutdown(&mut self) {
        self.begin_shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A backend that answers each request with its request target and the
/// value of its `X-Set` header (`name target set`), then closes.
pub fn named_backend(name: &'static str) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let target = head.split(' ').nth(1).unwrap_or("?");
            let set = head
                .lines()
                .find_map(|l| l.strip_prefix("x-set: "))
                .unwrap_or("-");
            let body = format!("{name} {target} {set}");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// A StaticRoute manifest.
pub fn static_route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: pier.dev/v1alpha1\nkind: StaticRoute\nmetadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
    )
}

/// An HTTP/1.1 request with a Host header.
pub fn request(method: &str, path: &str, headers: &[&str]) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for header in headers {
        req.push_str(header);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a request and reads one response (the body by Content-Length, or
/// none for HEAD, 1xx, 204 and 304).
pub fn send(stream: &mut TcpStream, request: &str) -> Response {
    stream.write_all(request.as_bytes()).expect("send request");
    read_response(stream, request.starts_with("HEAD "))
}

pub fn read_response(stream: &mut TcpStream, head_only: bool) -> Response {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = parsed.parse(&buf).expect("valid response head") {
            let status = parsed.code.expect("status");
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let content_length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse::<usize>().expect("numeric content-length"));
            let mut body = buf.split_off(len);
            let no_body = head_only || status == 304 || status == 204 || status < 200;
            let want = if no_body {
                0
            } else {
                content_length.unwrap_or(0)
            };
            while body.len() < want {
                let n = stream.read(&mut chunk).expect("read body");
                assert!(
                    n > 0,
                    "connection closed after {} of {want} body bytes",
                    body.len()
                );
                body.extend_from_slice(&chunk[..n]);
            }
            return Response {
                status,
                headers,
                body,
            };
        }
        let n = stream.read(&mut chunk).expect("read head");
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes a file, creating its directories.
pub fn write(root: &Path, rel: &str, contents: &[u8]) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create dirs");
    }
    std::fs::write(path, contents).expect("write file");
}

/// Runs `f` with an HTTP/2 (prior knowledge) client connected to `pier`,
/// sending request bodies of type `B`.
pub fn with_h2<B, F, Fut>(pier: &Running, f: F)
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: FnOnce(hyper::client::conn::http2::SendRequest<B>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = pier.addr;
    runtime.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        f(sender).await;
    });
}

/// Collects what the process logs (every test of this binary).
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Installs the test binary's one subscriber, writing here.
    pub fn capture() -> Self {
        let logs = Self::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("the only subscriber of this test binary");
        logs
    }

    pub fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
