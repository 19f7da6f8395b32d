//! Every metric a dashboard panel queries is one the edge exports (a typo would leave a panel
//! silently empty). Issue 4 adds the full check through a real Prometheus.

mod common;

use std::collections::BTreeSet;

use common::tls::TestCa;
use common::*;

fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("edge_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        out.insert(base.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_queries_use_exported_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dash = std::fs::read_to_string(format!("{root}/dashboards/edge.json")).unwrap();
    let wanted = metric_names_in(&dash);
    assert!(wanted.contains("edge_upstream_requests_total"));
    assert!(wanted.contains("edge_upstream_ttfb_seconds"));

    let o = Origin::start("o");
    let (dead, no_nats) = (free_port(), free_port());
    // A cleartext and an HTTPS listener, so the certificate metrics exist too; a fleet's NATS
    // (unreachable), so the purge stream's do.
    let ca = TestCa::new("dashboards CA");
    let cert = ca.issue(&["www.example.com"]);
    let listen = format!(
        "\"127.0.0.1:{{PORT}}\", {{address: \"127.0.0.1:{{PORT2}}\", tls: {{certificates: [{{cert: \"{}\", key: \"{}\"}}]}}}}",
        cert.cert.display(),
        cert.key.display()
    );
    let edge = Edge::start_listening(&listen, &format!(
        "cluster: {{nats: {{url: \"nats://127.0.0.1:{no_nats}\"}}}}\norigins:\n  web: {{servers: [\"{}\", \"127.0.0.1:{dead}\"], keepalive: {{max_requests: 1}}}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    for i in 0..4 {
        assert_eq!(edge.get("a.com", &format!("/{i}")).status, 200);
    }
    assert_eq!(edge.get("a.com", "/../x").status, 400);
    let exported: BTreeSet<String> = edge
        .metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "dashboards query metrics the edge does not export: {missing:?}"
    );
}
