//! An operator's purge: what it names (a URL, a URL prefix, a tag) and how (hard: removed;
//! soft: marked stale), as the admin API takes it and as the cluster carries it between edges,
//! and how it lands on the store. The value is kept as the operator wrote it (an absolute URL),
//! not as a cache key: each edge turns it into its own key with its own routes, so a message
//! means the same on every edge of a fleet.

use super::key::{self as cache_key, Scheme};
use super::store::{Named, PurgeMode, Store};
use crate::host::normalize_host;
use crate::origin::router::Router;

/// What a purge names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every variant of one URL.
    Url,
    /// Every object whose URL starts with this one.
    Prefix,
    /// Every object an origin tagged with it (`Surrogate-Key`, `Cache-Tag`).
    Tag,
}

impl Kind {
    /// The name in the admin API's query, in cluster messages and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Url => "url",
            Kind::Prefix => "prefix",
            Kind::Tag => "tag",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "url" => Some(Kind::Url),
            "prefix" => Some(Kind::Prefix),
            "tag" => Some(Kind::Tag),
            _ => None,
        }
    }
}

/// One purge, checked: a URL or prefix is absolute, a tag is not empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purge {
    pub kind: Kind,
    pub value: String,
    pub mode: PurgeMode,
}

const USAGE: &str = "expected ?url=<absolute URL>, ?prefix=<absolute URL prefix> or ?tag=<tag>, \
                     and &soft=1 to mark stale instead of removing";

impl Purge {
    /// Checks a purge's parts (from the admin API or a cluster message).
    pub fn new(kind: Kind, value: String, mode: PurgeMode) -> Result<Purge, String> {
        match kind {
            Kind::Url if split_url(&value).is_none() => {
                Err("url must be absolute, like https://www.example.com/a.css".into())
            }
            Kind::Prefix if split_url(&value).is_none() => {
                Err("prefix must be an absolute URL, like https://www.example.com/img/".into())
            }
            Kind::Tag if value.is_empty() => Err("tag must not be empty".into()),
            _ => Ok(Purge { kind, value, mode }),
        }
    }

    /// From the admin API's query string: one of `url=`, `prefix=`, `tag=` (percent-encoded),
    /// and `soft=1` (or `true`) for a soft purge.
    pub fn from_query(query: &str) -> Result<Purge, String> {
        let (mut named, mut mode) = (None, PurgeMode::Hard);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = query_decode(value).ok_or("bad percent-encoding")?;
            match (name, Kind::parse(name)) {
                (_, Some(kind)) if named.is_none() => named = Some((kind, value)),
                (_, Some(_)) => return Err(format!("one purge at a time; {USAGE}")),
                ("soft", None) => {
                    mode = match value.as_str() {
                        "1" | "true" | "" => PurgeMode::Soft,
                        "0" | "false" => PurgeMode::Hard,
                        _ => return Err(format!("soft={value}: expected 1 or 0")),
                    }
                }
                (other, None) => return Err(format!("unknown purge \"{other}\": {USAGE}")),
            }
        }
        let (kind, value) = named.ok_or(USAGE)?;
        Purge::new(kind, value, mode)
    }

    /// Applies it to the store; the router gives a URL its cache key's form (the route's query
    /// setting). Returns how many objects were removed or marked stale.
    pub fn apply(&self, store: &Store, router: &Router) -> usize {
        match self.kind {
            Kind::Tag => store.purge_named(Named::Tag(&self.value), self.mode),
            Kind::Url | Kind::Prefix => {
                let Some((scheme, host, target)) = split_url(&self.value) else {
                    return 0; // checked by `new`
                };
                if self.kind == Kind::Prefix {
                    let prefix = format!("{}://{host}{target}", scheme.as_str());
                    return store.purge_named(Named::Prefix(&prefix), self.mode);
                }
                let path = target.split('?').next().unwrap_or("/");
                let query = router
                    .route(&host, path)
                    .map(|r| r.cache.key.query)
                    .unwrap_or_default();
                let url = cache_key::url(scheme, &host, target, query);
                store.purge_named(Named::Url(&url), self.mode)
            }
        }
    }

    /// `hard` or `soft`, for messages, logs and metric labels.
    pub fn mode_str(&self) -> &'static str {
        match self.mode {
            PurgeMode::Hard => "hard",
            PurgeMode::Soft => "soft",
        }
    }
}

/// `%XX` and `+` decoding of one query-string value.
fn query_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `https://Host:port/path?q` -> (scheme, normalized host, `/path?q`).
fn split_url(url: &str) -> Option<(Scheme, String, &str)> {
    let (scheme, rest) = Scheme::split(url)?;
    let cut = rest.find('/').unwrap_or(rest.len());
    let (host, target) = rest.split_at(cut);
    if host.is_empty() {
        return None;
    }
    Some((
        scheme,
        normalize_host(host),
        if target.is_empty() { "/" } else { target },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_name_one_thing_and_a_mode() {
        let p = Purge::from_query("url=https%3A%2F%2FX.com%2Fa%3Fb%3D1&soft=1").unwrap();
        assert_eq!(
            (p.kind, p.value.as_str(), p.mode),
            (Kind::Url, "https://X.com/a?b=1", PurgeMode::Soft)
        );
        let p = Purge::from_query("tag=red+blue").unwrap();
        assert_eq!(
            (p.kind, p.value.as_str(), p.mode),
            (Kind::Tag, "red blue", PurgeMode::Hard)
        );
        assert_eq!(
            Purge::from_query("soft=0&prefix=http://x.com/img/")
                .unwrap()
                .kind,
            Kind::Prefix
        );
        for bad in [
            "",
            "soft=1",
            "url=/relative",
            "prefix=x.com/",
            "tag=",
            "url=http://x.com/&tag=a",
            "host=x.com",
            "tag=a&soft=maybe",
            "tag=%zz",
        ] {
            assert!(Purge::from_query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_split_into_scheme_host_and_target() {
        let (s, h, t) = split_url("https://WWW.x.com:443/a?b").unwrap();
        assert_eq!((s, h.as_str(), t), (Scheme::Https, "www.x.com", "/a?b"));
        assert_eq!(split_url("http://x.com").unwrap().2, "/");
        assert!(split_url("http:///a").is_none());
    }
}
