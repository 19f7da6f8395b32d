//! Partial objects: with `routes[].cache.ranges: forward`, a range request that misses is sent
//! to the origin with its `Range`, and the origin's `206` is stored as the object (one part
//! per URL). It answers later requests for ranges inside the part it holds; any other request
//! (the whole object, a range outside it, a HEAD or a conditional request) is a miss, and what
//! the origin answers then takes its place.
//!
//! Only one range of bytes is forwarded or stored: a `206` with a `Content-Range` of
//! `bytes first-last/complete-length` (a known length), never `multipart/byteranges`.

use http::header::{CONTENT_LENGTH, CONTENT_RANGE, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::header::{ETAG, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED, RANGE, TRANSFER_ENCODING};
use http::{Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::RangeType;

/// One range of bytes as a request writes it (RFC 9110 section 14.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// `bytes=first-last`
    Span(u64, u64),
    /// `bytes=first-`
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Last(u64),
}

impl Wanted {
    /// The bytes `[first, last]` of an object of `length` bytes, if any of them exist.
    fn within(self, length: u64) -> Option<(u64, u64)> {
        let (first, last) = match self {
            Wanted::Span(f, l) => (f, l.min(length.checked_sub(1)?)),
            Wanted::From(f) => (f, length.checked_sub(1)?),
            Wanted::Last(0) => return None,
            Wanted::Last(n) => (length.saturating_sub(n), length.checked_sub(1)?),
        };
        (first <= last).then_some((first, last))
    }
}

/// The one range of bytes a request asks for; None for no `Range`, several ranges, another
/// unit or anything malformed.
pub fn wanted(req: &RequestHeader) -> Option<Wanted> {
    let mut values = req.headers.get_all(RANGE).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => Some(Wanted::Last(number(last)?)),
        (false, true) => Some(Wanted::From(number(first)?)),
        (false, false) => {
            let (f, l) = (number(first)?, number(last)?);
            (f <= l).then_some(Wanted::Span(f, l))
        }
        (true, true) => None,
    }
}

/// The part a `206` holds: `first..=last` of an object of `length` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub first: u64,
    pub last: u64,
    pub length: u64,
}

/// The part a response holds, when it is a `206` this cache can store: one `Content-Range` of
/// bytes with a known complete length, and one `Content-Length` that matches it (so the stored
/// body is known to be the part, and is framed by length when served).
pub fn stored_part(resp: &ResponseHeader) -> Option<Part> {
    if resp.status != StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let mut values = resp.headers.get_all(CONTENT_RANGE).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (span, length) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let part = Part {
        first: first.trim().parse().ok()?,
        last: last.trim().parse().ok()?,
        length: length.trim().parse().ok()?,
    };
    if part.first > part.last || part.last >= part.length {
        return None;
    }
    let size = part.last - part.first + 1;
    let lengths: Vec<_> = resp.headers.get_all(CONTENT_LENGTH).iter().collect();
    match lengths[..] {
        [one] if one.to_str().ok()?.trim().parse::<u64>().ok()? == size => Some(part),
        _ => None,
    }
}

/// Whether a range request that misses is sent to the origin with its `Range`: a GET for one
/// range of bytes, without the conditions a stored partial cannot answer.
pub fn forwardable(req: &RequestHeader) -> bool {
    req.method == Method::GET && wanted(req).is_some() && !conditional(req)
}

fn conditional(req: &RequestHeader) -> bool {
    [
        IF_MATCH,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|h| req.headers.contains_key(h))
}

/// Puts the client's `Range` (and `If-Range`) back on a miss's upstream request, which
/// pingora-cache sent without them to fetch the whole object. Whether it did.
pub fn forward_range(client: &RequestHeader, upstream: &mut RequestHeader) -> bool {
    if !forwardable(client) {
        return false;
    }
    for name in [RANGE, IF_RANGE] {
        if let Some(v) = client.headers.get(&name) {
            // A value the client's request carried is a valid header value.
            let _ = upstream.insert_header(name, v.clone());
        }
    }
    true
}

/// Whether a response may not be stored as the object, whatever its freshness: a `206` unless it
/// answers a range this cache forwarded and its part can be told; and, to a forwarded range,
/// anything but the whole object (`200`) or such a part (a `416` stored for the URL would answer
/// every later request).
pub fn refused(resp: &ResponseHeader, forwarded: bool) -> bool {
    let part = resp.status == StatusCode::PARTIAL_CONTENT;
    if !forwarded {
        return part;
    }
    if part {
        stored_part(resp).is_none()
    } else {
        resp.status != StatusCode::OK
    }
}

/// The bytes of a stored part a request can be answered with, as `[first, last]` of the whole
/// object; None when the request is not a plain GET for one range inside the part, or its
/// `If-Range` does not match the part's validator (RFC 9110 section 13.1.5: the client's copy
/// is of another version, and must get the whole object).
pub fn answerable(req: &RequestHeader, stored: &ResponseHeader) -> Option<(u64, u64)> {
    locate(req, stored).map(|(_, first, last)| (first, last))
}

/// [`answerable`] with the stored part it was read from: each header parsed once.
fn locate(req: &RequestHeader, stored: &ResponseHeader) -> Option<(Part, u64, u64)> {
    let part = stored_part(stored)?;
    if req.method != Method::GET || conditional(req) || !if_range_holds(req, stored) {
        return None;
    }
    let (first, last) = wanted(req)?.within(part.length)?;
    (first >= part.first && last <= part.last).then_some((part, first, last))
}

/// Whether a stored object may answer `req` as far as being a part goes: anything but a `206`
/// may; a `206` only for a range inside it. A part still being written (`seekable` false) can
/// only be sent as it is, so only to a request for exactly that part.
pub fn may_answer(req: &RequestHeader, stored: &ResponseHeader, seekable: bool) -> bool {
    if stored.status != StatusCode::PARTIAL_CONTENT {
        return true;
    }
    let Some((part, first, last)) = locate(req, stored) else {
        return false;
    };
    seekable || (first, last) == (part.first, part.last)
}

/// No `If-Range`, or one that names the stored response: its strong entity tag, or exactly its
/// `Last-Modified` date.
fn if_range_holds(req: &RequestHeader, stored: &ResponseHeader) -> bool {
    let Some(condition) = req.headers.get(IF_RANGE) else {
        return true;
    };
    let Ok(condition) = condition.to_str() else {
        return false;
    };
    let condition = condition.trim();
    let stored_field = |name| stored.headers.get(name).and_then(|v| v.to_str().ok());
    if condition.starts_with('"') {
        return stored_field(ETAG).is_some_and(|tag| tag.trim() == condition);
    }
    if condition.starts_with("W/") {
        return false; // a weak tag never matches (strong comparison)
    }
    let date = |v: &str| httpdate::parse_http_date(v.trim()).ok();
    match (date(condition), stored_field(LAST_MODIFIED).and_then(date)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Turns a stored `206`'s header into the answer to `req` (a range inside the part, checked
/// by [`answerable`] when the object was found) and says which bytes of the stored body to
/// send. Anything else is left whole (`RangeType::None`).
pub fn answer(req: &RequestHeader, resp: &mut ResponseHeader) -> RangeType {
    let Some((part, first, last)) = locate(req, resp) else {
        return RangeType::None;
    };
    let range = format!("bytes {first}-{last}/{}", part.length);
    // Numbers and a Content-Range built from numbers are valid header values.
    let _ = resp.insert_header(CONTENT_RANGE, range);
    let _ = resp.insert_header(CONTENT_LENGTH, last - first + 1);
    // Framed by its length (a hit's header may say chunked when the body came that way).
    resp.remove_header(&TRANSFER_ENCODING);
    RangeType::Single((first - part.first) as usize..(last - part.first + 1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(range: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/v", None).unwrap();
        if let Some(v) = range {
            r.insert_header("range", v).unwrap();
        }
        r
    }

    fn resp206(content_range: &str, length: Option<&str>) -> ResponseHeader {
        let mut r = ResponseHeader::build(206, None).unwrap();
        r.insert_header("content-range", content_range).unwrap();
        if let Some(l) = length {
            r.insert_header("content-length", l).unwrap();
        }
        r
    }

    /// Bytes 100..=199 of 1000, with an entity tag and a date.
    fn stored() -> ResponseHeader {
        let mut r = resp206("bytes 100-199/1000", Some("100"));
        r.insert_header("etag", "\"v1\"").unwrap();
        r.insert_header("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")
            .unwrap();
        r
    }

    #[test]
    fn one_range_of_bytes_is_read_and_nothing_else() {
        assert_eq!(
            wanted(&req(Some("bytes=10-19"))),
            Some(Wanted::Span(10, 19))
        );
        assert_eq!(wanted(&req(Some("bytes=10-"))), Some(Wanted::From(10)));
        assert_eq!(wanted(&req(Some("bytes=-5"))), Some(Wanted::Last(5)));
        for v in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
        ] {
            assert_eq!(wanted(&req(Some(v))), None, "{v}");
        }
        assert_eq!(wanted(&req(None)), None);
    }

    #[test]
    fn a_206_is_stored_only_with_one_range_of_a_known_length_and_size() {
        let part = Part {
            first: 100,
            last: 199,
            length: 1000,
        };
        assert_eq!(
            stored_part(&resp206("bytes 100-199/1000", Some("100"))),
            Some(part)
        );
        for (cr, cl) in [
            ("bytes 100-199/1000", None),
            ("bytes 100-199/*", Some("100")),
            ("bytes 100-199/1000", Some("99")),
            ("bytes 199-100/1000", Some("100")),
            ("bytes 100-1000/1000", Some("901")),
            ("items 1-2/3", Some("2")),
        ] {
            assert_eq!(stored_part(&resp206(cr, cl)), None, "{cr} {cl:?}");
        }
        let mut ok = ResponseHeader::build(200, None).unwrap();
        ok.insert_header("content-range", "bytes 0-1/2").unwrap();
        assert_eq!(stored_part(&ok), None, "only a 206");
    }

    #[test]
    fn to_a_forwarded_range_only_the_whole_object_or_a_part_is_stored() {
        let part = resp206("bytes 100-199/1000", Some("100"));
        assert!(!refused(&part, true));
        assert!(
            refused(&part, false),
            "an origin's 206 to a request without Range"
        );
        assert!(refused(&resp206("bytes 100-199/*", None), true));
        let status = |code| ResponseHeader::build(code, None).unwrap();
        assert!(!refused(&status(200), true));
        assert!(!refused(&status(200), false));
        assert!(
            refused(&status(416), true),
            "a 416 would answer every later request"
        );
        assert!(refused(&status(404), true));
        assert!(
            !refused(&status(404), false),
            "without a forwarded range, the policy decides"
        );
    }

    #[test]
    fn ranges_inside_the_part_are_answered_from_its_offset() {
        let part = stored();
        assert_eq!(
            answerable(&req(Some("bytes=120-129")), &part),
            Some((120, 129))
        );
        assert_eq!(
            answerable(&req(Some("bytes=100-199")), &part),
            Some((100, 199))
        );
        assert_eq!(
            answerable(&req(Some("bytes=150-300")), &part),
            None,
            "past the end"
        );
        assert_eq!(
            answerable(&req(Some("bytes=150-")), &part),
            None,
            "to the object's end"
        );
        assert_eq!(
            answerable(&req(Some("bytes=-10")), &part),
            None,
            "the last bytes"
        );
        assert_eq!(answerable(&req(None), &part), None, "the whole object");
        let mut conditional = req(Some("bytes=120-129"));
        conditional.insert_header("if-none-match", "\"x\"").unwrap();
        assert_eq!(answerable(&conditional, &part), None);
        let tail = resp206("bytes 990-999/1000", Some("10"));
        assert_eq!(answerable(&req(Some("bytes=-5")), &tail), Some((995, 999)));
        assert_eq!(
            answerable(&req(Some("bytes=995-5000")), &tail),
            Some((995, 999))
        );

        let mut header = stored();
        header
            .insert_header("transfer-encoding", "chunked")
            .unwrap();
        let range = answer(&req(Some("bytes=120-129")), &mut header);
        assert_eq!(range, RangeType::Single(20..30));
        assert_eq!(header.headers["content-range"], "bytes 120-129/1000");
        assert_eq!(header.headers["content-length"], "10");
        assert!(!header.headers.contains_key("transfer-encoding"));
    }

    #[test]
    fn if_range_must_name_the_stored_part() {
        let part = stored();
        let with = |condition: &str| {
            let mut r = req(Some("bytes=120-129"));
            r.insert_header("if-range", condition).unwrap();
            answerable(&r, &part)
        };
        assert_eq!(with("\"v1\""), Some((120, 129)));
        assert_eq!(with("Tue, 01 Dec 2026 10:00:00 GMT"), Some((120, 129)));
        assert_eq!(with("\"v0\""), None, "another version: the whole object");
        assert_eq!(with("W/\"v1\""), None, "weak tags never match");
        assert_eq!(with("Mon, 30 Nov 2026 10:00:00 GMT"), None);
        assert_eq!(with("yesterday"), None);
    }

    #[test]
    fn a_part_being_written_answers_only_a_request_for_all_of_it() {
        let part = stored();
        let inside = req(Some("bytes=120-129"));
        let all = req(Some("bytes=100-199"));
        assert!(may_answer(&inside, &part, true));
        assert!(!may_answer(&inside, &part, false));
        assert!(may_answer(&all, &part, false));
        assert!(!may_answer(&req(None), &part, true));
        let unreadable = resp206("bytes 100-199/*", None);
        assert!(
            !may_answer(&all, &unreadable, true),
            "a 206 whose part cannot be told"
        );
        let whole = ResponseHeader::build(200, None).unwrap();
        assert!(may_answer(&req(None), &whole, false));
    }
}
