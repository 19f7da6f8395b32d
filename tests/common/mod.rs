//! Test harness: real origins on loopback that count what they see, the real `edge` binary run
//! as a process on a config written by the test, and a raw HTTP/1.1 client that can also send
//! what no well-behaved client would. Everything waits on conditions with a bound, never blindly.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A free loopback port (bound and released; the tiny race with other processes is acceptable
/// on a test machine). Never one this test process was given before: the kernel can hand the
/// same released port to two calls in a row (an edge once got it for both its listen and
/// admin addresses).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// One request as the origin received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub conn: u64,
    /// Position of the request on its connection (1 = first).
    pub nth: u32,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A prepared response for one path (query included).
#[derive(Clone, Debug, Default)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Answer only after this long.
    pub delay: Duration,
    /// Send the body chunked in this many pieces, pausing `chunk_pause` between them.
    pub chunks: usize,
    pub chunk_pause: Duration,
}

impl Canned {
    pub fn new(status: u16, headers: &[(&str, &str)], body: &str) -> Canned {
        Canned {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            ..Default::default()
        }
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct OriginState {
    probes: AtomicUsize,
    /// Sent on every non-canned response; None: no Keep-Alive header.
    keep_alive: Mutex<Option<String>>,
    canned: Mutex<HashMap<String, Canned>>,
    accepted: AtomicUsize,
    open: AtomicUsize,
    requests: Mutex<Vec<Seen>>,
    /// Status of GET /healthz.
    health_status: AtomicU16,
    /// Delay before answering anything but /healthz, in ms.
    delay_ms: AtomicU64,
    /// Never answer (to provoke read timeouts).
    silent: AtomicBool,
    stopping: AtomicBool,
}

/// An origin server on loopback, named so responses say who answered (`X-Server`).
pub struct Origin {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<OriginState>,
}

impl Origin {
    pub fn start(name: &str) -> Origin {
        Self::start_with_idle(name, Duration::from_secs(60))
    }

    /// `idle` is the origin's own keep-alive timeout: it closes connections idle that long.
    pub fn start_with_idle(name: &str, idle: Duration) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        state.health_status.store(200, Ordering::SeqCst);
        *state.keep_alive.lock().unwrap() = Some("timeout=60".to_string());
        let (st, nm) = (state.clone(), name.to_string());
        thread::spawn(move || {
            let mut next_conn = 0u64;
            for conn in listener.incoming() {
                if st.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                next_conn += 1;
                let (st, nm, id) = (st.clone(), nm.clone(), next_conn);
                thread::spawn(move || {
                    let mut counted = false;
                    serve(conn, id, &nm, &st, idle, &mut counted);
                    if counted {
                        st.open.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Origin {
            name: name.to_string(),
            addr,
            state,
        }
    }

    /// Idle-timeout probe connections the edge made.
    pub fn probes(&self) -> usize {
        self.state.probes.load(Ordering::SeqCst)
    }
    /// The `Keep-Alive` header value sent with responses (None: not sent).
    pub fn set_keep_alive_header(&self, v: Option<&str>) {
        *self.state.keep_alive.lock().unwrap() = v.map(str::to_string);
    }
    /// TCP connections accepted so far (the edge's probes left out).
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
    /// TCP connections open right now.
    pub fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }
    /// Requests received, health checks and probes excluded.
    pub fn requests(&self) -> Vec<Seen> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path != "/healthz" && s.header("user-agent") != Some(PROBE_AGENT))
            .cloned()
            .collect()
    }
    pub fn request_count(&self) -> usize {
        self.requests().len()
    }
    pub fn health_checks(&self) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == "/healthz" && s.method == "GET")
            .count()
    }
    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
    pub fn set_silent(&self, silent: bool) {
        self.state.silent.store(silent, Ordering::SeqCst);
    }
    /// Answers `path` (exact, query included) with `c`; a request whose If-None-Match matches
    /// the canned ETag gets a 304 with the canned headers.
    pub fn set(&self, path: &str, c: Canned) {
        self.state
            .canned
            .lock()
            .unwrap()
            .insert(path.to_string(), c);
    }
    /// Requests received for one path (query included).
    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|s| s.path == path).count()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // unblock accept()
    }
}

/// The edge's idle-timeout probe (see src/origin/keepalive.rs) identifies itself so: its
/// connections are not traffic and are left out of the counts.
pub const PROBE_AGENT: &str = "edge-keepalive-probe";

fn serve(
    conn: TcpStream,
    id: u64,
    name: &str,
    st: &OriginState,
    idle: Duration,
    counted: &mut bool,
) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    let mut nth = 0u32;
    loop {
        // The keep-alive timeout runs between requests; a new connection waits longer for its
        // first one, as nginx's client_header_timeout (a stalled machine must not make a new
        // connection look like the keep-alive race).
        let limit = if nth == 0 {
            idle.max(Duration::from_secs(10))
        } else {
            idle
        };
        reader.get_ref().set_read_timeout(Some(limit)).ok();
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return, // closed by the peer, or idle for too long
            Ok(_) => {}
        }
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok();
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let body = if chunked {
            read_chunked(&mut reader)
        } else {
            let n: usize = get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut b = vec![0; n];
            if reader.read_exact(&mut b).is_err() {
                return;
            }
            Some(b)
        };
        let Some(body) = body else { return };
        let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        nth += 1;
        if nth == 1 {
            if get("user-agent").as_deref() == Some(PROBE_AGENT) {
                st.probes.fetch_add(1, Ordering::SeqCst);
            } else {
                st.accepted.fetch_add(1, Ordering::SeqCst);
                st.open.fetch_add(1, Ordering::SeqCst);
                *counted = true;
            }
        }
        st.requests.lock().unwrap().push(Seen {
            conn: id,
            nth,
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
        });
        let canned = st.canned.lock().unwrap().get(&path).cloned();
        if let Some(c) = canned {
            if !c.delay.is_zero() {
                thread::sleep(c.delay);
            }
            let not_modified =
                c.header("etag").is_some() && get("if-none-match").as_deref() == c.header("etag");
            let status = if not_modified { 304 } else { c.status };
            let mut head = format!("HTTP/1.1 {status} X\r\nX-Server: {name}\r\n");
            for (k, v) in &c.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            let body: &[u8] = if not_modified || method == "HEAD" {
                b""
            } else {
                &c.body
            };
            let ok = if c.chunks > 1 && !not_modified {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                let mut ok = out.write_all(head.as_bytes()).is_ok();
                let size = body.len().div_ceil(c.chunks);
                for (i, piece) in body.chunks(size.max(1)).enumerate() {
                    if i > 0 {
                        thread::sleep(c.chunk_pause);
                    }
                    ok &= out
                        .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .is_ok();
                    ok &= out.write_all(piece).is_ok();
                    ok &= out.write_all(b"\r\n").is_ok();
                }
                ok && out.write_all(b"0\r\n\r\n").is_ok()
            } else {
                if status != 304 {
                    head.push_str(&format!("Content-Length: {}\r\n", c.body.len()));
                }
                head.push_str("\r\n");
                out.write_all(head.as_bytes()).is_ok() && out.write_all(body).is_ok()
            };
            if !ok || close {
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            continue;
        }
        let (status, text) = if path == "/healthz" {
            let s = st.health_status.load(Ordering::SeqCst);
            (s, format!("{name} health {s}\n"))
        } else {
            if st.silent.load(Ordering::SeqCst) {
                // Hold the connection without answering until the peer gives up.
                let mut sink = [0u8; 64];
                let _ = reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_secs(30)));
                let _ = reader.read(&mut sink);
                return;
            }
            let d = st.delay_ms.load(Ordering::SeqCst);
            if d > 0 {
                thread::sleep(Duration::from_millis(d));
            }
            (200, format!("{name} {method} {path} body={}\n", body.len()))
        };
        let keep_alive = st
            .keep_alive
            .lock()
            .unwrap()
            .as_ref()
            .map_or(String::new(), |v| format!("Keep-Alive: {v}\r\n"));
        let body = if method == "HEAD" { "" } else { text.as_str() };
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nX-Server: {name}\r\n{keep_alive}Content-Length: {}\r\n{}\r\n{body}",
            text.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if out.write_all(resp.as_bytes()).is_err() || close {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn read_chunked(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).ok()?;
        let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).ok()?;
        if n == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

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
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        for h in headers {
            raw.push_str(h);
            raw.push_str("\r\n");
        }
        if method == "POST" || method == "PUT" {
            raw.push_str("Content-Length: 0\r\n");
        }
        raw.push_str("\r\n");
        self.stream.write_all(raw.as_bytes()).expect("request sent");
        self.read_response_to(method).expect("a response")
    }

    /// Sends bytes as they are, without reading anything back.
    pub fn send_raw_no_wait(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).expect("request sent");
    }

    /// Closes the connection with a reset (as load generators and browsers do when they give up).
    pub fn reset(self) {
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
                self.stream.as_raw_fd(),
                1,
                13,
                &l as *const Linger as *const std::ffi::c_void,
                std::mem::size_of::<Linger>() as u32,
            );
        }
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
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let status = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).ok()?;
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
                self.reader.read_line(&mut size).ok()?;
                let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk).ok()?;
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
            self.reader.read_exact(&mut body).ok()?;
            body
        };
        Some(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
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

/// One GET on a fresh connection.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Response {
    Client::connect(addr).get(host, path)
}

/// The `edge` binary, running on a config written by the test. Stopped (SIGINT) on drop.
pub struct Edge {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// The `listen`/`admin` lines the test harness adds to every config body.
    header: String,
    /// False for an edge that was started as an upgrade of another: it owns no config file.
    owns_config: bool,
}

pub fn edge_bin() -> &'static str {
    env!("CARGO_BIN_EXE_edge")
}

/// A unique temp file path for this test process.
pub fn temp_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("edge-test-{}-{n}-{name}", std::process::id()))
}

impl Edge {
    /// Starts the edge with `body` (the config without `listen`/`admin`, which are added on
    /// free ports) and waits until it accepts connections.
    pub fn start(body: &str) -> Edge {
        // A port found free may be taken (by another test's outgoing connection) before the
        // edge binds it; the edge then refuses to start, and we try other ports.
        for _attempt in 0..5 {
            let port = free_port();
            let admin_port = free_port();
            let header = format!(
                "listen: [\"127.0.0.1:{port}\"]\nadmin: {{listen: \"127.0.0.1:{admin_port}\"}}\n"
            );
            let config_path = temp_path("edge.yaml");
            std::fs::write(&config_path, format!("{header}{body}")).unwrap();
            let mut edge = Self::spawn(
                format!("127.0.0.1:{port}").parse().unwrap(),
                format!("127.0.0.1:{admin_port}").parse().unwrap(),
                config_path,
                header,
                false,
            );
            let mut exited = false;
            let up = wait_until(Duration::from_secs(20), || {
                exited = matches!(edge.child.try_wait(), Ok(Some(_)));
                exited
                    || (TcpStream::connect(edge.addr).is_ok()
                        && TcpStream::connect(edge.admin).is_ok())
            });
            if exited && edge.log().contains("cannot listen on") {
                continue;
            }
            assert!(up && !exited, "edge did not start; log:\n{}", edge.log());
            return edge;
        }
        panic!("no free ports for the edge after 5 attempts");
    }

    fn spawn(
        addr: SocketAddr,
        admin: SocketAddr,
        config_path: PathBuf,
        header: String,
        upgrade: bool,
    ) -> Edge {
        let log_path = temp_path("edge.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(edge_bin());
        cmd.arg("-c").arg(&config_path);
        if upgrade {
            cmd.arg("-u");
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Edge {
            addr,
            admin,
            child,
            config_path,
            log_path,
            header,
            owns_config: !upgrade,
        }
    }

    /// Starts a second edge on the same config with `-u`: it takes over the listening sockets
    /// once this one is told to (SIGQUIT).
    pub fn start_upgrade(&self) -> Edge {
        Self::spawn(
            self.addr,
            self.admin,
            self.config_path.clone(),
            self.header.clone(),
            true,
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc_kill(self.pid(), sig);
        }
    }

    /// Waits (bounded) for the process to exit; returns whether it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        wait_until(limit, || matches!(self.child.try_wait(), Ok(Some(_))))
    }

    /// Replaces the config file's body (listen/admin stay as they were).
    pub fn rewrite(&self, body: &str) {
        std::fs::write(&self.config_path, format!("{}{body}", self.header)).unwrap();
    }

    /// POST /reload on the admin listener.
    pub fn reload(&self) -> Response {
        Client::connect(self.admin)
            .send_raw("POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n")
            .expect("a reload response")
    }

    /// The version of the config in force, from GET /config.
    pub fn config_version(&self) -> String {
        let body = get(self.admin, "admin", "/config").body;
        body.lines()
            .find_map(|l| l.strip_prefix("# version: "))
            .unwrap_or_default()
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn get(&self, host: &str, path: &str) -> Response {
        get(self.addr, host, path)
    }

    /// A request on a fresh connection, with extra header lines.
    pub fn request(&self, method: &str, path: &str, headers: &[&str]) -> Response {
        Client::connect(self.addr).request(method, "example.com", path, headers)
    }

    /// POST to the admin listener (reload, purge).
    pub fn admin_post(&self, path: &str) -> Response {
        Client::connect(self.admin)
            .send_raw(&format!(
                "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n"
            ))
            .expect("an admin response")
    }

    /// Peak resident memory of the edge process, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn metrics(&self) -> String {
        get(self.admin, "admin", "/metrics").body
    }

    /// The value of one sample, e.g. `edge_upstream_requests_total{connection="new",origin="web"}`
    /// (labels in the exposition's alphabetical order); 0 if absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics(), sample)
    }
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Drop for Edge {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            self.signal(2);
        }
        let stopped = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.owns_config {
            let _ = std::fs::remove_file(&self.config_path);
        }
        if !thread::panicking() {
            let _ = std::fs::remove_file(&self.log_path);
        } else {
            eprintln!("edge log kept at {}", self.log_path.display());
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
    #[link_name = "setsockopt"]
    fn libc_setsockopt(
        fd: i32,
        level: i32,
        name: i32,
        value: *const std::ffi::c_void,
        len: u32,
    ) -> i32;
}

/// Runs `edge -t -c` on config text; returns (exit code, stderr).
pub fn check_config(text: &str) -> (i32, String) {
    let path = temp_path("check.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(edge_bin())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE"),
    )
}
