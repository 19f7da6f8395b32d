//! The sample origin behind `cargo run` with no arguments: a tiny HTTP/1.1 server on an
//! ephemeral loopback port, so a newcomer sees the edge work on a fresh machine with nothing else
//! installed. Blocking threads keep it independent of the proxy's runtimes. Not for production.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;

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
        let mut content_length = 0usize;
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
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
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
