//! The sample origin behind `cargo run` with no arguments: a tiny HTTP/1.1 server on an
//! ephemeral loopback port, so a newcomer sees the edge work on a fresh machine with nothing else
//! installed. Blocking threads keep it independent of the proxy's runtimes. Not for production.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;

/// The largest request body the sample origin reads (and drops: it uses none). A larger one is
/// refused with a 413 before any of it is read, so no request sizes the origin's memory.
const MAX_BODY: u64 = 1 << 20;

/// The bundled config; `{DEMO_ORIGIN}` is replaced by the sample origin's address.
pub const DEMO_CONFIG: &str = include_str!("../conf/demo.yaml");

/// Starts the sample origin and returns its address.
pub fn start_sample_origin() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::Builder::new()
        .name("sample-origin".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                thread::spawn(move || serve(conn));
            }
        })?;
    Ok(addr)
}

fn serve(conn: TcpStream) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0u64;
        let mut close = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    content_length = v.parse().unwrap_or(0);
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        if content_length > MAX_BODY {
            // Closing is the only way to skip a body the origin will not read.
            let text = "the sample origin takes request bodies up to 1 MiB\n";
            let _ = out.write_all(
                format!(
                    "HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\nCache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                )
                .as_bytes(),
            );
            return;
        }
        // Unused: read through io::copy's small buffer and dropped.
        let read = io::copy(&mut (&mut reader).take(content_length), &mut io::sink());
        if read.ok() != Some(content_length) {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let (status, cache, text) = match path {
            "/" => (
                "200 OK",
                "max-age=60",
                "Hello from the sample origin behind edge.\n".to_string(),
            ),
            "/healthz" => ("200 OK", "no-store", "ok\n".to_string()),
            p if p.starts_with("/static/") => {
                ("200 OK", "max-age=3600", format!("static object {p}\n"))
            }
            p => (
                "404 Not Found",
                "no-store",
                format!("the sample origin has no {p}\n"),
            ),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nCache-Control: {cache}\r\nContent-Length: {}\r\n{}\r\n{text}",
            text.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if out.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Sends `raw` on a new connection and returns the status line of the answer ("" if the
    /// connection closed or nothing came within 10 s).
    fn status_line(addr: SocketAddr, raw: &str) -> String {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(raw.as_bytes()).unwrap();
        let mut line = String::new();
        let _ = BufReader::new(conn).read_line(&mut line);
        line.trim_end().to_string()
    }

    #[test]
    fn a_huge_content_length_is_refused_and_the_origin_keeps_serving() {
        let addr = start_sample_origin().unwrap();
        // No body follows: an origin that sized a buffer by the header aborts here (or waits
        // for 100 GB that never come).
        let huge = "POST / HTTP/1.1\r\nHost: demo\r\nContent-Length: 99999999999\r\n\r\n";
        assert_eq!(status_line(addr, huge), "HTTP/1.1 413 Content Too Large");
        let get = "GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n";
        assert_eq!(status_line(addr, get), "HTTP/1.1 200 OK");
    }

    #[test]
    fn a_small_body_is_read_and_the_connection_kept() {
        let addr = start_sample_origin().unwrap();
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let body = "x".repeat(100_000);
        let post = format!("POST / HTTP/1.1\r\nHost: demo\r\nContent-Length: 100000\r\n\r\n{body}");
        conn.write_all(post.as_bytes()).unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: demo\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(conn);
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            statuses.push(line.trim_end().to_string());
            let mut length = 0;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some(v) = h.strip_prefix("Content-Length: ") {
                    length = v.parse().unwrap();
                }
            }
            let mut b = vec![0; length];
            reader.read_exact(&mut b).unwrap();
        }
        assert_eq!(statuses, ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]);
    }
}
