//! One proxied request from an HTTP/2 client.
//!
//! ```text
//!  pick endpoint ─► pooled client connection, or connect (timeouts.connect)
//!   ─► request (path rewritten, hop-by-hop removed, X-Forwarded-*,
//!      Forwarded, Via, header edits), body streamed as the client sends it
//!   ─► response head within timeouts.responseHeader ─► X-Sendfile?
//!   ─► response to the client: a body within the route's `memory` relayed
//!      frame by frame (timeouts.idle), a larger one through the route's
//!      buffer, filled by a task that releases the backend when done
//!   ─► client connection back to the pool when the body went through
//! ```
//!
//! Backends are spoken to over HTTP/1.1 with hyper's client on this
//! worker's connections (counted like the HTTP/1.1 engine's, in their own
//! pool of at most `--upstream-idle` per endpoint and worker). Retries,
//! passive health, balancing and every header rule are the same functions
//! the HTTP/1.1 engine uses. Failures before the response head become
//! 502, 503 or 504; a backend that dies mid-body resets the client's
//! stream, so a short body is never passed off as complete.
//!
//! Limits of this path: upgrades (RFC 8441 WebSocket over HTTP/2) are not
//! offered, so clients use HTTP/1.1 for them; `timeouts.responseHeader`
//! counts from the start of the request, a streamed upload included.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use pier_snapshot::BufferMode;

use crate::balance::Choice;
use crate::body::{Activity, Body, Done, Finish};
use crate::context::Context;
use crate::dispatch::ProxyTarget;
use crate::files;
use crate::filter::Filters;
use crate::http::forward::{self, Peer, strip_hop_by_hop};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Tried, Try, sendfile};
use crate::spool;
use crate::table::Handler;
use crate::upstream::idle::{Idle, Reusable};
use crate::upstream::{self, PoolKey};

/// The body sent upstream: the client's (buffered first when the route
/// asks), or none.
type Outbound = Either<Upload, Empty<Bytes>>;
type Sender = SendRequest<Outbound>;

thread_local! {
    /// Idle client connections of this worker, by endpoint.
    static SENDERS: RefCell<Idle<Sender>> = RefCell::new(Idle::default());
}

impl Reusable for Sender {
    fn reusable(&mut self) -> bool {
        !self.is_closed()
    }
}

/// How sending a request failed.
#[derive(Debug)]
enum Failed {
    /// The endpoint's failure.
    Upstream(upstream::Error),
    /// The client's request body was refused (4xx): not the endpoint's.
    Client(StatusCode),
}

/// Answers one request for a proxy route; the response's body accounts for
/// it in the route's metrics and on the connection when it ends.
pub(crate) async fn forward(
    ctx: Arc<Context>,
    req: Request<Incoming>,
    target: Box<ProxyTarget>,
    peer: Option<Arc<Peer>>,
    activity: Arc<Activity>,
) -> Response<Body> {
    let res = match exchange(&ctx, req, &target, peer.as_deref()).await {
        Ok(res) => res,
        Err(status) => files::status(status),
    };
    let status = res.status().as_u16();
    res.map(|body| {
        body.with_done(Done {
            route: Arc::clone(&target.entry().metrics),
            status,
            started: target.started,
            activity: Some(activity),
        })
    })
}

/// Tries endpoints until one answers usably, as the HTTP/1.1 engine does.
async fn exchange(
    ctx: &Arc<Context>,
    req: Request<Incoming>,
    target: &ProxyTarget,
    peer: Option<&Peer>,
) -> Result<Response<Body>, StatusCode> {
    let Handler::Proxy(proxy) = &target.entry().handler else {
        return Err(StatusCode::BAD_GATEWAY);
    };
    let filters = &target.entry().filters;
    let phase = filters.upstream();
    let metrics = &ctx.metrics;
    let (parts, body) = req.into_parts();
    let buffering = &proxy.buffering;
    let max = buffering.max_body_size.unwrap_or(u64::MAX);
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let body = (!http_body::Body::is_end_stream(&body)).then_some(body);
    let mut length = None;
    let mut body = match body {
        None => None,
        Some(body) if buffering.request_body => {
            let upload = Upload::buffer(body, ctx, proxy, max).await?;
            length = upload.length;
            Some(upload)
        }
        Some(body) => Some(Upload::streamed(body, max)),
    };
    // A status can be retried only when nothing streamed from the client.
    let repeatable = body.is_none() && forward::is_idempotent(&parts.method);
    let choice = Choice {
        uri: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &parts.headers,
        client: peer.map(|p| p.addr.ip()),
    };
    let client_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(HOST).cloned());
    let mut headers = http::HeaderMap::with_capacity(parts.headers.len() + 6);
    if let Some(host) = phase.rewrite.host(client_host.as_ref()) {
        headers.insert(HOST, host.clone());
    }
    if let Some(n) = length {
        // A whole buffered upload goes with its length.
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    forward::upstream_fields(
        &parts.headers,
        client_host.as_ref(),
        peer,
        if target.pass.secure { "https" } else { "http" },
        ctx.upstream.via.as_ref(),
        &phase.headers,
        &mut headers,
    );
    let mut path = Vec::with_capacity(parts.uri.path().len() + 16);
    forward::upstream_path(
        parts.uri.path(),
        parts.uri.query(),
        &target.path,
        target.prefix_len,
        phase.rewrite.path(),
        &mut path,
    );
    let uri = Uri::from_maybe_shared(Bytes::from(path)).map_err(|_| StatusCode::BAD_REQUEST)?;

    let policy = &proxy.retries;
    let mut tried = Tried::default();
    loop {
        let mut try_ = tried
            .next(proxy, &choice)
            .map_err(upstream::Error::status)?;
        let retry_left = tried.retry_left(policy);
        let mut pooled = take_sender(proxy.pool_key(try_.addr), metrics);
        let sent = loop {
            let reused = pooled.is_some();
            let sender = match pooled.take() {
                Some(sender) => sender,
                None => match open(&try_, proxy, ctx).await {
                    Ok(sender) => sender,
                    Err(e) => break Err(Failed::Upstream(e)),
                },
            };
            let mut request = Request::new(match body.take() {
                Some(body) => Either::Left(body),
                None => Either::Right(Empty::new()),
            });
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = headers.clone();
            match send(sender, request, proxy, metrics).await {
                Ok(answer) => break Ok(answer),
                // A pooled connection the backend closed meanwhile: once
                // more on a fresh one when nothing streamed.
                Err(_) if reused && repeatable => {}
                Err(failed) => break Err(failed),
            }
        };
        match sent {
            Ok((response, sender)) => {
                let code = response.status().as_u16();
                if try_.answered(code, retry_left && repeatable, metrics) {
                    continue;
                }
                let client = (&parts.method, &parts.headers);
                let answer = (response, sender, try_);
                return respond(ctx, client, answer, proxy, (filters, &target.pass)).await;
            }
            Err(Failed::Upstream(e)) => {
                if try_.failed(e, retry_left, metrics) {
                    continue;
                }
                return Err(e.status());
            }
            Err(Failed::Client(status)) => {
                // A client's bad, aborted or oversized upload (4xx) is not
                // the endpoint's failure.
                try_.status = status.as_u16();
                return Err(status);
            }
        }
    }
}

/// Opens a connection to the try's endpoint and starts hyper's client on it.
async fn open(try_: &Try, proxy: &Proxy, ctx: &Context) -> Result<Sender, upstream::Error> {
    let conn = proxy.open(try_.index, try_.addr, &ctx.metrics).await?;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(ctx.upstream.max_header_size.max(8192))
        .handshake(TokioIo::new(conn))
        .await
        .map_err(|e| {
            tracing::debug!(addr = %try_.addr, error = %e, "upstream handshake failed");
            upstream::Error::Connect
        })?;
    let addr = try_.addr;
    // Driven on this worker until the sender and every body are gone, or
    // the backend closes.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends a request and waits for the response head.
async fn send(
    mut sender: Sender,
    request: Request<Outbound>,
    proxy: &Proxy,
    metrics: &Metrics,
) -> Result<(Response<Incoming>, Sender), Failed> {
    let answer = tokio::time::timeout(proxy.response_header_timeout, async {
        sender.ready().await?;
        sender.send_request(request).await
    })
    .await;
    match answer {
        Ok(Ok(response)) => Ok((response, sender)),
        Ok(Err(e)) if caused_by::<TooLarge>(&e) => {
            Err(Failed::Client(StatusCode::PAYLOAD_TOO_LARGE))
        }
        Ok(Err(e)) if caused_by::<ClientBody>(&e) => Err(Failed::Client(StatusCode::BAD_REQUEST)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upstream exchange failed");
            Err(Failed::Upstream(upstream::Error::Exchange))
        }
        Err(_) => {
            metrics.upstream_timeouts.fetch_add(1, Relaxed);
            Err(Failed::Upstream(upstream::Error::Timeout))
        }
    }
}

/// The client's response, through the route's response filters: the
/// backend's, or the file it handed back.
async fn respond(
    ctx: &Arc<Context>,
    (method, client): (&Method, &http::HeaderMap),
    (response, sender, mut try_): (Response<Incoming>, Sender, Try),
    proxy: &Proxy,
    (filters, pass): (&Filters, &crate::filter::Pass),
) -> Result<Response<Body>, StatusCode> {
    let (mut head, incoming) = response.into_parts();
    let ended = http_body::Body::is_end_stream(&incoming);
    if let Some(handoff) = proxy.sendfile.handoff(&head.headers) {
        // The backend's body is not wanted: its connection is kept only
        // when that body is already over.
        if ended {
            put_sender(proxy.pool_key(try_.addr), sender, ctx);
        }
        try_.mark(&mut head.headers);
        drop(try_);
        let mut res = sendfile::respond(handoff, method, client, head.headers, ctx)?;
        filters.on_response(res.headers_mut(), pass);
        return Ok(res);
    }
    let length = head.headers.get(CONTENT_LENGTH).cloned();
    strip_hop_by_hop(&mut head.headers);
    if let Some(via) = &ctx.upstream.via {
        forward::append_via(&mut head.headers, via);
    }
    filters.on_response(&mut head.headers, pass);
    try_.mark(&mut head.headers);
    head.version = Version::HTTP_2;
    let status = std::mem::replace(&mut try_.status, 502);
    let mut exchange = Exchange {
        key: proxy.pool_key(try_.addr),
        try_,
        status,
        sender: Some(sender),
        ctx: Arc::clone(ctx),
    };
    let buffering = &proxy.buffering;
    // Bodies within the route's memory fit hyper's own buffers and the
    // HTTP/2 window: they pass straight through.
    let small = length
        .as_ref()
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= buffering.memory);
    let body = if ended {
        // HEAD, 204, 304 or an empty body: the backend's length still
        // describes the resource.
        if let Some(length) = length {
            head.headers.insert(CONTENT_LENGTH, length);
        }
        exchange.finished();
        Body::empty()
    } else if buffering.mode == BufferMode::Stream || small {
        if let Some(length) = length {
            head.headers.insert(CONTENT_LENGTH, length);
        }
        Body::upstream(incoming, proxy.idle_timeout, Box::new(exchange))
    } else {
        let (tx, mut rx) = spool::spool(&ctx.upstream.buffers, buffering.memory, buffering.disk);
        tokio::spawn(fill(incoming, tx, proxy.idle_timeout, exchange));
        let whole = if buffering.mode == BufferMode::Buffer {
            rx.whole().await.map_err(|e| {
                tracing::debug!(error = %e, "response body not completed");
                StatusCode::BAD_GATEWAY
            })?
        } else {
            None
        };
        if let Some(n) = whole.or_else(|| {
            length
                .as_ref()
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        }) {
            head.headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        Body::spooled(rx)
    };
    Ok(Response::from_parts(head, body))
}

/// Reads a backend's body into the route's buffer as fast as it comes,
/// then lets the backend go.
async fn fill(
    mut incoming: Incoming,
    mut tx: spool::Sender,
    idle: std::time::Duration,
    mut exchange: Exchange,
) {
    loop {
        match tokio::time::timeout(idle, incoming.frame()).await {
            Err(_) => {
                exchange.ctx.metrics.upstream_timeouts.fetch_add(1, Relaxed);
                tx.fail("backend body idle past the route's idle timeout".to_owned());
                return;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tx.fail(format!("backend body: {e}"));
                return;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data()
                    && tx.send(&data).await.is_err()
                {
                    // The client is gone: so is this exchange.
                    return;
                }
                // Fair to the clients this worker drains (see h1's filler).
                tokio::task::yield_now().await;
            }
        }
    }
    tx.finish();
    exchange.finished();
}

/// A request body over the route's `maxBodySize`.
#[derive(Debug, thiserror::Error)]
#[error("request body over maxBodySize")]
struct TooLarge;

/// The client's request body failed (reset, malformed).
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
struct ClientBody(hyper::Error);

fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// The body sent upstream: what a buffered upload holds, then what of the
/// client's body it did not, counted against `maxBodySize`.
#[derive(Debug)]
struct Upload {
    buffered: Option<spool::SpoolBody>,
    /// Bytes of a frame that did not fit the buffer.
    carry: Option<Bytes>,
    rest: Option<Incoming>,
    max: u64,
    seen: u64,
    /// The whole body is buffered: its length.
    length: Option<u64>,
}

impl Upload {
    fn streamed(body: Incoming, max: u64) -> Self {
        Self {
            buffered: None,
            carry: None,
            rest: Some(body),
            max,
            seen: 0,
            length: None,
        }
    }

    /// Reads the client's body into the route's buffer before a backend is
    /// picked; when it does not fit, the rest streams later.
    async fn buffer(
        mut body: Incoming,
        ctx: &Context,
        proxy: &Proxy,
        max: u64,
    ) -> Result<Self, StatusCode> {
        let buffering = &proxy.buffering;
        let (mut tx, rx) = spool::spool(&ctx.upstream.buffers, buffering.memory, buffering.disk);
        let mut seen = 0;
        let mut carry = None;
        loop {
            let frame = match tokio::time::timeout(proxy.idle_timeout, body.frame()).await {
                Err(_) => return Err(StatusCode::REQUEST_TIMEOUT),
                Ok(None) => break,
                Ok(Some(Err(_))) => return Err(StatusCode::BAD_REQUEST),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            seen += data.len() as u64;
            if seen > max {
                return Err(StatusCode::PAYLOAD_TOO_LARGE);
            }
            let placed = tx.try_send(&data).map_err(|_| StatusCode::BAD_GATEWAY)?;
            if placed < data.len() {
                carry = Some(data.split_off(placed));
                break;
            }
        }
        tx.finish();
        let complete = carry.is_none();
        Ok(Self {
            buffered: Some(spool::SpoolBody::new(rx)),
            carry,
            rest: (!complete).then_some(body),
            max,
            seen,
            length: complete.then_some(seen),
        })
    }
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::{Poll, ready};
        let this = &mut *self;
        if let Some(buffered) = &mut this.buffered {
            match ready!(std::pin::Pin::new(buffered).poll_frame(cx)) {
                Some(frame) => return Poll::Ready(Some(frame.map_err(Into::into))),
                None => this.buffered = None,
            }
        }
        if let Some(carry) = this.carry.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(carry))));
        }
        let Some(rest) = &mut this.rest else {
            return Poll::Ready(None);
        };
        match ready!(std::pin::Pin::new(rest).poll_frame(cx)) {
            None => Poll::Ready(None),
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(ClientBody(e))))),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.max {
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_none()
            && self.carry.is_none()
            && self
                .rest
                .as_ref()
                .is_none_or(http_body::Body::is_end_stream)
    }
}

/// What a relayed body holds: the endpoint's try (counted in flight, its
/// status recorded at the end) and the connection, pooled again once the
/// body went through.
#[derive(Debug)]
struct Exchange {
    /// Where the connection is pooled again.
    key: PoolKey,
    try_: Try,
    /// The backend's status, recorded when the body completes (502 if cut).
    status: u16,
    sender: Option<Sender>,
    ctx: Arc<Context>,
}

impl Finish for Exchange {
    fn finished(&mut self) {
        let metrics = &self.ctx.metrics;
        metrics.upstream_held.observe(self.try_.elapsed());
        self.try_.status = self.status;
        if let Some(sender) = self.sender.take() {
            put_sender(self.key, sender, &self.ctx);
        }
    }
}

/// An idle connection to `addr` the backend has not closed.
fn take_sender(key: PoolKey, metrics: &Metrics) -> Option<Sender> {
    SENDERS.with_borrow_mut(|pool| pool.take(key, metrics))
}

/// Keeps a connection whose exchange completed, if there is room.
fn put_sender(key: PoolKey, sender: Sender, ctx: &Context) {
    if sender.is_closed() {
        return;
    }
    let max = ctx.upstream.idle;
    SENDERS.with_borrow_mut(|pool| pool.put(key, sender, max, &ctx.metrics));
}

/// Closes this worker's idle client connections unused for `limit`.
pub(crate) fn expire_idle(limit: std::time::Duration, metrics: &Metrics) {
    SENDERS.with_borrow_mut(|pool| pool.expire(limit, metrics));
}
