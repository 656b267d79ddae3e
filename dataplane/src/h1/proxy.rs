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
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Buf;
use http::header::{DATE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

use super::Conn;
use super::head::{Framing, Head, MAX_HEADERS};
use super::response::{self, Persist};
use crate::pool::Pooled;
use crate::proxy::chunked::{self, Piece};
use crate::proxy::sendfile::{self, Handoff};
use crate::proxy::{self as px, BUFFER, Connection, Proxy, Try, strip_hop_by_hop};
use crate::service::ProxyTarget;
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
        let request = self.upstream_request(head, target, proxy);
        let metrics = &self.shared.metrics;
        let policy = &proxy.retries;
        // A status can be retried only when nothing streamed from the
        // client: no body, and a method that may be repeated.
        let repeatable = head.framing == Framing::None && px::is_idempotent(head.request.method());
        let mut tried = px::Tried::default();
        let (mut try_, mut upstream, response, mut read) = loop {
            let mut try_ = tried
                .next(proxy, &choice, target)
                .map_err(Failure::Before)?;
            let retry_left = tried.retry_left(policy);
            match self.attempt(&try_, &request, head, proxy).await {
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
        let rechunk = !no_body
            && !version_10
            && matches!(response.framing, Upstream::Chunked | Upstream::Close);
        let keep_client =
            keep_client && (no_body || rechunk || matches!(response.framing, Upstream::Length(_)));
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
        match response.framing {
            _ if no_body => {
                if let Some(length) = response.length {
                    write_field(
                        &mut self.out,
                        b"content-length",
                        response::digits(length).as_slice(),
                    );
                }
            }
            Upstream::Length(n) => {
                write_field(
                    &mut self.out,
                    b"content-length",
                    response::digits(n).as_slice(),
                );
            }
            _ if rechunk => write_field(&mut self.out, b"transfer-encoding", b"chunked"),
            _ => {}
        }
        match (keep_client, version_10) {
            (false, _) => write_field(&mut self.out, b"connection", b"close"),
            (true, true) => write_field(&mut self.out, b"connection", b"keep-alive"),
            (true, false) => {}
        }
        self.out.extend_from_slice(b"\r\n");
        let leftover = read;

        // The body.
        let framing = if no_body {
            Upstream::None
        } else {
            response.framing
        };
        let clean = self
            .relay_body(&mut upstream, framing, leftover, rechunk, proxy)
            .await
            .map_err(|e| {
                if e.kind() == io::ErrorKind::TimedOut {
                    metrics.upstream_timeouts.fetch_add(1, Relaxed);
                }
                tracing::debug!(%addr, error = %e, "response body not completed");
                Failure::After
            })?;
        try_.status = final_status;
        if clean && response.keep_alive && framing != Upstream::Close {
            px::put_idle(
                proxy.pool_key(addr),
                upstream,
                self.shared.upstream.idle,
                metrics,
            );
        }
        Ok((response.status, keep_client))
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
                .send_and_receive(&mut upstream, request, head, proxy)
                .await
            {
                Ok((response, leftover)) => return Ok((upstream, response, leftover)),
                // The client's fault: a malformed, short or stalled body.
                Err(e) if is_client_side(&e) => {
                    tracing::debug!(%addr, error = %e, "request body refused");
                    return Err(Attempt::Client(if e.kind() == io::ErrorKind::TimedOut {
                        StatusCode::REQUEST_TIMEOUT
                    } else {
                        StatusCode::BAD_REQUEST
                    }));
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
    fn upstream_request(&mut self, head: &Head, target: &ProxyTarget, proxy: &Proxy) -> Pooled {
        self.peer();
        let req = &head.request;
        let client_host = req.headers().get(HOST);
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
        match head.framing {
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
                self.relay_request_chunked(upstream, proxy).await?;
            }
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

    /// Relays a chunked request body, checked chunk by chunk.
    async fn relay_request_chunked(
        &mut self,
        upstream: &mut Connection,
        proxy: &Proxy,
    ) -> io::Result<()> {
        let mut decoder = chunked::Decoder::default();
        loop {
            if self.buf.is_empty() && self.read_body(proxy).await? == 0 {
                return Err(client_side(io::ErrorKind::UnexpectedEof.into()));
            }
            let used = decoder
                .feed(&self.buf, &mut Vec::new())
                .map_err(|e| client_side(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            // The framing is valid: pass it on as it came.
            timed(proxy.idle_timeout, upstream.write_all(&self.buf[..used])).await?;
            self.buf.advance(used);
            if decoder.is_done() {
                return Ok(());
            }
        }
    }

    /// Relays the response body. Returns whether it ended exactly where
    /// its framing said, so the upstream connection can be reused.
    async fn relay_body(
        &mut self,
        upstream: &mut Connection,
        framing: Upstream,
        leftover: Pooled,
        rechunk: bool,
        proxy: &Proxy,
    ) -> io::Result<bool> {
        let idle = proxy.idle_timeout;
        match framing {
            Upstream::None => {
                self.write_out(&[], false).await?;
                Ok(leftover.is_empty())
            }
            Upstream::Length(n) => {
                let mut left = n;
                let first = usize::try_from(n).map_or(leftover.len(), |n| n.min(leftover.len()));
                let clean = first == leftover.len();
                self.write_out(&leftover[..first], left > first as u64)
                    .await?;
                left -= first as u64;
                // Only bodies larger than what came with the head need it.
                let mut buf = if left > 0 {
                    vec![0; BUFFER]
                } else {
                    Vec::new()
                };
                while left > 0 {
                    let want = usize::try_from(left).map_or(BUFFER, |l| l.min(BUFFER));
                    let got = timed(idle, upstream.read(&mut buf[..want])).await?;
                    if got == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "backend closed mid-body",
                        ));
                    }
                    left -= got as u64;
                    self.write_out(&buf[..got], left > 0).await?;
                }
                Ok(clean)
            }
            Upstream::Chunked => {
                // The head goes out now: the first chunk may take a while.
                self.write_out(&[], true).await?;
                let mut decoder = chunked::Decoder::default();
                let mut pieces = Vec::new();
                let mut data = leftover;
                let mut clean = true;
                loop {
                    pieces.clear();
                    let used = decoder
                        .feed(&data, &mut pieces)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    clean &= used == data.len();
                    for Piece::Data(range) in pieces.drain(..) {
                        self.send_piece(&data[range], rechunk).await?;
                    }
                    if decoder.is_done() {
                        break;
                    }
                    data.clear();
                    data.reserve(BUFFER);
                    if timed(idle, upstream.read_buf(&mut *data)).await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "backend closed mid-body",
                        ));
                    }
                }
                self.finish(rechunk).await?;
                Ok(clean)
            }
            Upstream::Close => {
                self.write_out(&[], true).await?;
                self.send_piece(&leftover, rechunk).await?;
                let mut buf = vec![0; BUFFER];
                loop {
                    let got = timed(idle, upstream.read(&mut buf)).await?;
                    if got == 0 {
                        break;
                    }
                    self.send_piece(&buf[..got], rechunk).await?;
                }
                self.finish(rechunk).await?;
                Ok(false)
            }
        }
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
