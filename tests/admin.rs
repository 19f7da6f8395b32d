//! The admin API locked by a bearer token (`admin.token_file`): every endpoint but
//! `GET /healthz` answers 401 without the right token and changes nothing; tokens are re-read
//! on reload; `edge -t` refuses an admin listener beyond loopback without a token.

mod common;

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

#[test]
fn every_endpoint_but_healthz_needs_the_token() {
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
