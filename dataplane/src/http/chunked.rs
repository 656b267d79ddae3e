//! A chunked transfer-coding decoder (RFC 9112 §7.1) that tells where the
//! body ends, so a chunked upstream response can be re-framed for the client
//! and the upstream connection reused. Strict: a malformed size line, an
//! oversized chunk size or a missing CRLF is an error, never guessed around
//! (request smuggling lives in those guesses). No I/O.

/// Longest chunk-size line accepted, extensions included.
const MAX_LINE: usize = 4096;

/// Where the decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a size line (`len` bytes of it so far).
    Size {
        len: usize,
    },
    /// `left` data bytes of the current chunk remain.
    Data {
        left: u64,
    },
    /// The CRLF after a chunk's data (`seen` bytes of it).
    DataEnd {
        seen: u8,
    },
    /// Trailer lines after the last chunk; `line` bytes of the current one.
    Trailer {
        line: usize,
    },
    Done,
}

/// Why a chunked body is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub(crate) struct ChunkError(&'static str);

/// Incremental decoder.
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
    size: u64,
    digits: bool,
    in_extension: bool,
}

/// What [`Decoder::feed`] found in a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Body data at this range of the input.
    Data(std::ops::Range<usize>),
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            state: State::Size { len: 0 },
            size: 0,
            digits: false,
            in_extension: false,
        }
    }
}

impl Decoder {
    /// True once the last chunk and the trailers are complete.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, pushing the ranges of body data into `out`. Returns
    /// how many bytes were consumed: all of them, unless the body ended
    /// before the end of `input` (the rest belongs to the next message).
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<Piece>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data { left } => {
                    let take =
                        usize::try_from(left).map_or(input.len() - i, |l| l.min(input.len() - i));
                    out.push(Piece::Data(i..i + take));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd { seen: 0 }
                    } else {
                        State::Data { left }
                    };
                }
                State::DataEnd { seen } => {
                    let want = if seen == 0 { b'\r' } else { b'\n' };
                    if input[i] != want {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    i += 1;
                    self.state = if seen == 0 {
                        State::DataEnd { seen: 1 }
                    } else {
                        State::Size { len: 0 }
                    };
                }
                State::Size { len } => {
                    let b = input[i];
                    i += 1;
                    if len + 1 > MAX_LINE {
                        return Err(ChunkError("chunk size line too long"));
                    }
                    self.state = State::Size { len: len + 1 };
                    match b {
                        b'\n' => {
                            if !self.digits {
                                return Err(ChunkError("chunk size missing"));
                            }
                            let size = std::mem::take(&mut self.size);
                            self.digits = false;
                            self.in_extension = false;
                            self.state = if size == 0 {
                                State::Trailer { line: 0 }
                            } else {
                                State::Data { left: size }
                            };
                        }
                        b'\r' => {}
                        _ if self.in_extension => {}
                        b';' | b' ' | b'\t' if self.digits => self.in_extension = true,
                        b => {
                            let digit = (b as char)
                                .to_digit(16)
                                .ok_or(ChunkError("invalid chunk size"))?;
                            self.size = self
                                .size
                                .checked_mul(16)
                                .and_then(|s| s.checked_add(u64::from(digit)))
                                .filter(|s| *s <= 1 << 62)
                                .ok_or(ChunkError("chunk size too large"))?;
                            self.digits = true;
                        }
                    }
                }
                State::Trailer { line } => {
                    let b = input[i];
                    i += 1;
                    if line + 1 > MAX_LINE {
                        return Err(ChunkError("trailer line too long"));
                    }
                    self.state = match b {
                        // An empty line ends the message.
                        b'\n' if line <= 1 => State::Done,
                        b'\n' => State::Trailer { line: 0 },
                        _ => State::Trailer { line: line + 1 },
                    };
                }
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in(chunks: &[&[u8]]) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut decoder = Decoder::default();
        let mut body = Vec::new();
        let mut rest = 0;
        for chunk in chunks {
            let mut pieces = Vec::new();
            let used = decoder.feed(chunk, &mut pieces)?;
            for Piece::Data(range) in pieces {
                body.extend_from_slice(&chunk[range]);
            }
            rest += chunk.len() - used;
        }
        assert!(decoder.is_done(), "body not finished");
        Ok((body, rest))
    }

    #[test]
    fn bodies_decode_whatever_the_split_and_stop_at_their_end() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: a\r\n\r\nNEXT";
        for split in 1..wire.len() {
            let (body, rest) = decode_in(&[&wire[..split], &wire[split..]]).expect("valid");
            assert_eq!(body, b"hello world", "split at {split}");
            assert_eq!(rest, 4, "split at {split}");
        }
        let (body, _) = decode_in(&[b"A\r\n0123456789\r\n0\r\n\r\n"]).expect("hex sizes");
        assert_eq!(body, b"0123456789");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for wire in [
            &b"x\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\n",
            b"-5\r\nhello\r\n",
            b"fffffffffffffffffff\r\n",
        ] {
            let mut decoder = Decoder::default();
            assert!(
                decoder.feed(wire, &mut Vec::new()).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}
