//! One proxied exchange on an HTTP/1.1 client connection.
//!
//! ```text
//!  pick endpoint ─► idle pooled connection, or connect (timeouts.connect)
//!   ─► request head (path rewritten, hop-by-hop removed, X-Forwarded-*,
//!      header edits) ─► request body relayed as it arrives (upload.rs)
//!   ─► response head (timeouts.responseHeader; 1xx skipped)
//!   ─► response head to the client ─► body relayed (relay.rs)
//!   ─► upstream connection back to the pool when the exchange was clean
//! ```
//!
//! Errors before the response head reached the client get the status of
//! their `upstream::Error` (502, 503 or 504), or the client's 4xx. After
//! it, the client connection is closed mid-body: a short body is never
//! passed off as complete (a chunked body lacks its last chunk, a sized
//! one its bytes).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::header::{DATE, HOST};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use pier_snapshot::BufferMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::Conn;
use super::relay::Framed;
use super::upload::{Upload, client_status};
use crate::balance::Choice;
use crate::dispatch::ProxyTarget;
use crate::http::forward::{self, strip_hop_by_hop, upgrade_of};
use crate::http::head::{Framing, Head};
use crate::http::response::{self, Persist};
use crate::http::upstream::{
    ResponseFraming, ResponseHead, fields, parse_response, write_field, write_status_line,
};
use crate::pool::Pooled;
use crate::proxy::reader::{Backend, BodyReader, is_stale, timed};
use crate::proxy::{Proxy, Tried, Try};
use crate::spool;
use crate::table::Handler;
use crate::upstream::{self, Connection, idle};

/// How a proxied exchange failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// Before anything reached the client: answer with this status.
    Before(StatusCode),
    /// After the response head was sent: the client connection is cut.
    After,
}

impl From<upstream::Error> for Failure {
    fn from(e: upstream::Error) -> Self {
        Self::Before(e.status())
    }
}

/// How one try failed.
#[derive(Debug)]
enum Attempt {
    /// The endpoint's failure.
    Upstream(upstream::Error),
    /// The client's request body was malformed, short or too slow: not
    /// the endpoint's failure.
    Client(StatusCode),
}

/// Marks an error as the client's (its request body), not the backend's.
#[derive(Debug, thiserror::Error)]
#[error("request body: {0}")]
struct ClientSide(io::Error);

pub(super) fn client_side(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), ClientSide(e))
}

fn is_client_side(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<ClientSide>())
}

/// A backend that answered with a response head worth relaying.
struct Answered {
    try_: Try,
    upstream: Connection,
    response: ResponseHead,
    /// The head and the body bytes read along with it.
    read: Pooled,
}

impl Conn<'_> {
    /// Forwards one request to the route's backends and relays the answer.
    /// Returns whether the client connection can carry another request.
    pub(super) async fn proxy(&mut self, head: Head, target: Box<ProxyTarget>, keep: bool) -> bool {
        let Handler::Proxy(proxy) = &target.entry().handler else {
            return false;
        };
        let outcome = self.exchange(&head, &target, proxy, keep).await;
        let (status, keep) = match outcome {
            Ok((status, keep)) => (status.as_u16(), keep),
            Err(Failure::Before(status)) => {
                // A backend answer copied there may have been refused.
                self.out.clear();
                response::encode(&mut self.out, status, &HeaderMap::new(), 0, Persist::Close);
                let _ = self.write_out(&[], false).await;
                (status.as_u16(), false)
            }
            Err(Failure::After) => (502, false),
        };
        target
            .entry()
            .metrics
            .record(status, target.started.elapsed());
        keep
    }

    /// Reads a buffered upload, tries endpoints until one answers usably,
    /// and relays its answer.
    async fn exchange(
        &mut self,
        head: &Head,
        target: &ProxyTarget,
        proxy: &Arc<Proxy>,
        keep_client: bool,
    ) -> Result<(StatusCode, bool), Failure> {
        let buffering = &proxy.buffering;
        if let (Some(max), Framing::Length(n)) = (buffering.max_body_size, head.framing)
            && n > max
        {
            return Err(Failure::Before(StatusCode::PAYLOAD_TOO_LARGE));
        }
        // A buffered upload is read before any backend is picked.
        let mut upload = if buffering.request_body && head.framing != Framing::None {
            let upload = self.upload(head, proxy).await;
            Some(upload.map_err(|e| Failure::Before(client_status(&e)))?)
        } else {
            None
        };
        let framing = match &upload {
            Some(up) if up.complete => Framing::Length(up.len),
            _ => head.framing,
        };
        let request = self.upstream_request(head, framing, target);
        let answered = self
            .pick_answer(head, target, proxy, &request, upload.as_mut())
            .await?;
        self.respond(head, target, proxy, answered, keep_client)
            .await
    }

    /// The retry loop: endpoints in the balancer's order until one answers
    /// with a status the route does not retry, or none is left.
    async fn pick_answer(
        &mut self,
        head: &Head,
        target: &ProxyTarget,
        proxy: &Arc<Proxy>,
        request: &[u8],
        mut upload: Option<&mut Upload>,
    ) -> Result<Answered, Failure> {
        let client = self.peer().map(|a| a.ip());
        let choice = Choice {
            uri: head
                .request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str()),
            headers: head.request.headers(),
            client,
        };
        let metrics = &self.shared.ctx.metrics;
        // A status can be retried only when nothing streamed from the
        // client: no body, and a method that may be repeated.
        let repeatable =
            head.framing == Framing::None && forward::is_idempotent(head.request.method());
        let mut tried = Tried::default();
        loop {
            let mut try_ = tried.next(proxy, &choice)?;
            let retry_left = tried.retry_left(&proxy.retries);
            let edits = target.entry().filters.edits_response(&target.pass) || try_.marks();
            match self
                .attempt(&try_, request, head, upload.as_deref_mut(), proxy, !edits)
                .await
            {
                Ok((upstream, response, read)) => {
                    let code = response.status.as_u16();
                    if try_.answered(code, retry_left && repeatable, metrics) {
                        continue;
                    }
                    return Ok(Answered {
                        try_,
                        upstream,
                        response,
                        read,
                    });
                }
                Err(Attempt::Upstream(e)) => {
                    if try_.failed(e, retry_left, metrics) {
                        continue;
                    }
                    return Err(e.into());
                }
                Err(Attempt::Client(status)) => {
                    try_.status = status.as_u16();
                    return Err(Failure::Before(status));
                }
            }
        }
    }

    /// Relays a backend's answer: a tunnel after `101`, the file an
    /// X-Sendfile answer names, or the backend's own response.
    async fn respond(
        &mut self,
        head: &Head,
        target: &ProxyTarget,
        proxy: &Proxy,
        answered: Answered,
        keep_client: bool,
    ) -> Result<(StatusCode, bool), Failure> {
        let Answered {
            try_,
            upstream,
            response,
            mut read,
        } = answered;
        let addr = try_.addr;
        let bad_head = |_| Failure::Before(StatusCode::BAD_GATEWAY);
        if response.status == StatusCode::SWITCHING_PROTOCOLS {
            let protocol = upgrade_of(head.request.headers())
                .cloned()
                .ok_or(Failure::Before(StatusCode::BAD_GATEWAY))?;
            let mut headers = fields(&read[..response.len]).map_err(bad_head)?;
            try_.mark(&mut headers);
            read.drain(..response.len);
            let filters = &target.entry().filters;
            let tunnel = self.tunnel(upstream, headers, read, &protocol, filters, &target.pass);
            tunnel.await.map_err(|e| {
                tracing::debug!(%addr, error = %e, "tunnel ended");
                Failure::After
            })?;
            return Ok((StatusCode::SWITCHING_PROTOCOLS, false));
        }
        let handoff = if response.handoff && proxy.sendfile.is_enabled() {
            let mut headers = fields(&read[..response.len]).map_err(bad_head)?;
            try_.mark(&mut headers);
            proxy.sendfile.handoff(&headers).map(|h| (h, headers))
        } else {
            None
        };
        let Some((handoff, headers)) = handoff else {
            return self
                .relay(
                    head,
                    target,
                    proxy,
                    (try_, upstream, response, read),
                    keep_client,
                )
                .await;
        };
        // The backend's body is not wanted: its connection is kept only
        // when that body is absent or already read.
        let body = read.len() - response.len;
        let read_whole = match response.framing {
            ResponseFraming::None => body == 0,
            ResponseFraming::Length(n) => body as u64 == n,
            ResponseFraming::Chunked | ResponseFraming::Close => false,
        };
        if read_whole && response.keep_alive {
            let ctx = &self.shared.ctx;
            idle::put(
                proxy.pool_key(addr),
                upstream,
                ctx.upstream.idle,
                &ctx.metrics,
            );
        }
        drop(try_);
        self.hand_off(head, target, handoff, headers, keep_client)
            .await
    }

    /// Relays the backend's own response: its head (copied as parsed, or
    /// through the response filters), then its body as the route buffers.
    async fn relay(
        &mut self,
        head: &Head,
        target: &ProxyTarget,
        proxy: &Proxy,
        (mut try_, upstream, response, mut read): (Try, Connection, ResponseHead, Pooled),
        keep_client: bool,
    ) -> Result<(StatusCode, bool), Failure> {
        let addr = try_.addr;
        // Until the body is through, a failure here is the endpoint's 502.
        let final_status = std::mem::replace(&mut try_.status, 502);
        let is_head = head.request.method() == Method::HEAD;
        let version_10 = head.request.version() == Version::HTTP_10;
        let no_body = is_head || !response::has_body(false, response.status);
        let has_date = if response.copied {
            // The common case: fields copied as they came when parsed.
            response.has_date
        } else {
            self.out.clear();
            write_status_line(&mut self.out, response.status);
            let mut headers = fields(&read[..response.len])
                .map_err(|_| Failure::Before(StatusCode::BAD_GATEWAY))?;
            strip_hop_by_hop(&mut headers);
            target
                .entry()
                .filters
                .on_response(&mut headers, &target.pass);
            try_.mark(&mut headers);
            for (name, value) in &headers {
                write_field(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
            }
            headers.contains_key(DATE)
        };
        read.drain(..response.len);
        if !has_date {
            write_field(&mut self.out, b"date", &response::date());
        }
        let ctx = &self.shared.ctx;
        if let Some(via) = &ctx.upstream.via {
            write_field(&mut self.out, b"via", via.as_bytes());
        }
        let framing = if no_body {
            ResponseFraming::None
        } else {
            response.framing
        };
        let backend = Backend {
            reader: BodyReader::new(framing, read),
            upstream,
            keep_alive: response.keep_alive,
            status: final_status,
            try_,
            pool_key: proxy.pool_key(addr),
            idle: proxy.idle_timeout,
            ctx: Arc::clone(ctx),
        };
        let framed = |whole: Option<u64>| match (framing, whole) {
            _ if no_body => Framed::NoBody(response.length),
            (ResponseFraming::Length(n), _) | (_, Some(n)) => Framed::Length(n),
            _ if version_10 => Framed::Close,
            _ => Framed::Chunked,
        };
        let buffering = &proxy.buffering;
        let outcome = if framing != ResponseFraming::None && buffering.mode == BufferMode::Buffer {
            // Store and forward: the head waits for the whole body.
            let (tx, mut rx) =
                spool::spool(&ctx.upstream.buffers, buffering.memory, buffering.disk);
            tokio::spawn(backend.fill(tx));
            let whole = rx.whole().await.map_err(|e| {
                tracing::debug!(%addr, error = %e, "response body not completed");
                Failure::Before(StatusCode::BAD_GATEWAY)
            })?;
            let framed = framed(whole);
            let keep = self.end_head(framed, keep_client, version_10);
            self.drain(rx, framed == Framed::Chunked)
                .await
                .map(|()| keep)
        } else {
            let framed = framed(None);
            let keep = self.end_head(framed, keep_client, version_10);
            let hybrid = (buffering.mode == BufferMode::Hybrid).then_some(*buffering);
            self.relay_body(backend, framed == Framed::Chunked, hybrid)
                .await
                .map(|()| keep)
        };
        let keep = outcome.map_err(|e| {
            tracing::debug!(%addr, error = %e, "response body not completed");
            Failure::After
        })?;
        Ok((response.status, keep))
    }

    /// One try on one endpoint: connect (or reuse), send, read the
    /// response head. A pooled connection the backend had closed is
    /// replaced once when the request has no body. With `copy`, the
    /// response's fields are copied to the client's head as parsed.
    async fn attempt(
        &mut self,
        picked: &Try,
        request: &[u8],
        head: &Head,
        mut upload: Option<&mut Upload>,
        proxy: &Proxy,
        copy: bool,
    ) -> Result<(Connection, ResponseHead, Pooled), Attempt> {
        let metrics = &self.shared.ctx.metrics;
        let addr = picked.addr;
        let mut pooled = idle::take(proxy.pool_key(addr), metrics);
        loop {
            let reused = pooled.is_some();
            let mut upstream = match pooled.take() {
                Some(stream) => stream,
                None => proxy
                    .open(picked.index, addr, metrics)
                    .await
                    .map_err(Attempt::Upstream)?,
            };
            let exchange = self.send_and_receive(
                &mut upstream,
                request,
                head,
                upload.as_deref_mut(),
                proxy,
                copy,
            );
            match exchange.await {
                Ok((response, leftover)) => return Ok((upstream, response, leftover)),
                // The client's fault: a malformed, short or stalled body.
                Err(e) if is_client_side(&e) => {
                    tracing::debug!(%addr, error = %e, "request body refused");
                    return Err(Attempt::Client(client_status(&e)));
                }
                Err(e) if reused && head.framing == Framing::None && is_stale(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    metrics.upstream_timeouts.fetch_add(1, Relaxed);
                    return Err(Attempt::Upstream(upstream::Error::Timeout));
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "upstream exchange failed");
                    return Err(Attempt::Upstream(upstream::Error::Exchange));
                }
            }
        }
    }

    /// The client's address, looked up once per connection.
    fn peer(&self) -> Option<SocketAddr> {
        peer_of(&self.peer, self.stream).map(|p| p.addr)
    }

    /// The request head sent upstream, through the route's upstream phase
    /// (rewrites, header edits).
    fn upstream_request(&mut self, head: &Head, framing: Framing, target: &ProxyTarget) -> Pooled {
        self.peer();
        let req = &head.request;
        let phase = target.entry().filters.upstream();
        // RFC 9112 §3.2.2: an absolute-form target's authority replaces
        // the Host field, for routing (already) and for what goes upstream.
        let authority = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        let client_host = authority.as_ref().or_else(|| req.headers().get(HOST));
        let mut out = Pooled::new();
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        forward::upstream_path(
            req.uri().path(),
            req.uri().query(),
            &target.path,
            target.prefix_len,
            phase.rewrite.path(),
            &mut out,
        );
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if let Some(host) = phase.rewrite.host(client_host) {
            write_field(&mut out, b"host", host.as_bytes());
        }
        forward::upstream_fields(
            req.headers(),
            client_host,
            self.peer.get().map(|p| &**p),
            "http",
            self.shared.ctx.upstream.via.as_ref(),
            &phase.headers,
            &mut *out,
        );
        // An upgrade is the one hop-by-hop request a proxy passes on.
        if let Some(protocol) = upgrade_of(req.headers()) {
            write_field(&mut out, b"connection", b"upgrade");
            write_field(&mut out, b"upgrade", protocol.as_bytes());
        }
        match framing {
            Framing::None => {}
            Framing::Length(n) => {
                write_field(&mut out, b"content-length", response::digits(n).as_slice())
            }
            Framing::Chunked => write_field(&mut out, b"transfer-encoding", b"chunked"),
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Sends the head and the request body, then reads the response head.
    /// Returns it with the body bytes read along with it.
    async fn send_and_receive(
        &mut self,
        upstream: &mut Connection,
        request: &[u8],
        head: &Head,
        upload: Option<&mut Upload>,
        proxy: &Proxy,
        copy: bool,
    ) -> io::Result<(ResponseHead, Pooled)> {
        // A head fits the socket buffer: the timer is armed only when the
        // backend does not take it at once.
        let sent = match upstream.try_write(request) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if sent < request.len() {
            timed(proxy.idle_timeout, upstream.write_all(&request[sent..])).await?;
        }
        if let Some(upload) = upload {
            self.send_upload(upstream, upload, proxy).await?;
        } else {
            self.relay_request(upstream, head, proxy).await?;
        }
        let deadline = Instant::now() + proxy.response_header_timeout;
        let mut buf = Pooled::new();
        loop {
            if buf.len() >= self.limits.max_header_size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
            buf.reserve(4096);
            let n = tokio::time::timeout_at(deadline, upstream.read_buf(&mut *buf))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backend closed before a response head",
                ));
            }
            loop {
                self.out.clear();
                let copy_to = copy.then_some(&mut self.out);
                let Some(response) = parse_response(&buf, head.request.method(), copy_to)? else {
                    break;
                };
                if response.status.is_informational()
                    && response.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    // 100 Continue and friends were answered here already.
                    buf.drain(..response.len);
                    continue;
                }
                return Ok((response, buf));
            }
        }
    }
}

/// The connection's client, looked up on first use and kept.
pub(super) fn peer_of<'a>(
    cell: &'a std::sync::OnceLock<Box<crate::http::forward::Peer>>,
    stream: &tokio::net::TcpStream,
) -> Option<&'a crate::http::forward::Peer> {
    if cell.get().is_none() {
        let addr = stream.peer_addr().ok()?;
        let _ = cell.set(Box::new(crate::http::forward::Peer::new(addr)));
    }
    cell.get().map(|p| &**p)
}
