//! Reading a stored object: the hit handler pingora-cache drives, for complete objects and for
//! objects still being filled (readers follow the writer chunk by chunk).

use super::*;

pub(super) enum Hit {
    Complete {
        body: Arc<Vec<Bytes>>,
        next_chunk: usize,
        /// Byte range still to send, for Range requests: (start, end exclusive).
        range: Option<(usize, usize)>,
        weight: usize,
    },
    Streaming {
        chunks: Arc<RwLock<Vec<Bytes>>>,
        progress: watch::Receiver<bool>,
        next_chunk: usize,
    },
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
            Hit::Streaming {
                chunks,
                progress,
                next_chunk,
            } => loop {
                let complete = *progress.borrow_and_update();
                let available = chunks.read().unwrap_or_else(|e| e.into_inner()).len();
                if *next_chunk < available {
                    let c = chunks.read().unwrap_or_else(|e| e.into_inner())[*next_chunk].clone();
                    *next_chunk += 1;
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
        matches!(self, Hit::Complete { .. })
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
            Hit::Streaming { .. } => Error::e_explain(
                ErrorType::InternalError,
                "seek on an object still being written",
            ),
        }
    }

    fn should_count_access(&self) -> bool {
        matches!(self, Hit::Complete { .. })
    }

    fn get_eviction_weight(&self) -> usize {
        match self {
            Hit::Complete { weight, .. } => *weight,
            Hit::Streaming { .. } => 0,
        }
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
