//! The writer's promises: batches of 64 KiB, a flush on the interval, dropped lines counted
//! when the writer is stalled, order kept, a reopen after a rename, everything written at close.

use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use super::*;

const LONG: Duration = Duration::from_secs(3600);

/// What a sink was given: each write as it came.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<Vec<u8>>>>);

impl Memory {
    fn writes(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().clone()
    }

    fn text(&self) -> String {
        String::from_utf8(self.writes().concat()).unwrap()
    }
}

impl Sink for Memory {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap().push(batch.to_vec());
        Ok(())
    }

    fn reopen(&mut self, _: &Destination) -> io::Result<()> {
        Ok(())
    }
}

/// A sink that says when a write starts and then waits for `go` (or for its sender to go).
struct Stalled {
    entered: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
    inner: Memory,
}

impl Sink for Stalled {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        let _ = self.entered.send(());
        let _ = self.go.recv();
        self.inner.write(batch)
    }

    fn reopen(&mut self, _: &Destination) -> io::Result<()> {
        Ok(())
    }
}

fn counter() -> IntCounter {
    IntCounter::new("dropped", "dropped").unwrap()
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Line `i`, 1023 bytes long: with its newline 64 lines make a batch exactly.
fn line(i: usize) -> String {
    format!("{i:06} {}", "x".repeat(1016))
}

const PER_BATCH: usize = BATCH / 1024;

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("edge-access-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// An access log writing to memory, flushing every `interval`, its dropped lines uncounted.
fn in_memory(interval: Duration) -> (Memory, AccessLog) {
    let sink = Memory::default();
    let log = AccessLog::with_sink(
        Box::new(sink.clone()),
        &Destination::Stderr,
        counter(),
        interval,
    );
    (sink, log)
}

#[test]
fn a_full_batch_is_written_whole_and_the_rest_waits() {
    let (sink, log) = in_memory(LONG);
    log.start();
    for i in 0..PER_BATCH + 3 {
        log.append(&line(i));
    }
    assert!(wait_until(Duration::from_secs(5), || !sink
        .writes()
        .is_empty()));
    let writes = sink.writes();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].len(), BATCH);
    assert!(String::from_utf8_lossy(&writes[0]).starts_with(&line(0)));
    // The three lines after it wait for the interval, or for close.
    log.close();
    let text = sink.text();
    let expected: String = (0..PER_BATCH + 3).map(|i| line(i) + "\n").collect();
    assert_eq!(text, expected);
}

#[test]
fn what_is_buffered_is_written_on_the_interval() {
    let interval = Duration::from_millis(50);
    let (sink, log) = in_memory(interval);
    // Appended before the writer starts, so that both are surely there at its first tick.
    log.append("one");
    log.append("two");
    log.start();
    assert!(wait_until(Duration::from_secs(5), || sink.text() == "one\ntwo\n"));
    log.append("three");
    assert!(wait_until(Duration::from_secs(5), || sink.text()
        == "one\ntwo\nthree\n"));
    // Each on its own tick: one write per flush, not one per line.
    assert_eq!(sink.writes().len(), 2);
    log.close();
}

#[test]
fn a_stalled_writer_drops_whole_batches_and_counts_their_lines() {
    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let inner = Memory::default();
    let sink = Stalled {
        entered: entered_tx,
        go: go_rx,
        inner: inner.clone(),
    };
    let dropped = counter();
    let log = AccessLog::with_sink(Box::new(sink), &Destination::Stderr, dropped.clone(), LONG);
    log.start();
    let mut n = 0;
    let mut batch = |log: &AccessLog| {
        for _ in 0..PER_BATCH {
            log.append(&line(n));
            n += 1;
        }
    };
    // The writer takes the first batch and stalls on it; the queue then fills.
    batch(&log);
    entered.recv_timeout(Duration::from_secs(5)).unwrap();
    for _ in 0..MAX_QUEUED {
        batch(&log);
    }
    assert_eq!(dropped.get(), 0);
    batch(&log);
    assert_eq!(dropped.get(), PER_BATCH as u64, "one whole batch dropped");
    // Memory stayed bounded; once the writer has caught up, new lines get through.
    drop(go);
    let caught_up = (MAX_QUEUED + 1) * BATCH;
    assert!(wait_until(Duration::from_secs(5), || inner.text().len() == caught_up));
    batch(&log);
    log.close();
    let kept = (0..(MAX_QUEUED + 1) * PER_BATCH).chain((MAX_QUEUED + 2) * PER_BATCH..n);
    let expected: String = kept.map(|i| line(i) + "\n").collect();
    assert!(inner.text() == expected, "lines lost or out of order");
}

#[test]
fn close_writes_what_is_buffered_started_or_not() {
    let (sink, log) = in_memory(LONG);
    log.start();
    log.append("last");
    log.close();
    assert_eq!(sink.text(), "last\n");

    let (never_started, log) = in_memory(LONG);
    log.append("only");
    log.close();
    assert_eq!(never_started.text(), "only\n");
}

/// logrotate: the file is moved, then the edge is told; lines before stay in the moved file.
#[test]
fn reopen_after_a_rename_writes_to_a_new_file() {
    let path = temp("rotate.log");
    let rotated = path.with_extension("log.1");
    let to = Destination::File(path.clone());
    let log = AccessLog::open(&to, counter()).unwrap();
    log.start();
    log.append("before");
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen();
    assert!(wait_until(Duration::from_secs(5), || path.exists()));
    log.append("after");
    log.close();
    assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "before\n");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077 & !0o040, 0, "readable by owner and group only");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rotated);
}

#[test]
fn a_new_destination_takes_the_lines_after_it() {
    let (a, b) = (temp("a.log"), temp("b.log"));
    let log = AccessLog::open(&Destination::File(a.clone()), counter()).unwrap();
    log.start();
    log.append("to a");
    log.set_destination(&Destination::File(a.clone()));
    log.set_destination(&Destination::File(b.clone()));
    assert!(wait_until(Duration::from_secs(5), || b.exists()));
    log.append("to b");
    log.close();
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "to a\n");
    assert_eq!(std::fs::read_to_string(&b).unwrap(), "to b\n");
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
}
