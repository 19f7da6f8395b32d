//! The test origin: an HTTP/1.1 server on loopback, one thread per connection, that records
//! every request it receives (`Seen`), answers prepared responses (`Canned`) or a default one
//! naming itself, and can be made slow, silent or unhealthy, or be killed and restarted on the
//! same address (`kill`, `restart`). It serves over plain TCP, or over whatever stream `Conn`
//! covers (the TLS origin in `tls` serves the same HTTP over rustls).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{linger_zero, wait_until};

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
    /// Send the full Content-Length but only this many body bytes, then stall until the peer
    /// gives up (a broken origin), and close.
    pub stall_after: Option<usize>,
    /// Close the connection on receiving the request, answering nothing (an origin that crashed
    /// or dropped it).
    pub hang_up: bool,
    /// Answer a request for one range of bytes (`bytes=a-b`, `a-`, `-n`) with a `206` of it.
    pub ranges: bool,
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

    /// This response cut to the one range of bytes `range` asks for, as a `206`; itself when
    /// the range is not one it reads or covers no byte.
    fn ranged(&self, range: &str) -> Canned {
        let len = self.body.len();
        let spec = range.trim().strip_prefix("bytes=").unwrap_or("");
        let last_byte = len.checked_sub(1);
        let bounds = spec
            .split_once('-')
            .and_then(|(a, b)| match (a.trim(), b.trim()) {
                ("", n) => Some((len.saturating_sub(n.parse().ok()?), last_byte?)),
                (a, "") => Some((a.parse().ok()?, last_byte?)),
                (a, b) => Some((a.parse().ok()?, b.parse::<usize>().ok()?.min(last_byte?))),
            });
        match bounds {
            Some((first, last)) if first <= last && !spec.contains(',') => {
                let mut part = self.clone();
                part.status = 206;
                part.body = self.body[first..=last].to_vec();
                let range = format!("bytes {first}-{last}/{len}");
                part.headers.push(("Content-Range".into(), range));
                part
            }
            _ => self.clone(),
        }
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
    /// Ids of connections accepted so far (over every listener, across restarts).
    next_conn: AtomicU64,
    /// A handle on the socket of every connection being served, by id, so `kill` can end them.
    live: Mutex<HashMap<u64, TcpStream>>,
}

/// A listening socket's accept loop, on a thread of its own; `stop` (then a connection to wake
/// it) ends the loop, which closes the socket.
struct Accepting {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Starts serving on a listener (the same for `start` and `restart`).
type ServeOn = dyn Fn(TcpListener) -> Accepting + Send + Sync;

/// An origin server on loopback, named so responses say who answered (`X-Server`).
pub struct Origin {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<OriginState>,
    serve_on: Arc<ServeOn>,
    /// None while killed.
    accepting: Mutex<Option<Accepting>>,
}

impl Origin {
    pub fn start(name: &str) -> Origin {
        Self::start_with_idle(name, Duration::from_secs(60))
    }

    /// `idle` is the origin's own keep-alive timeout: it closes connections idle that long.
    pub fn start_with_idle(name: &str, idle: Duration) -> Origin {
        Self::start_over(name, idle, Some)
    }

    /// Serves HTTP/1.1 over what `wrap` makes of each accepted TCP connection, on that
    /// connection's own thread (None: the connection is dropped unserved). The TLS origin's
    /// handshake happens there.
    pub(super) fn start_over<C, W>(name: &str, idle: Duration, wrap: W) -> Origin
    where
        C: Conn,
        W: Fn(TcpStream) -> Option<C> + Send + Sync + 'static,
    {
        let wrap = Arc::new(wrap);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        state.health_status.store(200, Ordering::SeqCst);
        *state.keep_alive.lock().unwrap() = Some("timeout=60".to_string());
        let (st, nm) = (state.clone(), name.to_string());
        let serve_on: Arc<ServeOn> = Arc::new(move |listener: TcpListener| {
            let stop = Arc::new(AtomicBool::new(false));
            let (st, nm, wrap, stopped) = (st.clone(), nm.clone(), wrap.clone(), stop.clone());
            let thread = thread::spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        return; // drops the listener: connects are refused from now
                    }
                    let Ok(conn) = conn else { continue };
                    let id = st.next_conn.fetch_add(1, Ordering::SeqCst) + 1;
                    let Ok(handle) = conn.try_clone() else {
                        continue;
                    };
                    st.live.lock().unwrap().insert(id, handle);
                    let (st, nm, wrap) = (st.clone(), nm.clone(), wrap.clone());
                    thread::spawn(move || {
                        if let Some(conn) = wrap(conn) {
                            let mut counted = false;
                            serve(conn, id, &nm, &st, idle, &mut counted);
                            if counted {
                                st.open.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                        st.live.lock().unwrap().remove(&id);
                    });
                }
            });
            Accepting { stop, thread }
        });
        let accepting = serve_on(listener);
        Origin {
            name: name.to_string(),
            addr,
            state,
            serve_on,
            accepting: Mutex::new(Some(accepting)),
        }
    }

    /// Kills the server as a crash looks from outside: its listening socket is closed (connects
    /// are refused) and every connection it has open is ended at once, idle or in the middle of
    /// a request or response: a FIN now, then a reset when the connection's thread lets go of it
    /// (linger 0). What it has recorded stays; `restart` serves again on the same address.
    /// Returns how many connections it ended.
    pub fn kill(&self) -> usize {
        let accepting = self
            .accepting
            .lock()
            .unwrap()
            .take()
            .expect("kill: the origin is not running");
        accepting.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes accept()
        assert!(
            wait_until(Duration::from_secs(5), || accepting.thread.is_finished()),
            "kill: the origin's listener did not close"
        );
        // Every connection was registered by the accept loop, which has ended.
        let mut live = self.state.live.lock().unwrap();
        let ended = live.len();
        for (_, conn) in live.drain() {
            linger_zero(&conn);
            let _ = conn.shutdown(Shutdown::Both);
        }
        ended
    }

    /// Serves again on the same address after `kill`, with the same state (counts, canned
    /// answers, health status).
    pub fn restart(&self) {
        let mut accepting = self.accepting.lock().unwrap();
        assert!(accepting.is_none(), "restart: the origin is running");
        // The port was ours a moment ago and is bound with SO_REUSEADDR (std does so on Unix),
        // so this fails only if another socket took it meanwhile: tried for a bounded while.
        let mut listener = None;
        wait_until(Duration::from_secs(5), || {
            listener = TcpListener::bind(self.addr).ok();
            listener.is_some()
        });
        let listener = listener.unwrap_or_else(|| panic!("restart: cannot bind {}", self.addr));
        *accepting = Some((self.serve_on)(listener));
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
        if let Some(a) = self.accepting.get_mut().unwrap().take() {
            a.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr); // unblock accept()
        }
    }
}

/// A connection the origin serves HTTP/1.1 on: a TCP stream, or a TLS stream over one.
pub(super) trait Conn: Read + Write {
    /// Bounds each read on the underlying socket.
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()>;
    /// Ends the connection, both ways (over TLS: after a close_notify).
    fn close(&mut self);
}

impl Conn for TcpStream {
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, limit)
    }
    fn close(&mut self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

/// The edge's idle-timeout probe (see src/origin/keepalive.rs) identifies itself so: its
/// connections are not traffic and are left out of the counts.
pub const PROBE_AGENT: &str = "edge-keepalive-probe";

/// One connection, request after request, until the peer closes it, it stays idle past `idle`,
/// or a response says `Connection: close`. `counted` is set once the connection is counted as
/// open (its first request was not the edge's probe), so the caller can count it closed.
fn serve<C: Conn>(
    conn: C,
    id: u64,
    name: &str,
    st: &OriginState,
    idle: Duration,
    counted: &mut bool,
) {
    // Responses are written through the reader to the stream under it: TLS has no second handle.
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
        let Some(Request {
            method,
            path,
            headers,
            body,
        }) = read_request(&mut reader, limit)
        else {
            return;
        };
        // A connection `kill` ended sees nothing more, not even a request that was already in its
        // buffers: a dead process neither counts nor answers it. Checked under the lock `kill`
        // takes, so nothing is recorded once `kill` has returned.
        let live = st.live.lock().unwrap();
        if !live.contains_key(&id) {
            return;
        }
        let get = |n: &str| field(&headers, n);
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
        drop(live);
        let canned = st.canned.lock().unwrap().get(&path).cloned();
        if let Some(c) = canned {
            if c.hang_up {
                reader.get_mut().close();
                return;
            }
            if !c.delay.is_zero() {
                thread::sleep(c.delay);
            }
            let not_modified =
                c.header("etag").is_some() && get("if-none-match").as_deref() == c.header("etag");
            // If-Range with another entity tag than this response's: the whole response.
            let if_range_holds =
                get("if-range").is_none_or(|t| Some(t.as_str()) == c.header("etag"));
            let c = match get("range") {
                Some(range) if c.ranges && !not_modified && if_range_holds => c.ranged(&range),
                _ => c,
            };
            let ok = write_canned(reader.get_mut(), name, &c, &method, not_modified);
            if !ok || close {
                reader.get_mut().close();
                return;
            }
            continue;
        }
        let Some((status, text)) = default_answer(&mut reader, st, name, &method, &path, &body)
        else {
            return;
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
        if reader.get_mut().write_all(resp.as_bytes()).is_err() || close {
            reader.get_mut().close();
            return;
        }
    }
}

/// The status and body for a request with nothing canned: the health status for /healthz, else
/// a 200 naming the origin, the request and its body size, after the configured delay. None
/// when the origin is silent: it has held the connection until the peer gave up.
fn default_answer<C: Conn>(
    reader: &mut BufReader<C>,
    st: &OriginState,
    name: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    let answer = if path == "/healthz" {
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
            return None;
        }
        let d = st.delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            thread::sleep(Duration::from_millis(d));
        }
        (200, format!("{name} {method} {path} body={}\n", body.len()))
    };
    Some(answer)
}

/// One request as read off a connection.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The value of the first field called `name` (any case).
fn field(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// Reads the next request, waiting up to `limit` for its first line (then 10 s for the rest).
/// None if the peer closed, stayed idle past `limit`, or sent a body that did not arrive whole.
fn read_request<C: Conn>(reader: &mut BufReader<C>, limit: Duration) -> Option<Request> {
    reader.get_ref().set_read_timeout(Some(limit)).ok();
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => return None, // closed by the peer, or idle for too long
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
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |n: &str| field(&headers, n);
    let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let body = if chunked {
        read_chunked(reader)
    } else {
        let n: usize = get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut b = vec![0; n];
        if reader.read_exact(&mut b).is_err() {
            return None;
        }
        Some(b)
    };
    Some(Request {
        method,
        path,
        headers,
        body: body?,
    })
}

/// Writes the canned response `c` (a 304 with its headers if `not_modified`, no body for a
/// HEAD); false if the connection failed.
fn write_canned(
    out: &mut impl Write,
    name: &str,
    c: &Canned,
    method: &str,
    not_modified: bool,
) -> bool {
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
    if c.chunks > 1 && !not_modified {
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
        if let Some(n) = c.stall_after {
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(&body[..n.min(body.len())]);
            let _ = out.flush();
            // Holding the connection open without sending the rest: the edge's read timeout
            // must end it. Bounded, so the origin thread always ends.
            thread::sleep(Duration::from_secs(15));
            return false;
        }
        out.write_all(head.as_bytes()).is_ok() && out.write_all(body).is_ok()
    }
}

fn read_chunked(r: &mut impl BufRead) -> Option<Vec<u8>> {
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
