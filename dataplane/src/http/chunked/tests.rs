//! The chunked decoder against RFC 9112 §7.1: what it accepts, in any
//! split, and every deviation it refuses.

use super::*;

/// Decodes `wire` fed in pieces cut at `split`: body, trailers for the next
/// hop, and how many bytes after the body were left unconsumed.
fn decode_split(wire: &[u8], split: usize) -> Result<(Vec<u8>, Vec<u8>, usize), ChunkError> {
    let mut decoder = Decoder::default();
    let mut body = Vec::new();
    let mut rest = 0;
    for part in [&wire[..split], &wire[split..]] {
        let mut pieces = Vec::new();
        let used = decoder.feed(part, &mut pieces)?;
        for Piece::Data(range) in pieces {
            body.extend_from_slice(&part[range]);
        }
        rest += part.len() - used;
    }
    if !decoder.is_done() {
        return Err(ChunkError("not finished"));
    }
    Ok((body, decoder.trailers().to_vec(), rest))
}

fn decode(wire: &[u8]) -> Result<(Vec<u8>, Vec<u8>, usize), ChunkError> {
    decode_split(wire, wire.len())
}

#[test]
fn valid_bodies_decode_whatever_the_split_and_stop_at_their_end() {
    let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: a\r\n\r\nNEXT";
    for split in 0..=wire.len() {
        let (body, trailers, rest) = decode_split(wire, split).expect("valid");
        assert_eq!(body, b"hello world", "split at {split}");
        assert_eq!(trailers, b"x-trailer: a\r\n", "split at {split}");
        assert_eq!(rest, 4, "split at {split}");
    }
}

#[test]
fn every_form_the_grammar_allows_is_read() {
    for (wire, body) in [
        (&b"A\r\n0123456789\r\n0\r\n\r\n"[..], &b"0123456789"[..]),
        (b"000a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"3;a\r\nabc\r\n0\r\n\r\n", b"abc"),
        (b"3;a=b;c\r\nabc\r\n0\r\n\r\n", b"abc"),
        (b"3 ; a = b ;c=\"q \\\" ;\"\r\nabc\r\n0\r\n\r\n", b"abc"),
        (b"3\t;\ta\r\nabc\r\n0;last=1\r\n\r\n", b"abc"),
        (b"0\r\n\r\n", b""),
    ] {
        assert_eq!(
            decode(wire).map(|d| d.0),
            Ok(body.to_vec()),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }
}

#[test]
fn every_deviation_is_refused() {
    for (wire, why) in [
        // Size lines.
        (&b"\r\n"[..], "no size"),
        (b"x\r\nhello\r\n0\r\n\r\n", "not hex"),
        (b"-5\r\nhello\r\n0\r\n\r\n", "a sign"),
        (b"0x5\r\nhello\r\n0\r\n\r\n", "a 0x prefix"),
        (b"fffffffffffffffffff\r\n", "an overflowing size"),
        (b"1\r0\r\n", "a CR inside the size line (not read as 0x10)"),
        (b"5\nhello\r\n0\r\n\r\n", "a bare LF ending the size line"),
        (b"5\r\rhello\r\n0\r\n\r\n", "CR CR"),
        (
            b"5 \r\nhello\r\n0\r\n\r\n",
            "whitespace without an extension",
        ),
        // Extensions.
        (b"5;\r\nhello\r\n0\r\n\r\n", "an empty extension name"),
        (b"5;=x\r\nhello\r\n0\r\n\r\n", "a value without a name"),
        (b"5;a=\r\nhello\r\n0\r\n\r\n", "an empty value"),
        (b"5;a b\r\nhello\r\n0\r\n\r\n", "a name with a space in it"),
        (b"5;a=\"x\r\nhello\r\n0\r\n\r\n", "an unclosed quote"),
        (
            b"5;a=\"x\"y\r\nhello\r\n0\r\n\r\n",
            "text after a quoted value",
        ),
        (b"5;a@b\r\nhello\r\n0\r\n\r\n", "a separator in the name"),
        (
            b"5;a=b\rc\r\nhello\r\n0\r\n\r\n",
            "a CR inside an extension",
        ),
        (b"5;a=b\nhello\r\n0\r\n\r\n", "a bare LF after an extension"),
        (
            b"5;a=\x01\r\nhello\r\n0\r\n\r\n",
            "a control byte in a value",
        ),
        // Data.
        (b"5\r\nhelloXX0\r\n\r\n", "data longer than its size"),
        (b"5\r\nhello\n0\r\n\r\n", "a bare LF after data"),
        (b"5\r\nhello\r0\r\n\r\n", "CR without LF after data"),
        // Trailer section.
        (b"0\r\n\n", "a bare LF ending the body"),
        (b"0\r\nA\n", "a bare LF ending a trailer line"),
        (b"0\r\nA\r\n\r\n", "a trailer line without a colon"),
        (
            b"0\r\nGET / HTTP/1.1\r\n\r\n",
            "a request line as a trailer",
        ),
        (b"0\r\n: v\r\n\r\n", "an empty field name"),
        (b"0\r\nA B: v\r\n\r\n", "a space in the field name"),
        (b"0\r\nA : v\r\n\r\n", "a space before the colon"),
        (b"0\r\n folded: v\r\n\r\n", "an obsolete line fold"),
        (b"0\r\nA: v\x00\r\n\r\n", "NUL in a value"),
        (b"0\r\nA: v\rw\r\n\r\n", "a CR inside a value"),
        (b"0\r\n\r\r\n", "CR CR at the end"),
    ] {
        for split in 0..=wire.len() {
            let refused = decode_split(wire, split);
            assert!(
                refused.is_err() && refused != Err(ChunkError("not finished")),
                "{why}: {:?} split at {split}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}

#[test]
fn a_request_hidden_after_a_bad_trailer_is_never_reached() {
    // `0\r\nA\n` once ended the body one byte early, and the bytes after
    // it were served as a second request.
    let wire = b"0\r\nA\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut decoder = Decoder::default();
    assert!(decoder.feed(wire, &mut Vec::new()).is_err());
    assert!(!decoder.is_done());
}

#[test]
fn a_request_inside_a_body_is_data() {
    let inner = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut wire = Vec::new();
    size_line(inner.len(), &mut wire);
    wire.extend_from_slice(inner);
    wire.extend_from_slice(b"\r\n0\r\n\r\n");
    let (body, _, rest) = decode(&wire).expect("valid");
    assert_eq!(body, inner);
    assert_eq!(rest, 0);
}

#[test]
fn trailers_pass_on_checked_and_normalised_without_framing_or_routing_fields() {
    let wire = b"0\r\nX-Checksum:  abc \r\nContent-Length: 5\r\nHost: evil\r\nTransfer-Encoding: chunked\r\nGrpc-Status: 0\r\n\r\n";
    let (_, trailers, _) = decode(wire).expect("valid");
    assert_eq!(trailers, b"x-checksum: abc\r\ngrpc-status: 0\r\n");
}

#[test]
fn size_limits_hold() {
    let mut long = b"5;".to_vec();
    long.extend(std::iter::repeat_n(b'a', MAX_LINE));
    long.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    assert!(decode(&long).is_err(), "size line over {MAX_LINE}");

    let mut big = b"0\r\n".to_vec();
    while big.len() <= MAX_TRAILERS + 3 {
        big.extend_from_slice(b"X-A: 0123456789012345678901234567890123456789\r\n");
    }
    big.extend_from_slice(b"\r\n");
    assert!(decode(&big).is_err(), "trailers over {MAX_TRAILERS}");
}

#[test]
fn size_lines_are_lower_case_hex_without_padding() {
    for (len, line) in [
        (0, &b"0\r\n"[..]),
        (1, b"1\r\n"),
        (15, b"f\r\n"),
        (16, b"10\r\n"),
        (4096, b"1000\r\n"),
        (usize::MAX, b"ffffffffffffffff\r\n"),
    ] {
        let mut out = Vec::new();
        size_line(len, &mut out);
        assert_eq!(out, line, "{len}");
    }
}
