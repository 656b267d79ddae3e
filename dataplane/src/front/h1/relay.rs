//! A backend's response body on its way to the client: relayed as it
//! comes, through the route's buffer once the client reads slower than
//! the backend sends (hybrid buffering), or after a `101`, as a tunnel.

use std::io;
use std::sync::atomic::Ordering::Relaxed;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use pier_snapshot::Buffering;
use tokio::io::AsyncWriteExt;

use super::Conn;
use super::proxy::Failure;
use crate::dispatch::ProxyTarget;
use crate::filter::Filters;
use crate::http::forward::strip_hop_by_hop;
use crate::http::head::Head;
use crate::http::response::{self, Persist};
use crate::http::upstream::{write_field, write_status_line};
use crate::pool::{self, Pooled};
use crate::proxy::reader::Backend;
use crate::proxy::sendfile::{self, Handoff};
use crate::spool;
use crate::upstream::Connection;

impl Conn<'_> {
    /// Ends the client's response head with its framing and connection
    /// fields. Returns whether the connection can carry another request.
    pub(super) fn end_head(&mut self, framed: Framed, keep: bool, version_10: bool) -> bool {
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
    pub(super) async fn hand_off(
        &mut self,
        head: &Head,
        target: &ProxyTarget,
        handoff: Handoff<'_>,
        backend: HeaderMap,
        keep: bool,
    ) -> Result<(StatusCode, bool), Failure> {
        let req = &head.request;
        let mut res = sendfile::respond(
            handoff,
            req.method(),
            req.headers(),
            backend,
            &self.shared.ctx,
        )
        .map_err(Failure::Before)?;
        target
            .entry()
            .filters
            .on_response(res.headers_mut(), &target.pass);
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

    /// Relays the response body as it comes. With `hybrid`, once the
    /// client's socket cannot take a piece at once (it reads slower than
    /// the backend sends), the rest goes through the route's buffer: a
    /// task reads the backend at the backend's pace and lets it go, while
    /// this one finishes the piece and drains the buffer.
    pub(super) async fn relay_body(
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
                &self.shared.ctx.upstream.buffers,
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
    pub(super) async fn drain(&mut self, mut rx: spool::Receiver, rechunk: bool) -> io::Result<()> {
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
    pub(super) async fn tunnel(
        &mut self,
        mut upstream: Connection,
        mut headers: HeaderMap,
        leftover: Pooled,
        protocol: &HeaderValue,
        filters: &Filters,
        pass: &crate::filter::Pass,
    ) -> io::Result<()> {
        strip_hop_by_hop(&mut headers);
        filters.on_response(&mut headers, pass);
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
        self.shared
            .ctx
            .metrics
            .upstream_tunnels
            .fetch_add(1, Relaxed);
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

/// How the client's response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framed {
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
