//! Reading a stored object: the hit handler pingora-cache drives, for complete objects in
//! memory, for large ones on disk, and for objects still being filled (readers follow the
//! writer chunk by chunk, and read from its disk copy what memory already dropped).

use super::disk::read::DiskHit;
use super::*;

/// The most a reader of a fill reads from its disk copy at once.
const SPILL_READ: u64 = 256 << 10;

pub(super) enum Hit {
    Complete {
        body: Arc<Vec<Bytes>>,
        next_chunk: usize,
        /// Byte range still to send, for Range requests: (start, end exclusive).
        range: Option<(usize, usize)>,
    },
    Streaming {
        chunks: Arc<RwLock<Chunks>>,
        progress: watch::Receiver<bool>,
        spill: Option<Arc<Spill>>,
        /// Body bytes read so far.
        pos: u64,
        /// The index (since the fill began) of the next chunk, once `pos` has reached memory.
        next: usize,
    },
    /// A large object on disk only, read as the client takes it.
    Disk(DiskHit),
}

/// Reads `[pos, upto)` (at most `SPILL_READ` of it) from a fill's disk copy.
async fn read_spill(spill: &Spill, pos: u64, upto: u64) -> Result<Bytes> {
    let Some((file, offset)) = spill.file.get().cloned() else {
        return Error::e_explain(ErrorType::InternalError, "disk copy missing");
    };
    let len = (upto - pos).min(SPILL_READ) as usize;
    let read = tokio::task::spawn_blocking(move || {
        let mut b = vec![0; len];
        std::os::unix::fs::FileExt::read_exact_at(&*file, &mut b, offset + pos).map(|_| b)
    })
    .await;
    match read {
        Ok(Ok(b)) => Ok(Bytes::from(b)),
        _ => Error::e_explain(ErrorType::InternalError, "cannot read a fill's disk copy"),
    }
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        match self {
            Hit::Complete {
                body,
                next_chunk,
                range,
                ..
            } => match range {
                None => {
                    let c = body.get(*next_chunk).cloned();
                    *next_chunk += 1;
                    Ok(c)
                }
                Some((start, end)) => {
                    // The range is sent: without this, the next read returned an empty slice
                    // forever and a range hit never finished (the connection hung).
                    if *start >= *end {
                        return Ok(None);
                    }
                    // Walk chunks, slicing the ones that overlap [start, end).
                    let mut offset = 0;
                    for c in body.iter() {
                        let (cs, ce) = (offset, offset + c.len());
                        offset = ce;
                        if ce <= *start {
                            continue;
                        }
                        if cs >= *end {
                            break;
                        }
                        let s = (*start).max(cs) - cs;
                        let e = (*end).min(ce) - cs;
                        *start = cs + e;
                        return Ok(Some(c.slice(s..e)));
                    }
                    Ok(None)
                }
            },
            Hit::Disk(d) => d.read().await,
            Hit::Streaming {
                chunks,
                progress,
                spill,
                pos,
                next,
            } => loop {
                let complete = *progress.borrow_and_update();
                let (base, first, chunk) = {
                    let c = chunks.read().unwrap_or_else(|e| e.into_inner());
                    let chunk = (*pos >= c.base)
                        .then(|| c.list.get(*next - c.first).cloned())
                        .flatten();
                    (c.base, c.first, chunk)
                };
                if *pos < base {
                    // Memory dropped these bytes: they are in the fill's disk copy.
                    let Some(spill) = spill else {
                        return Error::e_explain(ErrorType::InternalError, "no disk copy");
                    };
                    let b = read_spill(spill, *pos, base).await?;
                    *pos += b.len() as u64;
                    if *pos == base {
                        *next = first;
                    }
                    return Ok(Some(b));
                }
                if let Some(c) = chunk {
                    *next += 1;
                    *pos += c.len() as u64;
                    return Ok(Some(c));
                }
                if complete {
                    return Ok(None);
                }
                if progress.changed().await.is_err() {
                    // The writer went away before finishing: the body is incomplete.
                    return Error::e_explain(ErrorType::InternalError, "cache fill aborted");
                }
            },
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        matches!(self, Hit::Complete { .. } | Hit::Disk(_))
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        match self {
            Hit::Complete { body, range, .. } => {
                let len: usize = body.iter().map(Bytes::len).sum();
                if start >= len {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        format!("seek start {start} beyond body length {len}"),
                    );
                }
                *range = Some((start, end.map_or(len, |e| e.min(len))));
                Ok(())
            }
            Hit::Disk(d) => d.seek(start as u64, end.map(|e| e as u64)),
            Hit::Streaming { .. } => Error::e_explain(
                ErrorType::InternalError,
                "seek on an object still being written",
            ),
        }
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
