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
    /// In a disk file kept open (see `disk::open`).
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

/// Writes the header, then the body from its disk file: with `sendfile` on a plain TCP socket
/// when every page of the body is in the page cache (it would otherwise wait for the disk on
/// this thread), else read (`OpenBody::read_at`: the page cache here, the disk on the blocking
/// pool) and written. What the socket does not take at once is read and written the usual way,
/// which waits for the socket to drain, and flushed before `sendfile` goes on: a byte left in
/// the stream's buffer would otherwise reach the client after the ones `sendfile` sends next.
async fn send_disk(
    stream: &mut Stream,
    head: BytesMut,
    file: &Arc<OpenBody>,
    gap: Duration,
) -> bool {
    if !write_within(stream, &head, gap).await || !flush_within(stream, gap).await {
        return false;
    }
    let zero_copy = stream.get_ssl_digest().is_none() && file.body_cached() == Some(true);
    let (len, socket) = (file.body_len(), stream.id());
    let mut sent = 0;
    while sent < len {
        if zero_copy {
            match file.send_to(socket, sent) {
                Ok(at) => sent = at,
                Err(_) => return false,
            }
            if sent >= len {
                break;
            }
        }
        let Ok(piece) = file.read_at(sent, 64 << 10).await else {
            return false;
        };
        if piece.is_empty() || !write_within(stream, &piece, gap).await {
            return false;
        }
        // Before `sendfile` goes on, the piece must have left the stream's buffer.
        if zero_copy && !flush_within(stream, gap).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::l4::stream::{L4BufferSettings, Stream as L4Stream};
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncReadExt;

    /// Sends `file` after a 6-byte head through a socket of 32 KiB buffers on both sides, with the
    /// stream's write buffer larger than on a client connection (1460 bytes, where only a short
    /// tail of a piece stays in it): every piece written the usual way then waits in it, so a
    /// piece not flushed before `sendfile` goes on would show at every piece, not by chance.
    /// Returns what the reader got after the head.
    async fn send_through_small_socket(file: &Arc<OpenBody>) -> Vec<u8> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        server.set_nodelay(true).unwrap();
        client.set_nodelay(true).unwrap();
        let small: libc::c_int = 32 << 10;
        for (fd, opt) in [
            (server.as_raw_fd(), libc::SO_SNDBUF),
            (client.as_raw_fd(), libc::SO_RCVBUF),
        ] {
            // SAFETY: setsockopt on sockets this test owns, with a c_int it reads.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    &small as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        let mut l4 = L4Stream::from(server);
        l4.set_buffer(L4BufferSettings::new(0, 128 << 10));
        let mut stream: Stream = Box::new(l4);
        let reader = tokio::spawn(async move {
            // Reading starts once the client's buffer holds 16 KiB, so the sender's first
            // `sendfile` finds the socket full and stops partway (bounded wait).
            let queued = |fd| {
                let mut n: libc::c_int = 0;
                // SAFETY: FIONREAD writes the receive queue's length into `n`.
                unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
                n
            };
            let fd = client.as_raw_fd();
            let since = std::time::Instant::now();
            while queued(fd) < 16 << 10 && since.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut got = Vec::new();
            let mut buf = vec![0; 4096];
            loop {
                let n = client.read(&mut buf).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
            }
        });
        let head = BytesMut::from(&b"HEAD\r\n"[..]);
        let gap = Duration::from_secs(10);
        assert!(send(&mut stream, head, Body::Disk(file), gap).await);
        drop(stream);
        let got = reader.await.unwrap();
        assert_eq!(&got[..6], b"HEAD\r\n");
        got[6..].to_vec()
    }

    fn patterned() -> Vec<u8> {
        (0..4_000_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    // Two threads: the reader drains the socket while the sender goes on (one thread would run
    // the reader only when the sender waits, and `sendfile` would always find the socket full).
    /// `sendfile` stops when the socket is full, a piece goes through the stream, `sendfile`
    /// goes on: every byte arrives, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disk_body_sent_partly_with_sendfile_arrives_in_order() {
        let body = patterned();
        let (file, path) = crate::cache::store::disk::open::opened_for_test("send", &body);
        let got = send_through_small_socket(&file).await;
        assert!(got == body, "bytes out of order or missing");
        std::fs::remove_file(path).unwrap();
    }

    /// A body no longer in the page cache is not sent with `sendfile` (it would wait for the
    /// disk on this thread) but read (on the blocking pool) and written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cold_disk_body_is_read_and_written() {
        let body = patterned();
        let (file, path) = crate::cache::store::disk::open::opened_for_test("cold", &body);
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        // SAFETY: advice on a descriptor this test owns; clean pages leave the page cache.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_ne!(
            file.body_cached(),
            Some(true),
            "the pages stayed in the page cache"
        );
        let got = send_through_small_socket(&file).await;
        assert!(got == body, "bytes out of order or missing");
        std::fs::remove_file(path).unwrap();
    }
}
