//! A shield tier: front edges whose origin is a pool of other edges, each object's home chosen
//! by consistent hashing on its cache key. Two fronts and two shields fetch each object from
//! the origin once; a shield killed under load fails no client request and only its share
//! moves; with every shield down the fallback origin answers; `Cache-Status` has one entry per
//! tier and `Age` adds up; a cycle of tiers answers `508`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::cache::*;
use common::*;

/// A shield edge named `node` in front of the real origin.
fn shield(node: &str, o: &Origin) -> Edge {
    Edge::start(&format!(
        "cluster: {{node: {node}}}\norigins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ))
}

/// A front edge named `node` whose origin is the shield tier `shields`, falling back to `o`.
fn front(node: &str, shields: &[String], o: &Origin) -> Edge {
    let servers: Vec<String> = shields.iter().map(|s| format!("\"{s}\"")).collect();
    Edge::start(&format!(
        "cluster: {{node: {node}}}\norigins:\n  shield: {{servers: [{}], balance: consistent_hash, \
         shield: {{fallback: web}}, health_check: {{path: /healthz, interval: 200ms, timeout: 1s, \
         rise: 1, fall: 1}}}}\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: shield}}\n",
        servers.join(", "),
        o.addr
    ))
}

fn origin_with_objects(n: usize) -> Origin {
    let o = Origin::start("o");
    for i in 0..n {
        o.set(
            &format!("/obj/{i}"),
            cc("max-age=600", &format!("object {i}")),
        );
    }
    o
}

#[test]
fn two_fronts_and_two_shields_fetch_each_object_from_the_origin_once() {
    let o = origin_with_objects(100);
    let s1 = shield("s1", &o);
    let s2 = shield("s2", &o);
    let shields = [s1.addr.to_string(), s2.addr.to_string()];
    let f1 = front("f1", &shields, &o);
    let f2 = front("f2", &shields, &o);
    for f in [&f1, &f2] {
        for i in 0..100 {
            let r = f.get("example.com", &format!("/obj/{i}"));
            assert_eq!(r.body, format!("object {i}"));
        }
    }
    let origin_requests: usize = (0..100).map(|i| o.count(&format!("/obj/{i}"))).sum();
    assert_eq!(
        origin_requests, 100,
        "200 client misses, 100 origin requests"
    );
    let (on_s1, on_s2) = (
        s1.metric("edge_cache_objects{tier=\"memory\"}"),
        s2.metric("edge_cache_objects{tier=\"memory\"}"),
    );
    assert_eq!(on_s1 + on_s2, 100.0, "each object has one home");
    assert!(on_s1 >= 25.0 && on_s2 >= 25.0, "spread: {on_s1} / {on_s2}");

    // One Cache-Status entry per tier, the shield's first; a front hit keeps it.
    let miss = f1.get("example.com", "/obj/0");
    let status = status_of(&miss);
    assert!(status.contains("; hit"), "{status}");
    let entries: Vec<&str> = status.split(", ").collect();
    assert_eq!(entries.len(), 2, "{status}");
    let shield_entry = entries[0];
    assert!(
        (shield_entry.starts_with("s1; fwd=uri-miss")
            || shield_entry.starts_with("s2; fwd=uri-miss"))
            && shield_entry.contains("; stored"),
        "{status}"
    );
    assert!(entries[1].starts_with("f1; hit"), "{status}");

    // The front's request to the shield carried the front's mark, the shield's to the origin
    // both.
    let seen = o
        .requests()
        .into_iter()
        .find(|s| s.path == "/obj/0")
        .unwrap();
    assert!(
        matches!(seen.header("cdn-loop"), Some("f1, s1" | "f1, s2")),
        "{:?}",
        seen.header("cdn-loop")
    );
}

#[test]
fn age_adds_up_across_tiers() {
    let o = Origin::start("o");
    o.set(
        "/old",
        Canned::new(
            200,
            &[("Cache-Control", "max-age=600"), ("Age", "100")],
            "old",
        ),
    );
    let s1 = shield("s1", &o);
    let f1 = front("f1", &[s1.addr.to_string()], &o);
    let r = f1.get("example.com", "/old");
    let age: u64 = r.header("age").unwrap().parse().unwrap();
    assert!(
        (100..110).contains(&age),
        "the origin's 100 s and no less: {age}"
    );
    let hit = f1.get("example.com", "/old");
    assert!(status_of(&hit).contains("f1; hit"), "{}", status_of(&hit));
    let age2: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!(age2 >= age, "{age2} < {age}");
}

#[test]
fn a_shield_killed_under_load_fails_no_request_and_only_its_share_moves() {
    let o = origin_with_objects(0);
    for i in 0..4000 {
        o.set(&format!("/k/{i}"), cc("max-age=600", "k"));
    }
    let s1 = shield("s1", &o);
    let s2 = shield("s2", &o);
    let f1 = front("f1", &[s1.addr.to_string(), s2.addr.to_string()], &o);

    // Which shield is each key's home: learned from the first requests' Cache-Status.
    let home = |i: usize| -> String {
        let r = f1.get("example.com", &format!("/k/{i}"));
        assert_eq!(r.status, 200);
        status_of(&r).split(';').next().unwrap().to_string()
    };
    let before: Vec<String> = (0..40).map(home).collect();
    assert!(before.iter().any(|h| h == "s1") && before.iter().any(|h| h == "s2"));

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(40));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, next, failures, served, addr) = (
                stop.clone(),
                next.clone(),
                failures.clone(),
                served.clone(),
                f1.addr,
            );
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= 4000 {
                        break;
                    }
                    match c.send_raw(&format!("GET /k/{i} HTTP/1.1\r\nHost: example.com\r\n\r\n")) {
                        Some(r) if r.status == 200 => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        other => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("/k/{i}: {:?}", other.map(|r| (r.status, r.body))));
                            c = Client::connect(addr);
                        }
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(20), || served
        .load(Ordering::SeqCst)
        >= 200));
    s1.signal(9);
    let at_kill = served.load(Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(30), || served
        .load(Ordering::SeqCst)
        >= at_kill + 500));
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    let retries = |reason: &str| {
        f1.metric(&format!(
            "edge_upstream_retries_total{{origin=\"shield\",reason=\"{reason}\"}}"
        ))
    };
    eprintln!(
        "{} requests, {} after the kill; retries: {} next_server, {} connect_failure",
        served.load(Ordering::SeqCst),
        served.load(Ordering::SeqCst) - at_kill,
        retries("next_server"),
        retries("connect_failure")
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}\nfront log:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        f1.log()
    );

    // The keys at home on s2 stay there; s1's move to s2 (the next in their hash order), and
    // none goes to the fallback while s2 answers.
    let s2_before = s2.metric("edge_cache_objects{tier=\"memory\"}");
    for (i, h) in before.iter().enumerate() {
        let r = f1.get("example.com", &format!("/k/{i}"));
        assert_eq!(r.status, 200);
        if h == "s2" {
            assert!(
                status_of(&r).contains("f1; hit"),
                "still cached at the front"
            );
        }
    }
    let fresh: HashSet<String> = (3000..3040)
        .map(|i| {
            let r = f1.get("example.com", &format!("/k/{i}"));
            status_of(&r).split(';').next().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        fresh,
        HashSet::from(["s2".to_string()]),
        "every new miss goes to s2 now"
    );
    assert!(s2.metric("edge_cache_objects{tier=\"memory\"}") > s2_before);
    assert_eq!(
        f1.metric("edge_upstream_fallbacks_total{origin=\"shield\"}"),
        0.0
    );
}

#[test]
fn with_every_shield_down_the_fallback_origin_answers() {
    let o = origin_with_objects(10);
    let dead = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let f1 = front("f1", &dead, &o);
    for i in 0..10 {
        let r = f1.get("example.com", &format!("/obj/{i}"));
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, format!("object {i}").as_str())
        );
        assert!(
            status_of(&r).starts_with("f1; fwd=uri-miss"),
            "{}",
            status_of(&r)
        );
    }
    assert_eq!(
        f1.metric("edge_upstream_fallbacks_total{origin=\"shield\"}"),
        10.0
    );
    // Once health checks have the shields down, a request goes straight to the fallback: no
    // connect is tried (a shield tier has no panic mode).
    let up = |s: &str| {
        f1.metric(&format!(
            "edge_origin_server_up{{origin=\"shield\",server=\"{s}\"}}"
        ))
    };
    assert!(wait_until(Duration::from_secs(5), || up(&dead[0]) == 0.0
        && up(&dead[1]) == 0.0));
    let failed_connects = |f: &Edge| -> f64 {
        dead.iter()
            .map(|s| {
                f.metric(&format!(
                    "edge_upstream_connect_failures_total{{origin=\"shield\",server=\"{s}\"}}"
                ))
            })
            .sum()
    };
    let before = failed_connects(&f1);
    for i in 0..10 {
        assert_eq!(f1.get("example.com", &format!("/new/{i}")).status, 200);
    }
    assert_eq!(failed_connects(&f1), before);
    assert_eq!(
        f1.metric("edge_upstream_fallbacks_total{origin=\"shield\"}"),
        20.0
    );
}

/// (Idle-timeout learning is off: its probes would travel the cycle too and add to the count.)
#[test]
fn a_cycle_of_tiers_answers_508() {
    let o = Origin::start("o");
    let b = Edge::start(&format!(
        "cluster: {{node: b}}\norigins:\n  up: {{servers: [\"{}\"], keepalive: {{learn: false}}}}\nroutes:\n  - {{origin: up}}\n",
        o.addr
    ));
    let a = Edge::start(&format!(
        "cluster: {{node: a}}\norigins:\n  up: {{servers: [\"{}\"], keepalive: {{learn: false}}}}\nroutes:\n  - {{origin: up}}\n",
        b.addr
    ));
    // Misconfigured: b now sends its misses back to a.
    b.rewrite(&format!(
        "cluster: {{node: b}}\norigins:\n  up: {{servers: [\"{}\"], keepalive: {{learn: false}}}}\nroutes:\n  - {{origin: up}}\n",
        a.addr
    ));
    assert_eq!(b.reload().status, 200);
    let r = a.get("example.com", "/loop");
    assert_eq!(r.status, 508, "{}", r.body);
    assert_eq!(
        a.metric("edge_refused_requests_total{reason=\"loop\"}"),
        1.0
    );
    assert_eq!(o.request_count(), 0, "the origin never saw it");
}

#[test]
fn a_shield_keys_by_the_scheme_fronts_say_only_on_its_listener_for_edges() {
    let o = Origin::start("o");
    o.set("/x", cc("max-age=600", "x"));
    let s = Edge::start_listening(
        "{address: \"127.0.0.1:{PORT}\", from_edges: true}, \"127.0.0.1:{PORT2}\"",
        &format!(
            "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
            o.addr
        ),
    );
    let from_front = |addr| {
        Client::connect(addr).request("GET", "example.com", "/x", &["X-Forwarded-Proto: https"])
    };
    assert!(status_of(&from_front(s.addr)).contains("fwd=uri-miss"));
    assert_eq!(o.requests()[0].header("x-forwarded-proto"), Some("https"));
    let again = from_front(s.addr);
    assert!(
        status_of(&again).contains("hit"),
        "the https object, found by the lane"
    );
    assert_eq!(s.metric("edge_express_hits_total"), 1.0);
    // A listener clients reach ignores the header: a client cannot fill the https key.
    let client = from_front(s.addr2.unwrap());
    assert!(
        status_of(&client).contains("fwd=uri-miss"),
        "the http object: {}",
        status_of(&client)
    );
    assert_eq!(o.requests()[1].header("x-forwarded-proto"), Some("http"));
    // A purge of the https URL, as the fleet's stream carries it from a front, finds the
    // shield's copy.
    assert_eq!(
        s.admin_post("/purge?url=https://example.com/x").body,
        "purged 1\n"
    );
    assert_eq!(
        s.admin_post("/purge?url=http://example.com/x").body,
        "purged 1\n"
    );
}

/// The race between tiers: a front that misses between its own purge and the shield's refills
/// from the shield's old copy. `purge_again_after` applies each purge once more later, which
/// drops that copy; without it the front keeps the old object for its whole lifetime. (The
/// shield here applies the purge late by hand: it has no NATS link, standing for a shield that
/// reads the stream a moment after the fronts.)
#[test]
fn a_purge_applied_again_drops_what_a_front_refilled_from_a_shield_not_yet_purged() {
    let nats = common::nats::Nats::start();
    let o = Origin::start("o");
    o.set("/p", cc("max-age=600", "v1"));
    let s1 = shield("s1", &o);
    let front_with = |node: &str, again: &str| {
        Edge::start(&format!(
            "cluster: {{node: {node}, nats: {{url: \"{}\", purge_again_after: {again}}}}}\n\
             origins:\n  shield: {{servers: [\"{}\"], balance: consistent_hash, shield: {{fallback: web}}}}\n  \
             web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: shield}}\n",
            nats.url(),
            s1.addr,
            o.addr
        ))
    };
    let once = front_with("f0", "0s");
    let twice = front_with("f1", "3s");
    for f in [&once, &twice] {
        assert!(wait_until(Duration::from_secs(10), || f
            .metric("edge_cluster_nats_connected{stream=\"EDGE_PURGE\"}")
            == 1.0));
        assert_eq!(f.get("example.com", "/p").body, "v1");
    }
    o.set("/p", cc("max-age=600", "v2"));
    assert_eq!(
        twice.admin_post("/purge?url=http://example.com/p").status,
        200
    );
    assert!(wait_until(Duration::from_secs(5), || once
        .metric("edge_cluster_purges_applied_total")
        == 1.0));
    // Both fronts miss before the shield has purged: they refill the old object from it.
    for f in [&once, &twice] {
        let r = f.get("example.com", "/p");
        assert_eq!(r.body, "v1", "{}", status_of(&r));
        assert!(status_of(&r).starts_with("s1; hit"), "{}", status_of(&r));
    }
    assert_eq!(
        s1.admin_post("/purge?url=http://example.com/p").body,
        "purged 1\n"
    );
    assert!(wait_until(Duration::from_secs(10), || twice
        .metric("edge_cluster_purges_repeated_total")
        == 1.0));
    assert_eq!(
        twice.get("example.com", "/p").body,
        "v2",
        "applied again: refetched"
    );
    assert_eq!(
        once.get("example.com", "/p").body,
        "v1",
        "applied once: the old copy stays"
    );
    assert_eq!(once.metric("edge_cluster_purges_repeated_total"), 0.0);
}
