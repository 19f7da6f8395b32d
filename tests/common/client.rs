//! The raw HTTP/1.1 client: one keep-alive connection that sends bytes exactly as given (well
//! formed or not) and reads responses by their framing, and a `Response` as the client saw it.
//! The response reader works on any buffered stream (the TLS client in `tls` uses it too).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    /// Who answered, per the test origin's `X-Server`.
    pub fn server(&self) -> &str {
        self.header("x-server").unwrap_or("-")
    }
}

/// A raw HTTP/1.1 client on one keep-alive connection.
pub struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    pub fn get(&mut self, host: &str, path: &str) -> Response {
        self.send_raw(&format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
            .expect("a response")
    }

    /// A request with extra header lines (each `Name: value`).
    pub fn request(&mut self, method: &str, host: &str, path: &str, headers: &[&str]) -> Response {
        let raw = request_text(method, host, path, headers);
        self.stream.write_all(raw.as_bytes()).expect("request sent");
        self.read_response_to(method).expect("a response")
    }

    /// Sends bytes as they are, without reading anything back.
    pub fn send_raw_no_wait(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).expect("request sent");
    }

    /// Closes the connection with a reset (as load generators and browsers do when they give up).
    pub fn reset(self) {
        linger_zero(&self.stream);
    }

    /// Sends bytes as they are and reads one response; None if the connection closed first.
    pub fn send_raw(&mut self, raw: &str) -> Option<Response> {
        self.stream.write_all(raw.as_bytes()).ok()?;
        self.read_response()
    }

    pub fn read_response(&mut self) -> Option<Response> {
        self.read_response_to("GET")
    }

    /// Reads a response to a request with `method` (a HEAD response has no body).
    pub fn read_response_to(&mut self, method: &str) -> Option<Response> {
        read_response_from(&mut self.reader, method)
    }

    /// Waits (bounded by `limit`) for the server to close this connection; returns how long it
    /// took, or None if it stayed open.
    pub fn wait_for_close(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 1];
        match self.reader.read(&mut b) {
            Ok(0) => Some(start.elapsed()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(start.elapsed()),
            _ => None,
        }
    }
}

/// Reads one response to a request with `method` off `reader`, by its framing; None if the
/// connection closed (or failed) before it was whole.
pub fn read_response_from(reader: &mut impl BufRead, method: &str) -> Option<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let no_body = method == "HEAD" || status == 304 || status == 204;
    let body = if no_body {
        Vec::new()
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break body;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let n: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; n];
        reader.read_exact(&mut body).ok()?;
        body
    };
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// An HTTP/1.1 request head with extra header lines (each `Name: value`); POST and PUT get an
/// empty body.
pub fn request_text(method: &str, host: &str, path: &str, headers: &[&str]) -> String {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for h in headers {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    if method == "POST" || method == "PUT" {
        raw.push_str("Content-Length: 0\r\n");
    }
    raw.push_str("\r\n");
    raw
}

/// One GET on a fresh connection.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Response {
    Client::connect(addr).get(host, path)
}

/// Sets SO_LINGER to 0 on `stream`'s socket: when its last handle is closed, the peer gets a
/// reset rather than a FIN.
pub fn linger_zero(stream: &TcpStream) {
    use std::os::unix::io::AsRawFd;
    #[repr(C)]
    struct Linger {
        onoff: i32,
        secs: i32,
    }
    let l = Linger { onoff: 1, secs: 0 };
    // SOL_SOCKET = 1, SO_LINGER = 13 on Linux.
    unsafe {
        libc_setsockopt(
            stream.as_raw_fd(),
            1,
            13,
            &l as *const Linger as *const std::ffi::c_void,
            std::mem::size_of::<Linger>() as u32,
        );
    }
}

extern "C" {
    #[link_name = "setsockopt"]
    fn libc_setsockopt(
        fd: i32,
        level: i32,
        name: i32,
        value: *const std::ffi::c_void,
        len: u32,
    ) -> i32;
}
