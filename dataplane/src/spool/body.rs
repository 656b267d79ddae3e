//! A buffer's receiving half as an `http_body::Body`, for hyper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::{Chunk, Piece, Receiver};
use crate::pool::SPOOL_CHUNK;

/// A buffer's receiving half as an `http_body::Body` (hyper's side:
/// HTTP/2 and TLS clients, and buffered uploads). Chunks go to hyper as
/// they are, not copied, and stay counted in the memory budget until hyper
/// has sent them (its send buffer holds at most 64 KiB a stream); spilled
/// bytes are read back into pooled chunks the same way.
pub(crate) struct SpoolBody {
    next: Option<ReadOne>,
}

/// Reading one piece, owning the receiver until it is back.
type ReadOne = Pin<Box<dyn Future<Output = (Receiver, Option<io::Result<Bytes>>)> + Send + Sync>>;

impl std::fmt::Debug for SpoolBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolBody").finish_non_exhaustive()
    }
}

impl SpoolBody {
    pub(crate) fn new(rx: Receiver) -> Self {
        Self {
            next: Some(Box::pin(read_one(rx))),
        }
    }
}

/// The next piece of a buffer as bytes.
async fn read_one(mut rx: Receiver) -> (Receiver, Option<io::Result<Bytes>>) {
    let piece = match rx.next().await {
        None => None,
        Some(Err(e)) => Some(Err(e)),
        Some(Ok(Piece::Memory(chunk))) => Some(Ok(Bytes::from_owner(chunk))),
        Some(Ok(Piece::File { file, at, len })) => {
            let len = usize::try_from(len).map_or(SPOOL_CHUNK, |l| l.min(SPOOL_CHUNK));
            let mut chunk = Chunk::working(rx.budget());
            chunk.buf.resize(len, 0);
            match file.read_exact_at(&mut chunk.buf, at) {
                Ok(()) => {
                    rx.consumed(len as u64);
                    Some(Ok(Bytes::from_owner(chunk)))
                }
                Err(e) => Some(Err(e)),
            }
        }
    };
    (rx, piece)
}

impl http_body::Body for SpoolBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<http_body::Frame<Bytes>>>> {
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        let (rx, piece) = std::task::ready!(next.as_mut().poll(cx));
        self.next = match &piece {
            Some(Ok(_)) => Some(Box::pin(read_one(rx))),
            _ => None,
        };
        Poll::Ready(piece.map(|r| r.map(http_body::Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none()
    }
}
