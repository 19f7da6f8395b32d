//! A fleet of edges sharing purges over a real NATS JetStream (`nats-server` on loopback): a
//! purge at one edge reaches every edge; a soft purge makes the next request revalidate; an
//! edge cut off from NATS serves on and applies what it missed when it is back; a purge taken
//! while NATS is down is applied locally, queued and published on its return.

mod common;

use std::time::{Duration, Instant};

use common::cache::*;
use common::nats::*;
use common::*;

/// An edge of the fleet in front of `o`, named `node`, reading purges from `nats_url`.
fn fleet_edge(o: &Origin, node: &str, nats_url: &str) -> Edge {
    let top = format!("cluster: {{node: {node}, nats: {{url: \"{nats_url}\"}}}}\n");
    let edge = edge_for(o, "", &top);
    assert!(
        opened_stream(&edge),
        "{node} did not open the purge stream:\n{}",
        edge.log()
    );
    edge
}

/// Waits (10 s at most) until the edge has the purge stream open.
fn opened_stream(edge: &Edge) -> bool {
    wait_until(Duration::from_secs(10), || {
        edge.metric("edge_cluster_nats_connected{stream=\"EDGE_PURGE\"}") == 1.0
    })
}

fn hit(edge: &Edge, path: &str) -> bool {
    status_of(&edge.get("example.com", path)).contains("hit")
}

#[test]
fn a_purge_at_one_edge_reaches_every_edge_within_a_second() {
    let nats = Nats::start();
    let o = Origin::start("o");
    o.set("/a", cc("max-age=600", "a"));
    o.set(
        "/t",
        Canned::new(
            200,
            &[("Cache-Control", "max-age=600"), ("Surrogate-Key", "red")],
            "t",
        ),
    );
    let edges: Vec<Edge> = ["a", "b", "c"]
        .iter()
        .map(|n| fleet_edge(&o, n, &nats.url()))
        .collect();
    for e in &edges {
        for p in ["/a", "/t"] {
            e.get("example.com", p);
            assert!(hit(e, p), "stored at each edge");
        }
    }
    assert_eq!((o.count("/a"), o.count("/t")), (3, 3));

    let r = edges[0].admin_post("/purge?url=http://example.com/a");
    assert_eq!((r.status, r.body.as_str()), (200, "purged 1\nsequence 1\n"));
    let published = Instant::now();
    let all_applied = wait_until(Duration::from_secs(1), || {
        edges[1..]
            .iter()
            .all(|e| e.metric("edge_cluster_purges_applied_total") == 1.0)
    });
    let took = published.elapsed();
    assert!(
        all_applied,
        "not applied everywhere within 1 s:\n{}",
        edges[1].log()
    );
    eprintln!("purge applied by two other edges {took:?} after the answer");
    for e in &edges {
        assert!(!hit(e, "/a"), "every edge's next request misses");
        assert!(hit(e, "/t"), "the other object stays");
    }
    // The publisher's lag closes when its own purge comes back from the stream.
    assert!(wait_until(Duration::from_secs(5), || edges
        .iter()
        .all(|e| e.metric("edge_cluster_purge_lag") == 0.0)));
    assert_eq!(o.count("/a"), 6);
    assert_eq!(edges[0].metric("edge_cluster_purges_published_total"), 1.0);
    assert_eq!(
        edges[0].metric("edge_cluster_purges_applied_total"),
        0.0,
        "its own purge was applied when published, not again when read back"
    );

    // A tag purge from another edge, by sequence.
    let r = edges[2].admin_post("/purge?tag=red");
    assert_eq!((r.status, r.body.as_str()), (200, "purged 1\nsequence 2\n"));
    assert!(wait_until(Duration::from_secs(1), || edges[..2]
        .iter()
        .all(|e| e.metric("edge_cluster_purges_applied_total") >= 1.0
            && e.metric("edge_cluster_purge_applied_sequence") == 2.0)));
    for e in &edges {
        assert!(!hit(e, "/t"));
        assert_eq!(e.metric("edge_cache_purged_total{kind=\"tag\"}"), 1.0);
    }
    // Malformed purges are refused before anything is published.
    assert_eq!(edges[0].admin_post("/purge?url=/relative").status, 400);
    assert_eq!(edges[0].metric("edge_cluster_purges_published_total"), 1.0);
}

#[test]
fn a_soft_purge_makes_every_edge_revalidate_with_a_304() {
    let nats = Nats::start();
    let o = Origin::start("o");
    o.set(
        "/s",
        Canned::new(
            200,
            &[("Cache-Control", "max-age=600"), ("ETag", "\"v1\"")],
            "soft",
        ),
    );
    let (a, b) = (
        fleet_edge(&o, "a", &nats.url()),
        fleet_edge(&o, "b", &nats.url()),
    );
    for e in [&a, &b] {
        e.get("example.com", "/s");
        assert!(hit(e, "/s"));
    }
    let r = a.admin_post("/purge?url=http://example.com/s&soft=1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("purged 1\nmode soft"), "{}", r.body);
    assert!(wait_until(Duration::from_secs(1), || b
        .metric("edge_cluster_purges_applied_total")
        == 1.0));
    for e in [&a, &b] {
        let r = e.get("example.com", "/s");
        assert_eq!(r.body, "soft", "the stored body, revalidated");
        assert!(status_of(&r).contains("fwd=stale"), "{}", status_of(&r));
    }
    let conditional: Vec<_> = o
        .requests()
        .into_iter()
        .filter(|s| s.path == "/s")
        .map(|s| s.header("if-none-match").map(str::to_string))
        .collect();
    assert_eq!(
        conditional,
        [None, None, Some("\"v1\"".into()), Some("\"v1\"".into())],
        "two fills, then one 304 refresh per edge, no full fetch"
    );
    for e in [&a, &b] {
        assert!(hit(e, "/s"), "fresh again after the 304");
    }
}

#[test]
fn an_edge_cut_off_from_nats_serves_on_and_applies_what_it_missed() {
    let mut nats = Nats::start();
    let o = Origin::start("o");
    for p in ["/x", "/y", "/z"] {
        o.set(p, cc("max-age=600", p));
    }
    let link = Cut::start(nats.addr);
    let a = fleet_edge(&o, "a", &nats.url());
    let c = fleet_edge(&o, "c", &link.url());
    for e in [&a, &c] {
        for p in ["/x", "/y", "/z"] {
            e.get("example.com", p);
        }
    }

    // C is cut off: it says so, and serves on.
    link.cut();
    assert!(wait_until(Duration::from_secs(5), || c
        .metric("edge_cluster_nats_connected{stream=\"EDGE_PURGE\"}")
        == 0.0));
    let health = get(c.admin, "admin", "/healthz");
    assert_eq!(health.status, 200, "still serving");
    assert!(
        health.body.contains("cluster: purge stream"),
        "{}",
        health.body
    );
    let r = a.admin_post("/purge?url=http://example.com/x");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = a.admin_post("/purge?prefix=http://example.com/y");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(hit(&c, "/x") && hit(&c, "/y"), "C has not heard yet");

    // Back: C replays both before anything else, and its next requests miss.
    link.restore();
    assert!(
        wait_until(Duration::from_secs(10), || c
            .metric("edge_cluster_purges_applied_total")
            == 2.0),
        "{}",
        c.log()
    );
    assert_eq!(c.metric("edge_cluster_purges_replayed_total"), 2.0);
    assert_eq!(
        c.metric("edge_cluster_nats_connected{stream=\"EDGE_PURGE\"}"),
        1.0
    );
    assert_eq!(get(c.admin, "admin", "/healthz").body, "ok\n");
    assert!(!hit(&c, "/x") && !hit(&c, "/y") && hit(&c, "/z"));

    // NATS itself down: A's purge is applied at A and queued (202), then published when NATS
    // is back, and C applies it then.
    nats.stop();
    assert!(wait_until(Duration::from_secs(5), || a
        .metric("edge_cluster_nats_connected{stream=\"EDGE_PURGE\"}")
        == 0.0));
    let r = a.admin_post("/purge?url=http://example.com/z");
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        r.body.starts_with("purged 1\nqueued for the fleet"),
        "{}",
        r.body
    );
    assert_eq!(a.metric("edge_cluster_purges_queued"), 1.0);
    assert!(!hit(&a, "/z"), "applied at A at once");
    assert!(
        hit(&c, "/z"),
        "C serves on, stale copy and all, while NATS is down"
    );
    nats.restart();
    assert!(
        wait_until(Duration::from_secs(15), || c
            .metric("edge_cluster_purges_applied_total")
            == 3.0),
        "A:\n{}\nC:\n{}",
        a.log(),
        c.log()
    );
    assert_eq!(a.metric("edge_cluster_purges_queued"), 0.0);
    assert_eq!(a.metric("edge_cluster_purges_published_total"), 3.0);
    assert!(!hit(&c, "/z"));
}

#[test]
fn a_restarted_edge_applies_the_purges_it_missed_before_serving_from_its_disk_tier() {
    let nats = Nats::start();
    let o = Origin::start("o");
    for p in ["/gone1", "/gone2"] {
        o.set(p, cc("max-age=600", "old"));
    }
    o.set("/kept", cc("max-age=600", "kept"));
    let dir = temp_path("disk");
    let top = format!(
        "cluster: {{node: c, nats: {{url: \"{}\"}}}}\ncache:\n  disk: {{path: \"{}\", \
         max_size: 64MiB}}\n",
        nats.url(),
        dir.display()
    );
    let conf = edge_config(&o, "", &top);
    let a = fleet_edge(&o, "a", &nats.url());
    let disk_objects = |e: &Edge| e.metric("edge_cache_objects{tier=\"disk\"}");
    {
        let c = Edge::start(&conf);
        // Its position in the stream is saved once it has the stream open.
        assert!(opened_stream(&c), "{}", c.log());
        for p in ["/gone1", "/gone2", "/kept"] {
            c.get("example.com", p);
        }
        assert!(wait_until(Duration::from_secs(10), || disk_objects(&c) == 3.0));
        // C stops; while it is down, A purges two objects and the origin changes them.
    }
    for (p, seq) in [("/gone1", 1), ("/gone2", 2)] {
        let r = a.admin_post(&format!("/purge?url=http://example.com{p}"));
        assert!(r.body.contains(&format!("sequence {seq}")), "{}", r.body);
        o.set(p, cc("max-age=600", "new"));
    }

    // C's very first requests after its restart must not get the purged copies from its disk.
    let c = Edge::start(&conf);
    for p in ["/gone1", "/gone2"] {
        let r = c.get("example.com", p);
        assert_eq!(r.body, "new", "{p}: served what the fleet had purged");
    }
    // Once the purges are replayed, the disk tier serves what was not purged.
    assert!(
        wait_until(Duration::from_secs(10), || c
            .metric("edge_cluster_purge_applied_sequence")
            == 2.0),
        "{}",
        c.log()
    );
    assert!(wait_until(Duration::from_secs(5), || hit(&c, "/kept")));
    assert_eq!(o.count("/kept"), 1, "/kept should come from the disk tier");
    assert!(
        c.log().contains("purges replayed up to sequence 2"),
        "{}",
        c.log()
    );
    // It resumed where it had stopped (its position kept beside the tier), not from its start.
    assert!(
        c.log().contains("after sequence 0"),
        "no saved position: {}",
        c.log()
    );
}
