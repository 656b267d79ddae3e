//! The chunked transfer coding (RFC 9112 §7.1), decoded strictly, so that a
//! chunked body, a client's or a backend's, is re-framed by Pier and never
//! passed on as it came. No I/O.
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-ext    = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
//! ext-val      = token / quoted-string
//! trailer-section = *( field-line CRLF )
//! ```
//!
//! Every line ends with CRLF: a bare LF or a CR anywhere else is an error,
//! and so is anything the grammar does not allow, never guessed around
//! (request smuggling lives in those guesses: a lenient `1\r0` read as
//! 0x10, or a trailer section ended one byte early, lets bytes of one
//! message be parsed as the next). Extensions are checked and dropped.
//! Trailer fields are checked as field lines and kept, normalised, for the
//! next hop, except those that must not be acted on after the body
//! (framing, routing, authentication, forwarding, content format).

/// Longest chunk-size line accepted, extensions included.
const MAX_LINE: usize = 4096;
/// Largest trailer section accepted.
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;
/// Largest chunk size accepted (a bound far above any real chunk, so the
/// size never overflows).
const MAX_SIZE: u64 = 1 << 62;

/// Trailer fields not passed on: a recipient may not act on them once the
/// body has been read (RFC 9110 §6.5.1), or they are this hop's own.
const NOT_FORWARDED: &[&str] = &[
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "expect",
    "forwarded",
    "host",
    "keep-alive",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "range",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
    "www-authenticate",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Where the decoder is in the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The chunk size's hex digits.
    Size,
    /// Inside the chunk extensions.
    Ext(Ext),
    /// The CR of the size line was read; its LF must follow.
    SizeLf,
    /// `left` data bytes of the current chunk remain.
    Data {
        left: u64,
    },
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// A trailer field line (kept in `line`), or the empty line ending the
    /// section.
    Trailer,
    /// The CR of a trailer line was read.
    TrailerLf,
    Done,
}

/// Where the decoder is inside `chunk-ext`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ext {
    /// Whitespace that must lead to `;`.
    BeforeSemicolon,
    /// After `;`: whitespace, then the name.
    BeforeName,
    Name,
    /// Whitespace after the name: `=` or `;` follows.
    AfterName,
    /// After `=`: whitespace, then the value.
    BeforeValue,
    Token,
    Quoted,
    QuotedEscape,
    /// After the closing quote.
    AfterQuoted,
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
    digits: usize,
    /// Bytes of the current size line.
    line_len: usize,
    /// The trailer line being read.
    line: Vec<u8>,
    /// Checked trailer fields for the next hop, `name: value\r\n` each.
    trailers: Vec<u8>,
    /// Bytes of the trailer section so far.
    trailer_len: usize,
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
            state: State::Size,
            size: 0,
            digits: 0,
            line_len: 0,
            line: Vec::new(),
            trailers: Vec::new(),
            trailer_len: 0,
        }
    }
}

impl Decoder {
    /// True once the last chunk and the trailer section are complete.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The trailer fields to pass on, each `name: value\r\n` (names in
    /// lower case); complete once [`Self::is_done`].
    pub(crate) fn trailers(&self) -> &[u8] {
        &self.trailers
    }

    /// Decodes `input`, pushing the ranges of body data into `out`. Returns
    /// how many bytes were consumed: all of them, unless the body ended
    /// before the end of `input` (the rest belongs to the next message).
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<Piece>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if let State::Data { left } = self.state {
                let take =
                    usize::try_from(left).map_or(input.len() - i, |l| l.min(input.len() - i));
                out.push(Piece::Data(i..i + take));
                i += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                continue;
            }
            if self.state == State::Done {
                return Ok(i);
            }
            self.byte(input[i])?;
            i += 1;
        }
        Ok(i)
    }

    /// One byte outside chunk data.
    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match self.state {
            State::Size | State::Ext(_) | State::SizeLf => self.size_line(b)?,
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size,
            State::DataCr | State::DataLf => {
                return Err(ChunkError("chunk data not followed by CRLF"));
            }
            State::Trailer => {
                self.trailer_len += 1;
                if self.trailer_len > MAX_TRAILERS {
                    return Err(ChunkError("trailer section too large"));
                }
                match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkError("bare LF in the trailer section")),
                    b => {
                        self.line.push(b);
                        State::Trailer
                    }
                }
            }
            State::TrailerLf if b == b'\n' => {
                self.trailer_len += 1;
                if self.line.is_empty() {
                    State::Done
                } else {
                    self.trailer_field()?;
                    State::Trailer
                }
            }
            State::TrailerLf => return Err(ChunkError("CR without LF in the trailer section")),
            State::Data { .. } | State::Done => unreachable!("handled by feed"),
        };
        Ok(())
    }

    /// One byte of a chunk-size line: the size, its extensions, its CRLF.
    fn size_line(&mut self, b: u8) -> Result<State, ChunkError> {
        self.line_len += 1;
        if self.line_len > MAX_LINE {
            return Err(ChunkError("chunk size line too long"));
        }
        let ws = b == b' ' || b == b'\t';
        let next = match self.state {
            State::Size => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(digit))
                        .filter(|s| *s <= MAX_SIZE)
                        .ok_or(ChunkError("chunk size too large"))?;
                    self.digits += 1;
                    State::Size
                }
                _ if self.digits == 0 => return Err(ChunkError("chunk size missing")),
                b'\r' => State::SizeLf,
                b';' => State::Ext(Ext::BeforeName),
                _ if ws => State::Ext(Ext::BeforeSemicolon),
                _ => return Err(ChunkError("invalid chunk size")),
            },
            State::Ext(ext) => State::Ext(match (ext, b) {
                (Ext::BeforeSemicolon | Ext::BeforeName | Ext::AfterName | Ext::BeforeValue, _)
                    if ws =>
                {
                    ext
                }
                (
                    Ext::BeforeSemicolon
                    | Ext::Name
                    | Ext::AfterName
                    | Ext::Token
                    | Ext::AfterQuoted,
                    b';',
                ) => Ext::BeforeName,
                (Ext::Name | Ext::Token | Ext::AfterQuoted, b'\r') => return Ok(State::SizeLf),
                (Ext::Name, _) if ws => Ext::AfterName,
                (Ext::Token | Ext::AfterQuoted, _) if ws => Ext::BeforeSemicolon,
                (Ext::BeforeName | Ext::Name, _) if is_tchar(b) => Ext::Name,
                (Ext::Name | Ext::AfterName, b'=') => Ext::BeforeValue,
                (Ext::BeforeValue, b'"') => Ext::Quoted,
                (Ext::BeforeValue | Ext::Token, _) if is_tchar(b) => Ext::Token,
                (Ext::Quoted, b'"') => Ext::AfterQuoted,
                (Ext::Quoted, b'\\') => Ext::QuotedEscape,
                (Ext::Quoted, _) if is_qdtext(b) => Ext::Quoted,
                (Ext::QuotedEscape, _) if is_qdtext(b) || b == b'"' || b == b'\\' => Ext::Quoted,
                _ => return Err(ChunkError("invalid chunk extension")),
            }),
            State::SizeLf if b == b'\n' => {
                let size = std::mem::take(&mut self.size);
                self.digits = 0;
                self.line_len = 0;
                return Ok(if size == 0 {
                    State::Trailer
                } else {
                    State::Data { left: size }
                });
            }
            _ => return Err(ChunkError("chunk size line not ended by CRLF")),
        };
        Ok(next)
    }

    /// Checks the trailer line in `line` as a field line and keeps it for
    /// the next hop unless it is one of [`NOT_FORWARDED`].
    fn trailer_field(&mut self) -> Result<(), ChunkError> {
        let line = std::mem::take(&mut self.line);
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(ChunkError("trailer line without a colon"))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ChunkError("invalid trailer field name"));
        }
        let value = value.trim_ascii();
        if !value
            .iter()
            .all(|&b| b == b' ' || b == b'\t' || b >= 0x21 && b != 0x7f)
        {
            return Err(ChunkError("invalid trailer field value"));
        }
        let lower = name.to_ascii_lowercase();
        let dropped = NOT_FORWARDED.iter().any(|n| n.as_bytes() == lower);
        if !dropped {
            self.trailers.extend_from_slice(&lower);
            self.trailers.extend_from_slice(b": ");
            self.trailers.extend_from_slice(value);
            self.trailers.extend_from_slice(b"\r\n");
        }
        self.line = line;
        self.line.clear();
        Ok(())
    }
}

/// Writes one chunk's size line (`{len:x}\r\n`) into `out`.
pub(crate) fn size_line(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// `token` characters (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `qdtext` (RFC 9110 §5.6.4): what a quoted string holds unescaped.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff)
}

#[cfg(test)]
mod tests;
