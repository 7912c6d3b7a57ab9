//! The upstream's response as the direct path passes it on: the head
//! through `prepare_response`, the body through `Reframe`, both fed in
//! pieces cut where the input says. What shield writes back is read by a
//! strict decoder written here, and must hold the body that a second,
//! independent decoder reads from the upstream's bytes under the framing
//! shield chose. The head it writes must frame that body one way only.
//! The same body decoded for an h2 stream (`Reframe::plain`, the payload
//! alone) must be that body too, ending at the same byte.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shield::fuzzing::{prepare_response, BodyError, Framing, Parsed, Reframe};

/// shield's own limits (proxy/h1/body.rs): a body beyond them is refused
/// on purpose, so the reference refuses it too.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILER_FIELDS: usize = 16;

/// What the reference makes of a body.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    /// Complete: the body's bytes and how many input bytes it took.
    Whole(Vec<u8>, usize),
    /// The input ended first.
    Short,
    Malformed,
}

/// The position after the next CRLF at or after `from`, and the line
/// before it; `None` if no CRLF follows.
fn line(input: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let rest = &input[from..];
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], from + end + 2))
}

/// RFC 9112 7.1, read plainly: `1*HEXDIG [BWS ";" ext] CRLF data CRLF`,
/// then `0 [ext] CRLF`, the trailer section and its empty line. `limits`:
/// refuse what shield refuses by size alone.
fn dechunk(input: &[u8], limits: bool) -> Body {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some((size_line, next)) = line(input, at) else {
            return if limits && input.len() - at >= MAX_CHUNK_LINE {
                Body::Malformed
            } else {
                Body::Short
            };
        };
        if limits && size_line.len() + 2 > MAX_CHUNK_LINE {
            return Body::Malformed;
        }
        let digits = size_line
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits == 0 || digits > 16 {
            return Body::Malformed;
        }
        let ext = &size_line[digits..];
        let blank = |b: &u8| *b == b' ' || *b == b'\t';
        let after_space = &ext[ext.iter().take_while(|b| blank(b)).count()..];
        // An extension is text: no CR or LF inside it.
        let ext_ok = (after_space.is_empty() || after_space.starts_with(b";"))
            && !ext.iter().any(|&b| b == b'\r' || b == b'\n');
        if !ext_ok {
            return Body::Malformed;
        }
        let size =
            u64::from_str_radix(std::str::from_utf8(&size_line[..digits]).unwrap(), 16).unwrap();
        at = next;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if input.len() - at < size {
            return Body::Short;
        }
        body.extend_from_slice(&input[at..at + size]);
        at += size;
        match input.get(at..at + 2) {
            Some(b"\r\n") => at += 2,
            Some(_) => return Body::Malformed,
            None if input[at..] == *b"" || input[at..] == *b"\r" => return Body::Short,
            None => return Body::Malformed,
        }
    }
    // The trailer section is dropped by shield, so only where it ends
    // matters here: httparse reads it as it reads any field section.
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    match httparse::parse_headers(&input[at..], &mut fields) {
        Ok(httparse::Status::Complete((len, _))) => Body::Whole(body, at + len),
        Ok(httparse::Status::Partial) => Body::Short,
        Err(_) => Body::Malformed,
    }
}

/// The body under `framing` in what followed the head (`input`, all the
/// upstream sent before closing).
fn reference(framing: Framing, input: &[u8]) -> Body {
    match framing {
        Framing::Empty => Body::Whole(Vec::new(), 0),
        Framing::Length(n) => match usize::try_from(n) {
            Ok(n) if n <= input.len() => Body::Whole(input[..n].to_vec(), n),
            _ => Body::Short,
        },
        Framing::Chunked => dechunk(input, true),
        Framing::UntilClose => Body::Whole(input.to_vec(), input.len()),
    }
}

/// The fields of the head shield wrote, lowercase names.
fn written_fields(head: &[u8]) -> (u16, Vec<(String, Vec<u8>)>) {
    let mut fields = vec![httparse::EMPTY_HEADER; 128];
    let mut response = httparse::Response::new(&mut fields);
    match response.parse(head) {
        Ok(httparse::Status::Complete(len)) => assert_eq!(len, head.len(), "{head:?}"),
        other => panic!("the written head does not parse ({other:?}): {head:?}"),
    }
    assert_eq!(response.version, Some(1));
    let fields = response
        .headers
        .iter()
        .map(|f| (f.name.to_ascii_lowercase(), f.value.to_vec()))
        .collect();
    (response.code.unwrap(), fields)
}

fuzz_target!(|data: &[u8]| {
    let [flags, a, b, c, message @ ..] = data else {
        return;
    };
    let (head_request, client_close) = (flags & 1 != 0, flags & 2 != 0);
    // Pieces of these sizes in turn: every boundary can be hit.
    let sizes = [
        usize::from(*a) + 1,
        usize::from(*b) + 1,
        usize::from(*c) + 1,
    ];
    let mut pieces = Vec::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= message.len() {
            break;
        }
        let end = (at + size).min(message.len());
        pieces.push(&message[at..end]);
        at = end;
    }

    // The head, read as the direct path does: parse again after each read.
    let mut buffer = BytesMut::new();
    let mut pieces = pieces.into_iter();
    let mut offset = 0; // of `buffer` in `message`
    let mut head_out = Vec::new();
    let (framing, status, length_stated) = loop {
        match prepare_response(&buffer, head_request, client_close, &mut head_out) {
            Ok(Parsed::Partial) => {
                assert!(head_out.is_empty());
                match pieces.next() {
                    Some(piece) => buffer.extend_from_slice(piece),
                    None => return,
                }
            }
            Ok(Parsed::Informational(len)) => {
                assert!(head_out.is_empty());
                let _ = buffer.split_to(len);
                offset += len;
            }
            Ok(Parsed::Final {
                len,
                status,
                framing,
                ..
            }) => {
                let upstream = &buffer[..len];
                let stated = upstream_length(upstream);
                let _ = buffer.split_to(len);
                offset += len;
                break (framing, status, stated);
            }
            Err(_) => return,
        }
    };

    // The head written: framing stated once and as chosen.
    let (code, fields) = written_fields(&head_out);
    assert_eq!(code, status);
    let count = |name: &str| fields.iter().filter(|(n, _)| n == name).count();
    let value = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert!(count("content-length") <= 1 && count("transfer-encoding") <= 1);
    assert!(
        count("content-length") + count("transfer-encoding") <= 1,
        "both Content-Length and Transfer-Encoding: {head_out:?}"
    );
    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        if hop != "connection" || !client_close {
            assert_eq!(count(hop), 0, "{hop} passed on: {head_out:?}");
        }
    }
    match framing {
        Framing::Chunked | Framing::UntilClose => {
            assert_eq!(value("transfer-encoding").as_deref(), Some(&b"chunked"[..]));
        }
        Framing::Length(n) => {
            assert_eq!(value("content-length"), Some(n.to_string().into_bytes()));
        }
        Framing::Empty => {
            assert_eq!(count("transfer-encoding"), 0);
            match (status, length_stated) {
                (204, _) | (_, None) => assert_eq!(count("content-length"), 0),
                (_, Some(n)) => {
                    assert_eq!(value("content-length"), Some(n.to_string().into_bytes()))
                }
            }
        }
    }

    // The body, fed in the remaining pieces, then the upstream closes.
    let pieces: Vec<&[u8]> = pieces.collect();
    let (plain_result, plain_out, plain_left) =
        fed(Reframe::plain(framing), buffer.clone(), &pieces);
    let (result, out, left) = fed(Reframe::new(framing), buffer, &pieces);
    let rest = &message[offset..];
    match (&plain_result, &result) {
        (Ok(true), Ok(true)) | (Err(_), Err(_)) => {}
        _ => panic!("h2: {plain_result:?}, HTTP/1.1: {result:?}, input {rest:?}"),
    }
    let expected = reference(framing, rest);
    match (&result, &expected) {
        (Ok(true), Body::Whole(want, used)) => {
            let written = match framing {
                Framing::Chunked | Framing::UntilClose => match dechunk(&out, false) {
                    Body::Whole(got, len) => {
                        assert_eq!(len, out.len(), "bytes after the last chunk: {out:?}");
                        assert!(strict_chunks(&out), "not plain chunks: {out:?}");
                        got
                    }
                    other => panic!("shield wrote a broken chunked body ({other:?}): {out:?}"),
                },
                _ => out.clone(),
            };
            assert_eq!(&written, want, "input {rest:?}");
            assert_eq!(&plain_out, want, "h2, input {rest:?}");
            if framing != Framing::UntilClose {
                // What followed the body is left in the buffer (or unread).
                assert_eq!(rest.len() - used, left, "input {rest:?}");
                assert_eq!(plain_left, left, "h2, input {rest:?}");
            }
        }
        (Err(_), Body::Short | Body::Malformed) => {}
        _ => panic!("shield: {result:?}, reference: {expected:?}, input {rest:?}"),
    }
});

/// `body` fed what is buffered, then `pieces` one by one, then the
/// upstream's close: whether it ended, what it wrote, and how many bytes
/// were left after it (buffered or not fed).
fn fed(
    mut body: Reframe,
    mut buffer: BytesMut,
    pieces: &[&[u8]],
) -> (Result<bool, BodyError>, Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut pieces = pieces.iter();
    let mut result = body.feed(&mut buffer, &mut out);
    while let Ok(false) = result {
        match pieces.next() {
            Some(piece) => {
                buffer.extend_from_slice(piece);
                result = body.feed(&mut buffer, &mut out);
            }
            None => {
                result = body.end(&mut out).map(|()| true);
                break;
            }
        }
    }
    let left = buffer.len() + pieces.map(|p| p.len()).sum::<usize>();
    (result, out, left)
}

/// The `Content-Length` the upstream's head states (valid by now: shield
/// refused anything else).
fn upstream_length(head: &[u8]) -> Option<u64> {
    let mut fields = vec![httparse::EMPTY_HEADER; 128];
    let mut response = httparse::Response::new(&mut fields);
    response.parse(head).ok()?;
    response
        .headers
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("content-length"))
        .and_then(|f| std::str::from_utf8(f.value).ok()?.trim().parse().ok())
}

/// Chunks as shield writes them: lowercase hex size without extensions,
/// never an empty chunk before the last, no trailer fields.
fn strict_chunks(out: &[u8]) -> bool {
    let mut at = 0;
    loop {
        let Some((size_line, next)) = line(out, at) else {
            return false;
        };
        if size_line.is_empty()
            || !size_line
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            || (size_line.len() > 1 && size_line[0] == b'0')
        {
            return false;
        }
        let size = usize::from_str_radix(std::str::from_utf8(size_line).unwrap(), 16).unwrap();
        at = next + size + 2;
        if size == 0 {
            return &out[next..] == b"\r\n";
        }
    }
}
