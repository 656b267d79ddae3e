//! One proxied exchange on an HTTP/1.1 client connection.
//!
//! ```text
//!  pick endpoint ─► idle pooled connection, or connect (timeouts.connect)
//!   ─► request head (path rewritten, hop-by-hop removed, X-Forwarded-*,
//!      header edits) ─► request body relayed as it arrives
//!   ─► response head (timeouts.responseHeader; 1xx skipped)
//!   ─► response head to the client ─► body relayed (timeouts.idle)
//!   ─► upstream connection back to the pool when the exchange was clean
//! ```
//!
//! Errors before the response head reached the client become 502 (bad or
//! no answer), 503 (no endpoint) or 504 (timeout). After it, the client
//! connection is closed mid-body: a short body is never passed off as
//! complete (a chunked body lacks its last chunk, a sized one its bytes).

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Buf;
use http::header::{DATE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use pier_snapshot::{BufferMode, Buffering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

use super::Conn;
use super::head::{Framing, Head, MAX_HEADERS};
use super::response::{self, Persist};
use crate::pool::{self, Pooled};
use crate::proxy::chunked::{self, Piece};
use crate::proxy::sendfile::{self, Handoff};
use crate::proxy::{self as px, BUFFER, Connection, Proxy, Try, strip_hop_by_hop};
use crate::service::{ProxyTarget, Shared};
use crate::spool;
use crate::table::Handler;

/// How a proxied exchange failed.
#[derive(Debug)]
enum Failure {
    /// Before anything reached the client: answer with this status.
    Before(StatusCode),
    /// After the response head was sent: the client connection is cut.
    After,
}

/// How one try failed.
#[derive(Debug)]
enum Attempt {
    /// No connection: nothing was sent.
    Connect(StatusCode),
    /// The request went out; no usable response head came back.
    Exchange(StatusCode),
    /// The client's request body was malformed, short or too slow: not
    /// the endpoint's failure.
    Client(StatusCode),
}

/// Marks an error as the client's (its request body), not the backend's.
#[derive(Debug, thiserror::Error)]
#[error("request body: {0}")]
struct ClientSide(io::Error);

fn client_side(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), ClientSide(e))
}

fn is_client_side(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<ClientSide>())
}

/// The protocol an upgrade request asks for: an `Upgrade` header with
/// `upgrade` among the `Connection` tokens.
fn upgrade_of(headers: &HeaderMap) -> Option<&HeaderValue> {
    let asked = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    asked.then(|| headers.get(http::header::UPGRADE)).flatten()
}

/// How the upstream response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes.
    Close,
}

/// A parsed upstream response head: what the proxy decides on. The fields
/// stay in the read buffer and are copied from there to the client, or
/// made into a map when something must look at them ([`fields`]).
struct ResponseHead {
    status: StatusCode,
    /// Bytes of the head at the start of the read buffer.
    len: usize,
    keep_alive: bool,
    framing: Upstream,
    /// `Content-Length`, when the backend sent one.
    length: Option<u64>,
    /// An `X-Sendfile` or `X-Accel-Redirect` field is present.
    handoff: bool,
    /// The status line and fields were copied to the client's head.
    copied: bool,
    /// A `Date` was among the copied fields.
    has_date: bool,
}

impl Conn<'_> {
    /// Forwards one request to the route's backends and relays the answer.
    /// Returns whether the client connection can carry another request.
    pub(super) async fn proxy(&mut self, head: Head, target: Box<ProxyTarget>, keep: bool) -> bool {
        let Handler::Proxy(proxy) = &target.entry().handler else {
            return false;
        };
        let outcome = self.exchange(&head, &target, proxy, keep).await;
        let entry = target.entry();
        let (status, keep) = match outcome {
            Ok((status, keep)) => (status.as_u16(), keep),
            Err(Failure::Before(status)) => {
                let persist = Persist::Close;
                // A backend answer copied there may have been refused.
                self.out.clear();
                response::encode(&mut self.out, status, &HeaderMap::new(), 0, persist);
                let _ = self.write_out(&[], false).await;
                (status.as_u16(), false)
            }
            Err(Failure::After) => (502, false),
        };
        entry.metrics.record(status, target.started.elapsed());
        keep
    }

    async fn exchange(
        &mut self,
        head: &Head,
        target: &ProxyTarget,
        proxy: &Proxy,
        keep_client: bool,
    ) -> Result<(StatusCode, bool), Failure> {
        let choice = px::Choice {
            uri: head
                .request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str()),
            headers: head.request.headers(),
            client: self.peer().map(|a| a.ip()),
        };
        let buffering = &proxy.buffering;
        if let (Some(max), Framing::Length(n)) = (buffering.max_body_size, head.framing)
            && n > max
        {
            return Err(Failure::Before(StatusCode::PAYLOAD_TOO_LARGE));
        }
        // A buffered upload is read before any backend is picked.
        let mut upload = if buffering.request_body && head.framing != Framing::None {
            Some(
                self.upload(head, proxy)
                    .await
                    .map_err(|e| Failure::Before(client_status(&e)))?,
            )
        } else {
            None
        };
        let framing = match &upload {
            Some(up) if up.complete => Framing::Length(up.len),
            _ => head.framing,
        };
        let request = self.upstream_request(head, framing, target, proxy);
        let metrics = &self.shared.metrics;
        let policy = &proxy.retries;
        // A status can be retried only when nothing streamed from the
        // client: no body, and a method that may be repeated.
        let repeatable = head.framing == Framing::None && px::is_idempotent(head.request.method());
        let mut tried = px::Tried::default();
        let (mut try_, upstream, response, mut read) = loop {
            let mut try_ = tried
                .next(proxy, &choice, target)
                .map_err(Failure::Before)?;
            let retry_left = tried.retry_left(policy);
            match self
                .attempt(&try_, &request, head, upload.as_mut(), proxy)
                .await
            {
                Ok((upstream, response, read)) => {
                    let code = response.status.as_u16();
                    if try_.answered(code, proxy, retry_left && repeatable, metrics) {
                        continue;
                    }
                    break (try_, upstream, response, read);
                }
                Err(Attempt::Connect(status)) => {
                    self.eject_if(proxy, try_.index, false);
                    try_.status = status.as_u16();
                    if retry_left && policy.connect_failure {
                        try_.retried(metrics);
                        continue;
                    }
                    return Err(Failure::Before(status));
                }
                Err(Attempt::Exchange(status)) => {
                    self.eject_if(proxy, try_.index, false);
                    try_.status = status.as_u16();
                    return Err(Failure::Before(status));
                }
                Err(Attempt::Client(status)) => {
                    try_.status = status.as_u16();
                    return Err(Failure::Before(status));
                }
            }
        };
        let addr = try_.addr;
        // Until the body is through, a failure here is the endpoint's 502.
        let final_status = std::mem::replace(&mut try_.status, 502);

        if response.status == StatusCode::SWITCHING_PROTOCOLS {
            let protocol = upgrade_of(head.request.headers())
                .cloned()
                .ok_or(Failure::Before(StatusCode::BAD_GATEWAY))?;
            try_.status = final_status;
            let headers = fields(&read[..response.len])
                .map_err(|_| Failure::Before(StatusCode::BAD_GATEWAY))?;
            read.drain(..response.len);
            self.tunnel(upstream, headers, read, &protocol, proxy)
                .await
                .map_err(|e| {
                    tracing::debug!(%addr, error = %e, "tunnel ended");
                    Failure::After
                })?;
            return Ok((StatusCode::SWITCHING_PROTOCOLS, false));
        }

        let handoff = if response.handoff && proxy.sendfile.is_enabled() {
            let headers = fields(&read[..response.len])
                .map_err(|_| Failure::Before(StatusCode::BAD_GATEWAY))?;
            proxy.sendfile.handoff(&headers).map(|h| (h, headers))
        } else {
            None
        };
        if let Some((handoff, headers)) = handoff {
            // The backend's body is not wanted: its connection is kept only
            // when that body is absent or already read.
            let body = read.len() - response.len;
            let read = match response.framing {
                Upstream::None => body == 0,
                Upstream::Length(n) => body as u64 == n,
                Upstream::Chunked | Upstream::Close => false,
            };
            if read && response.keep_alive {
                px::put_idle(
                    proxy.pool_key(addr),
                    upstream,
                    self.shared.upstream.idle,
                    metrics,
                );
            }
            try_.status = final_status;
            drop(try_);
            return self
                .hand_off(head, handoff, headers, keep_client, proxy)
                .await;
        }

        // The response head for the client.
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
            proxy.response_edits.apply(&mut headers);
            for (name, value) in &headers {
                write_field(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
            }
            headers.contains_key(DATE)
        };
        read.drain(..response.len);
        if !has_date {
            write_field(&mut self.out, b"date", &response::date());
        }
        if let Some(via) = &self.shared.upstream.via {
            write_field(&mut self.out, b"via", via.as_bytes());
        }
        let framing = if no_body {
            Upstream::None
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
            shared: Arc::clone(self.shared),
        };
        let framed = |whole: Option<u64>| match (framing, whole) {
            _ if no_body => Framed::NoBody(response.length),
            (Upstream::Length(n), _) | (_, Some(n)) => Framed::Length(n),
            _ if version_10 => Framed::Close,
            _ => Framed::Chunked,
        };
        let buffering = &proxy.buffering;
        let outcome = if framing != Upstream::None && buffering.mode == BufferMode::Buffer {
            // Store and forward: the head waits for the whole body.
            let (tx, mut rx) = spool::spool(
                &self.shared.upstream.buffers,
                buffering.memory,
                buffering.disk,
            );
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

    /// Ends the client's response head with its framing and connection
    /// fields. Returns whether the connection can carry another request.
    fn end_head(&mut self, framed: Framed, keep: bool, version_10: bool) -> bool {
        let keep = keep && framed != Framed::Close;
        match framed {
            Framed::NoBody(Some(n)) | Framed::Length(n) => write_field(
                &mut self.out,
                b"content-length",
                response::digits(n).as_slice(),
            ),
            Framed::Chunked => write_field(&mut self.out, b"transfer-encoding", b"chunked"),
            Framed::NoBody(None) | Framed::Close => {}
        }
        match (keep, version_10) {
            (false, _) => write_field(&mut self.out, b"connection", b"close"),
            (true, true) => write_field(&mut self.out, b"connection", b"keep-alive"),
            (true, false) => {}
        }
        self.out.extend_from_slice(b"\r\n");
        keep
    }

    /// Serves the file an X-Sendfile answer named, in place of the
    /// backend's body, or refuses it (502, counted).
    async fn hand_off(
        &mut self,
        head: &Head,
        handoff: Handoff<'_>,
        backend: HeaderMap,
        keep: bool,
        proxy: &Proxy,
    ) -> Result<(StatusCode, bool), Failure> {
        let req = &head.request;
        let res = sendfile::respond(
            handoff,
            req.method(),
            req.headers(),
            backend,
            self.shared,
            proxy,
        )
        .map_err(Failure::Before)?;
        let (parts, mut body) = res.into_parts();
        let persist = Persist::new(keep, req.version());
        self.out.clear();
        response::encode(
            &mut self.out,
            parts.status,
            &parts.headers,
            body.len(),
            persist,
        );
        if !response::has_body(req.method() == Method::HEAD, parts.status) {
            body.clear();
        }
        self.write_body(body).await.map_err(|e| {
            tracing::debug!(error = %e, "X-Sendfile response not completed");
            Failure::After
        })?;
        Ok((parts.status, keep))
    }

    /// One try on one endpoint: connect (or reuse), send, read the
    /// response head. A pooled connection the backend had closed is
    /// replaced once when the request has no body.
    async fn attempt(
        &mut self,
        picked: &Try,
        request: &[u8],
        head: &Head,
        mut upload: Option<&mut Upload>,
        proxy: &Proxy,
    ) -> Result<(Connection, ResponseHead, Pooled), Attempt> {
        let metrics = &self.shared.metrics;
        let addr = picked.addr;
        let mut pooled = px::take_idle(proxy.pool_key(addr), metrics);
        loop {
            let reused = pooled.is_some();
            let mut upstream = match pooled.take() {
                Some(stream) => stream,
                None => px::open(addr, picked.index, proxy, metrics)
                    .await
                    .map_err(Attempt::Connect)?,
            };
            match self
                .send_and_receive(&mut upstream, request, head, upload.as_deref_mut(), proxy)
                .await
            {
                Ok((response, leftover)) => return Ok((upstream, response, leftover)),
                // The client's fault: a malformed, short or stalled body.
                Err(e) if is_client_side(&e) => {
                    tracing::debug!(%addr, error = %e, "request body refused");
                    return Err(Attempt::Client(client_status(&e)));
                }
                Err(e) if reused && head.framing == Framing::None && is_stale(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    metrics.upstream_timeouts.fetch_add(1, Relaxed);
                    return Err(Attempt::Exchange(StatusCode::GATEWAY_TIMEOUT));
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "upstream exchange failed");
                    return Err(Attempt::Exchange(StatusCode::BAD_GATEWAY));
                }
            }
        }
    }

    /// The client's address, looked up once per connection.
    fn peer(&mut self) -> Option<SocketAddr> {
        if self.peer.is_none() {
            self.peer = self.stream.peer_addr().ok().map(px::Peer::new);
        }
        self.peer.as_ref().map(|p| p.addr)
    }

    /// Feeds passive health, counting ejections.
    fn eject_if(&self, proxy: &Proxy, endpoint: usize, ok: bool) {
        proxy.record(endpoint, ok, &self.shared.metrics);
    }

    /// The request head sent upstream.
    fn upstream_request(
        &mut self,
        head: &Head,
        framing: Framing,
        target: &ProxyTarget,
        proxy: &Proxy,
    ) -> Pooled {
        self.peer();
        let req = &head.request;
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
        px::upstream_path(
            req.uri().path(),
            req.uri().query(),
            &target.path,
            target.prefix_len,
            proxy.rewrite_prefix.as_deref(),
            &mut out,
        );
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if let Some(host) = proxy.rewrite_host.as_ref().or(client_host) {
            write_field(&mut out, b"host", host.as_bytes());
        }
        px::upstream_fields(
            req.headers(),
            client_host,
            self.peer.as_ref(),
            "http",
            self.shared.upstream.via.as_ref(),
            proxy,
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
            let copy = proxy.response_edits.is_empty();
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

    /// Relays the client's request body as it arrives.
    async fn relay_request(
        &mut self,
        upstream: &mut Connection,
        head: &Head,
        proxy: &Proxy,
    ) -> io::Result<()> {
        match head.framing {
            Framing::None => {}
            Framing::Length(n) => {
                if head.expect_continue && (self.buf.len() as u64) < n {
                    self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    self.write_out(&[], false).await.map_err(client_side)?;
                }
                self.relay_request_length(upstream, n, proxy).await?;
            }
            Framing::Chunked => {
                if head.expect_continue {
                    self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    self.write_out(&[], false).await.map_err(client_side)?;
                }
                let max = proxy.buffering.max_body_size;
                let mut decoder = chunked::Decoder::default();
                self.relay_request_chunked(upstream, &mut decoder, max, 0, proxy)
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads the request body into a buffer before any backend is
    /// contacted, as far as the route's and the process's buffers allow;
    /// a body that does not fit streams the rest once a backend is there.
    async fn upload(&mut self, head: &Head, proxy: &Proxy) -> io::Result<Upload> {
        let buffering = &proxy.buffering;
        let budget = &self.shared.upstream.buffers;
        let (mut tx, rx) = spool::spool(budget, buffering.memory, buffering.disk);
        if head.expect_continue {
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.write_out(&[], false).await.map_err(client_side)?;
        }
        let mut upload = Upload {
            rx,
            len: 0,
            complete: false,
            left: 0,
            decoder: None,
            carry: Vec::new(),
        };
        match head.framing {
            Framing::None => upload.complete = true,
            Framing::Length(mut left) => {
                while left > 0 {
                    if self.buf.is_empty() && self.read_body(proxy).await? == 0 {
                        return Err(client_side(io::ErrorKind::UnexpectedEof.into()));
                    }
                    let take =
                        usize::try_from(left).map_or(self.buf.len(), |n| n.min(self.buf.len()));
                    let placed = tx.try_send(&self.buf[..take])?;
                    self.buf.advance(placed);
                    left -= placed as u64;
                    upload.len += placed as u64;
                    if placed < take {
                        break;
                    }
                }
                upload.left = left;
                upload.complete = left == 0;
            }
            Framing::Chunked => {
                let mut decoder = chunked::Decoder::default();
                let mut pieces = Vec::new();
                let max = buffering.max_body_size.unwrap_or(u64::MAX);
                while !decoder.is_done() {
                    if self.buf.is_empty() && self.read_body(proxy).await? == 0 {
                        return Err(client_side(io::ErrorKind::UnexpectedEof.into()));
                    }
                    pieces.clear();
                    let used = decoder
                        .feed(&self.buf, &mut pieces)
                        .map_err(|e| client_side(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                    for Piece::Data(range) in pieces.drain(..) {
                        let data = &self.buf[range];
                        if upload.len + (upload.carry.len() + data.len()) as u64 > max {
                            return Err(too_large());
                        }
                        if !upload.carry.is_empty() {
                            upload.carry.extend_from_slice(data);
                            continue;
                        }
                        let placed = tx.try_send(data)?;
                        upload.len += placed as u64;
                        // What did not fit waits here, sent first later.
                        upload.carry.extend_from_slice(&data[placed..]);
                    }
                    self.buf.advance(used);
                    if !upload.carry.is_empty() {
                        break;
                    }
                }
                upload.complete = decoder.is_done() && upload.carry.is_empty();
                upload.decoder = Some(decoder);
            }
        }
        tx.finish();
        Ok(upload)
    }

    /// Sends a buffered upload, then (when it did not fit) the rest of the
    /// body as it arrives.
    async fn send_upload(
        &mut self,
        upstream: &mut Connection,
        upload: &mut Upload,
        proxy: &Proxy,
    ) -> io::Result<()> {
        let idle = proxy.idle_timeout;
        // Re-chunked when the length is not known yet.
        let chunked = !upload.complete && upload.decoder.is_some();
        let mut scratch = Vec::new();
        while let Some(piece) = upload.rx.next().await {
            match piece? {
                spool::Piece::Memory(chunk) => {
                    send_chunk(upstream, &chunk, chunked, idle).await?;
                }
                spool::Piece::File { file, at, len } => {
                    let len = usize::try_from(len).map_or(BUFFER, |l| l.min(BUFFER));
                    scratch.resize(len, 0);
                    file.read_exact_at(&mut scratch, at)?;
                    send_chunk(upstream, &scratch, chunked, idle).await?;
                    upload.rx.consumed(len as u64);
                }
            }
        }
        if upload.complete {
            return Ok(());
        }
        match upload.decoder.take() {
            None => {
                self.relay_request_length(upstream, upload.left, proxy)
                    .await
            }
            Some(mut decoder) => {
                let carry = std::mem::take(&mut upload.carry);
                send_chunk(upstream, &carry, true, idle).await?;
                let sent = upload.len + carry.len() as u64;
                if !decoder.is_done() {
                    let max = proxy.buffering.max_body_size;
                    self.relay_request_chunked(upstream, &mut decoder, max, sent, proxy)
                        .await?;
                }
                timed(idle, upstream.write_all(b"0\r\n\r\n")).await
            }
        }
    }

    /// Relays a request body of `n` bytes: what was read with the head,
    /// then the rest as it arrives.
    async fn relay_request_length(
        &mut self,
        upstream: &mut Connection,
        mut n: u64,
        proxy: &Proxy,
    ) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.read_body(proxy).await? == 0 {
                return Err(client_side(io::ErrorKind::UnexpectedEof.into()));
            }
            let take = usize::try_from(n).map_or(self.buf.len(), |n| n.min(self.buf.len()));
            timed(proxy.idle_timeout, upstream.write_all(&self.buf[..take])).await?;
            self.buf.advance(take);
            n -= take as u64;
        }
        Ok(())
    }

    /// Reads more of the client's request body, within the idle timeout.
    async fn read_body(&mut self, proxy: &Proxy) -> io::Result<usize> {
        self.read(Instant::now() + proxy.idle_timeout)
            .await
            .map_err(client_side)
    }

    /// Relays a chunked request body, checked chunk by chunk and counted
    /// against `max`. From the start (`sent` 0) the framing passes as it
    /// came; resuming after an upload that did not fit, the data is
    /// re-chunked and the last chunk is left to the caller.
    async fn relay_request_chunked(
        &mut self,
        upstream: &mut Connection,
        decoder: &mut chunked::Decoder,
        max: Option<u64>,
        mut sent: u64,
        proxy: &Proxy,
    ) -> io::Result<()> {
        let max = max.unwrap_or(u64::MAX);
        let resumed = sent > 0;
        let mut pieces = Vec::new();
        loop {
            if self.buf.is_empty() && self.read_body(proxy).await? == 0 {
                return Err(client_side(io::ErrorKind::UnexpectedEof.into()));
            }
            pieces.clear();
            let used = decoder
                .feed(&self.buf, &mut pieces)
                .map_err(|e| client_side(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            for Piece::Data(range) in &pieces {
                sent += range.len() as u64;
                if resumed {
                    send_chunk(upstream, &self.buf[range.clone()], true, proxy.idle_timeout)
                        .await?;
                }
            }
            if sent > max {
                return Err(too_large());
            }
            if !resumed {
                // The framing is valid: pass it on as it came.
                timed(proxy.idle_timeout, upstream.write_all(&self.buf[..used])).await?;
            }
            self.buf.advance(used);
            if decoder.is_done() {
                return Ok(());
            }
        }
    }

    /// Relays the response body as it comes. With `hybrid`, once the
    /// client's socket cannot take a piece at once (it reads slower than
    /// the backend sends), the rest goes through the route's buffer: a
    /// task reads the backend at the backend's pace and lets it go, while
    /// this one finishes the piece and drains the buffer.
    async fn relay_body(
        &mut self,
        mut backend: Backend,
        rechunk: bool,
        hybrid: Option<Buffering>,
    ) -> io::Result<()> {
        loop {
            if !self.out.is_empty() && !backend.reader.has_buffered() {
                // The head goes out before waiting on the backend (pushed:
                // nothing may follow for a while, or at all).
                self.write_out(&[], false).await?;
            }
            let read = backend
                .reader
                .next(&mut backend.upstream, backend.idle)
                .await;
            let (piece, more) = match read {
                Ok(Some(piece)) => piece,
                Ok(None) => break,
                Err(e) => return Err(backend.failed(e)),
            };
            let Some(buffering) = hybrid.filter(|_| more) else {
                if rechunk {
                    self.send_piece(piece, true).await?;
                } else {
                    self.write_out(piece, more).await?;
                }
                continue;
            };
            if rechunk {
                self.out
                    .extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            }
            let sent = self.write_now(piece, true)?;
            if self.out.is_empty() && sent == piece.len() {
                if rechunk {
                    self.out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            // The client is slower than the backend.
            let rest = piece[sent..].to_vec();
            let (tx, rx) = spool::spool(
                &self.shared.upstream.buffers,
                buffering.memory,
                buffering.disk,
            );
            tokio::spawn(backend.fill(tx));
            self.write_out(&rest, true).await?;
            if rechunk {
                self.out.extend_from_slice(b"\r\n");
            }
            return self.drain(rx, rechunk).await;
        }
        backend.done();
        self.finish(rechunk).await
    }

    /// Sends what a buffer holds until the body's end. Spilled pieces are
    /// read back through one bounded buffer rather than sent with
    /// `sendfile`: the file's consumed ranges are punched out and its
    /// space reused while a `sendfile` would still reference those pages
    /// from the socket's queue.
    async fn drain(&mut self, mut rx: spool::Receiver, rechunk: bool) -> io::Result<()> {
        let mut scratch = pool::take_chunk();
        let drained = self.drain_into(&mut rx, rechunk, &mut scratch).await;
        pool::give_chunk(scratch);
        drained?;
        self.finish(rechunk).await
    }

    async fn drain_into(
        &mut self,
        rx: &mut spool::Receiver,
        rechunk: bool,
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        while let Some(piece) = rx.next().await {
            match piece? {
                // Pushed at once (no MSG_MORE): the client is slow, the
                // socket buffer coalesces, and the last piece is not known.
                spool::Piece::Memory(chunk) if !rechunk => self.write_out(&chunk, false).await?,
                spool::Piece::Memory(chunk) => self.send_piece(&chunk, true).await?,
                spool::Piece::File { file, at, len } => {
                    let len = usize::try_from(len).map_or(SPILL_READ, |l| l.min(SPILL_READ));
                    scratch.resize(len, 0);
                    file.read_exact_at(scratch, at)?;
                    rx.consumed(len as u64);
                    if rechunk {
                        self.send_piece(scratch, true).await?;
                    } else {
                        self.write_out(scratch, false).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// After a `101 Switching Protocols`: the answer goes to the client,
    /// then bytes flow both ways until either side closes (WebSocket and
    /// other upgrades). The client connection ends with the tunnel.
    async fn tunnel(
        &mut self,
        mut upstream: Connection,
        mut headers: HeaderMap,
        leftover: Pooled,
        protocol: &HeaderValue,
        proxy: &Proxy,
    ) -> io::Result<()> {
        strip_hop_by_hop(&mut headers);
        proxy.response_edits.apply(&mut headers);
        self.out.clear();
        write_status_line(&mut self.out, StatusCode::SWITCHING_PROTOCOLS);
        for (name, value) in &headers {
            write_field(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
        }
        write_field(&mut self.out, b"connection", b"upgrade");
        write_field(&mut self.out, b"upgrade", protocol.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.write_out(&leftover, false).await?;
        // What the client sent after its request head belongs upstream.
        if !self.buf.is_empty() {
            upstream.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.shared.metrics.upstream_tunnels.fetch_add(1, Relaxed);
        tokio::io::copy_bidirectional(&mut *self.stream, &mut upstream).await?;
        Ok(())
    }

    /// Sends body bytes, as a chunk when re-framing.
    async fn send_piece(&mut self, data: &[u8], rechunk: bool) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if rechunk {
            self.out
                .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            self.write_out(data, true).await?;
            self.out.extend_from_slice(b"\r\n");
            Ok(())
        } else {
            self.write_out(data, true).await
        }
    }

    /// Ends the body: the last chunk when re-framing, and whatever is
    /// still in the write buffer.
    async fn finish(&mut self, rechunk: bool) -> io::Result<()> {
        if rechunk {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.write_out(&[], false).await
    }
}

/// A request body read ahead of the backend (`requestBody: Buffer`).
struct Upload {
    rx: spool::Receiver,
    /// Bytes in the buffer.
    len: u64,
    /// The whole body is in the buffer (sent with its `Content-Length`).
    complete: bool,
    /// A sized body: bytes the client has still to send.
    left: u64,
    /// A chunked body: where its decoding stopped.
    decoder: Option<chunked::Decoder>,
    /// Decoded bytes that did not fit, sent right after the buffer.
    carry: Vec<u8>,
}

/// The answer to a client whose request body was refused.
fn client_status(e: &io::Error) -> StatusCode {
    match e.kind() {
        io::ErrorKind::TimedOut => StatusCode::REQUEST_TIMEOUT,
        io::ErrorKind::FileTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A request body over the route's `maxBodySize`.
fn too_large() -> io::Error {
    client_side(io::Error::new(
        io::ErrorKind::FileTooLarge,
        "request body over maxBodySize",
    ))
}

/// Writes request body bytes upstream, as one chunk when `chunked`.
async fn send_chunk(
    upstream: &mut Connection,
    data: &[u8],
    chunked: bool,
    idle: Duration,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if chunked {
        let size = format!("{:x}\r\n", data.len());
        timed(idle, upstream.write_all(size.as_bytes())).await?;
        timed(idle, upstream.write_all(data)).await?;
        timed(idle, upstream.write_all(b"\r\n")).await
    } else {
        timed(idle, upstream.write_all(data)).await
    }
}

/// How the client's response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framed {
    /// No body (HEAD, 204, 304); the backend's `Content-Length`, if any.
    NoBody(Option<u64>),
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients of unsized bodies).
    Close,
}

/// Bytes of a spill file read back at a time, into the one pooled chunk
/// a draining body holds (the client is slow: small reads cost nothing).
const SPILL_READ: usize = pool::SPOOL_CHUNK;

/// A backend connection with a response body still to read: what it
/// takes to finish reading it, in this task or a buffer's filler task.
struct Backend {
    upstream: Connection,
    reader: BodyReader,
    keep_alive: bool,
    /// The try's status once the body is through.
    status: u16,
    try_: Try,
    pool_key: px::PoolKey,
    idle: Duration,
    shared: Arc<Shared>,
}

impl Backend {
    /// Reads the rest of the body into a buffer as fast as the backend
    /// sends it (waiting only when the buffer is full), then lets the
    /// backend go.
    async fn fill(mut self, mut tx: spool::Sender) {
        loop {
            match self.reader.next(&mut self.upstream, self.idle).await {
                Ok(Some((piece, _))) => {
                    if let Err(e) = tx.send(piece).await {
                        // The client is gone: so is this exchange.
                        tracing::debug!(error = %e, "buffered response abandoned");
                        return;
                    }
                    // A fast backend would otherwise keep the worker for
                    // tokio's whole budget (128 reads), starving the
                    // clients this worker drains.
                    tokio::task::yield_now().await;
                }
                Ok(None) => break,
                Err(e) => {
                    let e = self.failed(e);
                    tx.fail(e.to_string());
                    return;
                }
            }
        }
        tx.finish();
        self.done();
    }

    /// Counts a failure reading the body (timeouts apart) and passes it on.
    fn failed(&self, e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::TimedOut {
            self.shared.metrics.upstream_timeouts.fetch_add(1, Relaxed);
        }
        e
    }

    /// The body was read whole: the try succeeded, and the connection
    /// goes back to the pool when its framing ended cleanly.
    fn done(mut self) {
        let metrics = &self.shared.metrics;
        metrics.upstream_held.observe(self.try_.elapsed());
        self.try_.status = self.status;
        let reusable = self.reader.clean && self.reader.framing != Upstream::Close;
        if reusable && self.keep_alive {
            px::put_idle(
                self.pool_key,
                self.upstream,
                self.shared.upstream.idle,
                metrics,
            );
        }
    }
}

/// Reads an upstream response body piece by piece, undoing its framing.
struct BodyReader {
    framing: Upstream,
    /// `Length`: bytes still to read.
    left: u64,
    decoder: chunked::Decoder,
    data: Pooled,
    /// Ranges of `data` still to hand out, from `next_piece` on.
    pieces: Vec<Piece>,
    next_piece: usize,
    /// `data` holds what came with the head, not yet looked at.
    fresh: bool,
    /// The body's end was read.
    done: bool,
    /// The body ended exactly at the end of what the backend sent.
    clean: bool,
}

impl BodyReader {
    fn new(framing: Upstream, leftover: Pooled) -> Self {
        Self {
            framing,
            left: match framing {
                Upstream::Length(n) => n,
                _ => 0,
            },
            decoder: chunked::Decoder::default(),
            data: leftover,
            pieces: Vec::new(),
            next_piece: 0,
            fresh: true,
            done: false,
            clean: true,
        }
    }

    /// Whether the next piece is at hand without reading the backend.
    fn has_buffered(&self) -> bool {
        (self.fresh && !self.data.is_empty()) || self.next_piece < self.pieces.len()
    }

    /// The next piece of body, and whether more follows; `None` at its
    /// end.
    async fn next(
        &mut self,
        upstream: &mut Connection,
        idle: Duration,
    ) -> io::Result<Option<(&[u8], bool)>> {
        loop {
            if let Some(Piece::Data(range)) = self.pieces.get(self.next_piece).cloned() {
                self.next_piece += 1;
                let more = !self.done || self.next_piece < self.pieces.len();
                return Ok(Some((&self.data[range], more)));
            }
            if self.done {
                return Ok(None);
            }
            self.pieces.clear();
            self.next_piece = 0;
            let got = if self.fresh {
                self.fresh = false;
                self.data.len()
            } else {
                self.read(upstream, idle).await?
            };
            match self.framing {
                Upstream::None => {
                    self.clean = got == 0;
                    self.done = true;
                }
                Upstream::Length(_) => {
                    let take = usize::try_from(self.left).map_or(got, |n| n.min(got));
                    self.clean &= take == got;
                    self.left -= take as u64;
                    self.pieces.push(Piece::Data(0..take));
                    self.done = self.left == 0;
                }
                Upstream::Chunked => {
                    let used = self
                        .decoder
                        .feed(&self.data[..got], &mut self.pieces)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.clean &= used == got;
                    self.done = self.decoder.is_done();
                }
                Upstream::Close => self.pieces.push(Piece::Data(0..got)),
            }
            self.pieces.retain(|Piece::Data(r)| !r.is_empty());
        }
    }

    /// Reads more of the body into `data`; an early end is an error except
    /// for a body delimited by the connection closing.
    async fn read(&mut self, upstream: &mut Connection, idle: Duration) -> io::Result<usize> {
        let want = match self.framing {
            Upstream::Length(_) => usize::try_from(self.left).map_or(BUFFER, |l| l.min(BUFFER)),
            _ => BUFFER,
        };
        if self.data.len() < want {
            self.data.resize(BUFFER, 0);
        }
        let got = timed(idle, upstream.read(&mut self.data[..want])).await?;
        if got == 0 {
            if self.framing == Upstream::Close {
                self.done = true;
                return Ok(0);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed mid-body",
            ));
        }
        Ok(got)
    }
}

/// Parses a response head at the start of `buf`, or `None` when
/// incomplete. Fields are checked (httparse refuses bad names and control
/// bytes in values) but left where they are.
///
/// With `copy_to`, the status line and the fields the client gets (all but
/// hop-by-hop ones, those `Connection` names, and framing, which the proxy
/// writes itself) are written there in the same pass.
fn parse_response(
    buf: &[u8],
    method: &Method,
    copy_to: Option<&mut Vec<u8>>,
) -> io::Result<Option<ResponseHead>> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match parse_head(&mut res, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&format!("malformed response head: {e}"))),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| invalid("invalid status"))?;
    let version_11 = res.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = !version_11;
    let mut handoff = false;
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| invalid("invalid Content-Length"))?;
            if length.is_some_and(|seen| seen != n) {
                return Err(invalid("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !version_11 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case(b"x-sendfile")
            || name.eq_ignore_ascii_case(b"x-accel-redirect")
        {
            handoff = true;
        }
    }
    let copied = copy_to.is_some();
    let has_date = match copy_to {
        Some(out) => {
            write_status_line(out, status);
            copy_fields(res.headers, out)
        }
        None => false,
    };
    let framing = if *method == Method::HEAD || !response::has_body(false, status) {
        Upstream::None
    } else if chunked {
        Upstream::Chunked
    } else if let Some(n) = length {
        Upstream::Length(n)
    } else {
        Upstream::Close
    };
    Ok(Some(ResponseHead {
        status,
        len,
        keep_alive: !close,
        framing,
        length,
        handoff,
        copied,
        has_date,
    }))
}

/// Parses a response head into slots left uninitialised: httparse writes
/// only the fields it finds (an initialised array of 100 would cost more
/// than the parse).
fn parse_head<'h, 'b>(
    res: &mut httparse::Response<'h, 'b>,
    buf: &'b [u8],
    slots: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> httparse::Result<usize> {
    httparse::ParserConfig::default().parse_response_with_uninit_headers(res, buf, slots)
}

/// The fields of a response head (already parsed once) as a map.
fn fields(head: &[u8]) -> io::Result<HeaderMap> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, "malformed response head");
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    parse_head(&mut res, head, &mut slots).map_err(|_| invalid())?;
    let mut headers = HeaderMap::with_capacity(res.headers.len());
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| invalid())?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| invalid())?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Copies response fields to `out`, less hop-by-hop ones (and those
/// `Connection` names) and framing, which the proxy writes itself.
/// Returns whether a `Date` was among them.
fn copy_fields(fields: &[httparse::Header<'_>], out: &mut Vec<u8>) -> bool {
    const SKIPPED: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    ];
    // Names `Connection` lists (collected only when there is one).
    let mut named: Vec<&[u8]> = Vec::new();
    for h in fields {
        if h.name.eq_ignore_ascii_case("connection") {
            named.extend(h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii));
        }
    }
    let mut has_date = false;
    for h in fields {
        let name = h.name.as_bytes();
        let skip = |list: &[&[u8]]| list.iter().any(|s| s.eq_ignore_ascii_case(name));
        if skip(&SKIPPED) || skip(&named) {
            continue;
        }
        has_date |= name.eq_ignore_ascii_case(b"date");
        write_field(out, name, h.value);
    }
    has_date
}

fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a failure on a reused connection means the backend had closed
/// it while idle (so the request can go again on a new one).
fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

async fn timed<T>(limit: Duration, io: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    timeout(limit, io)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}
