//! Where this edge is in the fleet's purge stream, kept beside its disk tier, and the hold on
//! that tier until the purges it missed are applied.
//!
//! Why: a disk tier survives a restart, and so does what it holds, including objects that a
//! purge sent while this edge was down removed everywhere else. The position (the stream's
//! creation time and the last sequence applied) is written to `PATH/cluster-position`; at
//! start the purge task resumes the stream right after it, and the disk tier's hits are held
//! back (lookups miss, the origin answers) until the task has applied everything the stream
//! held when it opened. If NATS cannot be reached within `REPLAY_WAIT`, the tier is marked
//! stale instead (a soft purge of everything: each object revalidates at its next use) and
//! released: availability first, and nothing purged is served unrevalidated.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};

use crate::cache::store::disk::Disk;

/// How long disk hits wait for the replay before the tier is marked stale and released.
pub const REPLAY_WAIT: Duration = Duration::from_secs(10);

/// How often the position is written while purges are applied (and at stop).
const SAVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub stream: String,
    pub created: SystemTime,
    pub applied: u64,
}

/// The position saved for `stream`, if any (one for another stream is ignored).
pub fn load(file: &Path, stream: &str) -> Option<Position> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut words = text.split_whitespace();
    let (name, created, applied) = (words.next()?, words.next()?, words.next()?);
    (name == stream).then_some(())?;
    Some(Position {
        stream: name.to_string(),
        created: UNIX_EPOCH + Duration::from_nanos(created.parse().ok()?),
        applied: applied.parse().ok()?,
    })
}

/// Writes it whole or not at all (a temporary file renamed over the old one).
pub fn save(file: &Path, p: &Position) -> std::io::Result<()> {
    let nanos = p.created.duration_since(UNIX_EPOCH).unwrap_or_default();
    let tmp = file.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("{} {} {}\n", p.stream, nanos.as_nanos(), p.applied),
    )?;
    std::fs::rename(&tmp, file)
}

/// The purge task's side of the disk tier: saves the position, releases the hold.
pub struct Replay {
    pub disk: &'static Disk,
    file: PathBuf,
    stream: String,
    /// The stream's last sequence when it opened while the hold was on.
    target: Option<u64>,
    /// The sequence last saved (None: nothing saved yet) and when.
    saved: (Option<u64>, Instant),
}

impl Replay {
    pub fn new(disk: &'static Disk, stream: &str) -> Replay {
        Replay {
            disk,
            file: disk.position_file(),
            stream: stream.to_string(),
            target: None,
            saved: (None, Instant::now()),
        }
    }

    pub fn load(&self) -> Option<Position> {
        load(&self.file, &self.stream)
    }

    /// The stream opened, holding messages up to `last`.
    pub fn opened(&mut self, last: u64, applied: u64) {
        if self.disk.held() && self.target.is_none() {
            self.target = Some(last);
        }
        self.check(applied);
    }

    /// Releases the hold once everything the stream held at opening is applied.
    pub fn check(&mut self, applied: u64) {
        if let Some(target) = self.target.filter(|t| applied >= *t) {
            self.target = None;
            if self.disk.held() {
                self.disk.release();
                info!(
                    "cluster: purges replayed up to sequence {target}; the disk tier serves \
                     again"
                );
            }
        }
    }

    /// Saves the position if it moved and the last save is `SAVE_EVERY` old (`now`: at stop),
    /// once the disk tier has carried out every purge applied so far (its removals and
    /// rewrites are queued for its writer): a position saved ahead of the files would, after a
    /// crash, skip purges the files still show.
    pub async fn save(&mut self, applied: u64, created: Option<SystemTime>, now: bool) {
        let Some(created) = created.filter(|_| self.disk.writable()) else {
            return;
        };
        let first = self.saved.0.is_none();
        if self.saved.0 == Some(applied) || (!now && !first && self.saved.1.elapsed() < SAVE_EVERY)
        {
            return;
        }
        let settled = tokio::time::timeout(Duration::from_secs(5), self.disk.settled()).await;
        if !matches!(settled, Ok(Ok(()))) {
            return; // the tier is gone or stuck: keep the older position (purges replay again)
        }
        let p = Position {
            stream: self.stream.clone(),
            created,
            applied,
        };
        match save(&self.file, &p) {
            Ok(()) => self.saved = (Some(applied), Instant::now()),
            Err(e) => warn!(
                "cluster: cannot save the purge position in {}: {e}",
                self.file.display()
            ),
        }
    }
}

/// After `REPLAY_WAIT`, a tier still held (NATS unreachable, or the replay is slow) is marked
/// stale and released.
pub async fn give_up_waiting(disk: &'static Disk, store: &'static crate::cache::store::Store) {
    tokio::time::sleep(REPLAY_WAIT).await;
    if disk.held() {
        let n = store.purge_named(
            crate::cache::store::Named::Prefix(""),
            crate::cache::store::PurgeMode::Soft,
        );
        disk.release();
        warn!(
            "cluster: the purge stream was not replayed within {REPLAY_WAIT:?}; marked the \
             cache stale ({n} objects: each revalidates at its next use) and serving from the \
             disk tier again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_reads_back_for_its_stream_only() {
        let file = std::env::temp_dir().join(format!("edge-position-{}", std::process::id()));
        let p = Position {
            stream: "EDGE_PURGE".into(),
            created: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            applied: 42,
        };
        save(&file, &p).unwrap();
        assert_eq!(load(&file, "EDGE_PURGE"), Some(p));
        assert_eq!(load(&file, "OTHER"), None);
        std::fs::remove_file(file).unwrap();
    }
}
