//! Server health: active probes (HTTP GET with rise/fall thresholds) and passive marking
//! (connect failures seen by real traffic take a server out for `fail_timeout`, like nginx's
//! `max_fails`/`fail_timeout`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clock::now_ms;
use crate::config::{HealthCheck, PassiveHealth};

/// Health of one server. Starts healthy: a new server takes traffic until proven bad, as in
/// nginx and Envoy, so that a config with no health check works at once.
#[derive(Debug, Default)]
pub struct Health {
    probe_down: AtomicBool,
    probe_ok_streak: AtomicU32,
    probe_fail_streak: AtomicU32,
    connect_fail_streak: AtomicU32,
    passive_down_until_ms: AtomicU64,
}

impl Health {
    pub fn is_up(&self) -> bool {
        !self.probe_down.load(Ordering::Relaxed)
            && now_ms() >= self.passive_down_until_ms.load(Ordering::Relaxed)
    }

    /// A connect to this server failed; returns true if that took it out of rotation.
    pub fn connect_failed(&self, policy: &PassiveHealth) -> bool {
        if policy.max_fails == 0 {
            return false;
        }
        let n = self.connect_fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= policy.max_fails {
            self.connect_fail_streak.store(0, Ordering::Relaxed);
            let until = now_ms() + policy.fail_timeout.get().as_millis() as u64;
            self.passive_down_until_ms.store(until, Ordering::Relaxed);
            // Active checks may end the mark early, with `rise` passes counted from now.
            self.probe_ok_streak.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn connect_succeeded(&self) {
        if self.connect_fail_streak.load(Ordering::Relaxed) != 0 {
            self.connect_fail_streak.store(0, Ordering::Relaxed);
        }
    }

    /// Records one probe result; returns the new state when it changed. `rise` passes in a row
    /// bring a server back from either mark: the probes' own, and a passive one (a server
    /// restarted before `fall` probes failed would otherwise stay out for all of
    /// `fail_timeout` while it answers every check).
    pub fn probe_result(&self, ok: bool, hc: &HealthCheck) -> Option<bool> {
        if ok {
            self.probe_fail_streak.store(0, Ordering::Relaxed);
            let n = self.probe_ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= hc.rise {
                let passive = self.passive_down_until_ms.swap(0, Ordering::Relaxed) > now_ms();
                let probe = self.probe_down.swap(false, Ordering::Relaxed);
                if passive || probe {
                    return Some(true);
                }
            }
        } else {
            self.probe_ok_streak.store(0, Ordering::Relaxed);
            let n = self.probe_fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= hc.fall && !self.probe_down.swap(true, Ordering::Relaxed) {
                return Some(false);
            }
        }
        None
    }
}

/// One active probe: GET `path` and expect a 2xx or 3xx within `timeout`.
pub async fn probe(
    addr: std::net::SocketAddr,
    tls: Option<(&std::sync::Arc<pingora::tls::ClientConfig>, &str)>,
    host: &str,
    hc: &HealthCheck,
) -> Result<u16, String> {
    let work = async {
        let mut s = crate::tls::upstream::connect(addr, tls).await?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edge-health-check\r\nConnection: close\r\n\r\n",
            hc.path
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            let n = s
                .read(&mut buf[got..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed before a status line".to_string());
            }
            got += n;
        }
        let line = std::str::from_utf8(&buf[..got]).unwrap_or("");
        let status: u16 = line
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| "not an HTTP response".to_string())?;
        if (200..400).contains(&status) {
            Ok(status)
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(hc.timeout.get(), work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", hc.timeout)),
    }
}

/// How long the checker sleeps when nothing is due: bounds the delay of a reload's new checks.
pub const CHECKER_TICK: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    #[test]
    fn rise_and_fall() {
        let h = Health::default();
        let hc = HealthCheck {
            rise: 2,
            fall: 2,
            ..Default::default()
        };
        assert!(h.is_up());
        assert_eq!(h.probe_result(false, &hc), None);
        assert_eq!(h.probe_result(false, &hc), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.probe_result(true, &hc), None);
        assert_eq!(h.probe_result(true, &hc), Some(true));
        assert!(h.is_up());
    }

    #[test]
    fn passive_marks_down_for_a_while() {
        let h = Health::default();
        let p = PassiveHealth {
            max_fails: 2,
            fail_timeout: Dur::secs(60),
        };
        assert!(!h.connect_failed(&p));
        assert!(h.is_up());
        assert!(h.connect_failed(&p));
        assert!(!h.is_up());
        let p0 = PassiveHealth {
            max_fails: 1,
            fail_timeout: Dur::millis(0),
        };
        let h = Health::default();
        assert!(h.connect_failed(&p0));
        assert!(h.is_up(), "a zero fail_timeout never keeps a server out");
    }

    #[test]
    fn passing_probes_end_a_passive_mark() {
        let h = Health::default();
        let hc = HealthCheck {
            rise: 2,
            fall: 3,
            ..Default::default()
        };
        assert_eq!(h.probe_result(true, &hc), None);
        assert_eq!(h.probe_result(true, &hc), None, "up already");
        let p = PassiveHealth::default();
        assert!(h.connect_failed(&p));
        assert!(!h.is_up());
        // Passes from before the failure do not count.
        assert_eq!(h.probe_result(true, &hc), None);
        assert!(!h.is_up());
        assert_eq!(h.probe_result(true, &hc), Some(true));
        assert!(h.is_up());
        assert_eq!(h.probe_result(true, &hc), None);
    }
}
