//! A bounded HTTP/1.1 load for rollout tests: a few keep-alive clients,
//! each sending paced GETs round the targets until told to stop or until
//! its request or time budget runs out, counting every failure.
//!
//! A request counts as failed when it gets no complete `200` with the
//! expected body. The one exception is the retry every HTTP client makes
//! (RFC 9112 §9.3.1): a GET sent on a kept-alive connection that the
//! server had already closed, with not one byte of answer, is sent again
//! on a new connection; such retries are counted apart.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request the load sends.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) host: &'static str,
    pub(crate) path: &'static str,
    /// The response body must contain this.
    pub(crate) expect: &'static str,
}

/// What a load run counted.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) retried: u64,
    pub(crate) connections: u64,
    /// The first few failures, described.
    pub(crate) errors: Vec<String>,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    connections: AtomicU64,
    errors: Mutex<Vec<String>>,
}

pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    workers: Vec<JoinHandle<()>>,
}

const KEPT_ERRORS: usize = 20;

impl Load {
    /// Starts `clients` threads; each sends at most `max_requests`, one
    /// every `pace`, and stops after `max_time` whatever happens.
    pub(crate) fn start(
        targets: Vec<Target>,
        clients: usize,
        pace: Duration,
        max_requests: u64,
        max_time: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let workers = (0..clients)
            .map(|i| {
                let stop = Arc::clone(&stop);
                let counters = Arc::clone(&counters);
                let targets = targets.clone();
                std::thread::spawn(move || {
                    let deadline = Instant::now() + max_time;
                    let mut client = Client::default();
                    for n in 0..max_requests {
                        if stop.load(Relaxed) || Instant::now() >= deadline {
                            break;
                        }
                        let target = &targets[(n as usize + i) % targets.len()];
                        client.request(target, &counters);
                        std::thread::sleep(pace);
                    }
                })
            })
            .collect();
        Self {
            stop,
            counters,
            workers,
        }
    }

    /// Requests answered so far.
    pub(crate) fn ok(&self) -> u64 {
        self.counters.ok.load(Relaxed)
    }

    /// Stops the clients and returns the counts.
    pub(crate) fn finish(self) -> Report {
        self.stop.store(true, Relaxed);
        for worker in self.workers {
            let _ = worker.join();
        }
        let c = &self.counters;
        Report {
            ok: c.ok.load(Relaxed),
            failed: c.failed.load(Relaxed),
            retried: c.retried.load(Relaxed),
            connections: c.connections.load(Relaxed),
            errors: std::mem::take(&mut c.errors.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }
}

/// One client's kept-alive connection.
#[derive(Default)]
struct Client {
    conn: Option<(TcpStream, SocketAddr)>,
}

/// How one attempt ended.
enum Outcome {
    Done {
        keep: bool,
    },
    /// Nothing came back on a reused connection: safe to retry.
    Stale,
    Failed(String),
}

impl Client {
    fn request(&mut self, target: &Target, counters: &Counters) {
        for attempt in 0..2 {
            match self.attempt(target, counters) {
                Outcome::Done { keep } => {
                    counters.ok.fetch_add(1, Relaxed);
                    if !keep {
                        self.conn = None;
                    }
                    return;
                }
                Outcome::Stale if attempt == 0 => {
                    counters.retried.fetch_add(1, Relaxed);
                    self.conn = None;
                }
                Outcome::Stale => {
                    self.fail(counters, format!("{}: closed twice", target.host));
                    return;
                }
                Outcome::Failed(e) => {
                    self.fail(counters, format!("{} {}: {e}", target.host, target.path));
                    return;
                }
            }
        }
    }

    fn fail(&mut self, counters: &Counters, error: String) {
        self.conn = None;
        counters.failed.fetch_add(1, Relaxed);
        let mut errors = counters.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < KEPT_ERRORS {
            errors.push(error);
        }
    }

    fn attempt(&mut self, target: &Target, counters: &Counters) -> Outcome {
        let reused = matches!(&self.conn, Some((_, addr)) if *addr == target.addr);
        if !reused {
            match TcpStream::connect_timeout(&target.addr, Duration::from_secs(5)) {
                Ok(stream) => {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = stream.set_nodelay(true);
                    counters.connections.fetch_add(1, Relaxed);
                    self.conn = Some((stream, target.addr));
                }
                Err(e) => return Outcome::Failed(format!("connect: {e}")),
            }
        }
        let Some((stream, _)) = self.conn.as_mut() else {
            return Outcome::Failed("no connection".to_owned());
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nhost: {}\r\nuser-agent: pier-e2e-load\r\n\r\n",
            target.path, target.host
        );
        if let Err(e) = stream.write_all(request.as_bytes()) {
            return if reused {
                Outcome::Stale
            } else {
                Outcome::Failed(format!("write: {e}"))
            };
        }
        match read_response(stream) {
            Ok((200, keep, body)) => {
                if String::from_utf8_lossy(&body).contains(target.expect) {
                    Outcome::Done { keep }
                } else {
                    Outcome::Failed(format!(
                        "unexpected body {:?}",
                        String::from_utf8_lossy(&body)
                    ))
                }
            }
            Ok((status, _, body)) => Outcome::Failed(format!(
                "status {status}: {:?}",
                String::from_utf8_lossy(&body)
            )),
            Err((0, _)) if reused => Outcome::Stale,
            Err((got, e)) => Outcome::Failed(format!("read after {got} bytes: {e}")),
        }
    }
}

/// Reads one response with a `content-length` body: its status, whether
/// the connection stays open, and the body. On error, how many bytes had
/// arrived.
fn read_response(stream: &mut TcpStream) -> Result<(u16, bool, Vec<u8>), (usize, io::Error)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| (buf.len(), io::Error::other("no status line")))?;
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            let length: usize = header("content-length:")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| (buf.len(), io::Error::other("no content-length")))?;
            let keep = header("connection:").as_deref() != Some("close");
            let mut body = buf.split_off(end + 4);
            while body.len() < length {
                match stream.read(&mut chunk) {
                    Ok(0) => return Err((end + body.len(), io::Error::other("closed mid-body"))),
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err((end + body.len(), e)),
                }
            }
            return Ok((status, keep, body));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err((buf.len(), io::Error::other("closed"))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err((buf.len(), e)),
        }
    }
}
