//! Where the access log's writer thread puts its batches: stderr or a file it can reopen.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Where access lines go (`log.access_file`, or stderr without it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Destination {
    #[default]
    Stderr,
    File(PathBuf),
}

impl Destination {
    /// With `log.access: false` nothing is written, so no file is created or reopened either.
    pub fn of(log: &crate::config::LogSettings) -> Destination {
        match &log.access_file {
            Some(path) if log.access => Destination::File(path.clone()),
            _ => Destination::Stderr,
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Stderr => f.write_str("stderr"),
            Destination::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The writer thread's destination. A trait so that tests can stall or inspect it.
pub trait Sink: Send {
    /// Writes one batch whole.
    fn write(&mut self, batch: &[u8]) -> io::Result<()>;
    /// Opens `to` afresh (the same path after a rotation, or another one). On error the
    /// previous destination stays in use.
    fn reopen(&mut self, to: &Destination) -> io::Result<()>;
}

/// The real destination: stderr (None) or an open file.
pub struct Output(Option<File>);

impl Output {
    /// A file is opened for appending, created if missing, readable by its group (logs hold
    /// client addresses; logrotate's `create` sets what it wants on rotated files).
    pub fn open(to: &Destination) -> io::Result<Output> {
        match to {
            Destination::Stderr => Ok(Output(None)),
            Destination::File(path) => OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(path)
                .map(|f| Output(Some(f))),
        }
    }
}

impl Sink for Output {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        match &mut self.0 {
            Some(f) => f.write_all(batch),
            // Under stderr's lock, which the logger also takes for each of its lines: a batch
            // is never cut by an error line, even on a pipe where large writes are not atomic.
            None => io::stderr().lock().write_all(batch),
        }
    }

    fn reopen(&mut self, to: &Destination) -> io::Result<()> {
        *self = Output::open(to)?;
        Ok(())
    }
}
