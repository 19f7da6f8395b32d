//! Picking a server within an origin: round robin, smooth weighted round robin, and consistent
//! hashing on the cache key.
//!
//! Consistent hashing is rendezvous (highest random weight) hashing: each (key, server) pair gets
//! a score and the best eligible server wins. When a server goes down only its keys move, and
//! they move to the server that would have been second for each key, so failover needs no ring
//! rebuild. It is O(servers) per request, which is nothing next to a network round trip at the
//! origin sizes an edge sees (tens of servers, not thousands).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Balance;

pub struct Balancer {
    mode: Balance,
    next: AtomicUsize,
    /// Weighted mode: server indexes in smooth weighted round-robin order (nginx's algorithm),
    /// so weight 3 vs 1 gives A A B A, never A A A B bursts.
    schedule: Vec<usize>,
    weights: Vec<u32>,
    /// Consistent mode: each server's address, hashed with the key.
    names: Vec<String>,
    /// Consistent mode: every weight is the same, so scores compare as plain hashes.
    equal_weights: bool,
}

/// Upper bound on the weighted schedule, so huge weights cannot make a huge table.
const MAX_SCHEDULE: u64 = 10_000;

impl Balancer {
    pub fn new(mode: Balance, servers: &[(String, u32)]) -> Self {
        let weights: Vec<u32> = servers.iter().map(|(_, w)| (*w).max(1)).collect();
        let schedule = if mode == Balance::Weighted {
            smooth_weighted_schedule(&weights)
        } else {
            Vec::new()
        };
        let names = servers.iter().map(|(a, _)| a.clone()).collect();
        Balancer {
            mode,
            next: AtomicUsize::new(0),
            schedule,
            equal_weights: weights.windows(2).all(|w| w[0] == w[1]),
            weights,
            names,
        }
    }

    /// The server for this request among those `eligible` accepts, or None if it accepts none.
    pub fn pick(&self, key: &[u8], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.weights.len();
        match self.mode {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|i| (start + i) % n).find(|&i| eligible(i))
            }
            Balance::Weighted => {
                let len = self.schedule.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|i| self.schedule[(start + i) % len])
                    .find(|&i| eligible(i))
            }
            // Equal weights (a shield tier, most pools): the server with the highest hash, in
            // integers, so no floating-point library can make two platforms disagree.
            Balance::ConsistentHash if self.equal_weights => (0..n)
                .filter(|&i| eligible(i))
                .max_by_key(|&i| (score_hash(&self.names[i], key), std::cmp::Reverse(i))),
            Balance::ConsistentHash => {
                let mut best: Option<(f64, usize)> = None;
                for i in (0..n).filter(|&i| eligible(i)) {
                    let score = rendezvous_score(score_hash(&self.names[i], key), self.weights[i]);
                    if best.is_none_or(|(b, _)| score > b) {
                        best = Some((score, i));
                    }
                }
                best.map(|(_, i)| i)
            }
        }
    }
}

/// The (server, key) pair's hash: XXH3-64 of the server's address, a newline, and the key. A
/// specified function (see `crate::hash`), so every edge, build and platform sends a key to the
/// same server, which is what keeps the caches behind the origin (or a shield tier) warm.
fn score_hash(server: &str, key: &[u8]) -> u64 {
    crate::hash::stable64_of(&[server.as_bytes(), b"\n", key])
}

/// Weighted rendezvous score: -w / ln(u) with u uniform in (0, 1).
fn rendezvous_score(h: u64, weight: u32) -> f64 {
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight as f64) / u.ln()
}

fn smooth_weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    // Scale down proportionally if the table would be too large.
    let scale = if total > MAX_SCHEDULE {
        total as f64 / MAX_SCHEDULE as f64
    } else {
        1.0
    };
    let w: Vec<i64> = weights
        .iter()
        .map(|&x| ((x as f64 / scale).round() as i64).max(1))
        .collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, wi) in current.iter_mut().zip(&w) {
            *c += wi;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("at least one server");
        current[best] -= total;
        out.push(best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(ws: &[u32]) -> Vec<(String, u32)> {
        ws.iter()
            .enumerate()
            .map(|(i, w)| (format!("10.0.0.{i}:80"), *w))
            .collect()
    }

    #[test]
    fn round_robin_cycles_and_skips() {
        let b = Balancer::new(Balance::RoundRobin, &servers(&[1, 1, 1]));
        let picks: Vec<_> = (0..6).map(|_| b.pick(b"", |_| true).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let picks: Vec<_> = (0..4).map(|_| b.pick(b"", |i| i != 1).unwrap()).collect();
        assert!(picks.iter().all(|&i| i != 1));
        assert_eq!(b.pick(b"", |_| false), None);
    }

    #[test]
    fn weighted_is_smooth_and_proportional() {
        let s = smooth_weighted_schedule(&[3, 1]);
        assert_eq!(s, vec![0, 0, 1, 0]);
        let s = smooth_weighted_schedule(&[5, 1, 1]);
        assert_eq!(s.len(), 7);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    /// The mapping is a specified function: these were computed independently, as the highest
    /// `printf '%s\n%s' SERVER KEY | xxhsum -H3` among the servers (equal weights).
    #[test]
    fn consistent_hash_matches_fixed_vectors() {
        let servers: Vec<(String, u32)> = ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
            .iter()
            .map(|a| (a.to_string(), 1))
            .collect();
        let b = Balancer::new(Balance::ConsistentHash, &servers);
        for (key, server) in [
            ("example.com/", 0),
            ("example.com/a.css", 2),
            ("example.com/img/1.png", 0),
            ("example.com/img/2.png", 1),
            ("api.example.com/v1/items", 1),
            ("example.com/index.html", 0),
        ] {
            assert_eq!(b.pick(key.as_bytes(), |_| true), Some(server), "{key}");
        }
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_only_lost_keys() {
        let b = Balancer::new(Balance::ConsistentHash, &servers(&[1, 1, 1, 1]));
        let keys: Vec<String> = (0..2000).map(|i| format!("/obj/{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| b.pick(k.as_bytes(), |_| true).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| b.pick(k.as_bytes(), |_| true).unwrap())
            .collect();
        assert_eq!(before, again);
        for s in 0..4 {
            let n = before.iter().filter(|&&x| x == s).count();
            assert!((350..650).contains(&n), "server {s} got {n} of 2000 keys");
        }
        let after: Vec<usize> = keys
            .iter()
            .map(|k| b.pick(k.as_bytes(), |i| i != 2).unwrap())
            .collect();
        for (b4, af) in before.iter().zip(&after) {
            if *b4 != 2 {
                assert_eq!(b4, af, "a key not on the lost server moved");
            } else {
                assert_ne!(*af, 2);
            }
        }
    }

    #[test]
    fn consistent_hash_respects_weights() {
        let b = Balancer::new(Balance::ConsistentHash, &servers(&[3, 1]));
        let n0 = (0..4000)
            .filter(|i| b.pick(format!("k{i}").as_bytes(), |_| true) == Some(0))
            .count();
        assert!((2700..3300).contains(&n0), "weight 3 of 4 got {n0} of 4000");
    }
}
