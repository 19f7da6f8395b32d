//! Writing a hit to the client: the head and a small body in one write, a large body from its
//! memory file with `sendfile` or with a vectored write, a body in a disk file with `sendfile`;
//! every write bounded by `client.send_timeout`.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;

use crate::cache::body_file::BodyFile;
use crate::cache::store::disk::open::OpenBody;

/// Bodies up to this size are copied behind the header and sent in one write; larger ones are
/// sent from the store with a vectored write (still one system call when the socket takes it).
pub(super) const COPY_BODY_MAX: usize = 16 << 10;

/// Where a hit's body is.
pub(super) enum Body<'a> {
    /// In memory: its chunks, and the memory file they map if it has one.
    Memory(&'a [bytes::Bytes], Option<&'a BodyFile>),
    /// In a disk file kept open (on a plain TCP socket only: see `plan`).
    Disk(&'a Arc<OpenBody>),
}

/// Writes the header and the body: a body in a memory file with `sendfile`, a small one in the
/// header's buffer, others with a vectored write. Each write must make progress within `gap`
/// (`client.send_timeout`): a client that stops reading is dropped, not waited for.
pub(super) async fn send(
    stream: &mut Stream,
    head: BytesMut,
    body: Body<'_>,
    gap: Duration,
) -> bool {
    match body {
        Body::Memory(chunks, file) => send_memory(stream, head, chunks, file, gap).await,
        Body::Disk(file) => send_disk(stream, head, file, gap).await,
    }
}

/// Writes the header, then the body from its disk file with `sendfile`; what the socket does not
/// take at once is read and written the usual way (which waits for the socket to drain), and
/// `sendfile` tried again for the rest.
async fn send_disk(
    stream: &mut Stream,
    head: BytesMut,
    file: &Arc<OpenBody>,
    gap: Duration,
) -> bool {
    if !write_within(stream, &head, gap).await || !flush_within(stream, gap).await {
        return false;
    }
    let (len, socket) = (file.body_len(), stream.id());
    let mut sent = 0;
    while sent < len {
        match file.send_to(socket, sent) {
            Ok(at) => sent = at,
            Err(_) => return false,
        }
        if sent >= len {
            break;
        }
        let Ok(piece) = file.read_at(sent, 64 << 10).await else {
            return false;
        };
        if piece.is_empty() || !write_within(stream, &piece, gap).await {
            return false;
        }
        sent += piece.len() as u64;
    }
    flush_within(stream, gap).await
}

async fn send_memory(
    stream: &mut Stream,
    mut head: BytesMut,
    body: &[bytes::Bytes],
    file: Option<&BodyFile>,
    gap: Duration,
) -> bool {
    // Only on a plain TCP socket: sendfile would bypass TLS.
    if let Some(file) = file.filter(|_| stream.get_ssl_digest().is_none()) {
        if !write_within(stream, &head, gap).await || !flush_within(stream, gap).await {
            return false;
        }
        let Ok(mut sent) = file.send_to(stream.id(), 0) else {
            return false;
        };
        // The socket filled up: the rest is written from the mapping the usual way, which
        // waits for the socket to drain.
        for chunk in body {
            if sent >= chunk.len() {
                sent -= chunk.len();
                continue;
            }
            if !write_within(stream, &chunk[sent..], gap).await {
                return false;
            }
            sent = 0;
        }
        return flush_within(stream, gap).await;
    }
    let total: usize = body.iter().map(|c| c.len()).sum();
    if total <= COPY_BODY_MAX {
        for chunk in body {
            head.put_slice(chunk);
        }
        return write_within(stream, &head, gap).await && flush_within(stream, gap).await;
    }
    let mut slices: Vec<IoSlice> = std::iter::once(IoSlice::new(&head))
        .chain(body.iter().map(|c| IoSlice::new(c)))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match pingora::time::timeout(gap, stream.write_vectored(rest)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(n)) => IoSlice::advance_slices(&mut rest, n),
        }
    }
    flush_within(stream, gap).await
}

/// Writes all of `bytes`, each write making progress within `gap`.
async fn write_within(stream: &mut Stream, mut bytes: &[u8], gap: Duration) -> bool {
    while !bytes.is_empty() {
        match pingora::time::timeout(gap, stream.write(bytes)).await {
            Ok(Ok(n)) if n > 0 => bytes = &bytes[n..],
            _ => return false,
        }
    }
    true
}

async fn flush_within(stream: &mut Stream, gap: Duration) -> bool {
    matches!(
        pingora::time::timeout(gap, stream.flush()).await,
        Ok(Ok(()))
    )
}
