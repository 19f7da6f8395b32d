//! HTTPS end to end against real TLS peers on loopback, with certificates made by the test (a
//! test CA; nothing committed is trusted by anything): TLS termination with SNI, h2 by ALPN,
//! HTTPS origins whose connections are pooled and, when new, resumed; certificates swapped by
//! reload; untrusted origins; `edge -t` on broken certificate files.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tls::*;
use common::*;

/// A TLS listener entry for `Edge::start_listening` with these certificates, in order.
fn tls_listen(certs: &[&CertFiles], extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|c| {
            format!(
                "{{cert: \"{}\", key: \"{}\"}}",
                c.cert.display(),
                c.key.display()
            )
        })
        .collect();
    format!(
        "{{address: \"127.0.0.1:{{PORT}}\", tls: {{certificates: [{}]}}{extra}}}",
        list.join(", ")
    )
}

/// One HTTPS origin (`origin.test`, trusted through `ca`), one catch-all route.
fn https_origin(o: &TlsOrigin, ca: &TestCa, extra: &str) -> String {
    format!(
        "origins:\n  web:\n    servers: [\"{}\"]\n    tls: {{sni: origin.test, ca_file: \"{}\"}}\n{extra}routes:\n  - {{origin: web}}\n",
        o.addr,
        ca.pem_path().display()
    )
}

const H1: &[&[u8]] = &[b"http/1.1"];
const HANDSHAKES: &str = "edge_client_tls_handshakes_total";
const TLS13: &str = "version=\"TLSv1.3\"";

#[test]
fn https_client_to_https_origin_with_sni_certificate_choice() {
    let ca = TestCa::new("edge test CA");
    let www = ca.issue(&["www.example.com"]);
    let api = ca.issue(&["api.example.com", "*.img.example.com"]);
    let o = TlsOrigin::start("o", &ca.issue(&["origin.test"]));
    o.set(
        "/a",
        Canned::new(200, &[("Cache-Control", "max-age=60")], "from the origin"),
    );
    let edge = Edge::start_listening(&tls_listen(&[&www, &api], ""), &https_origin(&o, &ca, ""));
    // The CA bundle the origin's ca_file went into is read at start and not left in /tmp.
    let tag = edge.addr.to_string().replace([':', '.'], "_");
    let bundle = std::path::PathBuf::from(format!("/tmp/edge-{tag}.ca.pem"));
    assert!(!bundle.exists(), "{} left behind", bundle.display());

    // SNI picks the certificate: exact name, wildcard one level down, else the first.
    for (sni, expected) in [
        ("www.example.com", "www.example.com"),
        ("api.example.com", "api.example.com"),
        ("a.img.example.com", "api.example.com"),
    ] {
        let c = TlsClient::try_connect(edge.addr, sni, ca.pem_path(), H1);
        let c = c.unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(c.peer_names()[0], expected, "certificate for {sni}");
    }
    // A name no certificate has gets the first one, which a verifying client then refuses.
    let e = TlsClient::try_connect(edge.addr, "unknown.test", ca.pem_path(), H1).err();
    let e = e
        .expect("a verifying client refuses the default certificate")
        .to_string();
    assert!(e.contains("www.example.com"), "{e}");

    let mut c = TlsClient::connect(edge.addr, "www.example.com", ca.pem_path(), H1);
    let r = c.get("www.example.com", "/a");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "from the origin");
    let seen = o.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    // The cache works over HTTPS, keyed with the scheme: purge takes the https URL.
    let r = c.get("www.example.com", "/a");
    assert!(
        r.header("cache-status").unwrap_or("").contains("hit"),
        "{r:?}"
    );
    assert_eq!(o.count("/a"), 1);
    let purged = edge.admin_post("/purge?url=http://www.example.com/a");
    assert_eq!(purged.body, "purged 0\n", "the http URL is another object");
    let purged = edge.admin_post("/purge?url=https://www.example.com/a");
    assert_eq!(purged.body, "purged 1\n");
    assert_eq!(c.get("www.example.com", "/a").status, 200);
    assert_eq!(o.count("/a"), 2);
    let tls13 = || edge.metric_sum(HANDSHAKES, &[TLS13]);
    assert!(wait_until(Duration::from_secs(5), || tls13() >= 4.0));
    assert!(
        edge.metric("edge_tls_certificate_expiry_timestamp_seconds{name=\"www.example.com\"}")
            > 0.0
    );
}

#[test]
fn h2_is_negotiated_by_alpn_and_carries_concurrent_streams() {
    let ca = TestCa::new("edge test CA");
    let www = ca.issue(&["www.example.com"]);
    let o = TlsOrigin::start("o", &ca.issue(&["origin.test"]));
    o.set(
        "/s0",
        Canned::new(200, &[("Cache-Control", "max-age=60")], "s0"),
    );
    let edge = Edge::start_listening(&tls_listen(&[&www], ""), &https_origin(&o, &ca, ""));
    let c = TlsClient::connect(
        edge.addr,
        "www.example.com",
        ca.pem_path(),
        &[b"h2", b"http/1.1"],
    );
    assert_eq!(c.alpn().as_deref(), Some("h2"));
    // The server counts a TLS 1.3 handshake when the client's last flight arrives: wait for it
    // before taking the count the curl run is measured against.
    let tls13 = || edge.metric_sum(HANDSHAKES, &[TLS13]);
    assert!(wait_until(Duration::from_secs(5), || tls13() >= 1.0));
    drop(c);
    let handshakes_before = tls13();
    let connections_before = edge.metric("edge_client_connections_total");
    // curl multiplexes parallel transfers to one host over one h2 connection.
    let port = edge.addr.port();
    let urls: Vec<String> = (0..8)
        .map(|i| format!("https://www.example.com:{port}/s{i}"))
        .collect();
    let out = Command::new("curl")
        .args(["-s", "--http2", "--parallel", "--parallel-max", "8"])
        .args(["--cacert", &ca.pem_path().display().to_string()])
        .args(["--resolve", &format!("www.example.com:{port}:127.0.0.1")])
        .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}\\n"])
        .args(&urls)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().filter(|l| *l == "2 200").count(), 8, "{text}");
    assert_eq!(
        edge.metric("edge_requests_by_protocol_total{protocol=\"h2\",scheme=\"https\"}"),
        8.0
    );
    assert_eq!(
        tls13() - handshakes_before,
        1.0,
        "eight streams, one connection"
    );
    assert_eq!(
        edge.metric("edge_client_connections_total"),
        connections_before,
        "h2 streams are not client connections"
    );
    // A hit over h2 on TLS is answered by the express lane: it builds the same `https` key the
    // proxy stored the object under.
    let express_before = edge.metric("edge_express_hits_total");
    let out = Command::new("curl")
        .args(["-s", "--http2"])
        .args(["--cacert", &ca.pem_path().display().to_string()])
        .args(["--resolve", &format!("www.example.com:{port}:127.0.0.1")])
        .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
        .arg(&urls[0])
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    assert_eq!(edge.metric("edge_express_hits_total"), express_before + 1.0);
}

#[test]
fn https_origin_connections_are_pooled_and_new_ones_resume() {
    let ca = TestCa::new("edge test CA");
    let www = ca.issue(&["www.example.com"]);
    let listen = tls_listen(&[&www], "");
    let o = TlsOrigin::start("o", &ca.issue(&["origin.test"]));
    o.set(
        "/p",
        Canned::new(200, &[("Cache-Control", "no-store")], "p"),
    );
    // Without idle-timeout learning, whose probes open connections of their own.
    let edge = Edge::start_listening(
        &listen,
        &https_origin(&o, &ca, "    keepalive: {learn: false}\n"),
    );
    // 30 misses over 3 client connections, one after another: one pooled origin connection.
    for _ in 0..3 {
        let mut c = TlsClient::connect(edge.addr, "www.example.com", ca.pem_path(), H1);
        for _ in 0..10 {
            assert_eq!(c.get("www.example.com", "/p").status, 200);
        }
    }
    assert_eq!(o.request_count(), 30);
    assert!(o.handshakes() <= 2, "{} origin handshakes", o.handshakes());
    let m = edge.metrics();
    let reused = metric_value(
        &m,
        "edge_upstream_requests_total{connection=\"reused\",origin=\"web\"}",
    );
    assert!(reused >= 28.0, "{reused} reused\n{m}");
    drop(edge);

    // Every request on a new connection: the handshakes after the first resume the session.
    let o2 = TlsOrigin::start("o2", &ca.issue(&["origin.test"]));
    o2.set(
        "/p",
        Canned::new(200, &[("Cache-Control", "no-store")], "p"),
    );
    let edge = Edge::start_listening(
        &listen,
        &https_origin(&o2, &ca, "    keepalive: {max_requests: 1, learn: false}\n"),
    );
    let mut c = TlsClient::connect(edge.addr, "www.example.com", ca.pem_path(), H1);
    for _ in 0..20 {
        assert_eq!(c.get("www.example.com", "/p").status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || o2.handshakes() >= 20));
    let (full, resumed) = (o2.handshakes(), o2.resumed());
    assert!(
        resumed * 10 >= (full - 1) * 9,
        "{resumed} of {full} origin handshakes resumed; {:?}",
        o2.handshake_log()
    );
    // The edge tells resumed handshakes apart too, and agrees with the origin.
    let by_edge = |r| {
        let sample =
            format!("edge_upstream_tls_handshake_seconds_count{{origin=\"web\",resumed=\"{r}\"}}");
        edge.metric(&sample) as usize
    };
    let (edge_full, edge_resumed) = (by_edge("false"), by_edge("true"));
    assert!(
        edge_full + edge_resumed >= 20,
        "{edge_full} + {edge_resumed}"
    );
    assert!(
        edge_resumed * 10 >= 19 * 9 && edge_resumed <= o2.resumed(),
        "the edge counted {edge_resumed} resumed, {edge_full} full; the origin {resumed} of {full}"
    );
}

#[test]
fn client_handshakes_are_counted_by_resumption_and_failures_by_reason() {
    let ca = TestCa::new("edge test CA");
    let www = ca.issue(&["www.example.com"]);
    let o = TlsOrigin::start("o", &ca.issue(&["origin.test"]));
    o.set(
        "/a",
        Canned::new(200, &[("Cache-Control", "max-age=60")], "a"),
    );
    let edge = Edge::start_listening(&tls_listen(&[&www], ""), &https_origin(&o, &ca, ""));
    let count = |version: &str, resumed: &str| {
        let labels = format!("resumed=\"{resumed}\",version=\"{version}\"");
        edge.metric(&format!("{HANDSHAKES}{{{labels}}}"))
    };

    // Three connections on one client config per version: the first is full, the next two
    // resume the session it was given (read with the first response, as tickets come after
    // the handshake in TLS 1.3).
    for (version, config) in [
        (
            "TLSv1.3",
            client_config_versions(ca.pem_path(), H1, &[&rustls::version::TLS13]),
        ),
        (
            "TLSv1.2",
            client_config_versions(ca.pem_path(), H1, &[&rustls::version::TLS12]),
        ),
    ] {
        for i in 0..3 {
            let mut c = TlsClient::connect_with(edge.addr, "www.example.com", config.clone());
            assert_eq!(c.resumed(), i > 0, "{version} connection {i}");
            assert_eq!(c.get("www.example.com", "/a").status, 200);
        }
        assert!(
            wait_until(Duration::from_secs(5), || count(version, "true") >= 2.0),
            "{version}: {} resumed, {} full",
            count(version, "true"),
            count(version, "false")
        );
        assert_eq!(count(version, "true"), 2.0, "{version}");
        assert_eq!(count(version, "false"), 1.0, "{version}");
    }

    // Failed handshakes, one of each kind, counted by reason.
    let failures = |reason: &str| {
        edge.metric(&format!(
            "edge_client_tls_handshake_failures_total{{reason=\"{reason}\"}}"
        ))
    };
    // Plain HTTP on the TLS port.
    let mut plain = std::net::TcpStream::connect(edge.addr).unwrap();
    std::io::Write::write_all(&mut plain, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let shown = || {
        let m = edge.metrics();
        let lines = m
            .lines()
            .filter(|l| l.starts_with("edge_client_tls_handshake_failures"));
        lines.collect::<Vec<_>>().join("\n")
    };
    let not_tls = wait_until(Duration::from_secs(5), || failures("not_tls") == 1.0);
    assert!(not_tls, "{}", shown());
    // A client that does not trust the certificate says so with an alert.
    let other_ca = TestCa::new("another CA");
    let refused = TlsClient::try_connect(edge.addr, "www.example.com", other_ca.pem_path(), H1);
    assert!(refused.is_err());
    assert!(wait_until(Duration::from_secs(5), || failures(
        "certificate_rejected"
    ) == 1.0));
    // A client that asks for a protocol the listener does not speak.
    let h3 = TlsClient::try_connect(edge.addr, "www.example.com", ca.pem_path(), &[b"h3"]);
    assert!(h3.is_err());
    assert!(wait_until(Duration::from_secs(5), || failures(
        "incompatible"
    ) == 1.0));
    // A client that connects and leaves before finishing.
    drop(std::net::TcpStream::connect(edge.addr).unwrap());
    assert!(wait_until(Duration::from_secs(5), || failures("closed") >= 1.0));
    assert_eq!(failures("other"), 0.0);
    assert_eq!(failures("protocol"), 0.0);
    drop(plain);
}

#[test]
fn certificates_are_swapped_by_reload_without_a_restart() {
    let ca = TestCa::new("edge test CA");
    let www = ca.issue(&["www.example.com"]);
    let o = TlsOrigin::start("o", &ca.issue(&["origin.test"]));
    let edge = Edge::start_listening(&tls_listen(&[&www], ""), &https_origin(&o, &ca, ""));
    let mut before = TlsClient::connect(edge.addr, "www.example.com", ca.pem_path(), H1);
    assert_eq!(before.peer_names(), ["www.example.com"]);
    let pid = edge.pid();

    let renewed = ca.issue(&["www.example.com", "v2.example.com"]);
    std::fs::copy(&renewed.cert, &www.cert).unwrap();
    std::fs::copy(&renewed.key, &www.key).unwrap();
    assert_eq!(edge.reload().status, 200);
    let after = TlsClient::connect(edge.addr, "www.example.com", ca.pem_path(), H1);
    assert_eq!(after.peer_names(), ["www.example.com", "v2.example.com"]);
    // Established connections are not cut, and it is the same process.
    assert_eq!(before.get("www.example.com", "/x").status, 200);
    assert_eq!(edge.pid(), pid);

    // A broken certificate is refused like any bad config; the renewed one keeps serving.
    std::fs::write(&www.cert, "not a certificate").unwrap();
    assert_eq!(edge.reload().status, 422);
    let still = TlsClient::connect(edge.addr, "www.example.com", ca.pem_path(), H1);
    assert_eq!(still.peer_names(), ["www.example.com", "v2.example.com"]);
}

#[test]
fn an_untrusted_origin_certificate_is_a_fast_502() {
    let ca = TestCa::new("edge test CA");
    let stranger = TestCa::new("someone else's CA");
    let www = ca.issue(&["www.example.com"]);
    let o = TlsOrigin::start("o", &stranger.issue(&["origin.test"]));
    let edge = Edge::start_listening(&tls_listen(&[&www], ""), &https_origin(&o, &ca, ""));
    let mut c = TlsClient::connect(edge.addr, "www.example.com", ca.pem_path(), H1);
    let started = Instant::now();
    let r = c.get("www.example.com", "/x");
    assert_eq!(r.status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(o.request_count(), 0);
    assert!(
        wait_until(Duration::from_secs(5), || edge
            .log()
            .contains("certificate")),
        "the reason is logged:\n{}",
        edge.log()
    );
}

#[test]
fn config_check_refuses_broken_certificates() {
    let ca = TestCa::new("edge test CA");
    let good = ca.issue(&["www.example.com"]);
    let other = ca.issue(&["other.example.com"]);
    let expired = ca.issue_expired(&["old.example.com"]);
    let config = |c: &CertFiles| {
        format!(
            "listen:\n  - address: \"127.0.0.1:8443\"\n    tls: {{certificates: [{{cert: \"{}\", key: \"{}\"}}]}}\norigins:\n  web: {{servers: [\"127.0.0.1:1\"]}}\nroutes:\n  - {{origin: web}}\n",
            c.cert.display(),
            c.key.display()
        )
    };
    let (code, out) = check_config(&config(&good));
    assert_eq!(code, 0, "{out}");
    let (code, out) = check_config(&config(&good.with_key_of(&other)));
    assert_eq!(code, 1);
    assert!(
        out.contains("listen[0].tls.certificates[0]") && out.contains("does not go with"),
        "{out}"
    );
    let (code, out) = check_config(&config(&expired));
    assert_eq!(code, 1);
    assert!(out.contains("expired"), "{out}");
    let missing = CertFiles {
        cert: Path::new("/nonexistent/cert.pem").into(),
        key: good.key.clone(),
    };
    let (code, out) = check_config(&config(&missing));
    assert_eq!(code, 1);
    assert!(out.contains("/nonexistent/cert.pem"), "{out}");
    // An origin CA file that does not exist, with verification on.
    let (code, out) = check_config(
        "listen: [\"127.0.0.1:8080\"]\norigins:\n  web: {servers: [\"127.0.0.1:1\"], tls: {ca_file: /nonexistent/ca.pem}}\nroutes:\n  - {origin: web}\n",
    );
    assert_eq!(code, 1);
    assert!(out.contains("origins.web.tls.ca_file"), "{out}");
}
