//! A response's caching directives (`Cache-Control`, `CDN-Cache-Control`, a targeted field),
//! parsed into pingora-cache's `CacheControl` exactly as pingora-cache parses them, without its
//! regular expression in the usual case.
//!
//! Why: every miss parses its response's `Cache-Control` once to decide whether to store it,
//! and pingora-cache's regex parse of `max-age=3600` took ~2.8 µs of the ~150 µs of CPU a miss
//! costs (perf, bench/run.sh miss1k). The usual value is a comma-separated list of `name` and
//! `name=value` tokens; that shape is read here directly. Anything else (quoted strings,
//! semicolons, stray spaces or delimiters, bytes outside visible ASCII, empty list elements)
//! goes to pingora-cache's parser, so the result is the same for every input (a test compares
//! the two on generated values).

use http::HeaderMap;
use pingora::cache::cache_control::{CacheControl, DirectiveKey, DirectiveMap, DirectiveValue};

/// The directives of every `name` field of `headers`, in order; `None` without such a field.
pub fn parse(headers: &HeaderMap, name: &str) -> Option<CacheControl> {
    let mut fields = headers.get_all(name).iter().peekable();
    fields.peek()?;
    let mut directives = DirectiveMap::new();
    for value in fields {
        if !list_of_tokens(value.as_bytes(), &mut directives) {
            return CacheControl::from_headers_named(name, headers);
        }
    }
    Some(CacheControl {
        directives,
        allow_float_seconds: false,
    })
}

/// Reads `a, b=c,d` into `out`; false (with `out` partly filled) if the value has any other
/// shape.
fn list_of_tokens(value: &[u8], out: &mut DirectiveMap) -> bool {
    // pingora-cache's expression only matches a directive at the start of the value or after
    // a delimiter: a value opening with a space reads differently there.
    if value.first().is_some_and(|b| is_ows(*b)) {
        return false;
    }
    for element in value.split(|b| *b == b',') {
        let element = trim_ows(element);
        let (name, val) = match element.iter().position(|b| *b == b'=') {
            Some(at) => (&element[..at], Some(&element[at + 1..])),
            None => (element, None),
        };
        if !is_token(name) || val.is_some_and(|v| !is_token(v)) {
            return false;
        }
        // Tokens are visible ASCII: valid UTF-8.
        let name = std::str::from_utf8(name).expect("ASCII");
        let key = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            DirectiveKey::from_lowercase_owned(name.to_ascii_lowercase())
        } else {
            DirectiveKey::from_lowercase(name)
        };
        out.insert(key, val.map(|v| DirectiveValue(v.to_vec())));
    }
    true
}

/// RFC 9110 `token`, restricted to ASCII (pingora-cache's also admits bytes above 0x7F; those
/// go to its parser).
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter().all(|&b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b'@'
                        | b','
                        | b';'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'='
                        | b'{'
                        | b'}'
                )
        })
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !is_ows(*b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(*b)).map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(values: &[&[u8]]) -> (String, String) {
        let mut headers = HeaderMap::new();
        for v in values {
            let Ok(v) = http::HeaderValue::from_bytes(v) else {
                return (String::new(), String::new());
            };
            headers.append("cache-control", v);
        }
        let ours = parse(&headers, "cache-control").map(|c| c.directives);
        let theirs =
            CacheControl::from_headers_named("cache-control", &headers).map(|c| c.directives);
        (format!("{ours:?}"), format!("{theirs:?}"))
    }

    #[test]
    fn reads_the_usual_values_as_pingora_cache_does() {
        for v in [
            &b"max-age=3600"[..],
            b"public, max-age=60",
            b"Public,MAX-AGE=60 ,  s-maxage=5",
            b"no-store",
            b"private=set-cookie, no-cache",
            b"max-age=60, max-age=5",
            b"stale-while-revalidate=30,stale-if-error=600",
            b"x-custom=abc",
            b"max-age=\"60\"",
            b"no-cache=\"set-cookie, x-a\"",
            b"max-age=60;public",
            b"max-age = 60",
            b" max-age=60",
            b"max-age=60,",
            b",max-age=60",
            b"a,,b",
            b"max-age=60=3",
            b"",
        ] {
            let (ours, theirs) = both(&[v]);
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(v));
        }
        let (ours, theirs) = both(&[b"public", b"max-age=10"]);
        assert_eq!(ours, theirs);
        assert_eq!(both(&[]), ("None".into(), "None".into()));
    }

    /// Values made of the bytes that matter to either parser, from a fixed seed: both must
    /// agree on every one.
    #[test]
    fn agrees_with_pingora_cache_on_generated_values() {
        const ALPHABET: &[u8] = b"aA-=,; \t\"0x9\\/\x7f\xc3";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let v: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let (ours, theirs) = both(&[&v]);
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&v));
        }
    }
}
