//! Keep-alive that never races the origin.
//!
//! An origin closes idle connections on its own schedule, mostly without saying so. A request
//! sent on a pooled connection just as the origin closes it is lost; for a POST nobody may
//! retry it. So for every server we learn its idle timeout and close pooled connections a
//! safety margin before it:
//!
//! - from `Keep-Alive: timeout=N` when the origin sends it;
//! - by measurement: a probe connection sends one request, then waits idle and times when the
//!   server closes it (repeated periodically, so a changed origin is noticed);
//! - from experience: a pooled connection found closed on reuse lowers the learned value to the
//!   idle age it had.
//!
//! The margin is sized from measurements (see [`IdleLearning::margin`]): the round trip, the
//! origin's timer spread across probes, our own timer granularity and the scheduling delay seen
//! on this process. The effective idle limit is the lower of the configured `idle_timeout` and
//! the learned timeout minus the margin: learning can only shorten what the operator
//! configured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::now_ms;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NONE: u64 = u64::MAX;

/// What has been learned about one server; survives reloads with the server.
pub struct IdleLearning {
    /// From the origin's `Keep-Alive: timeout=`, in ms.
    header_ms: AtomicU64,
    /// From the last probe round: the earliest close among its samples, in ms.
    measured_ms: AtomicU64,
    /// How much the probe samples spread, within the last round and against the round
    /// before, in ms: the origin's timer slack.
    jitter_ms: AtomicU64,
    /// The earliest close of the round before the last, in ms: rounds are compared.
    previous_round_ms: AtomicU64,
    /// Extra margin until probe rounds agree, in ms: a tenth of the timeout after the first
    /// round, halved by each round that agrees with the one before, widened at once when a
    /// pooled connection is found closed.
    caution_ms: AtomicU64,
    /// The shortest idle age at which a pooled connection was found closed, in ms, and when
    /// (ms since start); it caps what probes say for `FOUND_CLOSED_MEMORY`.
    found_closed_ms: AtomicU64,
    found_closed_at_ms: AtomicU64,
    /// Running estimate of the smallest time to first byte, in µs.
    rtt_us: AtomicU64,
    /// When the next probe is due, in ms since the process started (0: now).
    next_probe_ms: AtomicU64,
}

/// How often a server's idle timeout is measured again (origins get reconfigured).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(300);

/// Probe connections per measurement; the earliest close counts, the spread is the slack.
pub const PROBE_SAMPLES: usize = 3;

/// How long a connection found closed early keeps capping the learned value (then probes
/// alone decide again, so a lengthened origin timeout is noticed).
const FOUND_CLOSED_MEMORY: Duration = Duration::from_secs(600);

impl Default for IdleLearning {
    fn default() -> Self {
        IdleLearning {
            header_ms: AtomicU64::new(NONE),
            measured_ms: AtomicU64::new(NONE),
            rtt_us: AtomicU64::new(NONE),
            next_probe_ms: AtomicU64::new(0),
            jitter_ms: AtomicU64::new(0),
            previous_round_ms: AtomicU64::new(NONE),
            caution_ms: AtomicU64::new(0),
            found_closed_ms: AtomicU64::new(NONE),
            found_closed_at_ms: AtomicU64::new(0),
        }
    }
}

fn get(a: &AtomicU64) -> Option<u64> {
    Some(a.load(Ordering::Relaxed)).filter(|&v| v != NONE)
}

impl IdleLearning {
    /// The server's idle timeout as learned, if anything was: the lowest of what the header
    /// said, what the last probes measured, and (recently) what a closed connection showed.
    pub fn learned(&self) -> Option<Duration> {
        let found = get(&self.found_closed_ms).filter(|_| {
            now_ms().saturating_sub(self.found_closed_at_ms.load(Ordering::Relaxed))
                < FOUND_CLOSED_MEMORY.as_millis() as u64
        });
        [get(&self.header_ms), get(&self.measured_ms), found]
            .into_iter()
            .flatten()
            .min()
            .map(Duration::from_millis)
    }

    /// Whether a probe is due now; if so, the next one is scheduled (one prober at a time).
    pub fn take_probe_turn(&self) -> bool {
        let now = now_ms();
        let due = self.next_probe_ms.load(Ordering::Relaxed);
        due <= now
            && self
                .next_probe_ms
                .compare_exchange(
                    due,
                    now + PROBE_INTERVAL.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Measure again soon (a pooled connection was found closed: the origin may have changed).
    pub fn request_probe(&self) {
        self.next_probe_ms.store(0, Ordering::Relaxed);
    }

    pub fn header_said(&self, timeout: Duration) {
        self.header_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// A probe round measured these close times (`None`: a connection stayed open past the
    /// probe's limit).
    pub fn probe_measured(&self, samples: &[Option<Duration>]) {
        let closed: Vec<u64> = samples
            .iter()
            .flatten()
            .map(|t| t.as_millis() as u64)
            .collect();
        let Some((&lo, &hi)) = closed.iter().min().zip(closed.iter().max()) else {
            self.measured_ms.store(NONE, Ordering::Relaxed);
            self.previous_round_ms.store(NONE, Ordering::Relaxed);
            self.jitter_ms.store(0, Ordering::Relaxed);
            self.caution_ms.store(0, Ordering::Relaxed);
            return;
        };
        let previous = get(&self.previous_round_ms);
        self.previous_round_ms.store(lo, Ordering::Relaxed);
        // The earliest close of the last two rounds: samples taken at one moment share its
        // load, and a busy origin's timers fire late together.
        let earliest = previous.map_or(lo, |p| p.min(lo));
        self.measured_ms.store(earliest, Ordering::Relaxed);
        let apart = previous.map_or(0, |p| p.abs_diff(lo));
        self.jitter_ms
            .store((hi - lo).max(apart), Ordering::Relaxed);
        let caution = self.caution_ms.load(Ordering::Relaxed);
        // Rounds agree when no further apart than a round's own spread, or than 2 ms plus half
        // the round trip: a probe's close is timed across the path, whose jitter (seen as
        // 3 ms on a busy machine behind a 10 ms relay) would otherwise keep the caution for ever.
        let path_jitter = get(&self.rtt_us).map_or(0, |us| us / 2000);
        let caution = match previous {
            Some(_) if apart <= (hi - lo).max(2 + path_jitter) => caution / 2,
            _ => caution.max(earliest / 10),
        };
        self.caution_ms.store(caution, Ordering::Relaxed);
        // While caution stands, the next round follows soon (after twice the timeout and a
        // second), so it is earned back in seconds, not in hours of 5-minute rounds.
        if caution > 2 {
            let soon = now_ms() + 2 * earliest + 1000;
            self.next_probe_ms.fetch_min(soon, Ordering::Relaxed);
        }
    }

    /// A pooled connection was found closed after being idle for `age`: the timeout is at
    /// most that, whatever probes say, for a while.
    pub fn found_closed_at(&self, age: Duration) {
        let age = age.as_millis() as u64;
        let prev = get(&self.found_closed_ms).filter(|_| {
            now_ms().saturating_sub(self.found_closed_at_ms.load(Ordering::Relaxed))
                < FOUND_CLOSED_MEMORY.as_millis() as u64
        });
        self.found_closed_ms
            .store(prev.map_or(age, |p| p.min(age)), Ordering::Relaxed);
        self.found_closed_at_ms.store(now_ms(), Ordering::Relaxed);
        // Widen at once; probe rounds that agree earn it back.
        let _ = self
            .caution_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some((2 * c).max(age / 10))
            });
    }

    /// Feeds a time to first byte; the estimate follows the minimum and creeps up 1/64 per
    /// sample when larger ones keep coming (a slower path is noticed within ~100 requests).
    pub fn ttfb(&self, t: Duration) {
        let sample = t.as_micros() as u64;
        let _ = self
            .rtt_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == NONE {
                    sample
                } else {
                    sample.min(old + old / 64 + 1)
                })
            });
    }

    /// The margin kept before a learned timeout, from what was measured, each term for a
    /// reason:
    /// - one round trip (the smallest recent time to first byte, an upper bound of it): the
    ///   origin's idle clock starts at its last byte, ours half a round trip later when that
    ///   byte arrives, and our request takes another half to reach it, so the origin has been
    ///   idle a round trip longer than we count;
    /// - the origin's timer slack: how far apart the probe samples closed;
    /// - our own timers: 2 ms (millisecond clocks) plus how late this process's timers fire
    ///   now (`sched`), by which a request leaves after its idle check and a probe sees a
    ///   close after it happened;
    /// - caution until the evidence is consistent: a tenth of the timeout after the first
    ///   probe round, halved by each later round that agrees with the one before (they follow
    ///   each other quickly while it stands), widened at once when a pooled connection is found
    ///   closed, which also caps the learned timeout at its idle age for a while.
    ///
    /// A fixed tenth of the timeout, as this margin once was (100 ms for a 1 s origin), cost
    /// every request whose gap fell in it a new connection and its handshake, where the
    /// evidence supports a few tens of milliseconds (bench/keepalive.sh, BENCHMARKS.md).
    pub fn margin(&self, override_margin: Option<Duration>, sched: Duration) -> Duration {
        override_margin.unwrap_or_else(|| {
            let rtt = get(&self.rtt_us).map_or(Duration::ZERO, Duration::from_micros);
            let spread = Duration::from_millis(self.jitter_ms.load(Ordering::Relaxed));
            let caution = Duration::from_millis(self.caution_ms.load(Ordering::Relaxed));
            rtt + spread + caution + Duration::from_millis(2) + sched
        })
    }

    /// How long a pooled connection to this server may stay idle.
    pub fn effective_idle(
        &self,
        configured: Duration,
        learn: bool,
        margin: Option<Duration>,
        sched: Duration,
    ) -> Duration {
        if !learn {
            return configured;
        }
        match self.learned() {
            Some(t) => configured.min(t.saturating_sub(self.margin(margin, sched))),
            None => configured,
        }
    }
}

/// `Keep-Alive: timeout=5, max=100` -> (timeout, max).
pub fn parse_keep_alive(v: &str) -> (Option<Duration>, Option<u32>) {
    let (mut timeout, mut max) = (None, None);
    for part in v.split(',') {
        let Some((k, val)) = part.split_once('=') else {
            continue;
        };
        let val = val.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "timeout" => timeout = val.parse::<u64>().ok().map(Duration::from_secs),
            "max" => max = val.parse().ok(),
            _ => {}
        }
    }
    (timeout, max)
}

/// Measures a server's idle timeout: sends `HEAD path`, then waits up to `limit` for the
/// server to close the idle connection. `Ok(None)`: it stayed open (no timeout below `limit`).
pub async fn probe_idle_timeout(
    addr: std::net::SocketAddr,
    tls: Option<(&std::sync::Arc<pingora::tls::ClientConfig>, &str)>,
    host: &str,
    path: &str,
    limit: Duration,
) -> Result<Option<Duration>, String> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        crate::tls::upstream::connect(addr, tls),
    )
    .await
    .map_err(|_| "connect timed out".to_string())??;
    let req =
        format!("HEAD {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edge-keepalive-probe\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    // Read the response header (HEAD: no body).
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_header = async {
        loop {
            let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed before answering".to_string());
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(());
            }
            if head.len() > 64 << 10 {
                return Err("response header too large".to_string());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_header)
        .await
        .map_err(|_| "no answer within 10s".to_string())??;
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if text.contains("\r\nconnection: close") {
        return Err("the server closes after every response".to_string());
    }
    let idle_since = std::time::Instant::now();
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Err(_) => Ok(None),
        Ok(Ok(0)) | Ok(Err(_)) => Ok(Some(idle_since.elapsed())),
        Ok(Ok(_)) => Err("unexpected data on an idle connection".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_header() {
        assert_eq!(
            parse_keep_alive("timeout=5, max=100"),
            (Some(Duration::from_secs(5)), Some(100))
        );
        assert_eq!(parse_keep_alive("max=3"), (None, Some(3)));
        assert_eq!(parse_keep_alive("bogus"), (None, None));
    }

    #[test]
    fn learned_value_only_shortens_the_configured_one() {
        let l = IdleLearning::default();
        let configured = Duration::from_secs(55);
        let calm = Duration::ZERO;
        assert_eq!(l.effective_idle(configured, true, None, calm), configured);
        l.ttfb(Duration::from_millis(10));
        l.header_said(Duration::from_secs(5));
        // An announced timeout needs no caution: the 10 ms round trip + 2 ms.
        assert_eq!(
            l.effective_idle(configured, true, None, calm),
            Duration::from_millis(5000 - 12)
        );
        // A first probe round: its 4 ms spread, and a tenth of the timeout as caution.
        l.probe_measured(&[
            Some(Duration::from_millis(1000)),
            Some(Duration::from_millis(1004)),
        ]);
        assert_eq!(
            l.effective_idle(configured, true, None, calm),
            Duration::from_millis(1000 - (10 + 4 + 100 + 2))
        );
        assert_eq!(
            l.effective_idle(configured, true, None, Duration::from_millis(7)),
            Duration::from_millis(1000 - (10 + 4 + 100 + 2 + 7)),
            "how late this process's timers fire joins the margin"
        );
        // Rounds that agree halve the caution, each.
        for caution in [50, 25, 12, 6, 3, 1, 0] {
            l.probe_measured(&[
                Some(Duration::from_millis(1000)),
                Some(Duration::from_millis(1002)),
            ]);
            assert_eq!(
                l.effective_idle(configured, true, None, calm),
                Duration::from_millis(1000 - (10 + 2 + caution + 2))
            );
        }
        l.found_closed_at(Duration::from_millis(800));
        assert_eq!(l.learned(), Some(Duration::from_millis(800)));
        assert_eq!(
            l.effective_idle(configured, true, None, calm),
            Duration::from_millis(800 - (10 + 2 + 80 + 2)),
            "a connection found closed widens the margin at once"
        );
        assert_eq!(
            l.effective_idle(Duration::from_millis(100), true, None, calm),
            Duration::from_millis(100),
            "never longer than configured"
        );
        assert_eq!(l.effective_idle(configured, false, None, calm), configured);
        assert_eq!(
            l.effective_idle(configured, true, Some(Duration::from_millis(300)), calm),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn probes_take_the_earliest_close_and_their_spread_widens_the_margin() {
        let l = IdleLearning::default();
        let calm = Duration::ZERO;
        l.probe_measured(&[
            Some(Duration::from_millis(320)),
            Some(Duration::from_millis(300)),
            None,
        ]);
        assert_eq!(l.learned(), Some(Duration::from_millis(300)));
        assert_eq!(l.margin(None, calm), Duration::from_millis(20 + 30 + 2));
        // A later round that closes later: the earlier round still counts, and the rounds'
        // distance is spread too.
        l.probe_measured(&[Some(Duration::from_millis(340))]);
        assert_eq!(l.learned(), Some(Duration::from_millis(300)));
        assert_eq!(l.margin(None, calm), Duration::from_millis(40 + 30 + 2));
        l.found_closed_at(Duration::from_millis(290));
        l.probe_measured(&[Some(Duration::from_millis(310))]);
        assert_eq!(
            l.learned(),
            Some(Duration::from_millis(290)),
            "a failure caps later probes"
        );
        l.probe_measured(&[None, None]);
        assert_eq!(l.learned(), Some(Duration::from_millis(290)));
    }

    #[test]
    fn rounds_apart_by_the_path_jitter_still_agree() {
        let l = IdleLearning::default();
        let calm = Duration::ZERO;
        l.ttfb(Duration::from_millis(10));
        let round = |ms| l.probe_measured(&[Some(Duration::from_millis(ms))]);
        round(500);
        assert_eq!(l.margin(None, calm), Duration::from_millis(10 + 50 + 2));
        // 3 ms apart: within 2 ms + half the 10 ms round trip, so the caution halves.
        round(497);
        assert_eq!(l.margin(None, calm), Duration::from_millis(10 + 3 + 25 + 2));
        // 20 ms apart: a changed origin, not jitter; the caution is a tenth again.
        round(517);
        assert_eq!(
            l.margin(None, calm),
            Duration::from_millis(10 + 20 + 49 + 2)
        );
    }

    #[test]
    fn rtt_tracks_the_minimum_and_creeps_up() {
        let l = IdleLearning::default();
        let calm = Duration::ZERO;
        l.ttfb(Duration::from_millis(10));
        l.ttfb(Duration::from_millis(2));
        assert_eq!(l.margin(None, calm), Duration::from_millis(4));
        for _ in 0..200 {
            l.ttfb(Duration::from_millis(20));
        }
        assert!(l.margin(None, calm) > Duration::from_millis(15));
    }
}
