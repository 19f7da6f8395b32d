//! The access log's writer: request threads hand it finished lines and never wait on a disk or
//! a pipe (nginx's `access_log ... buffer=64k flush=1s`).
//!
//! Why: each line used to be its own write to stderr through the logger, under the logger's
//! lock, on the request's thread; that cost 1 KiB hits about a quarter of their throughput.
//!
//! How: a request appends its line to a batch in memory under a short lock. A batch that
//! reaches [`BATCH`] bytes is handed (swapped, not copied) to a writer thread that owns the
//! destination; that thread also writes whatever is buffered every [`FLUSH_INTERVAL`]. Written
//! buffers go back to a free list, so steady traffic allocates none. Memory is bounded: when
//! [`MAX_QUEUED`] batches already wait (a slow disk, a stalled pipe), the next full batch is
//! dropped and its lines counted in `edge_access_log_dropped_lines_total`.
//!
//! The destination (stderr, or `log.access_file`) is reopened on `SIGUSR1` (logrotate's
//! move-then-signal) and when a reload changes `log.access_file`, always by the writer thread
//! between batches, after writing what was buffered before. [`AccessLog::close`] writes what is
//! left at a stop; a crash loses what was buffered, at most about a second of lines.

mod service;
mod sink;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

pub use service::AccessLogService;
pub use sink::{Destination, Output, Sink};

/// A batch is handed to the writer once it holds this much.
pub const BATCH: usize = 64 << 10;
/// The longest a line waits in memory before the writer writes it.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Full batches that may wait for the writer (1 MiB); more are dropped.
pub const MAX_QUEUED: usize = 16;
/// How long [`AccessLog::close`] waits for the writer to write what is left.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Lines in memory, and how many, so that a dropped batch is counted in lines.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    lines: u64,
}

/// What waits for the writer thread, and what it was asked to do. One lock, one condition.
#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    /// Written buffers, for the next batches.
    free: Vec<Vec<u8>>,
    /// Where lines should go: the writer moves there at the next reopen.
    destination: Destination,
    reopen: bool,
    stop: bool,
    /// Set by the writer once it has written everything after `stop`.
    stopped: bool,
}

struct Shared {
    /// The batch requests append to.
    pending: Mutex<Batch>,
    queue: Mutex<Queue>,
    /// Wakes the writer: a batch is queued, or a reopen or the stop was asked for.
    wake: Condvar,
    /// Wakes `close`: the writer has stopped.
    done: Condvar,
    dropped: IntCounter,
    interval: Duration,
}

/// The access log: [`append`](Self::append) from any thread; [`start`](Self::start) the
/// writer thread once, [`close`](Self::close) it at the end.
pub struct AccessLog {
    shared: Arc<Shared>,
    /// The destination, until `start` hands it to the writer thread.
    sink: Mutex<Option<Box<dyn Sink>>>,
}

/// A poisoned lock only means another thread panicked while appending bytes: keep logging.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AccessLog {
    /// Opens `to` now, so that a file that cannot be opened stops the start with an error.
    /// `dropped` counts the lines lost.
    pub fn open(to: &Destination, dropped: IntCounter) -> std::io::Result<AccessLog> {
        let sink = Output::open(to)?;
        Ok(Self::with_sink(Box::new(sink), to, dropped, FLUSH_INTERVAL))
    }

    /// Any sink and interval: tests stall the sink and shorten the interval.
    pub fn with_sink(
        sink: Box<dyn Sink>,
        to: &Destination,
        dropped: IntCounter,
        interval: Duration,
    ) -> AccessLog {
        let queue = Queue {
            destination: to.clone(),
            ..Default::default()
        };
        AccessLog {
            shared: Arc::new(Shared {
                pending: Mutex::new(Batch::default()),
                queue: Mutex::new(queue),
                wake: Condvar::new(),
                done: Condvar::new(),
                dropped,
                interval,
            }),
            sink: Mutex::new(Some(sink)),
        }
    }

    /// Starts the writer thread (once; later calls do nothing). Called from a Pingora service,
    /// which runs after Pingora has daemonized: a thread started before the fork would be lost.
    pub fn start(&self) {
        let Some(sink) = lock(&self.sink).take() else {
            return;
        };
        let writer = Writer::new(self.shared.clone(), sink);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run());
        if let Err(e) = spawned {
            // Lines then pile up to the bound and are counted as dropped.
            log::error!("cannot start the access-log writer thread: {e}; lines are dropped");
        }
    }

    /// Appends one line (without its newline). The only work on a request's thread: a copy
    /// under a short lock, and once per batch a swap of buffers.
    pub fn append(&self, line: &str) {
        let mut p = lock(&self.shared.pending);
        p.buf.reserve(line.len() + 1);
        p.buf.extend_from_slice(line.as_bytes());
        p.buf.push(b'\n');
        p.lines += 1;
        if p.buf.len() >= BATCH {
            self.shared.hand_off(&mut p);
        }
    }

    /// Reopens the destination (after logrotate moved the file), between two batches.
    pub fn reopen(&self) {
        lock(&self.shared.queue).reopen = true;
        self.shared.wake.notify_one();
    }

    /// Moves to `to` if it is not where lines go now (a reload changed `log.access_file`).
    pub fn set_destination(&self, to: &Destination) {
        let mut q = lock(&self.shared.queue);
        if q.destination != *to {
            q.destination = to.clone();
            q.reopen = true;
            self.shared.wake.notify_one();
        }
    }

    /// Writes every line appended so far and stops the writer; waits for it at most
    /// [`CLOSE_TIMEOUT`] (a destination that blocks must not hold the process forever). Lines
    /// appended afterwards are not written.
    pub fn close(&self) {
        // Never started (the process stopped before its services ran, or a test): write here.
        if let Some(sink) = lock(&self.sink).take() {
            Writer::new(self.shared.clone(), sink).step(Wake {
                stop: true,
                ..Default::default()
            });
            return;
        }
        let mut q = lock(&self.shared.queue);
        q.stop = true;
        self.shared.wake.notify_one();
        let end = Instant::now() + CLOSE_TIMEOUT;
        while !q.stopped {
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                log::warn!("the access-log writer did not finish within {CLOSE_TIMEOUT:?}");
                return;
            };
            q = self
                .shared
                .done
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Shared {
    /// Queues the full pending batch for the writer, or drops it when too many wait. Called
    /// with the pending lock held (locks are always taken pending, then queue).
    fn hand_off(&self, p: &mut Batch) {
        let mut q = lock(&self.queue);
        if q.batches.len() >= MAX_QUEUED {
            drop(q);
            self.dropped.inc_by(p.lines);
            p.buf.clear();
            p.lines = 0;
            return;
        }
        let fresh = q.free.pop().unwrap_or_default();
        let full = std::mem::replace(&mut p.buf, fresh);
        q.batches.push_back(Batch {
            buf: full,
            lines: std::mem::take(&mut p.lines),
        });
        drop(q);
        self.wake.notify_one();
    }

    /// Waits until there is something to do, or until `deadline` (the next timed flush).
    fn wait(&self, deadline: Instant) -> Wake {
        let mut q = lock(&self.queue);
        loop {
            let now = Instant::now();
            let flush = now >= deadline;
            if flush || q.stop || q.reopen || !q.batches.is_empty() {
                let reopen = std::mem::take(&mut q.reopen);
                return Wake {
                    flush,
                    reopen: reopen.then(|| q.destination.clone()),
                    stop: q.stop,
                };
            }
            q = self
                .wake
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Why the writer woke. With none set: queued batches only.
#[derive(Default)]
struct Wake {
    /// The interval passed: write the pending batch too.
    flush: bool,
    reopen: Option<Destination>,
    stop: bool,
}

/// The writer thread's side: the destination and the buffers it writes from.
struct Writer {
    shared: Arc<Shared>,
    sink: Box<dyn Sink>,
    /// Queued batches, swapped out of the queue in one go (in order, oldest first).
    batches: VecDeque<Batch>,
    /// An empty buffer swapped for the pending batch when it is written on time.
    spare: Vec<u8>,
    /// Writing fails (disk full, pipe closed): reported once, then again when it recovers.
    failing: bool,
}

impl Writer {
    fn new(shared: Arc<Shared>, sink: Box<dyn Sink>) -> Writer {
        Writer {
            shared,
            sink,
            batches: VecDeque::with_capacity(MAX_QUEUED),
            spare: Vec::new(),
            failing: false,
        }
    }

    fn run(mut self) {
        let mut deadline = Instant::now() + self.shared.interval;
        loop {
            let wake = self.shared.wait(deadline);
            if wake.flush {
                deadline = Instant::now() + self.shared.interval;
            }
            if !self.step(wake) {
                return;
            }
        }
    }

    /// Writes what the wake calls for; false once stopped.
    fn step(&mut self, wake: Wake) -> bool {
        // Before a reopen or the stop, everything appended so far goes to the old destination.
        let everything = wake.flush || wake.reopen.is_some() || wake.stop;
        let pending = self.take(everything);
        while let Some(batch) = self.batches.pop_front() {
            self.write(&batch);
            let mut buf = batch.buf;
            buf.clear();
            let mut q = lock(&self.shared.queue);
            if q.free.len() < MAX_QUEUED {
                q.free.push(buf);
            }
        }
        if let Some(lines) = pending {
            let batch = Batch {
                buf: std::mem::take(&mut self.spare),
                lines,
            };
            self.write(&batch);
            self.spare = batch.buf;
            self.spare.clear();
        }
        if let Some(to) = wake.reopen {
            if let Err(e) = self.sink.reopen(&to) {
                log::error!("access log: cannot open {to}: {e}; still writing where it was");
            }
        }
        if wake.stop {
            lock(&self.shared.queue).stopped = true;
            self.shared.done.notify_all();
            return false;
        }
        true
    }

    /// Takes the queued batches, and with `pending` the batch requests append to (into
    /// `spare`, returning its line count). Both under their locks at once, so that no batch
    /// handed off in between is written after newer lines.
    fn take(&mut self, pending: bool) -> Option<u64> {
        let mut p = pending.then(|| lock(&self.shared.pending));
        let lines = p.as_mut().map(|p| {
            std::mem::swap(&mut p.buf, &mut self.spare);
            std::mem::take(&mut p.lines)
        });
        std::mem::swap(&mut lock(&self.shared.queue).batches, &mut self.batches);
        lines
    }

    fn write(&mut self, batch: &Batch) {
        if batch.buf.is_empty() {
            return;
        }
        match self.sink.write(&batch.buf) {
            Ok(()) if self.failing => {
                self.failing = false;
                log::info!("access log: writing works again");
            }
            Ok(()) => {}
            Err(e) => {
                self.shared.dropped.inc_by(batch.lines);
                if !self.failing {
                    self.failing = true;
                    log::error!(
                        "access log: writing failed: {e}; lines are dropped until it works"
                    );
                }
            }
        }
    }
}
