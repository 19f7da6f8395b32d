//! Request bodies read ahead on the client connection, before the proxy chooses an origin
//! (nginx's `proxy_request_buffering on`, up to `client.body_buffer_size`).
//!
//! Why here: Pingora sends the request header upstream first and reads the body as it streams,
//! so a body whose chunked framing breaks halfway reached the origin as a cut request. The lane
//! owns the raw bytes before Pingora does: it reads a small body whole, checks its framing, and
//! hands the request over with the body already in the buffer, which Pingora then reads as if
//! it had read it itself. A broken body is refused here (`400`) and the origin sees nothing; a
//! body larger than the buffer is checked as far as it was read and streams on from there.
//!
//! Also here: `client.max_body_size` on a `Content-Length` (`413` before any of the body is
//! read, even for bodies that stream), `client.body_timeout` between reads (`408`), and
//! `Expect: 100-continue`, answered by the edge when it reads the body itself.

use bytes::BytesMut;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use super::head::{read_some, BodyFraming, Framing, Read};
use crate::guard::{self, Limits, Refusal};

/// How reading a body ahead ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ahead {
    /// Hand the request over. `pipelined`: another request follows the whole body in the
    /// buffer.
    Ready {
        pipelined: bool,
    },
    Refused(Refusal),
    /// The client went away, or the server is shutting down.
    Closed,
}

/// Longest chunk-size line (size and extensions), as Pingora's own limit.
const SIZE_LINE_MAX: usize = 8 << 10;
/// Longest trailer section.
const TRAILERS_MAX: usize = 64 << 10;

/// Reads the body behind the head in `buf` as far as the limits say, answering an
/// `Expect: 100-continue` first when the body is to be read here.
pub(super) async fn read_ahead(
    stream: &mut Stream,
    buf: &mut BytesMut,
    framing: &Framing,
    limits: &Limits,
    shutdown: &ShutdownWatch,
) -> Ahead {
    let Some(body) = framing.body else {
        return Ahead::Ready { pipelined: false };
    };
    if let BodyFraming::Length(n) = body {
        if let Err(r) = guard::check_body_size(n, limits) {
            return Ahead::Refused(r);
        }
        if n > limits.body_buffer_size as u64 {
            return Ahead::Ready { pipelined: false }; // streams, with Expect left to the origin
        }
    }
    if limits.body_buffer_size == 0 {
        return Ahead::Ready { pipelined: false };
    }
    let mut start = framing.head_len;
    if let Some(line) = framing.expect_continue.clone() {
        // The edge reads the body, so the edge says to send it; the origin then gets the
        // request without the field (and sends no second 100).
        if buf.len() == start && continue_please(stream).await.is_err() {
            return Ahead::Closed;
        }
        buf.copy_within(line.end.., line.start);
        buf.truncate(buf.len() - line.len());
        start -= line.len();
    }
    let mut chunked = Chunked::default();
    loop {
        let data = &buf[start..];
        let done = match body {
            BodyFraming::Length(n) => (data.len() as u64 >= n).then_some(n as usize),
            BodyFraming::Chunked => match chunked.advance(data) {
                Err(()) => return Ahead::Refused(guard::BAD_BODY),
                Ok(true) => Some(chunked.pos),
                Ok(false) => None,
            },
        };
        if let Some(end) = done {
            return Ahead::Ready {
                pipelined: start + end < buf.len(),
            };
        }
        if let Err(r) = guard::check_body_size(chunked.decoded, limits) {
            return Ahead::Refused(r);
        }
        // Past the buffer (decoded, or on the wire for a body of tiny chunks): stream on.
        if chunked.decoded > limits.body_buffer_size as u64
            || data.len() > 2 * limits.body_buffer_size + SIZE_LINE_MAX
        {
            return Ahead::Ready { pipelined: false };
        }
        match read_some(stream, buf, Some(limits.body_timeout), shutdown).await {
            Read::Data => {}
            Read::TimedOut => return Ahead::Refused(guard::BODY_TIMEOUT),
            Read::Closed => return Ahead::Closed,
        }
    }
}

/// The interim answer to `Expect: 100-continue` (RFC 9110 section 10.1.1), sent at once:
/// Pingora's stream buffers writes.
async fn continue_please(stream: &mut Stream) -> std::io::Result<()> {
    stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    stream.flush().await
}

/// A strict reader of chunked framing (RFC 9112 section 7.1), resumable as bytes arrive: a
/// size of hex digits that fits 64 bits, extensions without control characters, CRLF line
/// ends (a bare LF is refused, as request smuggling through line-end disagreement uses it),
/// CRLF after each chunk's data, and a trailer section of field lines.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    /// How far the body has been read, from its first byte.
    pub pos: usize,
    /// Data bytes so far.
    pub decoded: u64,
    phase: Phase,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl Chunked {
    /// Reads on through `body` (the whole body so far, from its first byte). `Ok(true)`: the
    /// body ended, at `pos`; `Ok(false)`: more bytes are needed; `Err`: broken framing.
    pub(super) fn advance(&mut self, body: &[u8]) -> Result<bool, ()> {
        loop {
            let rest = &body[self.pos..];
            match self.phase {
                Phase::Done => return Ok(true),
                Phase::Size => {
                    let Some(line) = crlf_line(rest, SIZE_LINE_MAX)? else {
                        return Ok(false);
                    };
                    let size = chunk_size(line)?;
                    self.pos += line.len() + 2;
                    self.phase = if size == 0 {
                        Phase::Trailers
                    } else {
                        Phase::Data(size)
                    };
                }
                Phase::Data(left) => {
                    let take = left.min(rest.len() as u64);
                    self.pos += take as usize;
                    self.decoded += take;
                    if take < left {
                        self.phase = Phase::Data(left - take);
                        return Ok(false);
                    }
                    self.phase = Phase::DataEnd;
                }
                Phase::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        self.pos += 2;
                        self.phase = Phase::Size;
                    }
                    [] | [b'\r'] => return Ok(false),
                    _ => return Err(()),
                },
                Phase::Trailers => {
                    let Some(line) = crlf_line(rest, TRAILERS_MAX)? else {
                        return Ok(false);
                    };
                    self.pos += line.len() + 2;
                    if line.is_empty() {
                        self.phase = Phase::Done;
                    } else if !field_line(line) {
                        return Err(());
                    }
                }
            }
        }
    }
}

/// The line at the start of `rest` without its CRLF: None until it is complete, an error for a
/// bare LF or a line longer than `max`.
fn crlf_line(rest: &[u8], max: usize) -> Result<Option<&[u8]>, ()> {
    match rest.iter().position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && rest[lf - 1] == b'\r' && lf <= max => Ok(Some(&rest[..lf - 1])),
        Some(_) => Err(()),
        None if rest.len() > max => Err(()),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits that fit 64 bits, then nothing, or extensions
/// (`;name[=value]`, with optional blanks) free of control characters.
fn chunk_size(line: &[u8]) -> Result<u64, ()> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(());
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).ok_or(())? as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(d))
            .ok_or(())?;
    }
    let ext = &line[digits..];
    let ext_start = ext.iter().position(|&b| b != b' ' && b != b'\t');
    match ext_start {
        None => Ok(size), // blanks after the size: sloppy, not ambiguous
        Some(i) if ext[i] == b';' && ext.iter().all(|&b| b == b'\t' || !b.is_ascii_control()) => {
            Ok(size)
        }
        _ => Err(()),
    }
}

/// A trailer field line: a token name, a colon, a value without control characters.
fn field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value.iter().all(|&b| b == b'\t' || !b.is_ascii_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body read in one piece, then byte by byte: both must agree.
    fn scan(body: &[u8]) -> Result<Option<(usize, u64)>, ()> {
        let mut whole = Chunked::default();
        let at_once = whole.advance(body)?.then_some((whole.pos, whole.decoded));
        let mut dripped = Chunked::default();
        let mut ended = None;
        for n in 0..=body.len() {
            if dripped.advance(&body[..n])? {
                ended = Some((dripped.pos, dripped.decoded));
                break;
            }
        }
        assert_eq!(at_once, ended, "{body:?}");
        Ok(at_once)
    }

    #[test]
    fn well_formed_bodies_end_where_they_end() {
        let b = b"5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(scan(b), Ok(Some((b.len(), 5))));
        let b = b"A;name=\"v\"; x\r\n0123456789\r\n00\r\nTrailer-A: 1\r\n\r\nGET /";
        assert_eq!(scan(b), Ok(Some((b.len() - 5, 10))));
        assert_eq!(scan(b"5\r\nhel"), Ok(None));
        assert_eq!(scan(b"0\r\n\r"), Ok(None));
        let big = b"ffffffffffffffff\r\n";
        assert_eq!(scan(big), Ok(None), "the largest size that fits");
    }

    #[test]
    fn broken_framing_is_an_error() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..], // not hex
            b"\r\nhello\r\n0\r\n\r\n",        // no size
            b"10000000000000000\r\n",         // overflows 64 bits
            b"5\nhello\r\n0\r\n\r\n",         // bare LF after the size
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",  // LF inside an extension
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",  // CR inside an extension
            b"5 x\r\nhello\r\n0\r\n\r\n",     // junk after the size
            b"-5\r\nhello\r\n0\r\n\r\n",      // a sign
            b"5\r\nhelloXY0\r\n\r\n",         // no CRLF after the data
            b"5\r\nhello\n0\r\n\r\n",         // bare LF after the data
            b"0\r\nno colon\r\n\r\n",         // a trailer that is no field
            b"0\r\n\n",                       // bare LF ending the trailers
        ] {
            assert_eq!(scan(bad), Err(()), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("5;{}\r\n", "a".repeat(SIZE_LINE_MAX));
        assert_eq!(scan(long.as_bytes()), Err(()), "a size line past the limit");
    }
}
