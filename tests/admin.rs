//! The admin API locked by a bearer token (`admin.token_file`): every endpoint but
//! `GET /healthz` answers 401 without the right token and changes nothing; tokens are re-read
//! on reload; `edge -t` refuses an admin listener beyond loopback without a token.

mod common;

use std::time::Duration;

use common::*;

/// Sends a request to the admin listener, with `Authorization: Bearer <token>` if given.
fn admin(edge: &Edge, method: &str, path: &str, token: Option<&str>) -> Response {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    Client::connect(edge.admin)
        .send_raw(&format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        ))
        .expect("an answer")
}

/// An edge whose admin API needs the token `s3cret-token` (in `token_file`), before an origin
/// with a cacheable `/a`; `body` is the config below `listen` and `admin`.
struct Locked {
    o: Origin,
    edge: Edge,
    token_file: std::path::PathBuf,
    body: String,
}

impl Locked {
    fn start() -> Locked {
        let o = Origin::start("o");
        o.set(
            "/a",
            Canned::new(200, &[("Cache-Control", "max-age=60")], "a"),
        );
        let token_file = temp_path("admin.token");
        std::fs::write(&token_file, "s3cret-token\n").unwrap();
        let body = format!(
            "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
            o.addr
        );
        let edge = Edge::start_with(
            "\"127.0.0.1:{PORT}\"",
            &format!("token_file: \"{}\"", token_file.display()),
            &body,
        );
        Locked {
            o,
            edge,
            token_file,
            body,
        }
    }
}

#[test]
fn every_endpoint_but_healthz_needs_the_token() {
    let Locked {
        o,
        edge,
        token_file,
        body: _,
    } = Locked::start();
    assert_eq!(edge.get("a.com", "/a").status, 200);

    assert_eq!(admin(&edge, "GET", "/healthz", None).status, 200);
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/config"),
        ("POST", "/reload"),
        ("POST", "/purge?url=http://a.com/a"),
        ("GET", "/nothing-here"),
    ] {
        for token in [None, Some("wrong"), Some("s3cret-tokenX"), Some("")] {
            let r = admin(&edge, method, path, token);
            assert_eq!(r.status, 401, "{method} {path} with {token:?}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    // Nothing changed: the object is still cached (the refused purge removed nothing).
    assert!(edge
        .get("a.com", "/a")
        .header("cache-status")
        .unwrap_or("")
        .contains("hit"));
    assert_eq!(o.count("/a"), 1);

    let ok = Some("s3cret-token");
    let m = admin(&edge, "GET", "/metrics", ok);
    assert_eq!(m.status, 200);
    assert!(m.body.contains("edge_requests_total"));
    assert_eq!(admin(&edge, "GET", "/nothing-here", ok).status, 404);
    let purge = admin(&edge, "POST", "/purge?url=http://a.com/a", ok);
    assert_eq!((purge.status, purge.body.as_str()), (200, "purged 1\n"));

    // A new token takes effect with the reload that reads it; the old one stops working.
    std::fs::write(&token_file, "n3w-token").unwrap();
    assert_eq!(admin(&edge, "POST", "/reload", ok).status, 200);
    assert_eq!(admin(&edge, "GET", "/metrics", ok).status, 401);
    assert_eq!(
        admin(&edge, "GET", "/metrics", Some("n3w-token")).status,
        200
    );
}

#[test]
fn config_check_keeps_an_open_admin_on_loopback() {
    let body = "origins:\n  web: {servers: [\"127.0.0.1:1\"]}\nroutes:\n  - {origin: web}\n";
    let config = |admin: &str| format!("listen: [\"127.0.0.1:8080\"]\nadmin: {admin}\n{body}");
    let (code, out) = check_config(&config("{listen: \"0.0.0.0:9090\"}"));
    assert_eq!(code, 1);
    assert!(
        out.contains("admin.listen") && out.contains("token_file"),
        "{out}"
    );
    assert_eq!(check_config(&config("{listen: \"127.0.0.1:9090\"}")).0, 0);
    let token = temp_path("token");
    std::fs::write(&token, "t").unwrap();
    let (code, out) = check_config(&config(&format!(
        "{{listen: \"0.0.0.0:9090\", token_file: \"{}\"}}",
        token.display()
    )));
    assert_eq!(code, 0, "{out}");
    std::fs::write(&token, "  \n").unwrap();
    let (code, out) = check_config(&config(&format!(
        "{{listen: \"127.0.0.1:9090\", token_file: \"{}\"}}",
        token.display()
    )));
    assert_eq!(code, 1);
    assert!(
        out.contains("admin.token_file") && out.contains("empty"),
        "{out}"
    );
}

/// Bad requests to the admin API change nothing: a purge or a reload without the token, with a
/// wrong one, with a body over the 1 MiB limit (declared or chunked) or broken, with the wrong
/// method, or on an unknown path leaves the cached object a hit and the config version as it was, though a reload would
/// change it (the file was rewritten). A body at the limit is taken (and ignored), and the same
/// purge and reload with the token then do change things.
#[test]
fn bad_admin_requests_change_nothing() {
    const LIMIT: usize = 1 << 20;
    let Locked {
        o,
        edge,
        token_file: _,
        body,
    } = Locked::start();
    let ok = Some("s3cret-token");
    let version = || {
        let r = admin(&edge, "GET", "/config", ok);
        assert_eq!(r.status, 200);
        r.body
            .lines()
            .find_map(|l| l.strip_prefix("# version: "))
            .unwrap()
            .to_string()
    };
    let is_hit = || {
        edge.get("a.com", "/a")
            .header("cache-status")
            .unwrap_or("")
            .contains("hit")
    };
    assert_eq!(edge.get("a.com", "/a").status, 200);
    assert!(is_hit());
    let before = version();
    // A reload now would change the version.
    edge.rewrite(&format!("{body}  - {{host: b.com, origin: web}}\n"));

    let purge = "/purge?url=http://a.com/a";
    // A request with a body of `len` bytes (declared, or chunked in 64 KiB pieces) of which only
    // `send` are sent before the answer is read.
    let with_body = |path: &str, token: Option<&str>, len: usize, chunked: bool, send: usize| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {len}")
        };
        let mut c = Client::connect(edge.admin);
        c.send_raw_no_wait(&format!(
            "POST {path} HTTP/1.1\r\nHost: admin\r\n{auth}{framing}\r\n\r\n"
        ));
        let piece = "x".repeat(64 << 10);
        let mut sent = 0;
        while sent < send {
            let n = piece.len().min(send - sent);
            if chunked {
                c.send_raw_no_wait(&format!("{n:x}\r\n{}\r\n", &piece[..n]));
            } else {
                c.send_raw_no_wait(&piece[..n]);
            }
            sent += n;
        }
        if chunked && send == len {
            c.send_raw_no_wait("0\r\n\r\n");
        }
        let r = c.read_response().expect("an answer");
        (r, c)
    };

    let mut wrong = Vec::new();
    let mut expect = |what: &str, r: &Response, status: u16| {
        if r.status != status {
            wrong.push(format!("{what}: {} {:?}, not {status}", r.status, r.body));
        }
    };
    for path in [purge, "/reload"] {
        for token in [None, Some("wrong")] {
            let r = admin(&edge, "POST", path, token);
            expect(&format!("POST {path} with {token:?}"), &r, 401);
            // Without the token, even a huge body is not read: 401, and the connection closed.
            let (r, mut c) = with_body(path, token, 1 << 30, false, 0);
            expect(&format!("POST {path} with {token:?} and 1 GiB"), &r, 401);
            assert!(c.wait_for_close(Duration::from_secs(5)).is_some());
        }
        // With the token, a declared body over the limit is refused before any of it is read.
        let (r, mut c) = with_body(path, ok, LIMIT + 1, false, 0);
        expect(
            &format!("POST {path}, Content-Length {}", LIMIT + 1),
            &r,
            413,
        );
        assert!(
            c.wait_for_close(Duration::from_secs(5)).is_some(),
            "POST {path}: the connection was kept after a 413"
        );
        // A chunked one as soon as it passes the limit.
        let (r, mut c) = with_body(path, ok, 2 * LIMIT, true, LIMIT + (64 << 10));
        expect(&format!("POST {path}, chunked over the limit"), &r, 413);
        assert!(c.wait_for_close(Duration::from_secs(5)).is_some());
    }
    // A body with broken framing.
    for path in [purge, "/reload"] {
        let r = Client::connect(edge.admin)
            .send_raw(&format!(
                "POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer s3cret-token\r\n\
                 Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
            ))
            .expect("an answer");
        expect(&format!("POST {path}, broken chunked body"), &r, 400);
    }
    for (method, path) in [("GET", purge), ("GET", "/reload"), ("PUT", "/reload")] {
        expect(
            &format!("{method} {path}"),
            &admin(&edge, method, path, ok),
            405,
        );
    }
    for (method, path) in [
        ("POST", "/purge/"),
        ("POST", "/purge/http://a.com/a"),
        ("POST", "/reloads"),
        ("GET", "/admin"),
    ] {
        expect(
            &format!("{method} {path}"),
            &admin(&edge, method, path, ok),
            404,
        );
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(is_hit(), "a refused request purged the object");
    assert_eq!(o.count("/a"), 1);
    assert_eq!(version(), before, "a refused request reloaded the config");
    let m = admin(&edge, "GET", "/metrics", ok).body;
    assert_eq!(
        metric_value(&m, "edge_config_reloads_total{result=\"success\"}"),
        0.0
    );

    // The same requests with the token and a body at the limit are served: they were refused
    // for what was wrong with them, not for what they asked.
    let (r, _) = with_body(purge, ok, LIMIT, false, LIMIT);
    assert_eq!((r.status, r.body.as_str()), (200, "purged 1\n"));
    assert!(!is_hit());
    let (r, _) = with_body("/reload", ok, LIMIT, true, LIMIT);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(version(), before);
}

/// A body that trickles in is cut at the admin listener's body timeout (10 s, whole body): 408,
/// the connection closed, and the reload it carried not done.
#[test]
fn a_dripping_admin_body_is_cut_at_the_timeout() {
    use std::io::{Read, Write};
    let o = Origin::start("o");
    let body = format!(
        "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    );
    let edge = Edge::start(&body);
    let before = edge.config_version();
    edge.rewrite(&format!("{body}  - {{host: b.com, origin: web}}\n"));
    let mut s = std::net::TcpStream::connect(edge.admin).unwrap();
    let started = std::time::Instant::now();
    s.write_all(b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    // A byte every 200 ms: each read is quick, the whole body would take 20 s. The dripping
    // stops when the edge closes the connection (or after 100 bytes).
    let mut drip = s.try_clone().unwrap();
    let dripper = std::thread::spawn(move || {
        for _ in 0..100 {
            if drip.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    // The listener serves others meanwhile.
    assert_eq!(get(edge.admin, "admin", "/healthz").status, 200);
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {took:?}: {answer:?}"
    );
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(13),
        "cut after {took:?}"
    );
    dripper.join().unwrap();
    assert_eq!(edge.config_version(), before);
}
