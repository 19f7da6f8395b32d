//! The process's monotonic clock in milliseconds, for state kept in atomics (server health,
//! learned idle timeouts), where an `Instant` cannot be stored. One epoch for the whole process,
//! so values written by one module can be compared by another.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the clock was first read in this process.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// How late this process's timers fire, as observed: part of the keep-alive margin (see
/// `origin::keepalive`), because a request leaves later than the idle check that let it take a
/// pooled connection, and a probe sees an origin's close later than it happened, by as much as
/// the process is behind. The background loop sleeps a fixed tick and feeds how much longer it
/// slept; the value follows the worst recent lateness and forgets a one-off spike in about ten
/// seconds.
#[derive(Debug, Default)]
pub struct SchedDelay {
    worst_us: std::sync::atomic::AtomicU64,
}

impl SchedDelay {
    /// A timer set for `asked` fired after `slept`.
    pub fn observe(&self, asked: std::time::Duration, slept: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let late = slept.saturating_sub(asked).as_micros() as u64;
        // With a tick of 100 ms, 1/128 per tick forgets most of a one-off spike in about ten
        // seconds (a third is left after 12.8 s), while lateness that lasts is seen again on
        // every tick. A minute's memory (1/512) let one hiccup of 30 ms widen every idle margin
        // by tens of ms for over a minute, costing connections (tests/keepalive_margin.rs).
        let _ = self
            .worst_us
            .fetch_update(Relaxed, Relaxed, |old| Some(late.max(old - old / 128)));
    }

    pub fn get(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.worst_us.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lateness_follows_the_worst_and_fades() {
        let s = SchedDelay::default();
        let tick = Duration::from_millis(100);
        s.observe(tick, tick + Duration::from_millis(8));
        s.observe(tick, tick + Duration::from_millis(1));
        assert!(s.get() > Duration::from_micros(7900), "{:?}", s.get());
        for _ in 0..600 {
            s.observe(tick, tick);
        }
        assert!(s.get() < Duration::from_millis(3), "{:?}", s.get());
    }
}
