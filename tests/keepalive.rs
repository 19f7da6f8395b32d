//! Connection reuse toward origins and keep-alive toward clients, counted at the origin.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn web(o: &Origin, keepalive: &str) -> String {
    format!(
        "origins:\n  web:\n    servers: [\"{}\"]\n    keepalive: {{{keepalive}}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    )
}

#[test]
fn misses_ride_pooled_connections_and_metrics_match_the_origin() {
    let o = Origin::start("o");
    let edge = Edge::start(&web(&o, "idle_timeout: 30s, pool_size: 8"));
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 50;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let addr = edge.addr;
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..PER_CLIENT {
                    assert_eq!(c.get("example.com", &format!("/{w}/{i}")).status, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let total = CLIENTS * PER_CLIENT;
    assert_eq!(o.request_count(), total);
    // Concurrency never exceeded the number of clients, so neither may connections.
    assert!(
        o.accepted() <= CLIENTS,
        "origin accepted {} connections",
        o.accepted()
    );
    let new = edge.metric("edge_upstream_requests_total{connection=\"new\",origin=\"web\"}");
    let reused = edge.metric("edge_upstream_requests_total{connection=\"reused\",origin=\"web\"}");
    assert_eq!(new + reused, total as f64);
    assert_eq!(
        new,
        o.accepted() as f64,
        "new connections in metrics = accepts at the origin"
    );
    let ratio = reused / (new + reused);
    assert!(ratio >= 0.98, "reuse ratio {ratio}");
}

#[test]
fn idle_upstream_connections_close_after_idle_timeout() {
    let o = Origin::start("o");
    let edge = Edge::start(&web(&o, "idle_timeout: 400ms"));
    let t = Instant::now();
    assert_eq!(edge.get("example.com", "/").status, 200);
    assert_eq!(o.open(), 1);
    // The edge, not the origin (60 s), closes it.
    assert!(
        wait_until(Duration::from_secs(5), || o.open() == 0),
        "still open"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "closed after {:?}",
        t.elapsed()
    );
    // And the next request opens a new one.
    assert_eq!(edge.get("example.com", "/").status, 200);
    assert_eq!(o.accepted(), 2);
}

#[test]
fn idle_connections_within_timeout_are_reused() {
    let o = Origin::start("o");
    let edge = Edge::start(&web(&o, "idle_timeout: 10s"));
    // One client connection: Pingora returns an upstream connection to the pool after the
    // client has its response, so back-to-back requests from *different* clients may race that
    // return; requests on one connection cannot.
    let mut c = edge.client();
    for _ in 0..5 {
        assert_eq!(c.get("example.com", "/").status, 200);
    }
    assert_eq!(o.accepted(), 1);
}

#[test]
fn max_requests_per_upstream_connection_is_honoured() {
    let o = Origin::start("o");
    let edge = Edge::start(&web(&o, "max_requests: 3"));
    let mut c = edge.client();
    for i in 0..9 {
        assert_eq!(c.get("example.com", &format!("/{i}")).status, 200);
    }
    assert_eq!(o.accepted(), 3);
    let seen = o.requests();
    assert!(
        seen.iter().all(|s| s.nth <= 3),
        "a connection carried more than 3"
    );
    for s in &seen {
        let close = s.header("connection") == Some("close");
        assert_eq!(
            close,
            s.nth == 3,
            "request {} on conn {}: {:?}",
            s.nth,
            s.conn,
            s.headers
        );
    }
    assert_eq!(
        edge.metric(
            "edge_upstream_connections_closed_total{origin=\"web\",reason=\"max_requests\"}"
        ),
        3.0
    );
}

#[test]
fn pool_size_bounds_the_connections_kept_per_server() {
    let o = Origin::start("o");
    o.set_delay(Duration::from_millis(300));
    let edge = Edge::start(&web(&o, "pool_size: 2, idle_timeout: 30s"));
    let burst = |n: usize| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let addr = edge.addr;
                thread::spawn(move || get(addr, "example.com", &format!("/{i}")).status)
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    };
    assert!(burst(6).iter().all(|&s| s == 200));
    assert_eq!(
        o.accepted(),
        6,
        "six concurrent requests need six connections"
    );
    // Only pool_size of them stay open; the others were sent with Connection: close.
    assert!(
        wait_until(Duration::from_secs(5), || o.open() == 2),
        "open: {}",
        o.open()
    );
    let closed = o
        .requests()
        .iter()
        .filter(|s| s.header("connection") == Some("close"))
        .count();
    assert_eq!(closed, 4);
    // The client can have its response before the edge has put the connection back in the
    // pool; the request is counted (logging phase) only after that.
    let counted =
        "edge_requests_total{cache=\"miss\",origin=\"web\",route=\"routes[0]\",status=\"2xx\"}";
    assert!(wait_until(Duration::from_secs(5), || edge.metric(counted) == 6.0));
    // A burst within the pool size rides the kept connections.
    assert!(burst(2).iter().all(|&s| s == 200));
    assert_eq!(o.accepted(), 6);
}

#[test]
fn pool_size_zero_disables_pooling() {
    let o = Origin::start("o");
    let edge = Edge::start(&web(&o, "pool_size: 0"));
    for _ in 0..3 {
        assert_eq!(edge.get("example.com", "/").status, 200);
    }
    assert_eq!(o.accepted(), 3);
    assert!(wait_until(Duration::from_secs(5), || o.open() == 0));
}

#[test]
fn client_keepalive_timeout_closes_idle_client_connections() {
    let o = Origin::start("o");
    let edge = Edge::start(&format!(
        "client: {{keepalive_timeout: 1s}}\n{}",
        web(&o, "idle_timeout: 30s")
    ));
    let mut c = edge.client();
    assert_eq!(c.get("example.com", "/").status, 200);
    let closed_after = c.wait_for_close(Duration::from_secs(5));
    let d = closed_after.expect("the edge never closed the idle client connection");
    assert!(d >= Duration::from_millis(900), "closed after {d:?}");
}

#[test]
fn client_keepalive_requests_limits_requests_per_connection() {
    let o = Origin::start("o");
    let edge = Edge::start(&format!(
        "client: {{keepalive_requests: 3}}\n{}",
        web(&o, "idle_timeout: 30s")
    ));
    let mut c = edge.client();
    let r1 = c.get("example.com", "/1");
    let r2 = c.get("example.com", "/2");
    assert_eq!(r1.header("connection"), Some("keep-alive"));
    assert_eq!(r2.header("connection"), Some("keep-alive"));
    let r3 = c.get("example.com", "/3");
    assert_eq!(r3.status, 200);
    assert_eq!(r3.header("connection"), Some("close"));
    assert!(c.wait_for_close(Duration::from_secs(5)).is_some());
}

#[test]
fn a_client_leaving_mid_request_is_not_mistaken_for_an_origin_close() {
    let o = Origin::start("o");
    o.set_delay(Duration::from_millis(300));
    // Without the cache (which would go on fetching for the store), the edge gives up the
    // upstream request as soon as the client is gone.
    let edge = Edge::start(
        &web(&o, "idle_timeout: 30s")
            .replace("{origin: web}", "{origin: web, cache: {enabled: false}}"),
    );
    // Warm a pooled connection, then leave while the next request waits for the origin.
    o.set_delay(Duration::ZERO);
    assert_eq!(edge.get("example.com", "/warm").status, 200);
    o.set_delay(Duration::from_millis(300));
    let mut c = edge.client();
    c.send_raw_no_wait("GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert!(wait_until(Duration::from_secs(5), || o.request_count() == 2));
    c.reset(); // the client gives up while the edge waits for the origin
               // The edge logs the abandoned request once it is over.
    assert!(wait_until(Duration::from_secs(5), || edge
        .log()
        .contains(" /slow ")));
    let m = edge.metrics();
    assert_eq!(
        metric_value(
            &m,
            "edge_upstream_connection_lost_total{origin=\"web\",outcome=\"failed\"}"
        ),
        0.0
    );
    let effective = metric_value(
        &m,
        &format!(
            "edge_upstream_idle_timeout_effective_seconds{{origin=\"web\",server=\"{}\"}}",
            o.addr
        ),
    );
    assert!(
        effective > 25.0,
        "a client disconnect shortened the idle limit to {effective}s"
    );
}

/// An HTTP/1.0 client that did not ask for keep-alive gets its connection closed after the
/// response (RFC 9112 section 9.3), whatever the edge's own keep-alive settings; one that asked
/// keeps it.
#[test]
fn http10_clients_keep_alive_only_when_they_ask() {
    let o = Origin::start("o");
    let edge = Edge::start(&web(&o, "idle_timeout: 30s"));
    let mut c = edge.client();
    let r = c
        .send_raw("GET /x HTTP/1.0\r\nHost: example.com\r\n\r\n")
        .expect("a response");
    assert_eq!(r.status, 200);
    assert_ne!(r.header("connection"), Some("keep-alive"));
    assert!(
        c.wait_for_close(Duration::from_secs(5)).is_some(),
        "the edge kept an HTTP/1.0 connection the client did not ask to keep"
    );
    let mut c = edge.client();
    let r = c
        .send_raw("GET /x HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n")
        .expect("a response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let r = c
        .send_raw("GET /y HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n")
        .expect("a second response on the kept connection");
    assert_eq!(r.status, 200);
}

/// With default settings, steady load keeps reuse at or above 0.9999: after the pool is warm,
/// 20,000 misses from four keep-alive clients open no new upstream connection (the default
/// retires a connection only when the origin asks, it idles too long, or the pool is full).
/// With nginx's fixed 1000 requests per connection, the same run would open 20.
#[test]
fn steady_load_with_defaults_keeps_reuse_above_four_nines() {
    let o = Origin::start("o");
    let edge = Edge::start(&format!(
        "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    let run = |n: usize| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let addr = edge.addr;
                thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    for i in 0..n {
                        let r = c.get("a.com", &format!("/{w}/{i}"));
                        assert_eq!(r.status, 200);
                        // client.keepalive_requests (1000) closes the client side now and then.
                        if r.header("connection") == Some("close") {
                            c = Client::connect(addr);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    };
    let count = |conn: &str| {
        edge.metric(&format!(
            "edge_upstream_requests_total{{connection=\"{conn}\",origin=\"web\"}}"
        ))
    };
    run(100); // warm: the pool opens what four clients need
    let (reused0, new0) = (count("reused"), count("new"));
    run(5_000);
    let (reused, new) = (count("reused") - reused0, count("new") - new0);
    let ratio = reused / (reused + new);
    eprintln!("steady load: {reused} reused, {new} new: reuse {ratio:.5}");
    assert_eq!(reused + new, 20_000.0);
    assert!(ratio >= 0.9999, "reuse {ratio:.5}: {new} new connections");
}
