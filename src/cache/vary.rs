//! `Vary` (RFC 9110 section 12.5.5, RFC 9111 section 4.1): which stored variant of a URL a
//! request may be served. The variant is a hash of the request's values of the fields the
//! stored response names, so lookups compare one hash instead of field lists. Values are
//! normalized first, so requests that mean the same share a variant.

use pingora::cache::key::HashBinary;
use pingora::cache::{CacheMeta, VarianceBuilder};
use pingora::http::RequestHeader;

/// The variance of `req` for the stored response `meta`; None when it does not vary.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut fields: Vec<String> = meta
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
        .collect();
    if fields.is_empty() {
        return None;
    }
    // Field names are case-insensitive and their order in Vary carries no meaning.
    fields.sort_unstable();
    fields.dedup();
    let mut variance = VarianceBuilder::new();
    for f in &fields {
        let value = normalized(f, req);
        variance.add_owned_name_value(f.clone(), value.into_bytes());
    }
    variance.finalize()
}

/// A request's value of one varying field, in the form that matches what means the same: the
/// field lines joined as one list with whitespace around elements removed; for
/// `Accept-Encoding` and `Accept-Language`, whose elements are case-insensitive and whose
/// order carries no meaning (weights say the preference), lowercased and sorted too. So
/// `gzip, br` and `br,gzip` share a variant, and `en-US` and `en-us` do.
fn normalized(field: &str, req: &RequestHeader) -> String {
    let mut elements: Vec<String> = req
        .headers
        .get_all(field)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .flat_map(|v| {
            v.split(',')
                .map(|e| {
                    // No whitespace inside an element matters either (`br;q=1` = `br; q=1`).
                    e.split(';').map(str::trim).collect::<Vec<_>>().join(";")
                })
                .collect::<Vec<_>>()
        })
        .filter(|e| !e.is_empty())
        .collect();
    if field == "accept-encoding" || field == "accept-language" {
        for e in &mut elements {
            e.make_ascii_lowercase();
        }
        elements.sort_unstable();
        elements.dedup();
    }
    elements.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn equivalent_values_share_a_variant() {
        let n = |h: &[(&str, &str)], f| normalized(f, &req(h));
        let ae = "accept-encoding";
        assert_eq!(
            n(&[("accept-encoding", "gzip, br")], ae),
            n(&[("accept-encoding", "br,gzip")], ae)
        );
        assert_eq!(
            n(
                &[("accept-encoding", "gzip"), ("accept-encoding", "BR")],
                ae
            ),
            n(&[("accept-encoding", "br, gzip")], ae)
        );
        assert_eq!(
            n(&[("accept-language", "en-US, fr;q=0.5")], "accept-language"),
            n(&[("accept-language", "fr; q=0.5,en-us")], "accept-language")
        );
        // Other fields: whitespace only; case and order may mean something.
        assert_eq!(
            n(&[("x-device", "phone , tablet")], "x-device"),
            n(&[("x-device", "phone,tablet")], "x-device")
        );
        assert_ne!(
            n(&[("x-device", "Phone")], "x-device"),
            n(&[("x-device", "phone")], "x-device")
        );
        assert_ne!(
            n(&[("accept-encoding", "gzip")], ae),
            n(&[("accept-encoding", "br")], ae)
        );
    }
}
