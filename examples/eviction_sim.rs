//! Hit ratio of Pingora's sharded LRU vs TinyUFO (S3-FIFO + TinyLFU) on synthetic CDN traces:
//! the measurement behind the cache's eviction choice (src/cache/eviction.rs).
//!
//!     cargo run --release --example eviction_sim
//!
//! Zipf popularity over 100k objects of 1 KiB to 256 KiB (heavy-tailed, fixed per object),
//! 1M requests, optionally 30% one-hit wonders (a new object each), caches holding 1% and 10%
//! of the objects' total size. Deterministic (fixed seed).

use pingora_lru::Lru;
use tinyufo::TinyUfo;

/// xorshift64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf sampling by inverse CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for i in 1..=n {
            acc += 1.0 / (i as f64).powf(s);
            cdf.push(acc);
        }
        for c in cdf.iter_mut() {
            *c /= acc;
        }
        Zipf { cdf }
    }
    fn sample(&self, r: &mut Rng) -> u64 {
        let u = r.unit();
        self.cdf.partition_point(|&c| c < u) as u64
    }
}

/// 1 KiB .. 256 KiB, stable per object.
fn size_of(key: u64) -> usize {
    let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    1024 << (h % 9)
}

/// (request hit ratio, byte hit ratio)
fn lru(trace: &[u64], cap: usize) -> (f64, f64) {
    let lru: Lru<(), 16> = Lru::with_capacity(cap, 1024);
    let (mut hits, mut hit_bytes, mut all_bytes) = (0usize, 0usize, 0usize);
    for &k in trace {
        let sz = size_of(k);
        all_bytes += sz;
        if lru.peek(k) {
            lru.promote(k);
            hits += 1;
            hit_bytes += sz;
        } else {
            lru.admit(k, (), sz);
            lru.evict_to_limit();
        }
    }
    (
        hits as f64 / trace.len() as f64,
        hit_bytes as f64 / all_bytes as f64,
    )
}

fn tinyufo(trace: &[u64], cap: usize) -> (f64, f64) {
    // Weights in KiB, as src/cache/eviction.rs counts them.
    let ufo: TinyUfo<u64, ()> = TinyUfo::new(cap / 1024, 10_000);
    let (mut hits, mut hit_bytes, mut all_bytes) = (0usize, 0usize, 0usize);
    for &k in trace {
        let sz = size_of(k);
        all_bytes += sz;
        if ufo.get(&k).is_some() {
            hits += 1;
            hit_bytes += sz;
        } else {
            ufo.put(k, (), (sz / 1024).max(1) as u16);
        }
    }
    (
        hits as f64 / trace.len() as f64,
        hit_bytes as f64 / all_bytes as f64,
    )
}

fn main() {
    let (n, requests) = (100_000usize, 1_000_000usize);
    let total: usize = (0..n as u64).map(size_of).sum();
    println!("workload                                  cache   LRU req/bytes   TinyUFO req/bytes");
    for (s, one_hit) in [(0.8, 0.0), (1.0, 0.0), (0.8, 0.3), (1.0, 0.3)] {
        let zipf = Zipf::new(n, s);
        let mut rng = Rng(42);
        let mut fresh = 10_000_000u64;
        let trace: Vec<u64> = (0..requests)
            .map(|_| {
                if rng.unit() < one_hit {
                    fresh += 1;
                    fresh
                } else {
                    zipf.sample(&mut rng)
                }
            })
            .collect();
        for frac in [0.01, 0.1] {
            let cap = (total as f64 * frac) as usize;
            let (l, u) = (lru(&trace, cap), tinyufo(&trace, cap));
            println!(
                "zipf s={s:<3} one-hit wonders {:>3.0}%          {:>3.0}%   {:.3} / {:.3}     {:.3} / {:.3}",
                one_hit * 100.0,
                frac * 100.0,
                l.0,
                l.1,
                u.0,
                u.1
            );
        }
    }
}
