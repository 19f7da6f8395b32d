//! How a response relates to the cache: the `Cache-Status` header (RFC 9211) and the label used
//! in metrics and the access log.

use std::time::SystemTime;

use pingora::cache::{CachePhase, NoCacheReason};

/// The cache's part in one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Served from cache, fresh.
    Hit,
    /// Served from cache, stale (while revalidating, or because the origin failed).
    Stale,
    /// Not in cache: fetched (and stored if `stored`). `vary`: other variants of the URL were
    /// stored, just not this one.
    Miss { stored: bool, vary: bool },
    /// Stale in cache: the origin sent a new response.
    Expired { stored: bool },
    /// Stale in cache: the origin confirmed it (304), served from cache.
    Revalidated,
    /// The request does not use the cache (route setting, method, bypass rule).
    Bypass,
    /// The URL's responses were uncacheable lately: straight to the origin, no lock.
    Pass,
    /// The client asked for a fresh response (`Cache-Control: no-cache`).
    ClientRevalidate,
    /// Answered by the edge itself (refusal, no route, error).
    #[default]
    None,
}

impl Outcome {
    /// `asked_origin`: the origin was asked for this response; `client_no_cache`: the client
    /// required a fresh response; `found_stale`: the lookup found a stale object (pingora-cache
    /// leaves the phase at `Disabled` when the refetched response cannot be stored, so only
    /// this tells an expired object from a missing one then).
    pub fn from_phase(
        phase: CachePhase,
        asked_origin: bool,
        client_no_cache: bool,
        found_stale: bool,
    ) -> Outcome {
        if client_no_cache && asked_origin {
            return Outcome::ClientRevalidate;
        }
        match phase {
            CachePhase::Hit => Outcome::Hit,
            CachePhase::Stale | CachePhase::StaleUpdating => Outcome::Stale,
            CachePhase::Miss => Outcome::Miss {
                stored: true,
                vary: false,
            },
            CachePhase::Expired => Outcome::Expired { stored: true },
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => Outcome::Revalidated,
            CachePhase::Bypass | CachePhase::Disabled(NoCacheReason::NeverEnabled) => {
                if asked_origin {
                    Outcome::Bypass
                } else {
                    Outcome::None
                }
            }
            // Enabled, then disabled: the response could not be stored.
            CachePhase::Disabled(_) if asked_origin && found_stale => {
                Outcome::Expired { stored: false }
            }
            CachePhase::Disabled(_) if asked_origin => Outcome::Miss {
                stored: false,
                vary: false,
            },
            _ => Outcome::None,
        }
    }

    /// Label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Miss { .. } => "miss",
            Outcome::Expired { .. } => "expired",
            Outcome::Revalidated => "revalidated",
            Outcome::Bypass => "bypass",
            Outcome::Pass => "pass",
            Outcome::ClientRevalidate => "request",
            Outcome::None => "none",
        }
    }

    /// This cache's `Cache-Status` entry, named `name` (see `cluster::Cluster::cache_name`);
    /// `fwd_status` is the origin's status when it was asked. `fresh_until`: of the stored
    /// response involved, if any.
    pub fn header(
        self,
        name: &str,
        fresh_until: Option<SystemTime>,
        fwd_status: Option<u16>,
    ) -> String {
        let ttl = || {
            fresh_until.map(|until| {
                let now = SystemTime::now();
                match until.duration_since(now) {
                    Ok(d) => d.as_secs() as i64,
                    Err(e) => -(e.duration().as_secs() as i64),
                }
            })
        };
        let mut s = String::from(name);
        let fwd = |s: &mut String, why: &str| {
            s.push_str("; fwd=");
            s.push_str(why);
            if let Some(st) = fwd_status {
                s.push_str(&format!("; fwd-status={st}"));
            }
        };
        match self {
            Outcome::Hit | Outcome::Stale => {
                s.push_str("; hit");
                if let Some(t) = ttl() {
                    s.push_str(&format!("; ttl={t}"));
                }
                if self == Outcome::Stale {
                    s.push_str("; fwd=stale");
                }
            }
            Outcome::Revalidated => {
                s.push_str("; hit; fwd=stale");
                if let Some(st) = fwd_status {
                    s.push_str(&format!("; fwd-status={st}"));
                }
                if let Some(t) = ttl() {
                    s.push_str(&format!("; ttl={t}"));
                }
            }
            Outcome::Miss { stored, .. } | Outcome::Expired { stored } => {
                let why = match self {
                    Outcome::Miss { vary: true, .. } => "vary-miss",
                    Outcome::Miss { .. } => "uri-miss",
                    _ => "stale",
                };
                fwd(&mut s, why);
                if stored {
                    s.push_str("; stored");
                    if let Some(t) = ttl() {
                        s.push_str(&format!("; ttl={t}"));
                    }
                }
            }
            Outcome::ClientRevalidate => fwd(&mut s, "request"),
            Outcome::Bypass => fwd(&mut s, "bypass"),
            Outcome::Pass => {
                fwd(&mut s, "uri-miss");
                s.push_str("; detail=uncacheable");
            }
            Outcome::None => s.push_str("; detail=edge-generated"),
        }
        s
    }
}

/// The `Cache-Status` list (RFC 9211 section 2): the entries of the caches the response came
/// through before this one (closest to the origin first), as it arrived or was stored, then
/// this cache's own. A shield tier's entry thus stays in front of the front edge's.
pub fn listed_after(upstream: Option<&str>, ours: String) -> String {
    match upstream.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) => format!("{u}, {ours}"),
        None => ours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_object_refetched_uncacheable_is_expired_not_missed() {
        let disabled = CachePhase::Disabled(NoCacheReason::OriginNotCache);
        let o = Outcome::from_phase(disabled, true, false, true);
        assert_eq!(o, Outcome::Expired { stored: false });
        let h = o.header("edge", None, Some(200));
        assert_eq!(h, "edge; fwd=stale; fwd-status=200");
        let o = Outcome::from_phase(disabled, true, false, false);
        assert_eq!(
            o,
            Outcome::Miss {
                stored: false,
                vary: false
            }
        );
        assert_eq!(
            o.header("edge", None, Some(200)),
            "edge; fwd=uri-miss; fwd-status=200"
        );
    }

    #[test]
    fn phases_to_outcomes() {
        let f = |p| Outcome::from_phase(p, true, false, false);
        assert_eq!(
            f(CachePhase::Miss),
            Outcome::Miss {
                stored: true,
                vary: false
            }
        );
        assert_eq!(f(CachePhase::Expired), Outcome::Expired { stored: true });
        assert_eq!(f(CachePhase::Revalidated), Outcome::Revalidated);
        assert_eq!(f(CachePhase::Bypass), Outcome::Bypass);
        assert_eq!(
            Outcome::from_phase(CachePhase::Hit, true, true, false),
            Outcome::ClientRevalidate
        );
        assert_eq!(
            Outcome::from_phase(CachePhase::Hit, false, false, false),
            Outcome::Hit
        );
        assert_eq!(
            Outcome::from_phase(
                CachePhase::Disabled(NoCacheReason::NeverEnabled),
                false,
                false,
                false
            ),
            Outcome::None
        );
    }

    #[test]
    fn cache_status_values() {
        let until = SystemTime::now() + std::time::Duration::from_secs(30);
        let h = Outcome::Hit.header("edge", Some(until), None);
        assert!(h == "edge; hit; ttl=30" || h == "edge; hit; ttl=29", "{h}");
        assert_eq!(
            Outcome::Pass.header("edge", None, Some(200)),
            "edge; fwd=uri-miss; fwd-status=200; detail=uncacheable"
        );
        assert_eq!(
            Outcome::None.header("edge", None, None),
            "edge; detail=edge-generated"
        );
        assert_eq!(Outcome::Bypass.label(), "bypass");
    }

    #[test]
    fn entries_of_caches_nearer_the_origin_come_first() {
        let ours = Outcome::Hit.header("front-1", None, None);
        assert_eq!(ours, "front-1; hit");
        assert_eq!(
            listed_after(Some("shield-2; fwd=uri-miss; stored"), ours.clone()),
            "shield-2; fwd=uri-miss; stored, front-1; hit"
        );
        assert_eq!(listed_after(Some(" "), ours.clone()), "front-1; hit");
        assert_eq!(listed_after(None, ours), "front-1; hit");
    }
}
