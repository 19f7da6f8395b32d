//! The TLS test harness checked on its own, without the edge: `TlsClient` straight to
//! `TlsOrigin`. What the edge's HTTPS tests rely on (certificates as issued, handshakes and
//! resumptions counted, untrusted and expired certificates refused, ALPN and versions as
//! configured) is shown to hold here first.

mod common;

use std::time::Duration;

use common::tls::*;
use common::*;
use rustls::{CertificateError, ProtocolVersion};

const H1: &[&[u8]] = &[b"http/1.1"];
const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

fn cert_error(r: std::io::Result<TlsClient>) -> rustls::Error {
    let e = r.err().expect("the handshake to fail");
    tls_error(&e)
        .unwrap_or_else(|| panic!("a TLS error, got {e}"))
        .clone()
}

#[test]
fn get_over_tls_presents_the_issued_names() {
    let ca = TestCa::new("harness");
    let origin = TlsOrigin::start("o1", &ca.issue(&["origin.test", "*.example.com"]));
    let mut c = TlsClient::connect(origin.addr, "www.example.com", ca.pem_path(), H1);
    let r = c.get("www.example.com", "/a?b=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "o1 GET /a?b=1 body=0\n");
    assert_eq!(r.server(), "o1");
    assert_eq!(c.peer_names(), ["origin.test", "*.example.com"]);
    assert_eq!(c.peer_chain_len(), 2, "leaf and CA");
    assert_eq!(c.version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(c.alpn().as_deref(), Some("http/1.1"));
    assert!(!c.resumed());
    assert_eq!(origin.accepted(), 1);
    assert_eq!(origin.handshakes(), 1);
    assert_eq!(origin.resumed(), 0);
    assert_eq!(origin.request_count(), 1);
    let h = &origin.handshake_log()[0];
    assert_eq!(h.sni.as_deref(), Some("www.example.com"));
    assert_eq!(h.alpn.as_deref(), Some("http/1.1"));
}

#[test]
fn an_ip_address_name_is_checked_without_sni() {
    let ca = TestCa::new("harness");
    let origin = TlsOrigin::start("o1", &ca.issue(&["127.0.0.1"]));
    let mut c = TlsClient::connect(origin.addr, "127.0.0.1", ca.pem_path(), H1);
    assert_eq!(c.get("127.0.0.1", "/").status, 200);
    assert_eq!(
        c.peer_names(),
        Vec::<String>::new(),
        "an IP name is no DNS name"
    );
    assert_eq!(origin.handshake_log()[0].sni, None);
}

#[test]
fn keep_alive_canned_answers_and_close_over_tls() {
    let ca = TestCa::new("harness");
    let origin = TlsOrigin::start("o1", &ca.issue(&["origin.test"]));
    origin.set(
        "/canned",
        Canned::new(201, &[("Cache-Control", "max-age=60")], "made"),
    );
    let mut c = TlsClient::connect(origin.addr, "origin.test", ca.pem_path(), H1);
    let r = c.get("origin.test", "/canned");
    assert_eq!((r.status, r.body.as_str()), (201, "made"));
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    let r = c
        .send_raw("POST /up HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\n\r\nhello")
        .expect("a response");
    assert_eq!(r.body, "o1 POST /up body=5\n");
    let r = c.request("GET", "origin.test", "/last", &["Connection: close"]);
    assert_eq!(r.status, 200);
    assert!(
        c.wait_for_close(Duration::from_secs(5)).is_some(),
        "the origin closes after Connection: close"
    );
    let seen = origin.requests();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.conn == seen[0].conn),
        "one connection"
    );
    assert_eq!(seen.iter().map(|s| s.nth).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!((origin.accepted(), origin.handshakes()), (1, 1));
}

#[test]
fn a_second_connection_with_the_same_config_resumes() {
    let ca = TestCa::new("harness");
    let certs = ca.issue(&["origin.test"]);
    for tls12_only in [false, true] {
        let opts = TlsOptions {
            tls12_only,
            ..TlsOptions::default()
        };
        let origin = TlsOrigin::start_with("o1", &certs, opts);
        let config = client_config(ca.pem_path(), H1);
        let mut first = TlsClient::connect_with(origin.addr, "origin.test", config.clone());
        // A TLS 1.3 session arrives after the handshake: the client has it once it has read.
        assert_eq!(first.get("origin.test", "/1").status, 200);
        let mut second = TlsClient::connect_with(origin.addr, "origin.test", config);
        assert_eq!(second.get("origin.test", "/2").status, 200);
        let version = if tls12_only {
            ProtocolVersion::TLSv1_2
        } else {
            ProtocolVersion::TLSv1_3
        };
        assert_eq!(second.version(), Some(version));
        assert!(!first.resumed() && second.resumed(), "{version:?}");
        assert_eq!(
            (origin.handshakes(), origin.resumed()),
            (2, 1),
            "{version:?}"
        );

        // A fresh config has no session to offer.
        let third = TlsClient::connect(origin.addr, "origin.test", ca.pem_path(), H1);
        assert!(!third.resumed());
    }
}

#[test]
fn untrusted_expired_and_misnamed_certificates_fail_the_handshake() {
    let ca = TestCa::new("harness");
    let other = TestCa::new("other");
    let origin = TlsOrigin::start("o1", &ca.issue(&["origin.test"]));
    let e = cert_error(TlsClient::try_connect(
        origin.addr,
        "origin.test",
        other.pem_path(),
        H1,
    ));
    assert_eq!(
        e,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert!(wait_until(Duration::from_secs(5), || origin
        .failed_handshakes()
        == 1));
    assert!(
        origin.handshake_errors()[0].contains("UnknownCA"),
        "{:?}",
        origin.handshake_errors()
    );
    assert_eq!((origin.accepted(), origin.handshakes()), (1, 0));

    let e = cert_error(TlsClient::try_connect(
        origin.addr,
        "elsewhere.test",
        ca.pem_path(),
        H1,
    ));
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
        ),
        "{e:?}"
    );

    let expired = TlsOrigin::start("o2", &ca.issue_expired(&["origin.test"]));
    let e = cert_error(TlsClient::try_connect(
        expired.addr,
        "origin.test",
        ca.pem_path(),
        H1,
    ));
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "{e:?}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let ca = TestCa::new("harness");
    let a = ca.issue(&["a.test"]);
    let b = ca.issue(&["b.test"]);
    assert!(server_config(&a, &TlsOptions::default()).is_ok());
    let e = server_config(&a.with_key_of(&b), &TlsOptions::default()).unwrap_err();
    assert_eq!(
        e,
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)
    );
}

#[test]
fn alpn_and_version_options_are_honoured() {
    let ca = TestCa::new("harness");
    let certs = ca.issue(&["origin.test"]);
    let start = |alpn, tls12_only| {
        let opts = TlsOptions {
            alpn,
            tls12_only,
            ..TlsOptions::default()
        };
        TlsOrigin::start_with("o1", &certs, opts)
    };
    let connect =
        |o: &TlsOrigin, alpn| TlsClient::connect(o.addr, "origin.test", ca.pem_path(), alpn);

    let h2 = start(Alpn::H2Http1, false);
    let mut c = connect(&h2, H2_H1);
    assert_eq!(c.alpn().as_deref(), Some("h2"));
    assert!(
        c.wait_for_close(Duration::from_secs(5)).is_some(),
        "h2 is not served"
    );
    assert_eq!(connect(&h2, H1).alpn().as_deref(), Some("http/1.1"));

    let h1 = start(Alpn::Http1, false);
    assert_eq!(connect(&h1, H2_H1).alpn().as_deref(), Some("http/1.1"));
    let e = cert_error(TlsClient::try_connect(
        h1.addr,
        "origin.test",
        ca.pem_path(),
        &[b"h2"],
    ));
    assert!(matches!(e, rustls::Error::AlertReceived(_)), "{e:?}");

    let off = start(Alpn::Off, false);
    assert_eq!(connect(&off, H2_H1).alpn(), None);

    let tls12 = start(Alpn::Http1, true);
    let mut c = connect(&tls12, H1);
    assert_eq!(c.version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(c.get("origin.test", "/").status, 200);
    let only13 = client_config_versions(ca.pem_path(), H1, &[&rustls::version::TLS13]);
    assert!(TlsClient::try_connect_with(tls12.addr, "origin.test", only13).is_err());
}
