//! The lane's reading of a request head: waiting for it (bounded by the keep-alive timeout,
//! then by `client.header_timeout` for the whole head), parsing it once, and the facts about
//! its framing that the guard and Pingora's pipelining need, whatever the lane then does.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use super::MAX_FIELDS;

/// A request head as parsed once by the lane.
pub(super) struct Parsed<'h, 'b> {
    pub req: httparse::Request<'h, 'b>,
    /// Its length in bytes: what follows is a body, or another request.
    pub len: usize,
}

/// What the head says about the request's framing, known even when the lane does not parse it
/// for itself (more fields than it reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Framing {
    pub content_length: bool,
    pub transfer_encoding: bool,
    /// Bytes follow the head although it announces no body: another request (pipelining).
    pub pipelined: bool,
    /// The head's length: the body, if any, starts there.
    pub head_len: usize,
    /// The body as the head announces it, when the lane can read it ahead (see `body`).
    pub body: Option<BodyFraming>,
    /// Where the `Expect: 100-continue` field line sits in the head (HTTP/1.1 only).
    pub expect_continue: Option<std::ops::Range<usize>>,
}

/// A request body's framing, when it is one the lane reads ahead: a single valid
/// `Content-Length` above 0, or `Transfer-Encoding` ending in `chunked`. Anything else
/// (conflicting lengths, other codings) is left to Pingora's parser, which refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFraming {
    Length(u64),
    Chunked,
}

/// Parses a complete head with up to `MAX_FIELDS` fields.
pub(super) fn parse<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut [httparse::Header<'b>; MAX_FIELDS],
) -> Option<Parsed<'h, 'b>> {
    let mut req = httparse::Request::new(fields);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Some(Parsed { req, len }),
        _ => None,
    }
}

/// The framing of the head in `buf`: from `parsed` when the lane parsed it, else by a parse
/// with room for every field Pingora accepts (rare: more than `MAX_FIELDS`). A head that does
/// not parse is left to Pingora's parser, which refuses it.
pub(super) fn framing(buf: &[u8], parsed: Option<&Parsed>) -> Framing {
    if let Some(p) = parsed {
        return framing_of(buf, &p.req, p.len);
    }
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => framing_of(buf, &req, len),
        _ => Framing::default(),
    }
}

fn framing_of(buf: &[u8], req: &httparse::Request, len: usize) -> Framing {
    let (mut lengths, mut length, mut codings) = (0, None, None);
    let mut expect_continue = None;
    for f in req.headers.iter() {
        if f.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = std::str::from_utf8(f.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            // Several fields are one list: the last coding of the last field is the final one.
            codings = Some(f.value);
        } else if f.name.eq_ignore_ascii_case("expect")
            && f.value.eq_ignore_ascii_case(b"100-continue")
            && req.version == Some(1)
        {
            expect_continue = field_line(buf, f);
        }
    }
    let chunked = codings.is_some_and(|v| {
        let last = v.rsplit(|&b| b == b',').next().unwrap_or_default();
        last.trim_ascii().eq_ignore_ascii_case(b"chunked")
    });
    let body = match (lengths, length, codings.is_some()) {
        (0, _, true) if chunked => Some(BodyFraming::Chunked),
        (1, Some(n), false) if n > 0 => Some(BodyFraming::Length(n)),
        _ => None,
    };
    let (content_length, transfer_encoding) = (lengths > 0, codings.is_some());
    // What follows a head that announces no body (none, or `Content-Length: 0`) is the next
    // request.
    let bodiless = !transfer_encoding && (lengths == 0 || (lengths == 1 && length == Some(0)));
    Framing {
        content_length,
        transfer_encoding,
        pipelined: len < buf.len() && bodiless,
        head_len: len,
        body,
        expect_continue,
    }
}

/// The byte range of a field's whole line in `buf` (name to the line's end), found from where
/// the parser's slices point.
fn field_line(buf: &[u8], f: &httparse::Header) -> Option<std::ops::Range<usize>> {
    let start = (f.name.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let value_end = (f.value.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)? + f.value.len();
    let end = value_end + buf.get(value_end..)?.iter().position(|&b| b == b'\n')? + 1;
    (end <= buf.len()).then_some(start..end)
}

/// The answer to a request refused on its raw bytes; the connection is closed after it.
pub(super) fn refusal_response(r: crate::guard::Refusal) -> Vec<u8> {
    let body = format!("refused: {}\n", r.reason);
    let reason = http::StatusCode::from_u16(r.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        r.status,
        body.len()
    )
    .into_bytes()
}

/// How reading a request head ended.
pub(super) enum Head {
    /// The blank line that ends it is in the buffer.
    Complete,
    /// Larger than `client.max_header_size` and still going: the proxy refuses it (431).
    TooLarge,
    /// Not complete within `client.header_timeout` of its first byte.
    TimedOut,
    /// The client closed, or the server is shutting down.
    Closed,
}

/// Reads until the request head is complete, bounding the whole head by
/// `client.header_timeout` from its first byte, however slowly it drips (a slowloris client
/// cannot hold a connection longer than that); Pingora bounds each read, not the head.
pub(super) async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    client: &crate::config::ClientSettings,
    first_byte: Instant,
    shutdown: &ShutdownWatch,
) -> Head {
    let deadline = first_byte + client.header_timeout.get();
    loop {
        if head_complete(buf) {
            return Head::Complete;
        }
        if buf.len() as u64 > client.max_header_size.0 {
            return Head::TooLarge;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Head::TimedOut;
        }
        match read_some(stream, buf, Some(left), shutdown).await {
            Read::Data => {}
            Read::TimedOut => return Head::TimedOut,
            Read::Closed => return Head::Closed,
        }
    }
}

/// Whether `buf` holds a whole request head: the blank line (CRLF CRLF, or bare LFs, which the
/// parsers accept too). Most requests end their first read with it, so that is checked first.
pub(super) fn head_complete(buf: &[u8]) -> bool {
    buf.ends_with(b"\r\n\r\n")
        || buf.windows(4).any(|w| w == b"\r\n\r\n")
        || buf.windows(2).any(|w| w == b"\n\n")
}

/// How one read of the client connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// At least one byte arrived.
    Data,
    /// Nothing arrived within the wait.
    TimedOut,
    /// The client closed, the read failed, or the server is shutting down.
    Closed,
}

/// Reads what the client has sent (at least one byte), waiting at most `wait`. The outcome says
/// which way it ended, so that a timeout is never told from a close by the clock (Pingora's
/// timer fires on coarse ticks, possibly a little before `wait` measured by `Instant`).
pub(super) async fn read_some(
    stream: &mut Stream,
    buf: &mut BytesMut,
    wait: Option<Duration>,
    shutdown: &ShutdownWatch,
) -> Read {
    let mut shutdown = shutdown.clone();
    let stopping = async move {
        while shutdown.changed().await.is_ok() {
            if *shutdown.borrow() {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    let read = async {
        let n = match wait {
            Some(d) => match pingora::time::timeout(d, stream.read_buf(buf)).await {
                Ok(n) => n,
                Err(_) => return Read::TimedOut,
            },
            None => stream.read_buf(buf).await,
        };
        match n {
            Ok(n) if n > 0 => Read::Data,
            _ => Read::Closed,
        }
    };
    tokio::select! {
        biased;
        r = read => r,
        _ = stopping => Read::Closed,
    }
}
