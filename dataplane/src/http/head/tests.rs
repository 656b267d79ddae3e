use super::*;

fn parse_str(text: &str) -> Result<Option<Head>, HeadError> {
    parse(&mut BytesMut::from(text), 16 * 1024)
}

fn head(text: &str) -> Head {
    match parse_str(text) {
        Ok(Some(head)) => head,
        other => panic!("{text:?} did not parse: {other:?}"),
    }
}

fn refused(text: &str) -> HeadError {
    match parse_str(text) {
        Err(e) => e,
        Ok(other) => panic!("{text:?} was accepted: {other:?}"),
    }
}

#[test]
fn a_simple_get_keeps_the_connection_and_has_no_body() {
    let head = head("GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n");
    assert_eq!(head.request.method(), Method::GET);
    assert_eq!(head.request.uri().path(), "/a/b");
    assert_eq!(head.request.uri().query(), Some("c=d"));
    assert_eq!(head.request.headers()["host"], "example.com");
    assert_eq!(head.framing, Framing::None);
    assert!(head.keep_alive);
    assert!(!head.expect_continue);
}

#[test]
fn the_head_is_split_off_and_what_follows_stays() {
    let mut buf = BytesMut::from("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\n");
    let head = parse(&mut buf, 1024).ok().flatten();
    assert!(head.is_some());
    assert_eq!(&buf[..], b"GET /next HTTP/1.1\r\n");
    assert!(matches!(parse(&mut buf, 1024), Ok(None)), "partial head");
}

#[test]
fn keep_alive_follows_the_version_and_connection_tokens() {
    let cases = [
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            false,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: TE, Close\r\n\r\n",
            false,
        ),
        ("GET / HTTP/1.0\r\n\r\n", false),
        ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        (
            "GET / HTTP/1.0\r\nConnection: Keep-Alive, close\r\n\r\n",
            false,
        ),
    ];
    for (text, keep_alive) in cases {
        assert_eq!(head(text).keep_alive, keep_alive, "{text:?}");
    }
}

#[test]
fn body_framing_follows_rfc_9112() {
    let cases = [
        ("Content-Length: 5", Framing::Length(5)),
        ("Content-Length: 0", Framing::None),
        ("Content-Length: 7, 7", Framing::Length(7)),
        ("Content-Length: 7\r\nContent-Length: 7", Framing::Length(7)),
        ("Transfer-Encoding: chunked", Framing::Chunked),
        ("Transfer-Encoding: Chunked", Framing::Chunked),
    ];
    for (field, framing) in cases {
        let text = format!("POST / HTTP/1.1\r\nHost: a\r\n{field}\r\n\r\n");
        assert_eq!(head(&text).framing, framing, "{field:?}");
    }
}

#[test]
fn ambiguous_framing_is_refused() {
    let cases = [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
        "Transfer-Encoding: chunked, gzip",
        "Transfer-Encoding: identity",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
        "Transfer-Encoding: ",
        "Content-Length: 5, 6",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: -1",
        "Content-Length: +5",
        "Content-Length: 0x10",
        "Content-Length: ",
        "Content-Length: 99999999999999999999999",
    ];
    for field in cases {
        let text = format!("POST / HTTP/1.1\r\nHost: a\r\n{field}\r\n\r\n");
        assert_eq!(
            refused(&text).status(),
            StatusCode::BAD_REQUEST,
            "{field:?}"
        );
    }
    let http10_chunked = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(refused(http10_chunked).status(), StatusCode::BAD_REQUEST);
}

#[test]
fn codings_before_chunked_are_not_implemented() {
    // RFC 9112 §6.1: a coding the server does not understand gets 501;
    // dropping it would hand the backend a body it cannot read.
    for field in [
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: deflate,chunked",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: x-custom, chunked",
    ] {
        let text = format!("POST / HTTP/1.1\r\nHost: a\r\n{field}\r\n\r\n");
        assert_eq!(
            refused(&text).status(),
            StatusCode::NOT_IMPLEMENTED,
            "{field:?}"
        );
    }
}

#[test]
fn http_1_1_needs_exactly_one_host() {
    assert!(matches!(
        refused("GET / HTTP/1.1\r\n\r\n"),
        HeadError::Malformed(_)
    ));
    assert!(matches!(
        refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        HeadError::Malformed(_)
    ));
    assert!(head("GET / HTTP/1.0\r\n\r\n").request.headers().is_empty());
}

#[test]
fn malformed_heads_get_400_and_big_ones_431() {
    for text in [
        "GET\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n folded: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        "G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://[::1 HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(refused(text).status(), StatusCode::BAD_REQUEST, "{text:?}");
    }
    assert_eq!(
        refused("GET / HTTP/2.0\r\nHost: a\r\n\r\n").status(),
        StatusCode::HTTP_VERSION_NOT_SUPPORTED
    );

    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    let text = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert_eq!(refused(&text), HeadError::TooManyHeaders);

    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(200)
    );
    assert_eq!(
        parse(&mut BytesMut::from(&big[..]), 100).err(),
        Some(HeadError::TooLarge)
    );
    let partial = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "v".repeat(200));
    assert_eq!(
        parse(&mut BytesMut::from(&partial[..]), 100).err(),
        Some(HeadError::TooLarge)
    );
}

#[test]
fn expect_continue_and_leading_empty_lines() {
    let head =
        head("\r\nPUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n");
    assert!(head.expect_continue);
    assert_eq!(head.request.method(), Method::PUT);
}

#[test]
fn absolute_form_targets_keep_their_authority() {
    let head = head("GET http://example.com/x HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_eq!(head.request.uri().host(), Some("example.com"));
    assert_eq!(head.request.uri().path(), "/x");
}
