//! Response heads: the status line, a cached `Date`, the handler's fields
//! and the framing and connection fields this engine owns. No I/O.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, StatusCode};

/// What the connection does after this response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Persist {
    /// HTTP/1.1 default: nothing to say.
    KeepAlive,
    /// An HTTP/1.0 client asked to keep the connection: confirm it.
    KeepAlive10,
    /// `Connection: close`.
    Close,
}

impl Persist {
    /// What to say for a request of `version` whose connection is kept or
    /// not.
    pub(crate) fn new(keep: bool, version: http::Version) -> Self {
        match (keep, version) {
            (false, _) => Self::Close,
            (true, http::Version::HTTP_10) => Self::KeepAlive10,
            (true, _) => Self::KeepAlive,
        }
    }
}

/// Whether a response to this request with this status carries a body.
pub(crate) fn has_body(is_head: bool, status: StatusCode) -> bool {
    !is_head
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

/// Appends a response head to `out`. `body_len` becomes `Content-Length`
/// unless the handler set one, or the status forbids it (1xx, 204, and 304,
/// which may only repeat the length the handler knows).
pub(crate) fn encode(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body_len: u64,
    persist: Persist,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(&date());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let forbids_length = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if !forbids_length && !headers.contains_key(CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa_buf(body_len).as_slice());
        out.extend_from_slice(b"\r\n");
    }
    match persist {
        Persist::KeepAlive => {}
        Persist::KeepAlive10 => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Persist::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n` on the stack.
pub(crate) fn digits(n: u64) -> Digits {
    itoa_buf(n)
}

fn itoa_buf(mut n: u64) -> Digits {
    let mut digits = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        digits.start -= 1;
        digits.buf[digits.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return digits;
        }
    }
}

pub(crate) struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// An IMF-fixdate, as `Date` carries it.
type HttpDate = [u8; 29];

thread_local! {
    /// The second last formatted and its text: formatted once a second per
    /// worker, not once per response.
    static DATE: Cell<(u64, HttpDate)> = const { Cell::new((u64::MAX, [0; 29])) };
}

/// The current time as an HTTP date, cached per second.
pub(crate) fn date() -> HttpDate {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let (at, text) = cached.get();
        if at == secs {
            return text;
        }
        let mut fresh = [0; 29];
        let formatted = httpdate::fmt_http_date(now);
        if let Some(dst) = fresh.get_mut(..formatted.len()) {
            dst.copy_from_slice(formatted.as_bytes());
        }
        cached.set((secs, fresh));
        fresh
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn encoded(status: StatusCode, headers: &HeaderMap, len: u64, persist: Persist) -> String {
        let mut out = Vec::new();
        encode(&mut out, status, headers, len, persist);
        String::from_utf8(out).expect("ASCII head")
    }

    #[test]
    fn length_comes_from_the_body_unless_the_handler_set_it() {
        let text = encoded(StatusCode::OK, &HeaderMap::new(), 1234, Persist::KeepAlive);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ndate: "), "{text}");
        assert!(text.ends_with("\r\ncontent-length: 1234\r\n\r\n"), "{text}");

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(5_000_000_000u64));
        let text = encoded(StatusCode::OK, &headers, 0, Persist::Close);
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
        assert!(text.contains("content-length: 5000000000\r\n"), "{text}");
        assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");
    }

    #[test]
    fn no_length_where_the_status_forbids_a_body() {
        for status in [StatusCode::NOT_MODIFIED, StatusCode::NO_CONTENT] {
            let text = encoded(status, &HeaderMap::new(), 0, Persist::KeepAlive10);
            assert!(!text.contains("content-length"), "{text}");
            assert!(text.ends_with("connection: keep-alive\r\n\r\n"), "{text}");
        }
        assert!(!has_body(false, StatusCode::NOT_MODIFIED));
        assert!(!has_body(true, StatusCode::OK));
        assert!(has_body(false, StatusCode::NOT_FOUND));
    }

    #[test]
    fn zero_and_large_lengths_are_written_in_decimal() {
        assert_eq!(itoa_buf(0).as_slice(), b"0");
        assert_eq!(itoa_buf(u64::MAX).as_slice(), b"18446744073709551615");
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let date = date();
        let text = std::str::from_utf8(&date).expect("ASCII");
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
        assert!(text.ends_with(" GMT"), "{text}");
    }
}
