//! The client's request body on its way to a backend: relayed as it
//! arrives, or read into the route's buffer first (`requestBody: Buffer`)
//! and sent from there, the rest streamed when it did not fit.

use std::io;
use std::time::Duration;

use bytes::Buf;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::Conn;
use super::proxy::client_side;
use crate::http::chunked::{self, Piece};
use crate::http::head::{Framing, Head};
use crate::proxy::reader::timed;
use crate::proxy::{BUFFER, Proxy};
use crate::spool;
use crate::upstream::Connection;

impl Conn<'_> {
    /// Relays the client's request body as it arrives.
    pub(super) async fn relay_request(
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
    pub(super) async fn upload(&mut self, head: &Head, proxy: &Proxy) -> io::Result<Upload> {
        let buffering = &proxy.buffering;
        let budget = &self.shared.ctx.upstream.buffers;
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
    pub(super) async fn send_upload(
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
                let max = proxy.buffering.max_body_size;
                self.relay_request_chunked(upstream, &mut decoder, max, sent, proxy)
                    .await
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

    /// Relays a chunked request body, decoded strictly as it arrives,
    /// counted against `max` and re-framed with Pier's own size lines (no
    /// byte of the client's framing goes upstream); ends with the last
    /// chunk and the checked trailers. `sent`: data bytes already sent.
    async fn relay_request_chunked(
        &mut self,
        upstream: &mut Connection,
        decoder: &mut chunked::Decoder,
        max: Option<u64>,
        mut sent: u64,
        proxy: &Proxy,
    ) -> io::Result<()> {
        let max = max.unwrap_or(u64::MAX);
        let mut pieces = Vec::new();
        let mut frame = Vec::new();
        while !decoder.is_done() {
            if self.buf.is_empty() && self.read_body(proxy).await? == 0 {
                return Err(client_side(io::ErrorKind::UnexpectedEof.into()));
            }
            pieces.clear();
            let used = decoder
                .feed(&self.buf, &mut pieces)
                .map_err(|e| client_side(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            frame.clear();
            for Piece::Data(range) in &pieces {
                sent += range.len() as u64;
                if sent > max {
                    return Err(too_large());
                }
                frame_chunk(&self.buf[range.clone()], &mut frame);
            }
            if !frame.is_empty() {
                timed(proxy.idle_timeout, upstream.write_all(&frame)).await?;
            }
            self.buf.advance(used);
        }
        frame.clear();
        frame.extend_from_slice(b"0\r\n");
        frame.extend_from_slice(decoder.trailers());
        frame.extend_from_slice(b"\r\n");
        timed(proxy.idle_timeout, upstream.write_all(&frame)).await
    }
}

/// A request body read ahead of the backend (`requestBody: Buffer`).
pub(super) struct Upload {
    rx: spool::Receiver,
    /// Bytes in the buffer.
    pub(super) len: u64,
    /// The whole body is in the buffer (sent with its `Content-Length`).
    pub(super) complete: bool,
    /// A sized body: bytes the client has still to send.
    left: u64,
    /// A chunked body: where its decoding stopped.
    decoder: Option<chunked::Decoder>,
    /// Decoded bytes that did not fit, sent right after the buffer.
    carry: Vec<u8>,
}

/// The answer to a client whose request body was refused.
pub(super) fn client_status(e: &io::Error) -> StatusCode {
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
        let mut frame = Vec::with_capacity(data.len() + 20);
        frame_chunk(data, &mut frame);
        timed(idle, upstream.write_all(&frame)).await
    } else {
        timed(idle, upstream.write_all(data)).await
    }
}

/// Appends `data` to `out` as one chunk: size line, data, CRLF.
fn frame_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    chunked::size_line(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}
