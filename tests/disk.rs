//! The disk tier (`cache.disk`) against real origins on loopback and a real file system: what
//! survives a restart, what a corrupt file becomes, the size bound, an object larger than
//! memory streamed to two clients at once, purges on both tiers, a full disk, a kill mid-write,
//! the directory's lock and its handover in a graceful upgrade.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::cache::*;
use common::*;

/// A disk tier's directory for one test.
fn disk_dir() -> PathBuf {
    temp_path("disk")
}

/// One origin, a memory tier of `memory`, the disk tier at `dir` of `disk`.
fn config(o: &Origin, dir: &Path, memory: &str, disk: &str) -> String {
    edge_config(
        o,
        "",
        &format!(
            "cache:\n  max_size: {memory}\n  max_object_size: {disk}\n  disk: {{path: \"{}\", \
             max_size: {disk}}}\n",
            dir.display()
        ),
    )
}

fn disk_objects(edge: &Edge) -> f64 {
    edge.metric("edge_cache_objects{tier=\"disk\"}")
}

/// Starts an edge and waits until its disk tier has indexed its files.
fn start(config: &str, dir: &Path) -> Edge {
    let edge = Edge::start(config);
    let ready = format!("edge_cache_disk_ready{{path=\"{}\"}}", dir.display());
    assert!(
        wait_until(Duration::from_secs(20), || edge.metric(&ready) == 1.0),
        "the disk tier did not get ready; log:\n{}",
        edge.log()
    );
    edge
}

/// The object files under the tier's directory.
fn object_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("objects")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// The body of a GET read by a client with a small receive buffer that takes 16 KiB at a time
/// with a pause between reads (a slow network, paced on purpose).
fn read_slowly(edge: &Edge, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let mut s = std::net::TcpStream::connect(edge.addr).unwrap();
    let small: libc::c_int = 16 << 10;
    // SAFETY: setsockopt on a socket we own, with a c_int it reads.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &small as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0; 16 << 10];
    let (mut head_end, mut len) = (None, 0);
    while head_end.is_none_or(|h| got.len() < h + len) {
        let n = s.read(&mut buf).expect("the edge kept sending");
        assert!(n > 0, "the edge closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if head_end.is_none() {
            if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..at]).to_lowercase();
                len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("a Content-Length");
                head_end = Some(at + 4);
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
    got.split_off(head_end.unwrap())
}

/// An ASCII body in which every offset has a telling byte (a wrong offset shows).
/// A GET of `path` on a connection of its own, counting in `received` the bytes read off the
/// socket as they arrive (read by the shared client's reader, `read_response_from`).
fn get_counting(addr: std::net::SocketAddr, path: &str, received: &AtomicUsize) -> Response {
    struct Counting<'a>(std::net::TcpStream, &'a AtomicUsize);
    impl std::io::Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.fetch_add(n, Ordering::Relaxed);
            Ok(n)
        }
    }
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(
        &mut s,
        request_text("GET", "example.com", path, &[]).as_bytes(),
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(Counting(s, received));
    read_response_from(&mut reader, "GET").expect("a whole response")
}

fn patterned(len: usize) -> String {
    (0..len)
        .map(|i| (b'a' + ((i * 7 + i / 4096) % 26) as u8) as char)
        .collect()
}

#[test]
fn a_restarted_edge_answers_from_its_disk_tier_without_asking_the_origin() {
    let o = Origin::start("o");
    o.set("/a", cc("max-age=600", "alpha"));
    o.set("/b", cc("max-age=600", &patterned(300_000)));
    let dir = disk_dir();
    let conf = config(&o, &dir, "8MiB", "64MiB");
    {
        let edge = start(&conf, &dir);
        for p in ["/a", "/b"] {
            assert_eq!(edge.get("example.com", p).status, 200);
        }
        assert!(wait_until(Duration::from_secs(10), || disk_objects(&edge) == 2.0));
    }
    let edge = start(&conf, &dir);
    let a = edge.get("example.com", "/a");
    assert_eq!((a.status, a.body.as_str()), (200, "alpha"));
    assert!(status_of(&a).contains("hit"), "{}", status_of(&a));
    let b = edge.get("example.com", "/b");
    assert_eq!(b.body, patterned(300_000));
    assert_eq!(
        (o.count("/a"), o.count("/b")),
        (1, 1),
        "the origin was asked again"
    );
    assert_eq!(edge.metric("edge_cache_hits_total{tier=\"disk\"}"), 2.0);
    // The files were in the page cache: the express lane answered from them.
    assert_eq!(edge.metric("edge_express_hits_total"), 2.0);
    // Promoted: the next hits come from memory.
    assert_eq!(edge.get("example.com", "/a").body, "alpha");
    assert_eq!(edge.metric("edge_cache_hits_total{tier=\"disk\"}"), 2.0);
    assert_eq!(edge.metric("edge_cache_objects{tier=\"memory\"}"), 2.0);
}

/// Memory holds a working set twice its size only in part; what it evicts (or never admits)
/// keeps its disk copy, written as it streamed in, and stays a hit: nothing is dropped.
#[test]
fn what_memory_evicts_is_still_a_hit_from_disk() {
    const OBJECTS: usize = 128; // of 16 KiB: 2 MiB through a 1 MiB memory tier
    let o = Origin::start("o");
    let path = |i: usize| format!("/o/{i}");
    let body = |i: usize| format!("{i:05}").repeat((16 << 10) / 5);
    for i in 0..OBJECTS {
        o.set(&path(i), cc("max-age=600", &body(i)));
    }
    let dir = disk_dir();
    let edge = start(&config(&o, &dir, "1MiB", "64MiB"), &dir);
    for i in 0..OBJECTS {
        assert_eq!(edge.get("example.com", &path(i)).status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(20), || disk_objects(&edge)
            == OBJECTS as f64),
        "{} objects on disk, {} skipped",
        disk_objects(&edge),
        edge.metric("edge_cache_disk_skipped_total")
    );
    let in_memory = edge.metric("edge_cache_objects{tier=\"memory\"}");
    assert!(
        in_memory < OBJECTS as f64 / 2.0,
        "{in_memory} objects in 1 MiB"
    );

    for i in 0..OBJECTS {
        let r = edge.get("example.com", &path(i));
        assert_eq!(r.body, body(i), "{}", path(i));
        assert!(
            status_of(&r).contains("hit"),
            "{}: {}",
            path(i),
            status_of(&r)
        );
    }
    for i in 0..OBJECTS {
        assert_eq!(o.count(&path(i)), 1, "{} was fetched again", path(i));
    }
    let from_disk = edge.metric("edge_cache_hits_total{tier=\"disk\"}");
    eprintln!("{in_memory} objects in memory after the first pass, {from_disk} hits from disk");
    assert!(
        from_disk >= OBJECTS as f64 / 2.0,
        "{from_disk} hits from disk"
    );
}

#[test]
fn a_corrupt_file_is_a_miss_not_garbage() {
    let o = Origin::start("o");
    o.set("/c", cc("max-age=600", &patterned(5000)));
    let dir = disk_dir();
    let conf = config(&o, &dir, "8MiB", "64MiB");
    {
        let edge = start(&conf, &dir);
        edge.get("example.com", "/c");
        assert!(wait_until(Duration::from_secs(10), || disk_objects(&edge) == 1.0));
    }
    // One byte of the body flipped, as a bad sector or a stray write would.
    let file = object_files(&dir).pop().expect("one object file");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 200;
    bytes[at] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();

    let edge = start(&conf, &dir);
    let r = edge.get("example.com", "/c");
    assert_eq!(r.body, patterned(5000), "served the corrupt body");
    assert_eq!(o.count("/c"), 2, "not a miss");
    assert_eq!(
        edge.metric("edge_cache_disk_errors_total{reason=\"corrupt\"}"),
        1.0
    );
    // Stored again, whole.
    assert!(wait_until(Duration::from_secs(10), || disk_objects(&edge) == 1.0));
    drop(edge);
    let edge = start(&conf, &dir);
    assert_eq!(edge.get("example.com", "/c").body, patterned(5000));
    assert_eq!(o.count("/c"), 2);
}

#[test]
fn the_disk_tier_stays_within_its_size_under_a_working_set_three_times_larger() {
    let o = Origin::start("o");
    let body = patterned(64 * 1024);
    // 48 MiB of objects through a 16 MiB tier (and a 1 MiB memory tier).
    let n = 768;
    for i in 0..n {
        o.set(&format!("/o{i}"), cc("max-age=600", &body));
    }
    let dir = disk_dir();
    let edge = start(&config(&o, &dir, "1MiB", "16MiB"), &dir);
    let mut c = edge.client();
    for i in 0..n {
        assert_eq!(c.get("example.com", &format!("/o{i}")).status, 200);
    }
    // The writer has caught up when the files and the index agree.
    assert!(wait_until(Duration::from_secs(20), || {
        object_files(&dir).len() as f64 == disk_objects(&edge)
    }));
    let limit = 16u64 << 20;
    let counted = edge.metric("edge_cache_size_bytes{tier=\"disk\"}") as u64;
    let on_disk: u64 = object_files(&dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len().div_ceil(4096) * 4096)
        .sum();
    assert!(counted <= limit, "counted {counted} > {limit}");
    assert_eq!(on_disk, counted, "the count does not match the files");
    assert!(edge.metric("edge_cache_evictions_total{tier=\"disk\"}") > 0.0);
    // Still useful: it holds most of what fits.
    assert!(disk_objects(&edge) >= 150.0, "{}", disk_objects(&edge));
}

#[test]
fn a_200_mib_object_streams_to_two_clients_with_one_origin_fetch_in_little_memory() {
    const LEN: usize = 200 << 20;
    let o = Origin::start("o");
    let body = patterned(LEN);
    let mut c = cc("max-age=600", "");
    c.body = body.clone().into_bytes();
    c.chunks = 40;
    c.chunk_pause = Duration::from_millis(25);
    o.set("/huge", c);
    let dir = disk_dir();
    let edge = start(&config(&o, &dir, "64MiB", "1GiB"), &dir);
    // Warm up the process (threads, buffers) before the baseline.
    o.set("/small", cc("max-age=600", "s"));
    edge.get("example.com", "/small");
    let rss_before = edge.peak_rss();

    let addr = edge.addr;
    let received = Arc::new(AtomicUsize::new(0));
    let first = {
        let received = received.clone();
        thread::spawn(move || get_counting(addr, "/huge", &received))
    };
    assert!(wait_until(Duration::from_secs(10), || o.count("/huge") == 1));
    let second = thread::spawn(move || Client::connect(addr).get("example.com", "/huge"));
    // The first client has its first 8 MiB while the origin is still sending (40 pieces 25 ms
    // apart): the fill streams to it, it is not stored whole first.
    assert!(wait_until(Duration::from_secs(20), || {
        received.load(Ordering::Relaxed) >= 8 << 20
    }));
    assert!(
        disk_objects(&edge) < 2.0,
        "the object was stored whole before the client had 8 MiB"
    );
    let (a, b) = (first.join().unwrap(), second.join().unwrap());
    assert_eq!(a.body.len(), LEN);
    assert!(a.body == body && b.body == body, "a body differs");
    assert_eq!(o.count("/huge"), 1, "the second client fetched again");
    let growth = edge.peak_rss().saturating_sub(rss_before);
    eprintln!(
        "peak RSS growth streaming 200 MiB to two clients: {} KiB",
        growth >> 10
    );
    assert!(
        growth < 32 << 20,
        "peak RSS grew {} MiB streaming 200 MiB",
        growth >> 20
    );

    // Ranges from the stored object, read from their offset on disk.
    assert!(wait_until(Duration::from_secs(20), || disk_objects(&edge) >= 2.0));
    // Bytes the edge read (read, pread and sendfile count, /proc/PID/io's rchar): each range
    // costs its checksummed blocks (1 MiB), not the 200 MiB before it.
    let read = || {
        let io = std::fs::read_to_string(format!("/proc/{}/io", edge.pid())).unwrap();
        let rchar = io.lines().find_map(|l| l.strip_prefix("rchar: "));
        rchar.unwrap().trim().parse::<u64>().unwrap()
    };
    let read_before = read();
    for (start, end) in [
        (0usize, 99usize),
        (150_000_000, 150_000_099),
        (LEN - 10, LEN - 1),
    ] {
        let r = edge.request("GET", "/huge", &[&format!("Range: bytes={start}-{end}")]);
        assert_eq!(r.status, 206, "{start}-{end}");
        assert_eq!(r.body, body[start..=end], "{start}-{end}");
    }
    let ranges_read = read() - read_before;
    eprintln!("three ranges of the 200 MiB object read {ranges_read} bytes");
    assert!(
        ranges_read < 16 << 20,
        "three ranges read {ranges_read} bytes"
    );
    assert_eq!(o.count("/huge"), 1);
    assert_eq!(
        edge.metric("edge_cache_objects{tier=\"memory\"}"),
        1.0,
        "only /small is in memory"
    );
    let growth = edge.peak_rss().saturating_sub(rss_before);
    assert!(growth < 32 << 20, "peak RSS grew {} MiB", growth >> 20);
}

#[test]
fn purges_remove_from_both_tiers_and_soft_purges_revalidate_from_disk() {
    let o = Origin::start("o");
    let tagged = |body: &str, tag: &str| {
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=600"),
                ("Surrogate-Key", tag),
                ("ETag", "\"v1\""),
            ],
            body,
        )
    };
    o.set("/t1", tagged("one", "red"));
    o.set("/t2", tagged("two", "red"));
    o.set("/t3", tagged("three", "blue"));
    let dir = disk_dir();
    let conf = config(&o, &dir, "8MiB", "64MiB");
    {
        let edge = start(&conf, &dir);
        for p in ["/t1", "/t2", "/t3"] {
            edge.get("example.com", p);
        }
        assert!(wait_until(Duration::from_secs(10), || disk_objects(&edge) == 3.0));
        let r = edge.admin_post("/purge?tag=red");
        assert!(r.body.contains("purged 2"), "{}", r.body);
        assert!(wait_until(Duration::from_secs(10), || object_files(&dir)
            .len()
            == 1));
        // Gone from memory too: the same process asks the origin again (and stores it anew).
        assert_eq!(edge.get("example.com", "/t2").body, "two");
        assert_eq!(o.count("/t2"), 2, "a purged object was served from memory");
        assert!(wait_until(Duration::from_secs(10), || disk_objects(&edge) == 2.0));
    }
    let edge = start(&conf, &dir);
    assert_eq!(disk_objects(&edge), 2.0);
    assert_eq!(edge.get("example.com", "/t1").body, "one");
    assert_eq!(o.count("/t1"), 2, "a purged object came back from disk");
    // /t3 is on disk only now: a soft purge marks it stale there, and the next request
    // revalidates it (a 304) instead of fetching it whole.
    let r = edge.admin_post("/purge?tag=blue&soft=1");
    assert!(r.body.contains("purged 1"), "{}", r.body);
    let r = edge.get("example.com", "/t3");
    assert_eq!(r.body, "three");
    let seen = o.requests();
    let last = seen.iter().rev().find(|s| s.path == "/t3").unwrap();
    assert_eq!(
        last.header("if-none-match"),
        Some("\"v1\""),
        "not a revalidation"
    );
}

/// An edge killed in the middle of writing a large object (SIGKILL: no chance to clean up)
/// leaves a partial file in `tmp/`; the next start clears it, and nothing of it is served: the
/// object is fetched whole again. A stored file cut short, as a power loss after its rename
/// could leave it, is dropped too, never served.
#[test]
fn an_edge_killed_mid_write_leaves_nothing_half_written_to_serve() {
    const LEN: usize = 8 << 20;
    let o = Origin::start("o");
    let mut slow = cc("max-age=600", "");
    slow.body = patterned(LEN).into_bytes();
    slow.chunks = 80;
    slow.chunk_pause = Duration::from_millis(30);
    o.set("/slow", slow);
    o.set("/done", cc("max-age=600", &patterned(600_000)));
    let dir = disk_dir();
    let conf = config(&o, &dir, "64MiB", "1GiB");
    let mut edge = start(&conf, &dir);
    assert_eq!(edge.get("example.com", "/done").body.len(), 600_000);
    assert!(wait_until(Duration::from_secs(10), || disk_objects(&edge) == 1.0));

    let addr = edge.addr;
    let reader = thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let _ = s.write_all(b"GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n");
        let mut buf = vec![0u8; 64 << 10];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let partial = || {
        let files = std::fs::read_dir(dir.join("tmp"))
            .into_iter()
            .flatten()
            .flatten();
        files
            .filter(|f| f.metadata().is_ok_and(|m| m.len() >= 1 << 20))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(20), || partial() > 0),
        "no partial file in tmp/"
    );
    edge.signal(9);
    assert!(edge.wait_exit(Duration::from_secs(10)));
    reader.join().unwrap();
    let stored = object_files(&dir);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(&stored[0])
        .unwrap();
    cut.set_len(cut.metadata().unwrap().len() - 1000).unwrap();

    let edge = start(&conf, &dir);
    let left = std::fs::read_dir(dir.join("tmp"))
        .into_iter()
        .flatten()
        .count();
    assert_eq!(left, 0, "tmp/ was not cleared");
    let r = edge.get("example.com", "/slow");
    assert!(r.body == patterned(LEN), "a half-written /slow was served");
    assert_eq!(o.count("/slow"), 2);
    let r = edge.get("example.com", "/done");
    assert!(r.body == patterned(600_000), "a cut /done was served");
    assert_eq!(o.count("/done"), 2, "the cut file was served as a hit");
}

/// What changes a stored object reaches its disk copy: a `304`'s fresher head survives a
/// restart, and an unsafe request (a POST) invalidates an object held on disk only.
#[test]
fn a_refreshed_head_and_an_invalidation_reach_the_disk_copy() {
    let o = Origin::start("o");
    // Stale on arrival (Age 100 against max-age 60): its next use revalidates.
    let rev = |cache_control: &str, age: Option<&str>, rev: &str| {
        let mut fields = vec![
            ("Cache-Control", cache_control),
            ("ETag", "\"v1\""),
            ("X-Rev", rev),
        ];
        fields.extend(age.map(|a| ("Age", a)));
        Canned::new(200, &fields, "body")
    };
    o.set("/r", rev("max-age=60", Some("100"), "1"));
    o.set("/p", cc("max-age=600", "posted-to"));
    let dir = disk_dir();
    let conf = config(&o, &dir, "8MiB", "64MiB");
    {
        let edge = start(&conf, &dir);
        edge.get("example.com", "/r");
        edge.get("example.com", "/p");
        assert!(wait_until(Duration::from_secs(10), || disk_objects(&edge) == 2.0));
        // The 304 makes it fresh for 600 s, with the new X-Rev.
        o.set("/r", rev("max-age=600", None, "2"));
        let r = edge.get("example.com", "/r");
        assert!(
            status_of(&r).contains("fwd-status=304"),
            "{}",
            status_of(&r)
        );
        assert_eq!(r.header("x-rev"), Some("2"));
    }
    let edge = start(&conf, &dir);
    let r = edge.get("example.com", "/r");
    assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
    assert_eq!(
        r.header("x-rev"),
        Some("2"),
        "the disk copy kept the old head"
    );
    assert_eq!(
        o.count("/r"),
        2,
        "the refreshed head did not reach the disk"
    );

    // /p is on disk only in this process; a POST to it invalidates that copy.
    o.set("/p", Canned::new(200, &[], "accepted"));
    assert_eq!(edge.request("POST", "/p", &[]).status, 200);
    o.set("/p", cc("max-age=600", "posted-to"));
    let r = edge.get("example.com", "/p");
    assert_eq!(r.body, "posted-to");
    assert!(status_of(&r).contains("fwd=uri-miss"), "{}", status_of(&r));
    let gets = o.requests();
    let gets = gets.iter().filter(|s| s.path == "/p" && s.method == "GET");
    assert_eq!(gets.count(), 2, "the invalidated disk copy was served");
}

#[test]
fn a_full_disk_leaves_the_edge_serving_from_memory_and_the_origin() {
    let o = Origin::start("o");
    o.set("/big", cc("max-age=600", &patterned(300_000)));
    o.set("/big2", cc("max-age=600", &patterned(200_000)));
    o.set("/small", cc("max-age=600", "small"));
    let dir = disk_dir();
    // Files may not grow past 128 KiB: writing /big fails as on a full disk.
    let edge = Edge::start_limited(
        "\"127.0.0.1:{PORT}\"",
        "",
        &config(&o, &dir, "8MiB", "64MiB"),
        Some(128 << 10),
    );
    let ready = format!("edge_cache_disk_ready{{path=\"{}\"}}", dir.display());
    assert!(wait_until(Duration::from_secs(20), || edge.metric(&ready) == 1.0));
    let r = edge.get("example.com", "/big");
    assert_eq!((r.status, r.body.len()), (200, 300_000));
    assert!(wait_until(Duration::from_secs(10), || {
        edge.metric("edge_cache_disk_errors_total{reason=\"write\"}") >= 1.0
    }));
    let r = edge.get("example.com", "/big");
    assert_eq!(r.body, patterned(300_000));
    assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
    assert_eq!(edge.get("example.com", "/small").body, "small");
    assert!(wait_until(Duration::from_secs(10), || disk_objects(&edge) == 1.0));
    assert_eq!(o.count("/big"), 1);
    assert!(
        object_files(&dir).len() == 1,
        "a half-written file was kept"
    );
    // A second failed write is counted, but not logged again within the minute: a full disk
    // fails every write, and the log says so once.
    assert_eq!(edge.get("example.com", "/big2").body.len(), 200_000);
    assert!(wait_until(Duration::from_secs(10), || {
        edge.metric("edge_cache_disk_errors_total{reason=\"write\"}") >= 2.0
    }));
    let log = edge.log();
    let warned = log.matches("serving from memory and the origin").count();
    assert_eq!(warned, 1, "{log}");
}

#[test]
fn one_edge_per_directory_and_an_upgrade_takes_it_over() {
    let o = Origin::start("o");
    o.set("/u", cc("max-age=600", "kept"));
    let dir = disk_dir();
    let conf = config(&o, &dir, "8MiB", "64MiB");
    let mut old = start(&conf, &dir);
    old.get("example.com", "/u");
    assert!(wait_until(Duration::from_secs(10), || disk_objects(&old) == 1.0));

    // A second edge on the same directory refuses to start.
    let other = temp_path("other.yaml");
    std::fs::write(
        &other,
        format!("listen: [\"127.0.0.1:{}\"]\n{conf}", free_port()),
    )
    .unwrap();
    let out = std::process::Command::new(edge_bin())
        .arg("-c")
        .arg(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by another edge"), "{err}");

    // An upgrade waits for the old process to let go, then serves from the tier.
    let new = old.start_upgrade();
    let t = Instant::now();
    assert!(wait_until(Duration::from_secs(20), || new
        .log()
        .contains("waiting for process")));
    old.signal(3); // SIGQUIT: hand the sockets over, finish, exit
    assert!(old.wait_exit(Duration::from_secs(30)));
    let ready = format!("edge_cache_disk_ready{{path=\"{}\"}}", dir.display());
    assert!(wait_until(Duration::from_secs(20), || new.metric(&ready) == 1.0));
    let r = new.get("example.com", "/u");
    assert_eq!(r.body, "kept");
    assert_eq!(o.count("/u"), 1, "the upgraded edge asked the origin");
    assert!(t.elapsed() < Duration::from_secs(60));
}

/// A stored part (`ranges: forward`) survives a restart like any object: ranges inside it are
/// hits from disk; a plain GET never gets the part, from either tier, but the whole object.
#[test]
fn a_stored_part_is_served_from_disk_after_a_restart_and_only_for_ranges_inside_it() {
    let o = Origin::start("o");
    let body = patterned(300_000);
    let mut object = cc("max-age=600", &body);
    object.ranges = true;
    o.set("/v", object);
    let dir = disk_dir();
    let conf = edge_config(
        &o,
        ", cache: {ranges: forward}",
        &format!(
            "cache:\n  max_size: 8MiB\n  disk: {{path: \"{}\", max_size: 64MiB}}\n",
            dir.display()
        ),
    );
    let range = |edge: &Edge, r: &str| {
        edge.client()
            .request("GET", "example.com", "/v", &[&format!("Range: bytes={r}")])
    };
    {
        let edge = start(&conf, &dir);
        let part = range(&edge, "1000-1999");
        assert_eq!((part.status, part.body.as_str()), (206, &body[1000..2000]));
        assert!(wait_until(Duration::from_secs(10), || disk_objects(&edge) == 1.0));
    }
    let edge = start(&conf, &dir);
    let hit = range(&edge, "1500-1599");
    assert_eq!((hit.status, hit.body.as_str()), (206, &body[1500..1600]));
    assert_eq!(hit.header("content-range"), Some("bytes 1500-1599/300000"));
    assert!(status_of(&hit).contains("hit"), "{}", status_of(&hit));
    assert_eq!(o.count("/v"), 1, "answered from the part on disk");
    let whole = edge.get("example.com", "/v");
    assert_eq!((whole.status, whole.body.len()), (200, body.len()));
    assert!(whole.body == body);
    assert_eq!(o.count("/v"), 2, "the whole object came from the origin");
}

#[test]
fn a_disk_hit_memory_does_not_keep_is_sent_from_its_open_file_until_a_purge() {
    let o = Origin::start("o");
    let object = |body: &str| {
        Canned::new(
            200,
            &[("Cache-Control", "max-age=600"), ("ETag", "\"v1\"")],
            body,
        )
    };
    // Too large for a memory tier of 1 MiB: it lives on disk only, and every hit reads it there.
    // The larger one fills the socket, so `sendfile` stops partway and the rest is written.
    o.set("/small", object(&patterned(1_500_000)));
    o.set("/large", object(&patterned(3_500_000)));
    let dir = disk_dir();
    let edge = start(&config(&o, &dir, "1MiB", "64MiB"), &dir);
    for p in ["/small", "/large"] {
        assert_eq!(edge.get("example.com", p).status, 200);
    }
    assert!(wait_until(Duration::from_secs(10), || disk_objects(&edge) == 2.0));
    let open = |edge: &Edge| edge.metric("edge_cache_disk_open_files");
    let disk_hits = |edge: &Edge| edge.metric("edge_cache_hits_total{tier=\"disk\"}");
    let memory_hits = |edge: &Edge| edge.metric("edge_cache_hits_total{tier=\"memory\"}");
    let memory_before = memory_hits(&edge);
    // The first hit reads and checks each file, and keeps it open; the next ones send from it.
    for round in 1..=3 {
        for (p, len) in [("/small", 1_500_000), ("/large", 3_500_000)] {
            let r = edge.get("example.com", p);
            assert_eq!(r.status, 200, "{p}, round {round}");
            assert!(r.body == patterned(len), "{p}, round {round}: wrong body");
            assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
            assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
        }
        assert_eq!(open(&edge), 2.0, "round {round}");
    }
    // Memory's policy may keep one of them although it is over its size (TinyUFO keeps what it
    // admits until something else comes); every other hit after a file's first read is sent
    // from the open file.
    let from_memory = memory_hits(&edge) - memory_before;
    let from_open_file = edge.metric("edge_cache_disk_open_file_hits_total");
    assert_eq!(disk_hits(&edge), 2.0 + from_open_file);
    assert_eq!(from_open_file + from_memory, 4.0);
    assert!(
        from_open_file >= 2.0,
        "{from_open_file} hits from an open file"
    );
    assert_eq!(edge.metric("edge_express_hits_total"), 6.0);
    // Slow readers get every byte in order (both objects: memory may hold one). On loopback the
    // edge's socket usually takes a body this size at once; `express::send`'s unit test makes
    // `sendfile` stop partway, where order is at stake.
    let before = edge.metric("edge_cache_disk_open_file_hits_total");
    for (p, len) in [("/small", 1_500_000), ("/large", 3_500_000)] {
        let got = read_slowly(&edge, p);
        assert!(
            got == patterned(len).as_bytes(),
            "{p}: a slow reader got other bytes"
        );
    }
    assert!(edge.metric("edge_cache_disk_open_file_hits_total") > before);
    let r = edge.request("HEAD", "/small", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert_eq!(r.header("content-length"), Some("1500000"));
    assert_eq!((o.count("/small"), o.count("/large")), (1, 1));

    // A soft purge closes the files: the next requests revalidate instead of taking an open
    // file's fresh head, and each object is opened again at its next hit from disk.
    let r = edge.admin_post("/purge?prefix=http://example.com/&soft=1");
    assert!(r.body.contains("purged 2"), "{}", r.body);
    assert_eq!(open(&edge), 0.0);
    for (p, len) in [("/small", 1_500_000), ("/large", 3_500_000)] {
        assert!(
            edge.get("example.com", p).body == patterned(len),
            "{p}: wrong body"
        );
        let seen = o.requests();
        let last = seen.iter().rev().find(|s| s.path == p).unwrap();
        assert_eq!(
            last.header("if-none-match"),
            Some("\"v1\""),
            "{p}: not revalidated"
        );
    }
    let before = edge.metric("edge_cache_disk_open_file_hits_total");
    for _ in 0..2 {
        for (p, len) in [("/small", 1_500_000), ("/large", 3_500_000)] {
            let r = edge.get("example.com", p);
            assert!(r.body == patterned(len), "{p}: wrong body");
            assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
        }
    }
    assert!(edge.metric("edge_cache_disk_open_file_hits_total") > before);
    assert!(open(&edge) >= 1.0);
    let asked = o.count("/small");

    // A purge removes the object, and its open file with it.
    let r = edge.admin_post("/purge?prefix=http://example.com/");
    assert!(r.body.contains("purged 2"), "{}", r.body);
    assert_eq!(open(&edge), 0.0);
    assert!(edge.get("example.com", "/small").body == patterned(1_500_000));
    assert_eq!(o.count("/small"), asked + 1, "a purged object was served");
}
