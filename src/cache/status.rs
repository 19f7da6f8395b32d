//! How a response relates to the cache: the `Cache-Status` header (RFC 9211) and the label used
//! in metrics and the access log.

use std::time::SystemTime;

use pingora::cache::{CachePhase, NoCacheReason};

/// The cache's part in one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    None,
}

impl Outcome {
    /// `asked_origin`: the origin was asked for this response; `client_no_cache`: the client
    /// required a fresh response.
    pub fn from_phase(phase: CachePhase, asked_origin: bool, client_no_cache: bool) -> Outcome {
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

    /// The `Cache-Status` value; `fwd_status` is the origin's status when it was asked.
    /// `fresh_until`: of the stored response involved, if any.
    pub fn header(self, fresh_until: Option<SystemTime>, fwd_status: Option<u16>) -> String {
        let ttl = || {
            fresh_until.map(|until| {
                let now = SystemTime::now();
                match until.duration_since(now) {
                    Ok(d) => d.as_secs() as i64,
                    Err(e) => -(e.duration().as_secs() as i64),
                }
            })
        };
        let mut s = String::from("edge");
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
