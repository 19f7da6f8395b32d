//! `Vary` (RFC 9110 section 12.5.5, RFC 9111 section 4.1): which stored variant of a URL a
//! request may be served. The variant is a hash of the request's values of the fields the
//! stored response names, so lookups compare one hash instead of field lists.

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
        let value: Vec<u8> = req
            .headers
            .get_all(f.as_str())
            .iter()
            .flat_map(|v| v.as_bytes().iter().copied().chain(*b","))
            .collect();
        variance.add_owned_name_value(f.clone(), value);
    }
    variance.finalize()
}
