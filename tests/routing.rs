//! Routing, balancing, failover and health checks against real origins on loopback.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

fn tally(edge: &Edge, paths: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    let mut client = edge.client();
    for p in paths {
        let r = client.get("example.com", &p);
        assert_eq!(r.status, 200, "{p}: {}", r.body);
        *c.entry(r.server().to_string()).or_default() += 1;
    }
    c
}

#[test]
fn routes_by_host_and_path_most_specific_first() {
    let (www, stat, api, dflt) = (
        Origin::start("www"),
        Origin::start("static"),
        Origin::start("api"),
        Origin::start("default"),
    );
    let edge = Edge::start(&format!(
        r#"
origins:
  www: {{servers: ["{}"]}}
  static: {{servers: ["{}"]}}
  api: {{servers: ["{}"]}}
  default: {{servers: ["{}"]}}
routes:
  - {{host: "*", origin: default}}
  - {{host: "*.example.com", path_prefix: /static/, origin: static}}
  - {{host: www.example.com, origin: www}}
  - {{host: "*", path_prefix: /api/, origin: api}}
"#,
        www.addr, stat.addr, api.addr, dflt.addr
    ));
    let who = |host: &str, path: &str| edge.get(host, path).server().to_string();
    assert_eq!(who("www.example.com", "/"), "www");
    assert_eq!(
        who("WWW.Example.COM:8080", "/x"),
        "www",
        "host matching ignores case and port"
    );
    // An exact host beats a wildcard host whatever the paths (nginx's server_name, then location).
    assert_eq!(who("www.example.com", "/static/a.css"), "www");
    assert_eq!(who("img.example.com", "/static/a.png"), "static");
    assert_eq!(who("img.example.com", "/other"), "default");
    assert_eq!(who("other.org", "/api/v1"), "api");
    assert_eq!(who("other.org", "/"), "default");
    assert_eq!(www.request_count(), 3);
    assert_eq!(stat.request_count(), 1);
}

#[test]
fn no_route_is_a_clear_404() {
    let o = Origin::start("o");
    let edge = Edge::start(&format!(
        "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{host: www.example.com, origin: web}}\n",
        o.addr
    ));
    let mut c = edge.client();
    let r = c.get("evil.org", "/");
    assert_eq!(r.status, 404);
    assert!(
        r.body.contains("no route for host \"evil.org\""),
        "{}",
        r.body
    );
    // The connection stays usable after a 404.
    assert_eq!(c.get("www.example.com", "/").status, 200);
    assert_eq!(o.request_count(), 1);
}

#[test]
fn round_robin_spreads_evenly() {
    let (a, b, c) = (Origin::start("a"), Origin::start("b"), Origin::start("c"));
    let edge = Edge::start(&format!(
        "origins:\n  web: {{servers: [\"{}\", \"{}\", \"{}\"], balance: round_robin}}\nroutes:\n  - {{origin: web}}\n",
        a.addr, b.addr, c.addr
    ));
    let t = tally(&edge, (0..30).map(|i| format!("/{i}")));
    assert_eq!(t.get("a"), Some(&10), "{t:?}");
    assert_eq!(t.get("b"), Some(&10), "{t:?}");
    assert_eq!(t.get("c"), Some(&10), "{t:?}");
}

#[test]
fn weighted_follows_weights() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let edge = Edge::start(&format!(
        "origins:\n  web:\n    servers: [\"{}\", {{address: \"{}\", weight: 3}}]\n    balance: weighted\nroutes:\n  - {{origin: web}}\n",
        a.addr, b.addr
    ));
    let t = tally(&edge, (0..40).map(|i| format!("/{i}")));
    assert_eq!(t.get("a"), Some(&10), "{t:?}");
    assert_eq!(t.get("b"), Some(&30), "{t:?}");
}

#[test]
fn consistent_hash_keeps_an_object_on_one_server() {
    let (a, b, c) = (Origin::start("a"), Origin::start("b"), Origin::start("c"));
    let edge = Edge::start(&format!(
        "origins:\n  web: {{servers: [\"{}\", \"{}\", \"{}\"], balance: consistent_hash}}\nroutes:\n  - {{origin: web}}\n",
        a.addr, b.addr, c.addr
    ));
    let mut client = edge.client();
    let mut owner = HashMap::new();
    for round in 0..3 {
        for i in 0..30 {
            let p = format!("/obj/{i}");
            let s = client.get("example.com", &p).server().to_string();
            let first = owner.entry(p.clone()).or_insert(s.clone());
            assert_eq!(*first, s, "{p} moved in round {round}");
        }
    }
    let mut per_server: HashMap<&str, usize> = HashMap::new();
    for s in owner.values() {
        *per_server.entry(s.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_server.len(),
        3,
        "30 objects all landed on {per_server:?}"
    );
}

#[test]
fn connect_failure_fails_over_and_marks_the_server_down() {
    let live = Origin::start("live");
    let dead = free_port(); // nothing listens there
    let edge = Edge::start(&format!(
        r#"
origins:
  web:
    servers: ["127.0.0.1:{dead}", "{}"]
    passive_health: {{max_fails: 1, fail_timeout: 30s}}
routes:
  - {{origin: web}}
"#,
        live.addr
    ));
    let mut c = edge.client();
    for i in 0..10 {
        let r = c.get("example.com", &format!("/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.server(), "live");
    }
    let m = edge.metrics();
    let dead_label = format!("origin=\"web\",server=\"127.0.0.1:{dead}\"");
    assert_eq!(
        metric_value(
            &m,
            &format!("edge_upstream_connect_failures_total{{{dead_label}}}")
        ),
        1.0,
        "one failure marks it down; later requests skip it\n{m}"
    );
    assert_eq!(
        metric_value(&m, &format!("edge_origin_server_up{{{dead_label}}}")),
        0.0
    );
    assert_eq!(
        metric_value(
            &m,
            "edge_upstream_retries_total{origin=\"web\",reason=\"connect_failure\"}"
        ),
        1.0
    );
}

#[test]
fn all_servers_down_gives_a_fast_502() {
    let (p1, p2) = (free_port(), free_port());
    let edge = Edge::start(&format!(
        "origins:\n  web: {{servers: [\"127.0.0.1:{p1}\", \"127.0.0.1:{p2}\"]}}\nroutes:\n  - {{origin: web}}\n"
    ));
    for _ in 0..3 {
        let t = Instant::now();
        let r = edge.get("example.com", "/");
        assert_eq!(r.status, 502);
        assert!(
            r.body.contains("origin unreachable (origin web)"),
            "{}",
            r.body
        );
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn a_silent_origin_gives_504_after_the_read_timeout() {
    let o = Origin::start("slow");
    o.set_silent(true);
    let edge = Edge::start(&format!(
        "origins:\n  web:\n    servers: [\"{}\"]\n    timeouts: {{read: 300ms}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    let t = Instant::now();
    let r = edge.get("example.com", "/");
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.body.contains("origin timed out"), "{}", r.body);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn health_checks_take_a_server_out_and_bring_it_back() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let edge = Edge::start(&format!(
        r#"
origins:
  web:
    servers: ["{}", "{}"]
    health_check: {{path: /healthz, interval: 100ms, timeout: 1s, rise: 2, fall: 2}}
routes:
  - {{origin: web}}
"#,
        a.addr, b.addr
    ));
    let up = |e: &Edge, o: &Origin| {
        e.metric(&format!(
            "edge_origin_server_up{{origin=\"web\",server=\"{}\"}}",
            o.addr
        ))
    };
    assert!(wait_until(Duration::from_secs(5), || a.health_checks() >= 2));
    b.set_health(503);
    assert!(
        wait_until(Duration::from_secs(5), || up(&edge, &b) == 0.0),
        "b never marked down"
    );
    let t = tally(&edge, (0..10).map(|i| format!("/{i}")));
    assert_eq!(t.get("a"), Some(&10), "a down server got traffic: {t:?}");

    b.set_health(200);
    assert!(
        wait_until(Duration::from_secs(5), || up(&edge, &b) == 1.0),
        "b never came back"
    );
    let t = tally(&edge, (0..10).map(|i| format!("/{i}")));
    assert_eq!(t.get("b"), Some(&5), "{t:?}");
    assert!(edge.log().contains(&format!("server {} is down", b.addr)));
    assert!(edge.log().contains(&format!("server {} is up", b.addr)));
}

#[test]
fn forwarding_headers_and_host_rewrite() {
    let o = Origin::start("o");
    let edge = Edge::start(&format!(
        "origins:\n  web: {{servers: [\"{}\"], host: origin.internal}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    let mut c = edge.client();
    let r = c
        .send_raw(
            "GET /h HTTP/1.1\r\nHost: www.example.com\r\nX-Forwarded-For: 10.1.1.1\r\n\
             Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             Proxy-Connection: keep-alive\r\n\r\n",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("keep-alive"),
        None,
        "the origin's Keep-Alive is hop-by-hop"
    );
    let seen = &o.requests()[0];
    assert_eq!(seen.header("host"), Some("origin.internal"));
    assert_eq!(seen.header("x-forwarded-for"), Some("10.1.1.1, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("via"), Some("1.1 edge"));
    for hop in ["x-secret", "keep-alive", "te", "proxy-connection"] {
        assert_eq!(
            seen.header(hop),
            None,
            "{hop} reached the origin: {:?}",
            seen.headers
        );
    }
}
