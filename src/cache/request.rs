//! What a request's `Cache-Control` (and `Pragma`) ask of this cache (RFC 9111 §5.2.1), read
//! once per request, and what they make of a stored object on a hit.

use std::time::{Duration, SystemTime};

use pingora::cache::ForcedFreshness;
use pingora::http::RequestHeader;

use super::policy::stored_says;
use crate::config::CacheSettings;

/// The request directives this cache acts on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientDirectives {
    /// `no-cache`, `max-age=0`, or `Pragma: no-cache` without Cache-Control: validate with the
    /// origin before using a stored object (a browser's reload).
    pub revalidate: bool,
    /// `only-if-cached`: answer from the store or with `504`, never by asking the origin.
    pub only_if_cached: bool,
    /// `max-stale[=N]`: a stored object stale by up to N seconds is acceptable (`Some(None)`:
    /// any staleness).
    pub max_stale: Option<Option<u64>>,
    /// `min-fresh=N`: the object must stay fresh N more seconds.
    pub min_fresh: Option<u64>,
}

impl ClientDirectives {
    pub fn of(req: &RequestHeader) -> Self {
        let mut c = ClientDirectives::default();
        let mut any = false;
        for v in req.headers.get_all(http::header::CACHE_CONTROL) {
            any = true;
            let Ok(v) = v.to_str() else { continue };
            for d in v.split(',') {
                let (name, value) = match d.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (d.trim(), None),
                };
                let seconds = || value.and_then(|v| v.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-cache" => c.revalidate = true,
                    "max-age" if seconds() == Some(0) => c.revalidate = true,
                    "only-if-cached" => c.only_if_cached = true,
                    // An unreadable value is no bound at all: ignored, as a directive it is.
                    "max-stale" if value.is_none() => c.max_stale = Some(None),
                    "max-stale" => c.max_stale = seconds().map(Some).or(c.max_stale),
                    "min-fresh" => c.min_fresh = seconds().or(c.min_fresh),
                    _ => {}
                }
            }
        }
        if !any {
            c.revalidate = req
                .headers
                .get(http::header::PRAGMA)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"));
        }
        c
    }

    /// Whether the stored object's own freshness is not the whole answer: the fast fresh-hit
    /// paths leave such requests to the cache phases.
    pub fn bear_on_freshness(&self) -> bool {
        self.revalidate || self.max_stale.is_some() || self.min_fresh.is_some()
    }

    /// What these directives make of a stored object found fresh or not (`is_fresh`), fresh
    /// until `fresh_until`, at `now`:
    /// - `no-cache` revalidates a fresh object, unless it is `immutable` (RFC 8246);
    /// - `min-fresh` revalidates one fresh for less than N more seconds;
    /// - `max-stale` serves one stale by up to N seconds as it is, unless the response forbids
    ///   serving it stale (`must-revalidate`, `proxy-revalidate`, `no-cache`, `s-maxage`).
    ///
    /// None: as the object's freshness says.
    pub fn on_hit(
        &self,
        stored: &http::HeaderMap,
        settings: &CacheSettings,
        is_fresh: bool,
        fresh_until: SystemTime,
        now: SystemTime,
    ) -> Option<ForcedFreshness> {
        if is_fresh {
            if self.revalidate && !stored_says(stored, settings, "immutable") {
                return Some(ForcedFreshness::ForceExpired);
            }
            let fresh_for = fresh_until.duration_since(now).unwrap_or_default();
            let min_fresh = Duration::from_secs(self.min_fresh?);
            return (fresh_for < min_fresh).then_some(ForcedFreshness::ForceExpired);
        }
        let max_stale = self.max_stale?;
        let stale_by = now.duration_since(fresh_until).unwrap_or_default();
        let within = max_stale.is_none_or(|m| stale_by <= Duration::from_secs(m));
        let strict = [
            "must-revalidate",
            "proxy-revalidate",
            "no-cache",
            "s-maxage",
        ]
        .iter()
        .any(|d| stored_says(stored, settings, d));
        (within && !strict).then_some(ForcedFreshness::ForceFresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cc: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in cc {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn of(cc: &str) -> ClientDirectives {
        ClientDirectives::of(&req(&[("cache-control", cc)]))
    }

    #[test]
    fn directives_read_as_tokens() {
        assert!(of("no-cache").revalidate);
        assert!(of("max-age=0").revalidate);
        assert!(!of("max-age=10").revalidate);
        assert!(ClientDirectives::of(&req(&[("pragma", "no-cache")])).revalidate);
        assert!(
            !ClientDirectives::of(&req(&[
                ("pragma", "no-cache"),
                ("cache-control", "max-age=5")
            ]))
            .revalidate,
            "Pragma counts only without Cache-Control"
        );
        assert!(of("max-age=0, Only-If-Cached").only_if_cached);
        assert!(!of("x-only-if-cached-not").only_if_cached);
        assert_eq!(of("max-stale").max_stale, Some(None));
        assert_eq!(of("max-stale=60").max_stale, Some(Some(60)));
        assert_eq!(of("max-stale=soon").max_stale, None);
        assert_eq!(of("min-fresh=\"30\"").min_fresh, Some(30));
        assert!(of("max-stale").bear_on_freshness());
        assert!(!of("no-transform").bear_on_freshness());
        assert_eq!(ClientDirectives::of(&req(&[])), ClientDirectives::default());
    }

    #[test]
    fn max_stale_min_fresh_and_immutable_on_a_hit() {
        let settings = CacheSettings::default();
        let headers = |cc: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("cache-control", cc.parse().unwrap());
            h
        };
        let (plain, strict, immutable) = (
            headers("max-age=60"),
            headers("max-age=60, must-revalidate"),
            headers("max-age=60, immutable"),
        );
        let now = SystemTime::now();
        let s = Duration::from_secs;
        let fresh_60 = now + s(60);
        let stale_40 = now - s(40);
        let hit = |c: &str, stored: &http::HeaderMap, fresh: bool, until| {
            of(c).on_hit(stored, &settings, fresh, until, now)
        };
        let expired = Some(ForcedFreshness::ForceExpired);
        let fresh = Some(ForcedFreshness::ForceFresh);
        assert_eq!(hit("min-fresh=30", &plain, true, fresh_60), None);
        assert_eq!(hit("min-fresh=90", &plain, true, fresh_60), expired);
        assert_eq!(hit("max-stale=60", &plain, false, stale_40), fresh);
        assert_eq!(hit("max-stale=10", &plain, false, stale_40), None);
        assert_eq!(hit("max-stale", &plain, false, now - s(4000)), fresh);
        assert_eq!(hit("max-stale", &strict, false, stale_40), None);
        assert_eq!(hit("no-transform", &plain, false, stale_40), None);
        assert_eq!(hit("no-cache", &plain, true, fresh_60), expired);
        assert_eq!(hit("no-cache", &immutable, true, fresh_60), None);
        assert_eq!(hit("no-cache", &immutable, false, stale_40), None);
    }
}
