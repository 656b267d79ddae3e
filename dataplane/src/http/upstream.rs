//! A backend's HTTP/1.1 response head, pure: parsed in place in the read
//! buffer, its fields copied to the client's head in the same pass when
//! nothing needs to look at them, or made into a map when something does.

use std::io;
use std::mem::MaybeUninit;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::head::MAX_HEADERS;
use super::response;

/// How the upstream response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes.
    Close,
}

/// A parsed upstream response head: what the proxy decides on. The fields
/// stay in the read buffer and are copied from there to the client, or
/// made into a map when something must look at them ([`fields`]).
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    /// Bytes of the head at the start of the read buffer.
    pub(crate) len: usize,
    pub(crate) keep_alive: bool,
    pub(crate) framing: ResponseFraming,
    /// `Content-Length`, when the backend sent one.
    pub(crate) length: Option<u64>,
    /// An `X-Sendfile` or `X-Accel-Redirect` field is present.
    pub(crate) handoff: bool,
    /// The status line and fields were copied to the client's head.
    pub(crate) copied: bool,
    /// A `Date` was among the copied fields.
    pub(crate) has_date: bool,
}

/// Parses a response head at the start of `buf`, or `None` when
/// incomplete. Fields are checked (httparse refuses bad names and control
/// bytes in values) but left where they are.
///
/// With `copy_to`, the status line and the fields the client gets (all but
/// hop-by-hop ones, those `Connection` names, and framing, which the proxy
/// writes itself) are written there in the same pass.
pub(crate) fn parse_response(
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
        ResponseFraming::None
    } else if chunked {
        ResponseFraming::Chunked
    } else if let Some(n) = length {
        ResponseFraming::Length(n)
    } else {
        ResponseFraming::Close
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
pub(crate) fn fields(head: &[u8]) -> io::Result<HeaderMap> {
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

pub(crate) fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
