//! Load for `bench/soak.sh`, in two roles:
//!
//! ```text
//! soak backend PORT
//!     an HTTP/1.1 backend: POST answers "ok" after reading the body,
//!     GET /blob answers 256 KiB
//! soak load ADDR SECONDS CLIENTS BURST_EVERY BURST_STREAMS
//!     CLIENTS HTTP/2 (prior knowledge) connections to ADDR, each
//!     uploading 4 KiB every 10 ms; every BURST_EVERY seconds, a burst of
//!     BURST_STREAMS concurrent GET /blob streams over new connections
//!     (100 streams each). Prints one line per second:
//!     `t ok errors burst_streams_done`.
//! ```

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

const BLOB: usize = 256 * 1024;
const STREAMS_PER_CONNECTION: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    match args.first().map(String::as_str) {
        Some("backend") => {
            let port: u16 = args.get(1).and_then(|p| p.parse().ok()).expect("PORT");
            local.block_on(&runtime, backend(port));
        }
        Some("load") => {
            let arg = |i: usize| {
                args.get(i)
                    .cloned()
                    .expect("load ADDR SECONDS CLIENTS BURST_EVERY BURST_STREAMS")
            };
            let addr: SocketAddr = arg(1).parse().expect("ADDR");
            let seconds: u64 = arg(2).parse().expect("SECONDS");
            let clients: usize = arg(3).parse().expect("CLIENTS");
            let every: u64 = arg(4).parse().expect("BURST_EVERY");
            let streams: usize = arg(5).parse().expect("BURST_STREAMS");
            local.block_on(&runtime, load(addr, seconds, clients, every, streams));
        }
        _ => {
            eprintln!(
                "usage: soak backend PORT | soak load ADDR SECONDS CLIENTS BURST_EVERY BURST_STREAMS"
            );
            std::process::exit(2);
        }
    }
}

async fn backend(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let blob = Bytes::from(vec![b'b'; BLOB]);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let blob = blob.clone();
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let blob = blob.clone();
                async move {
                    let body = if req.method() == http::Method::GET {
                        blob
                    } else {
                        let _ = req.into_body().collect().await;
                        Bytes::from_static(b"ok")
                    };
                    Ok::<_, Infallible>(http::Response::new(Full::new(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    // As real HTTP/2 clients do: without it, Nagle holds each DATA frame
    // until the HEADERS frame before it is acknowledged.
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::task::spawn_local(conn);
    Some(sender)
}

/// Sends one request and reads the whole answer; true when it was a 200.
async fn exchange(sender: &mut Sender, method: http::Method, path: &str, body: Bytes) -> bool {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://soak{path}"))
        .body(Full::new(body));
    let Ok(req) = req else { return false };
    match sender.send_request(req).await {
        Ok(res) if res.status() == 200 => res.into_body().collect().await.is_ok(),
        _ => false,
    }
}

async fn load(addr: SocketAddr, seconds: u64, clients: usize, every: u64, streams: usize) {
    let ok = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let burst_done = Rc::new(Cell::new(0u64));
    let end = Instant::now() + Duration::from_secs(seconds);
    let upload = Bytes::from(vec![b'u'; 4096]);
    for _ in 0..clients {
        let (ok, errors, upload) = (Rc::clone(&ok), Rc::clone(&errors), upload.clone());
        tokio::task::spawn_local(async move {
            let mut sender = None;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < end {
                tick.tick().await;
                if sender.is_none() {
                    sender = connect(addr).await;
                }
                let Some(s) = sender.as_mut() else {
                    errors.set(errors.get() + 1);
                    continue;
                };
                if exchange(s, http::Method::POST, "/upload", upload.clone()).await {
                    ok.set(ok.get() + 1);
                } else {
                    errors.set(errors.get() + 1);
                    sender = None;
                }
            }
        });
    }
    {
        let (errors, burst_done) = (Rc::clone(&errors), Rc::clone(&burst_done));
        tokio::task::spawn_local(async move {
            let mut next = Instant::now() + Duration::from_secs(every);
            while next < end {
                tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
                next += Duration::from_secs(every);
                let mut tasks = Vec::new();
                for _ in 0..streams.div_ceil(STREAMS_PER_CONNECTION) {
                    let Some(sender) = connect(addr).await else {
                        errors.set(errors.get() + 1);
                        continue;
                    };
                    for _ in 0..STREAMS_PER_CONNECTION {
                        let mut sender = sender.clone();
                        let (errors, burst_done) = (Rc::clone(&errors), Rc::clone(&burst_done));
                        tasks.push(tokio::task::spawn_local(async move {
                            if exchange(&mut sender, http::Method::GET, "/blob", Bytes::new()).await
                            {
                                burst_done.set(burst_done.get() + 1);
                            } else {
                                errors.set(errors.get() + 1);
                            }
                        }));
                    }
                }
                for task in tasks {
                    let _ = task.await;
                }
            }
        });
    }
    let started = Instant::now();
    let mut second = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < end {
        second.tick().await;
        println!(
            "{} {} {} {}",
            started.elapsed().as_secs(),
            ok.get(),
            errors.get(),
            burst_done.get()
        );
    }
}
