//! Broken origins cannot hurt clients or the cache: an origin that sends half a response and
//! stalls ends the client's response at the read timeout (the bytes it got, then a closed
//! connection) and leaves nothing stored; a server killed under load costs at most the requests
//! it had in flight (a fast 502), and takes traffic again as soon as a health check sees it back;
//! an origin that never answers gives 504s at the read timeout, with the edge's memory flat.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn half_a_response_then_a_stall_is_cut_and_not_stored() {
    let o = Origin::start("o");
    let body = "y".repeat(100_000);
    let mut half = Canned::new(200, &[("Cache-Control", "max-age=60")], &body);
    half.stall_after = Some(1000);
    o.set("/half", half);
    let edge = Edge::start(&format!(
        "origins:\n  web: {{servers: [\"{}\"], timeouts: {{read: 1s}}}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.write_all(b"GET /half HTTP/1.1\r\nHost: a.com\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let ended = s.read_to_end(&mut got).is_ok();
    assert!(
        ended,
        "the connection was left open: {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    let head_end = text.find("\r\n\r\n").unwrap() + 4;
    assert!(
        got.len() - head_end < body.len(),
        "the client got a complete body from a half response"
    );
    assert!(
        got.len() - head_end >= 1000,
        "the bytes the origin sent were passed on"
    );

    // Nothing was stored: the next request goes to the origin, which now answers whole.
    o.set(
        "/half",
        Canned::new(200, &[("Cache-Control", "max-age=60")], &body),
    );
    let r = edge.get("a.com", "/half");
    assert_eq!(r.body.len(), body.len());
    assert_eq!(o.count("/half"), 2);
    assert!(
        r.header("cache-status")
            .unwrap_or("")
            .contains("fwd=uri-miss"),
        "{r:?}"
    );
}

/// One request of the load in `a_server_killed_under_load_comes_back_within_a_health_interval`.
struct Outcome {
    /// When it was sent.
    sent: Instant,
    took: Duration,
    /// None: the connection closed (or the client's 10 s read timeout passed) without an answer.
    status: Option<u16>,
    server: String,
}

/// Two servers `a` and `b` of one uncached origin, health-checked every 300 ms (`rise: 1`,
/// `fall` as given), with `extra` origin keys (YAML flow style, may be empty).
fn two_checked_servers(fall: u32, extra: &str) -> (Origin, Origin, Edge) {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("\n    {extra}")
    };
    let edge = Edge::start(&format!(
        r#"
origins:
  web:
    servers: ["{}", "{}"]
    health_check: {{path: /healthz, interval: 300ms, timeout: 300ms, rise: 1, fall: {fall}}}{extra}
routes:
  - {{origin: web, cache: {{enabled: false}}}}
"#,
        a.addr, b.addr
    ));
    (a, b, edge)
}

/// A keep-alive client sending GETs for distinct paths (uncached: every one reaches an origin)
/// until `stop`, on a new connection whenever the edge closed the last one (it does after a 502).
fn load(edge: SocketAddr, id: usize, stop: &AtomicBool) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut client = None;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let c = client.get_or_insert_with(|| Client::connect(edge));
        let sent = Instant::now();
        let r = c.send_raw(&format!(
            "GET /load/{id}/{n} HTTP/1.1\r\nHost: example.com\r\n\r\n"
        ));
        let took = sent.elapsed();
        let closing = r
            .as_ref()
            .is_none_or(|r| r.header("connection") == Some("close") || r.status != 200);
        if closing {
            client = None;
        }
        outcomes.push(Outcome {
            sent,
            took,
            status: r.as_ref().map(|r| r.status),
            server: r.map_or("-".into(), |r| r.server().to_string()),
        });
    }
    outcomes
}

/// Two servers behind health checks, six keep-alive clients sending uncached GETs without a
/// pause; one server is killed (listener closed, every connection ended, requests in flight
/// included) and later restarted on its address. Every request is answered: a 200 from a live
/// server, or a fast 502 for at most the one request each client had in flight on the killed
/// server; none takes longer than the connect timeout and a margin. The restarted server gets
/// requests again within one health interval of coming back (and a margin): a passing probe
/// clears the passive mark its connect failures left, which would otherwise keep it out for
/// `fail_timeout` (10 s).
#[test]
fn a_server_killed_under_load_comes_back_within_a_health_interval() {
    const CLIENTS: usize = 6;
    const INTERVAL: Duration = Duration::from_millis(300);
    const CONNECT: Duration = Duration::from_secs(1);
    // Scheduling on a busy 2-core test machine, never a timeout of the edge's.
    const MARGIN: Duration = Duration::from_secs(1);
    let (a, b, edge) = two_checked_servers(2, "timeouts: {connect: 1s}");
    assert!(wait_until(Duration::from_secs(5), || a.health_checks()
        >= 1
        && b.health_checks() >= 1));

    let stop = AtomicBool::new(false);
    let addr = edge.addr;
    let (outcomes, killed_at, ended, restarted_at, back_after) = thread::scope(|s| {
        let loads: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let stop = &stop;
                s.spawn(move || load(addr, id, stop))
            })
            .collect();
        // Whatever fails below, the load stops and its threads end.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = StopOnDrop(&stop);

        // Both servers carry the load (the edge has pooled connections to each).
        assert!(
            wait_until(Duration::from_secs(10), || a.request_count() >= 50
                && b.request_count() >= 50),
            "no load on both servers: a {}, b {}",
            a.request_count(),
            b.request_count()
        );
        let ended = b.kill();
        let killed_at = Instant::now();
        let (a_at_kill, b_at_kill) = (a.request_count(), b.request_count());
        // The probes see it dead (fall: 2), and the load keeps running on the other server.
        let down = format!("server {} is down: health check", b.addr);
        assert!(
            wait_until(Duration::from_secs(5), || edge.log().contains(&down)),
            "the health check never took b out"
        );
        assert!(
            wait_until(Duration::from_secs(10), || a.request_count()
                >= a_at_kill + 200),
            "the load stalled with b dead: a {} -> {}",
            a_at_kill,
            a.request_count()
        );
        assert_eq!(b.request_count(), b_at_kill, "a dead server took requests");

        b.restart();
        let restarted_at = Instant::now();
        let back = wait_until(INTERVAL + MARGIN, || b.request_count() > b_at_kill);
        let back_after = restarted_at.elapsed();
        assert!(
            back,
            "b got no request within {:?} of coming back (health interval {INTERVAL:?})",
            back_after
        );
        // And keeps getting its share.
        assert!(
            wait_until(Duration::from_secs(10), || b.request_count()
                >= b_at_kill + 50),
            "b came back but gets little: {} -> {}",
            b_at_kill,
            b.request_count()
        );
        drop(_stop);
        let outcomes: Vec<Outcome> = loads
            .into_iter()
            .flat_map(|h| h.join().expect("a load thread panicked"))
            .collect();
        (outcomes, killed_at, ended, restarted_at, back_after)
    });

    // Counted by phase: before the kill (requests in flight while it happened included), while
    // b was dead, after it came back.
    let phase = |o: &Outcome| {
        if o.sent < killed_at {
            "1 before the kill"
        } else if o.sent < restarted_at {
            "2 b dead"
        } else {
            "3 b back"
        }
    };
    let mut table: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for o in &outcomes {
        let what = match o.status {
            Some(200) => format!("200 from {}", o.server),
            Some(s) => format!("{s}"),
            None => "no answer".to_string(),
        };
        *table.entry((phase(o), what)).or_default() += 1;
    }
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    println!(
        "{} requests from {CLIENTS} clients; the kill ended {ended} connections; b back after \
         {back_after:?}; slowest request {slowest:?}",
        outcomes.len()
    );
    for ((phase, what), n) in &table {
        println!("  {phase:<18} {what:<14} {n}");
    }
    // How the edge got there: retries, connect failures, connections found closed.
    for line in edge.metrics().lines().filter(|l| {
        !l.starts_with('#')
            && ["retries_total", "connect_failures_total", "lost_connection"]
                .iter()
                .any(|m| l.contains(m))
    }) {
        println!("  {line}");
    }

    let wrong: Vec<_> = outcomes
        .iter()
        .filter(|o| !matches!(o.status, Some(200) | Some(502)) || o.took > CONNECT + MARGIN)
        .map(|o| {
            format!(
                "{:?} from {} after {:?}, sent {:?} after the kill",
                o.status,
                o.server,
                o.took,
                o.sent.checked_duration_since(killed_at)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "requests not answered with a 200 or a fast 502: {wrong:#?}"
    );
    let from_the_dead = outcomes
        .iter()
        .filter(|o| phase(o) == "2 b dead" && o.server == "b")
        .count();
    assert_eq!(from_the_dead, 0, "b answered requests sent after its kill");
    // A request in flight on the killed server's new connection cannot be retried (it may have
    // reached the origin); one on a pooled connection is, and later requests skip the server.
    // So at most one 502 per client.
    let bad_gateways = outcomes.iter().filter(|o| o.status == Some(502)).count();
    assert!(
        bad_gateways <= CLIENTS,
        "{bad_gateways} 502s for {CLIENTS} clients: requests after the kill failed too"
    );
    assert!(ended >= 1, "the kill ended no connection of the edge's");
}

/// A server killed and restarted before the probes see it dead (`fall` is far off) was marked
/// down by the connect failures of requests (passive health, for `fail_timeout`: 10 s by
/// default); the first passing probe after it is back ends that mark, so it takes requests
/// again within one health interval, not ten seconds.
#[test]
fn a_quick_restart_is_back_at_the_next_passing_probe() {
    const INTERVAL: Duration = Duration::from_millis(300);
    const MARGIN: Duration = Duration::from_secs(1);
    let (_a, b, edge) = two_checked_servers(10, "");
    let mut c = edge.client();
    let mut n = 0;
    let mut get = |c: &mut Client| {
        n += 1;
        let r = c.get("example.com", &format!("/{n}"));
        assert_eq!(r.status, 200, "{r:?}");
        r
    };
    for _ in 0..4 {
        get(&mut c);
    }
    assert!(b.request_count() >= 1);
    b.kill();
    let marked = format!(
        "server {} marked down for 10s after connect failure",
        b.addr
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            assert_eq!(get(&mut c).server(), "a");
            edge.log().contains(&marked)
        }),
        "no request found b dead"
    );
    b.restart();
    let restarted = Instant::now();
    let b_before = b.request_count();
    let back = wait_until(INTERVAL + MARGIN, || {
        get(&mut c);
        b.request_count() > b_before
    });
    let took = restarted.elapsed();
    assert!(
        !edge
            .log()
            .contains(&format!("server {} is down: health check", b.addr)),
        "the probes saw b down: this test is about the passive mark alone"
    );
    assert!(back, "b got no request within {took:?} of coming back");
    println!("b back after {took:?}");
}

/// Rounds of concurrent requests to an origin that accepts and never answers: each gets a `504`
/// at `timeouts.read`, and the edge's peak memory stops growing after the first round (nothing
/// is kept per timed-out request: no connection, no buffer, no cache entry).
#[test]
fn a_silent_origin_gives_504s_at_the_read_timeout_with_memory_flat() {
    let o = Origin::start("silent");
    o.set_silent(true);
    let edge = Edge::start(&format!(
        "origins:\n  web: {{servers: [\"{}\"], timeouts: {{read: 100ms}}}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    let round = |n: usize| {
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let addr = edge.addr;
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    let mut slowest = Duration::ZERO;
                    for i in 0..n {
                        let asked = Instant::now();
                        let r = c.get("a.com", &format!("/s/{t}/{i}"));
                        slowest = slowest.max(asked.elapsed());
                        assert_eq!(r.status, 504, "{}", r.body);
                        // The 504 closes the client connection: start a new one.
                        c = Client::connect(addr);
                    }
                    slowest
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .max()
            .unwrap()
    };
    let slowest = round(10);
    let after_first = edge.peak_rss();
    for _ in 0..3 {
        let s = round(10);
        assert!(s < Duration::from_secs(2), "a 504 took {s:?}");
    }
    assert!(slowest < Duration::from_secs(2), "a 504 took {slowest:?}");
    let after_all = edge.peak_rss();
    let grown = after_all.saturating_sub(after_first);
    eprintln!(
        "peak RSS {} MiB after 160 timeouts, {} MiB after 640",
        after_first >> 20,
        after_all >> 20
    );
    assert!(
        grown < 8 << 20,
        "peak memory grew by {} KiB over 480 more timed-out requests",
        grown >> 10
    );
}
