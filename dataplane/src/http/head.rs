//! Request heads: parsing and the framing rules of RFC 9112, with no I/O.
//!
//! [`parse`] looks for a complete head at the start of the read buffer. The
//! head is split off and frozen, and the request's target and header values
//! are slices of it: no copy, and no allocation beyond the header map.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

/// Most header fields in one request; more get 431.
pub(crate) const MAX_HEADERS: usize = 100;

/// A parsed request head and what it says about the connection.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) request: Request<()>,
    pub(crate) framing: Framing,
    /// The client allows the connection to stay open after the response.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue`: the client may hold its body back.
    pub(crate) expect_continue: bool,
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Why a head is refused; the connection closes after the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("request head larger than the limit")]
    TooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("HTTP version not supported")]
    Version,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// A transfer coding other than `chunked` (RFC 9112 §6.1: 501).
    #[error("transfer coding not implemented")]
    UnknownCoding,
}

impl HeadError {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::TooLarge | Self::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// Offsets and lengths of one header field within the head (a head is
/// far smaller than 4 GiB).
#[derive(Clone, Copy, Default)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete, read
/// more. On success the head's bytes are removed from `buf`; whatever
/// follows (body, pipelined requests) stays.
pub(crate) fn parse(buf: &mut BytesMut, max_size: usize) -> Result<Option<Head>, HeadError> {
    let mut fields = [Field::default(); MAX_HEADERS];
    let (len, method, target, minor, count) = {
        // Left uninitialised: httparse writes only the headers it finds.
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            (start as u32, s.len() as u32)
        };
        let len = match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) if len <= max_size => len,
            Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) if buf.len() >= max_size => {
                return Err(HeadError::TooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
            Err(httparse::Error::Version) => return Err(HeadError::Version),
            Err(_) => return Err(HeadError::Malformed("invalid request head")),
        };
        let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
            return Err(HeadError::Malformed("incomplete request line"));
        };
        for (field, header) in fields.iter_mut().zip(req.headers.iter()) {
            *field = Field {
                name: offset(header.name.as_bytes()),
                value: offset(header.value),
            };
        }
        (
            len,
            offset(method.as_bytes()),
            offset(path.as_bytes()),
            minor,
            req.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    build(&head, method, target, minor, &fields[..count]).map(Some)
}

fn slice(head: &Bytes, (start, len): (u32, u32)) -> Bytes {
    let start = start as usize;
    head.slice(Range {
        start,
        end: start + len as usize,
    })
}

fn build(
    head: &Bytes,
    method: (u32, u32),
    target: (u32, u32),
    minor: u8,
    fields: &[Field],
) -> Result<Head, HeadError> {
    let method = Method::from_bytes(&slice(head, method))
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let uri = Uri::from_maybe_shared(slice(head, target))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };

    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut codings = Codings::default();
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for field in fields {
        let name = HeaderName::from_bytes(&slice(head, field.name))
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(slice(head, field.value))
            .map_err(|_| HeadError::Malformed("invalid header value"))?;
        if name == HOST {
            hosts += 1;
        } else if name == CONTENT_LENGTH {
            for item in value.as_bytes().split(|&b| b == b',') {
                let n = content_length(item)?;
                if length.is_some_and(|seen| seen != n) {
                    return Err(HeadError::Malformed("conflicting Content-Length values"));
                }
                length = Some(n);
            }
        } else if name == TRANSFER_ENCODING {
            // Every field line adds codings, in order.
            let mut empty = true;
            for token in tokens(value.as_bytes()) {
                codings.add(token);
                empty = false;
            }
            if empty {
                return Err(HeadError::Malformed("empty Transfer-Encoding"));
            }
        } else if name == CONNECTION {
            for token in tokens(value.as_bytes()) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }

    if version == Version::HTTP_11 && hosts != 1 {
        return Err(HeadError::Malformed(
            "an HTTP/1.1 request needs exactly one Host",
        ));
    }
    let chunked = codings.framing()?;
    let framing = match (chunked, length) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        (Some(_), None) if version == Version::HTTP_10 => {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (Some(_), None) => Framing::Chunked,
        (None, Some(0) | None) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
    };
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Head {
        request,
        framing,
        keep_alive,
        expect_continue,
    })
}

/// One `Content-Length` value: digits only, no sign, no overflow.
/// The transfer codings of a request, as RFC 9112 §6.1 and §7 judge them.
#[derive(Debug, Default)]
struct Codings {
    seen: bool,
    chunked: u32,
    last_chunked: bool,
    other: bool,
}

impl Codings {
    fn add(&mut self, token: &[u8]) {
        self.seen = true;
        self.last_chunked = token.eq_ignore_ascii_case(b"chunked");
        if self.last_chunked {
            self.chunked += 1;
        } else {
            self.other = true;
        }
    }

    /// `Some(())` for a chunked body, `None` without Transfer-Encoding.
    /// Chunked must come last and once; any coding before it is one Pier
    /// does not decode (gzip, deflate, compress, or unknown), so 501 rather
    /// than passing a body whose coding was silently dropped.
    fn framing(&self) -> Result<Option<()>, HeadError> {
        if !self.seen {
            return Ok(None);
        }
        if !self.last_chunked {
            return Err(HeadError::Malformed(
                "chunked is not the final transfer coding",
            ));
        }
        if self.chunked > 1 {
            return Err(HeadError::Malformed("chunked applied more than once"));
        }
        if self.other {
            return Err(HeadError::UnknownCoding);
        }
        Ok(Some(()))
    }
}

fn content_length(item: &[u8]) -> Result<u64, HeadError> {
    let item = item.trim_ascii();
    if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Malformed("invalid Content-Length"));
    }
    std::str::from_utf8(item)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(HeadError::Malformed("invalid Content-Length"))
}

/// The comma-separated tokens of a list header, trimmed, empties skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests;
