//! Request bodies and client connections under the edge's limits: small bodies are read whole
//! and their framing checked before the origin is chosen (a broken one is refused and the
//! origin sees no byte), larger ones stream; `client.max_body_size` (413),
//! `client.body_timeout` (408), `Expect: 100-continue`; `client.max_connections`, and a process
//! out of file descriptors that keeps serving once descriptors are free again.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// An origin that only counts the bytes it receives and never answers: to prove that nothing
/// of a refused request reached it.
struct CountingOrigin {
    addr: SocketAddr,
    bytes: Arc<AtomicUsize>,
}

impl CountingOrigin {
    fn start() -> CountingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(AtomicUsize::new(0));
        let counted = bytes.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        counted.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        CountingOrigin { addr, bytes }
    }

    fn received(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// An edge in front of `origin` (no idle-timeout learning, so no probe connects to it), with
/// `client` settings in YAML flow style.
fn edge_before(origin: SocketAddr, client: &str) -> Edge {
    Edge::start(&format!(
        "client: {{{client}}}\norigins:\n  web: {{servers: [\"{origin}\"], keepalive: {{learn: false}}, timeouts: {{read: 5s}}}}\nroutes:\n  - {{origin: web}}\n"
    ))
}

/// What came back on a raw connection: the status (None: closed without an answer), the
/// response text, and whether the edge closed the connection after it.
struct Answer {
    status: Option<u16>,
    text: String,
    closed: bool,
}

/// Reads one response (head and a Content-Length body), then checks whether the connection
/// was closed behind it.
fn answer(s: &mut TcpStream) -> Answer {
    let mut a = read_one(s);
    if !a.closed {
        let mut byte = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        a.closed = matches!(s.read(&mut byte), Ok(0));
    }
    a
}

/// Reads one response and nothing behind it (`closed`: the connection ended before or at its
/// end).
fn read_one(s: &mut TcpStream) -> Answer {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let complete = |got: &[u8]| -> bool {
        let text = String::from_utf8_lossy(got);
        let Some(end) = text.find("\r\n\r\n") else {
            return false;
        };
        let len = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        got.len() >= end + 4 + len
    };
    let mut closed = false;
    while !complete(&got) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok());
    Answer {
        status,
        text,
        closed,
    }
}

fn send(edge: &Edge, raw: &[u8]) -> Answer {
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.write_all(raw).unwrap();
    answer(&mut s)
}

#[test]
fn a_broken_small_body_is_refused_before_the_origin_sees_a_byte() {
    let origin = CountingOrigin::start();
    let edge = edge_before(origin.addr, "");
    let head = "POST /up HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\n";
    let huge = "f".repeat(17);
    let cases = [
        ("bad hex size", "zz\r\nhello\r\n0\r\n\r\n".to_string()),
        ("size overflow", format!("{huge}\r\nhello\r\n0\r\n\r\n")),
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n".into()),
        (
            "LF inside a chunk extension",
            "5;a\nb\r\nhello\r\n0\r\n\r\n".into(),
        ),
        ("no CRLF after the data", "5\r\nhelloXX0\r\n\r\n".into()),
        (
            "a trailer that is no field",
            "0\r\nnot a field\r\n\r\n".into(),
        ),
    ];
    for (what, body) in &cases {
        let a = send(&edge, format!("{head}{body}").as_bytes());
        assert_eq!(a.status, Some(400), "{what}: {}", a.text);
        assert!(a.text.contains("refused: bad_body"), "{what}: {}", a.text);
        assert!(
            a.closed,
            "{what}: the connection stays open after a framing error"
        );
    }
    // Over TLS or not, the proxy would have had its chance; give any stray bytes time to land.
    let mut c = edge.client();
    let _ = c.send_raw("GET /other HTTP/1.1\r\nHost: a.com\r\nConnection: close\r\n\r\n");
    assert!(
        wait_until(Duration::from_secs(5), || origin.received() > 0),
        "the control request reached the origin"
    );
    let control = origin.received();
    assert!(
        control < 200,
        "the origin received {control} bytes: more than the one GET sent after the refusals"
    );
    assert_eq!(
        edge.metric("edge_refused_requests_total{reason=\"bad_body\"}"),
        cases.len() as f64
    );
}

#[test]
fn bodies_reach_the_origin_whole_whether_read_ahead_or_streamed() {
    let o = Origin::start("o");
    let edge = edge_before(o.addr, "body_buffer_size: 16KiB");
    let chunk = "x".repeat(1000);
    // Small, chunked, with extensions and a trailer: read ahead, forwarded whole.
    let small = format!(
        "POST /small HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\n3e8;ext=1\r\n{chunk}\r\n3e8\r\n{chunk}\r\n0\r\nX-T: 1\r\n\r\n"
    );
    let a = send(&edge, small.as_bytes());
    assert!(a.text.ends_with("o POST /small body=2000\n"), "{}", a.text);
    // Larger than the buffer, chunked: checked as far as read, then streamed.
    let mut big =
        String::from("POST /big HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..300 {
        big.push_str(&format!("3e8\r\n{chunk}\r\n"));
    }
    big.push_str("0\r\n\r\n");
    let a = send(&edge, big.as_bytes());
    assert!(a.text.ends_with("o POST /big body=300000\n"), "{}", a.text);
    // A 1 MiB Content-Length body streams.
    let mb = "y".repeat(1 << 20);
    let a = send(
        &edge,
        format!(
            "PUT /mb HTTP/1.1\r\nHost: a.com\r\nContent-Length: {}\r\n\r\n{mb}",
            mb.len()
        )
        .as_bytes(),
    );
    assert!(a.text.ends_with("o PUT /mb body=1048576\n"), "{}", a.text);

    // Expect: 100-continue: the edge, reading the body itself, says to send it, and the origin
    // gets the request without the field.
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.write_all(b"POST /expect HTTP/1.1\r\nHost: a.com\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    let mut interim = [0u8; 25];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut interim)
        .unwrap_or_else(|e| panic!("no 100 Continue before the body: {e}; log:\n{}", edge.log()));
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").unwrap();
    let a = answer(&mut s);
    assert!(a.text.ends_with("o POST /expect body=5\n"), "{}", a.text);
    let seen = o
        .requests()
        .into_iter()
        .find(|r| r.path == "/expect")
        .unwrap();
    assert_eq!(seen.header("expect"), None);

    // A request pipelined behind a body is answered too, in order.
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.write_all(b"POST /p1 HTTP/1.1\r\nHost: a.com\r\nContent-Length: 3\r\n\r\nabcGET /p2 HTTP/1.1\r\nHost: a.com\r\n\r\n")
        .unwrap();
    let first = read_one(&mut s);
    assert!(
        first.text.ends_with("o POST /p1 body=3\n"),
        "{}",
        first.text
    );
    let second = read_one(&mut s);
    assert!(
        second.text.ends_with("o GET /p2 body=0\n"),
        "{}",
        second.text
    );
}

#[test]
fn body_size_and_time_limits() {
    let counting = CountingOrigin::start();
    let client = "body_buffer_size: 16KiB, max_body_size: 100KiB, body_timeout: 1s";
    let edge = edge_before(counting.addr, client);

    // Too large by its Content-Length: 413 at once, without waiting for the body.
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.write_all(b"POST /big HTTP/1.1\r\nHost: a.com\r\nContent-Length: 204800\r\n\r\n")
        .unwrap();
    let a = answer(&mut s);
    assert_eq!(a.status, Some(413), "{}", a.text);
    assert!(a.closed);

    // A small body that stops arriving: 408 after body_timeout, and the origin saw nothing.
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.write_all(b"POST /slow HTTP/1.1\r\nHost: a.com\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let asked = Instant::now();
    let a = answer(&mut s);
    let took = asked.elapsed();
    assert_eq!(
        a.status,
        Some(408),
        "after {took:?}: {:?}; log:\n{}",
        a.text,
        edge.log()
    );
    assert!(a.closed);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(counting.received(), 0, "the origin saw a refused request");
    assert_eq!(
        edge.metric("edge_refused_requests_total{reason=\"body_timeout\"}"),
        1.0
    );
    assert_eq!(
        edge.metric("edge_refused_requests_total{reason=\"body_too_large\"}"),
        1.0
    );

    // A chunked body past the limit, against a real origin: 413, and the origin never gets a
    // complete request.
    let o = Origin::start("o");
    let edge = edge_before(o.addr, client);
    let chunk = "z".repeat(10_000);
    let mut body = String::new();
    for _ in 0..15 {
        body.push_str(&format!("2710\r\n{chunk}\r\n"));
    }
    body.push_str("0\r\n\r\n");
    let a = send(
        &edge,
        format!("POST /huge HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
            .as_bytes(),
    );
    assert!(
        a.status.is_none_or(|s| s == 413),
        "past max_body_size: {}",
        a.text
    );
    assert_eq!(o.count("/huge"), 0, "the origin got a complete request");
    // A streamed body (larger than the buffer) that stalls: 408, and no complete request.
    let mut s = TcpStream::connect(edge.addr).unwrap();
    let part = "w".repeat(30_000);
    s.write_all(
        format!("POST /stall HTTP/1.1\r\nHost: a.com\r\nContent-Length: 50000\r\n\r\n{part}")
            .as_bytes(),
    )
    .unwrap();
    let a = answer(&mut s);
    assert_eq!(a.status, Some(408), "{}", a.text);
    assert_eq!(o.count("/stall"), 0);
}

#[test]
fn connections_beyond_the_limit_are_closed_at_once() {
    let o = Origin::start("o");
    let edge = edge_before(o.addr, "max_connections: 3");
    let mut held: Vec<Client> = (0..3).map(|_| edge.client()).collect();
    for c in &mut held {
        assert_eq!(c.get("a.com", "/x").status, 200);
    }
    // The fourth is closed without an answer.
    let mut extra = TcpStream::connect(edge.addr).unwrap();
    let _ = extra.write_all(b"GET /x HTTP/1.1\r\nHost: a.com\r\n\r\n");
    let a = answer(&mut extra);
    assert_eq!(a.status, None, "served beyond the limit: {}", a.text);
    assert!(edge.metric("edge_client_connections_refused_total") >= 1.0);
    // One leaves: a new connection is served again.
    drop(held.pop());
    let served = wait_until(Duration::from_secs(5), || {
        let mut s = TcpStream::connect(edge.addr).unwrap();
        let _ = s.write_all(b"GET /x HTTP/1.1\r\nHost: a.com\r\n\r\n");
        answer(&mut s).status == Some(200)
    });
    assert!(served, "no connection was served after one of three closed");
}

/// Descriptors in use by a process.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn running_out_of_descriptors_is_survived_without_a_busy_loop() {
    let o = Origin::start("o");
    let edge = edge_before(o.addr, "max_connections: 0");
    assert_eq!(edge.get("a.com", "/warm").status, 200);
    // Leave the edge a few descriptors more than it uses now.
    let limit = (open_fds(edge.pid()) + 4) as u64;
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit only reads the struct passed.
    let set = unsafe { libc::prlimit(edge.pid(), libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit on the edge");
    let clients: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(edge.addr).unwrap())
        .collect();
    let emfile = |log: &str| log.matches("Too many open files").count();
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || emfile(&edge.log()) >= 3),
        "no EMFILE logged; log:\n{}",
        edge.log()
    );
    let secs = started.elapsed().as_secs_f64();
    let lines = emfile(&edge.log());
    assert!(
        (lines as f64) <= 2.0 * secs + 4.0,
        "{lines} EMFILE lines in {secs:.1}s: the accept loop spins"
    );
    drop(clients);
    let served = wait_until(Duration::from_secs(10), || {
        TcpStream::connect(edge.addr).ok().and_then(|mut s| {
            s.write_all(b"GET /after HTTP/1.1\r\nHost: a.com\r\n\r\n")
                .ok()?;
            answer(&mut s).status
        }) == Some(200)
    });
    assert!(
        served,
        "not serving once descriptors were free; log:\n{}",
        edge.log()
    );
}
