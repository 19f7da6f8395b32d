//! fleet_load: the client side of `bench/fleet.sh`. Two modes:
//!
//! - `zipf FRONTS OBJECTS REQUESTS S CONCURRENCY SEED`: requests `GET /obj/<rank>` with ranks
//!   drawn from a Zipf distribution (exponent `S`) over `OBJECTS` objects, spread in turn over
//!   the front edges (`FRONTS`: comma-separated `ip:port`), `CONCURRENCY` keep-alive
//!   connections each. Prints the count of front hits, front misses that a shield answered
//!   from its cache, and misses that reached the origin (by the `Cache-Status` entries), and
//!   time to first byte p50/p90/p99 of each kind and of all requests, in ms.
//! - `purge ADMINS PURGES`: sends `PURGES` purges to the first admin listener, one at a time,
//!   and times how long after each answer every other edge has applied it (polling their
//!   `edge_cluster_purges_applied_total`, every 0.5 ms). Prints p50/p99/max in ms.
//!
//! Plain blocking HTTP/1.1 over std: the figures are the edges', not a client library's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One response: status, headers (lowercased names), body, time to its first byte.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    ttfb: Duration,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn send(conn: &mut BufReader<TcpStream>, req: &str) -> std::io::Result<Resp> {
    let sent = Instant::now();
    conn.get_mut().write_all(req.as_bytes())?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let ttfb = sent.elapsed();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    Ok(Resp {
        status,
        headers,
        body,
        ttfb,
    })
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    BufReader::new(s)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// xorshift64*: a fixed, seeded sequence, so two runs draw the same requests.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn zipf(args: &[String]) {
    let fronts: Vec<SocketAddr> = args[0].split(',').map(|a| a.parse().unwrap()).collect();
    let (objects, requests): (usize, usize) = (args[1].parse().unwrap(), args[2].parse().unwrap());
    let (s, concurrency, seed): (f64, usize, u64) = (
        args[3].parse().unwrap(),
        args[4].parse().unwrap(),
        args[5].parse().unwrap(),
    );
    // The Zipf CDF over ranks 1..=objects; requests drawn up front, in order.
    let mut cdf = Vec::with_capacity(objects);
    let mut total = 0.0;
    for k in 1..=objects {
        total += 1.0 / (k as f64).powf(s);
        cdf.push(total);
    }
    let mut rng = Rng(seed.max(1));
    let ranks: Arc<Vec<usize>> = Arc::new(
        (0..requests)
            .map(|_| {
                let u = rng.next_f64() * total;
                cdf.partition_point(|&c| c < u) + 1
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    // Per request: where it was answered (0 front hit, 1 shield hit, 2 origin) and its TTFB.
    let results: Arc<Mutex<Vec<(usize, f64)>>> = Arc::default();
    let errors = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency * fronts.len())
        .map(|w| {
            let (ranks, next, results, errors) =
                (ranks.clone(), next.clone(), results.clone(), errors.clone());
            let addr = fronts[w % fronts.len()];
            thread::spawn(move || {
                let mut conn = connect(addr);
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(rank) = ranks.get(i) else { break };
                    let req = format!("GET /obj/{rank} HTTP/1.1\r\nHost: example.com\r\n\r\n");
                    match send(&mut conn, &req) {
                        Ok(r) if r.status == 200 && !r.body.is_empty() => {
                            let status = r.header("cache-status").unwrap_or("");
                            let entries: Vec<&str> = status.split(", ").collect();
                            let hit_at = |e: Option<&&str>| e.is_some_and(|e| e.contains("; hit"));
                            let at = if hit_at(entries.last()) {
                                0
                            } else if entries.len() > 1 && hit_at(entries.get(entries.len() - 2)) {
                                1
                            } else {
                                2
                            };
                            mine.push((at, r.ttfb.as_secs_f64() * 1000.0));
                            // The edge ends a connection after client.keepalive_requests.
                            if r.header("connection") == Some("close") {
                                conn = connect(addr);
                            }
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            conn = connect(addr);
                        }
                    }
                }
                results.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let results = results.lock().unwrap();
    let sorted = |keep: &dyn Fn(usize) -> bool| {
        let mut v: Vec<f64> = results.iter().filter(|r| keep(r.0)).map(|r| r.1).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (all, misses) = (sorted(&|_| true), sorted(&|a| a > 0));
    let (shield, origin) = (sorted(&|a| a == 1), sorted(&|a| a == 2));
    println!(
        "requests={} errors={} front_hits={} front_misses={} shield_hits={} origin={} \
         miss_ttfb_p50={:.2} miss_ttfb_p90={:.2} miss_ttfb_p99={:.2} shield_hit_ttfb_p50={:.2} \
         origin_ttfb_p50={:.2} ttfb_p50={:.2} ttfb_p99={:.2}",
        results.len(),
        errors.load(Ordering::Relaxed),
        results.len() - misses.len(),
        misses.len(),
        shield.len(),
        origin.len(),
        pct(&misses, 0.5),
        pct(&misses, 0.9),
        pct(&misses, 0.99),
        pct(&shield, 0.5),
        pct(&origin, 0.5),
        pct(&all, 0.5),
        pct(&all, 0.99)
    );
}

fn applied(conn: &mut BufReader<TcpStream>) -> f64 {
    let r = send(conn, "GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n").expect("metrics");
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix("edge_cluster_purges_applied_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn purge(args: &[String]) {
    let admins: Vec<SocketAddr> = args[0].split(',').map(|a| a.parse().unwrap()).collect();
    let purges: usize = args[1].parse().unwrap();
    let mut publisher = connect(admins[0]);
    let mut others: Vec<_> = admins[1..].iter().map(|a| connect(*a)).collect();
    let mut base: Vec<f64> = others.iter_mut().map(applied).collect();
    let mut delays = Vec::new();
    for i in 0..purges {
        let req = format!(
            "POST /purge?url=http://example.com/purged/{i} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n"
        );
        let r = send(&mut publisher, &req).expect("purge");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let answered = Instant::now();
        let mut pending: Vec<usize> = (0..others.len()).collect();
        while !pending.is_empty() {
            assert!(
                answered.elapsed() < Duration::from_secs(10),
                "purge {i} not applied in 10 s"
            );
            pending.retain(|&e| {
                if applied(&mut others[e]) > base[e] {
                    delays.push(answered.elapsed().as_secs_f64() * 1000.0);
                    base[e] += 1.0;
                    false
                } else {
                    true
                }
            });
            thread::sleep(Duration::from_micros(500));
        }
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "purges={purges} edges={} applied={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        admins.len(),
        delays.len(),
        pct(&delays, 0.5),
        pct(&delays, 0.99),
        delays.last().copied().unwrap_or(f64::NAN)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("zipf") if args.len() == 7 => zipf(&args[1..]),
        Some("purge") if args.len() == 3 => purge(&args[1..]),
        _ => {
            eprintln!(
                "usage: fleet_load zipf FRONTS OBJECTS REQUESTS S CONCURRENCY SEED\n       \
                 fleet_load purge ADMINS PURGES"
            );
            std::process::exit(2);
        }
    }
}
