//! The disk tier's file format: one file per object, self-describing and checksummed, so that a
//! restart can rebuild the index from the files alone and a torn or corrupt file is recognised
//! and dropped instead of served.
//!
//! ```text
//! prefix   32 B   "EDGEDSK1" | head_len u32 | head_cap u32 | head xxh3 u64 | 0 u64
//! head     head_cap B (head_len used, zero padded): the key, the URL, pingora-cache's internal
//!                 meta and the response header in HTTP/1 form (see `Head`)
//! body     body_len B, at offset 32 + head_cap
//! trailer  one xxh3 u64 per BLOCK of body | body_len u64 | BLOCK u32 | blocks u32
//!          | trailer xxh3 u64 (of the trailer's bytes before it) | "EDGEEND1"
//! ```
//! All integers little-endian. The head is written before the body's length is known and has
//! room to spare (`head_cap`), so a revalidation rewrites it in place. The body is checked
//! block by block: a range read verifies only the blocks it touches.

use std::fs::File;

use bytes::{BufMut, Bytes, BytesMut};
use pingora::cache::key::{CompactCacheKey, HashBinary};
use pingora::http::ResponseHeader;
use xxhash_rust::xxh3::xxh3_64;

pub const MAGIC: &[u8; 8] = b"EDGEDSK1";
pub const END: &[u8; 8] = b"EDGEEND1";
pub const PREFIX: usize = 32;
/// Where the prefix keeps the head's checksum.
pub const HEAD_SUM_AT: u64 = 16;
/// The trailer's fixed part after the block checksums.
pub const TRAILER_FIXED: usize = 32;
/// Body bytes per checksum: a read verifies whole blocks, so a range costs at most two extra.
pub const BLOCK: usize = 1 << 20;

/// What a file says about its object beyond the body.
#[derive(Clone)]
pub struct Head {
    pub key: CompactCacheKey,
    /// The URL part of the primary key (purges match it).
    pub url: String,
    /// pingora-cache's internal meta, as `StoredMeta::internal`.
    pub internal: Vec<u8>,
    /// The response header as stored, in HTTP/1 form.
    pub header: Bytes,
}

/// Where a body lives in its file and how long it is, read from prefix and trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub head_cap: usize,
    pub body_len: u64,
    pub blocks: u32,
}

impl Layout {
    pub fn body_offset(&self) -> u64 {
        (PREFIX + self.head_cap) as u64
    }
    pub fn trailer_offset(&self) -> u64 {
        self.body_offset() + self.body_len
    }
    pub fn file_len(&self) -> u64 {
        self.trailer_offset() + 8 * self.blocks as u64 + TRAILER_FIXED as u64
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32_le(v.len() as u32);
    b.put_slice(v);
}

/// The response header in HTTP/1 form, names in their case.
pub fn header_wire(h: &ResponseHeader) -> Bytes {
    let mut b = BytesMut::with_capacity(256);
    b.put_slice(b"HTTP/1.1 ");
    b.put_slice(h.status.as_str().as_bytes());
    b.put_u8(b' ');
    b.put_slice(
        h.get_reason_phrase()
            .or(h.status.canonical_reason())
            .unwrap_or("")
            .as_bytes(),
    );
    b.put_slice(b"\r\n");
    let mut field = |n: &[u8], v: &[u8]| {
        b.put_slice(n);
        b.put_slice(b": ");
        b.put_slice(v);
        b.put_slice(b"\r\n");
    };
    if h.has_case() {
        h.case_header_iter()
            .for_each(|(n, v)| field(n.as_slice(), v.as_bytes()));
    } else {
        h.headers
            .iter()
            .for_each(|(n, v)| field(n.as_str().as_bytes(), v.as_bytes()));
    }
    b.put_slice(b"\r\n");
    b.freeze()
}

/// Parses what `header_wire` wrote; the header's names and values are slices of `wire`.
pub fn parse_header(wire: &Bytes) -> Option<ResponseHeader> {
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut fields);
    if !matches!(resp.parse(wire), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let mut out = ResponseHeader::build(resp.code?, Some(resp.headers.len())).ok()?;
    if let Some(reason) = resp.reason.filter(|r| !r.is_empty()) {
        out.set_reason_phrase(Some(reason)).ok()?;
    }
    for f in resp.headers.iter() {
        let name = wire.slice_ref(f.name.as_bytes());
        let value = http::HeaderValue::from_maybe_shared(wire.slice_ref(f.value)).ok()?;
        out.append_header(name, value).ok()?;
    }
    Some(out)
}

impl Head {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64 + self.url.len() + self.header.len());
        b.put_slice(&self.key.primary);
        match &self.key.variance {
            Some(v) => {
                b.put_u8(1);
                b.put_slice(&v[..]);
            }
            None => b.put_u8(0),
        }
        put_bytes(&mut b, self.key.user_tag.as_bytes());
        put_bytes(&mut b, self.url.as_bytes());
        put_bytes(&mut b, &self.internal);
        put_bytes(&mut b, &self.header);
        b.freeze()
    }

    pub fn decode(b: &Bytes) -> Option<Head> {
        let mut at = 0;
        let mut take = |n: usize| -> Option<Bytes> {
            let s = b.get(at..at + n)?;
            at += n;
            Some(b.slice_ref(s))
        };
        let primary: HashBinary = take(16)?[..].try_into().ok()?;
        let variance = match take(1)?[0] {
            0 => None,
            1 => Some(Box::new(<HashBinary>::try_from(&take(16)?[..]).ok()?)),
            _ => return None,
        };
        let mut field = || -> Option<Bytes> {
            let n = u32::from_le_bytes(take(4)?[..].try_into().ok()?) as usize;
            take(n)
        };
        let user_tag = String::from_utf8(field()?.to_vec()).ok()?;
        let url = String::from_utf8(field()?.to_vec()).ok()?;
        let internal = field()?.to_vec();
        let header = field()?;
        Some(Head {
            key: CompactCacheKey {
                primary,
                variance,
                user_tag: user_tag.into(),
            },
            url,
            internal,
            header,
        })
    }
}

/// Room for a head of `len` bytes: enough to spare for a revalidated header that grew a little.
pub fn head_capacity(len: usize) -> usize {
    (len + 256).div_ceil(512) * 512
}

/// The prefix and the head, padded to `cap`: the first bytes of a file.
pub fn head_block(head: &[u8], cap: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(PREFIX + cap);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(head.len() as u32).to_le_bytes());
    b.extend_from_slice(&(cap as u32).to_le_bytes());
    b.extend_from_slice(&xxh3_64(head).to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(head);
    b.resize(PREFIX + cap, 0);
    b
}

/// The trailer for a body of `body_len` bytes with these block checksums.
pub fn trailer(sums: &[u64], body_len: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(sums.len() * 8 + TRAILER_FIXED);
    for s in sums {
        b.extend_from_slice(&s.to_le_bytes());
    }
    b.extend_from_slice(&body_len.to_le_bytes());
    b.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    b.extend_from_slice(&(sums.len() as u32).to_le_bytes());
    let sum = xxh3_64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b.extend_from_slice(END);
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Why a file is not served.
#[derive(Debug)]
pub enum Bad {
    Io(std::io::Error),
    /// Wrong magic, lengths that do not add up, a checksum that does not match.
    Corrupt(&'static str),
}

impl From<std::io::Error> for Bad {
    fn from(e: std::io::Error) -> Self {
        Bad::Io(e)
    }
}

/// How a read may wait.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// From the page cache only (`RWF_NOWAIT`): `WouldBlock` when the disk would be read, so
    /// that a runtime thread can try before handing the read to a blocking thread.
    CachedOnly,
    /// As long as the disk takes (on a blocking thread).
    Disk,
}

/// Reads `len` bytes at `at` into a new buffer, not zeroed first (a zeroed large allocation
/// cost jemalloc an madvise and a TLB shootdown per read: 13% of a disk hit's CPU in `perf`).
pub(super) fn read_exact_at(f: &File, len: usize, at: u64, wait: Wait) -> Result<Vec<u8>, Bad> {
    use std::os::fd::AsRawFd;
    let mut b: Vec<u8> = Vec::with_capacity(len);
    let flags = if wait == Wait::CachedOnly {
        libc::RWF_NOWAIT
    } else {
        0
    };
    let mut done = 0;
    while done < len {
        let iov = libc::iovec {
            // SAFETY: within the buffer's capacity; the kernel writes at most iov_len bytes.
            iov_base: unsafe { b.as_mut_ptr().add(done) } as *mut libc::c_void,
            iov_len: len - done,
        };
        // SAFETY: one valid iovec, a descriptor this file owns.
        let n = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, (at + done as u64) as i64, flags) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Not in the page cache, or RWF_NOWAIT unsupported here: read it the slow way.
                Some(libc::EAGAIN | libc::EOPNOTSUPP) if flags != 0 => {
                    return Err(Bad::Io(std::io::ErrorKind::WouldBlock.into()))
                }
                _ => return Err(Bad::Io(e)),
            }
        }
        if n == 0 {
            return Err(Bad::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        done += n as usize;
    }
    // SAFETY: the kernel wrote all `len` bytes.
    unsafe { b.set_len(len) };
    Ok(b)
}

/// Files up to this size are read in one call (prefix, head, body and trailer together).
const READ_ALL_MAX: u64 = 256 << 10;

/// A file's head, layout and checksums, all checked, and its body when it came with them.
pub struct Whole {
    pub head: Head,
    pub layout: Layout,
    pub sums: Vec<u64>,
    /// The head's checksum, as the prefix gives it (a head rewritten in place has another).
    pub head_sum: u64,
    /// Read and checked: the file was small (`READ_ALL_MAX`) and read in one call.
    pub body: Option<Bytes>,
}

/// Opens a file and checks its head and trailer; when it is small (`READ_ALL_MAX`), reads and
/// checks its body too, in the same read.
pub fn open_checked(f: &File, wait: Wait) -> Result<Whole, Bad> {
    let len = f.metadata()?.len();
    if len > READ_ALL_MAX || len < (PREFIX + TRAILER_FIXED) as u64 {
        let (head, layout, sums, head_sum) =
            parse(len, &mut |n, at| read_exact_at(f, n, at, wait))?;
        return Ok(Whole {
            head,
            layout,
            sums,
            head_sum,
            body: None,
        });
    }
    let all = Bytes::from(read_exact_at(f, len as usize, 0, wait)?);
    let at = |from: u64, n: usize| -> Result<Vec<u8>, Bad> {
        Ok(all[from as usize..from as usize + n].to_vec())
    };
    let (head, layout, sums, head_sum) = parse(len, &mut |n, from| at(from, n))?;
    let body = all.slice(layout.body_offset() as usize..layout.trailer_offset() as usize);
    for (i, block) in body.chunks(BLOCK).enumerate() {
        if sums.get(i) != Some(&xxh3_64(block)) {
            return Err(Bad::Corrupt("body checksum"));
        }
    }
    Ok(Whole {
        head,
        layout,
        sums,
        head_sum,
        body: Some(body),
    })
}

/// A file's head and layout, with the head's and the trailer's checksums checked and the
/// file's length matching what they say. The body is checked as it is read (`read_block`).
pub fn open(f: &File, wait: Wait) -> Result<(Head, Layout, Vec<u64>), Bad> {
    let len = f.metadata()?.len();
    let (head, layout, sums, _) = parse(len, &mut |n, at| read_exact_at(f, n, at, wait))?;
    Ok((head, layout, sums))
}

/// The checks of `open`, reading through `read(len, at)`; also returns the head's checksum.
fn parse(
    len: u64,
    read: &mut dyn FnMut(usize, u64) -> Result<Vec<u8>, Bad>,
) -> Result<(Head, Layout, Vec<u64>, u64), Bad> {
    if len < (PREFIX + TRAILER_FIXED) as u64 {
        return Err(Bad::Corrupt("shorter than a prefix and a trailer"));
    }
    let prefix = read(PREFIX, 0)?;
    if &prefix[..8] != MAGIC {
        return Err(Bad::Corrupt("not an object file"));
    }
    let (head_len, head_cap) = (u32_at(&prefix, 8) as usize, u32_at(&prefix, 12) as usize);
    if head_len > head_cap || (PREFIX + head_cap) as u64 > len {
        return Err(Bad::Corrupt("head lengths"));
    }
    let head = Bytes::from(read(head_len, PREFIX as u64)?);
    let head_sum = u64_at(&prefix, HEAD_SUM_AT as usize);
    if xxh3_64(&head) != head_sum {
        return Err(Bad::Corrupt("head checksum"));
    }
    let fixed = read(TRAILER_FIXED, len - TRAILER_FIXED as u64)?;
    if &fixed[24..] != END {
        return Err(Bad::Corrupt("no trailer (not completely written)"));
    }
    let layout = Layout {
        head_cap,
        body_len: u64_at(&fixed, 0),
        blocks: u32_at(&fixed, 12),
    };
    // Lengths first, so that adding them up cannot overflow.
    if layout.body_len > len {
        return Err(Bad::Corrupt("body length"));
    }
    if u32_at(&fixed, 8) as usize != BLOCK
        || layout.file_len() != len
        || layout.blocks as u64 != layout.body_len.div_ceil(BLOCK as u64)
    {
        return Err(Bad::Corrupt("trailer lengths"));
    }
    let sums_len = 8 * layout.blocks as usize;
    let mut trailer = read(sums_len, layout.trailer_offset())?;
    trailer.extend_from_slice(&fixed[..16]);
    if xxh3_64(&trailer) != u64_at(&fixed, 16) {
        return Err(Bad::Corrupt("trailer checksum"));
    }
    let sums = (0..layout.blocks as usize)
        .map(|i| u64_at(&trailer, 8 * i))
        .collect();
    let head = Head::decode(&head).ok_or(Bad::Corrupt("head fields"))?;
    Ok((head, layout, sums, head_sum))
}

/// Reads body block `i`, checked against its checksum.
pub fn read_block(
    f: &File,
    layout: &Layout,
    sums: &[u64],
    i: usize,
    wait: Wait,
) -> Result<Bytes, Bad> {
    let start = (i * BLOCK) as u64;
    let len = (layout.body_len - start).min(BLOCK as u64) as usize;
    let b = read_exact_at(f, len, layout.body_offset() + start, wait)?;
    if sums.get(i) != Some(&xxh3_64(&b)) {
        return Err(Bad::Corrupt("body checksum"));
    }
    Ok(Bytes::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::CacheKey;
    use std::io::Write;

    fn sample_head() -> Head {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.append_header("Content-Type", "text/plain").unwrap();
        h.append_header("X-Odd-Case", "a, b").unwrap();
        Head {
            key: CacheKey::new("https://h/p", "").to_compact(),
            url: "https://h/p".into(),
            internal: vec![1, 2, 3],
            header: header_wire(&h),
        }
    }

    fn write_file(body: &[u8]) -> (File, std::path::PathBuf) {
        let head = sample_head().encode();
        let cap = head_capacity(head.len());
        let sums: Vec<u64> = body.chunks(BLOCK).map(xxh3_64).collect();
        let path =
            std::env::temp_dir().join(format!("edge-record-{}-{}", std::process::id(), body.len()));
        let mut f = File::create(&path).unwrap();
        f.write_all(&head_block(&head, cap)).unwrap();
        f.write_all(body).unwrap();
        f.write_all(&trailer(&sums, body.len() as u64)).unwrap();
        (File::open(&path).unwrap(), path)
    }

    #[test]
    fn a_file_reads_back_as_written() {
        let body: Vec<u8> = (0..BLOCK + 1000).map(|i| i as u8).collect();
        let (f, path) = write_file(&body);
        let (head, layout, sums) = open(&f, Wait::Disk).unwrap();
        assert_eq!(head.url, "https://h/p");
        assert_eq!(head.internal, [1, 2, 3]);
        let h = parse_header(&head.header).unwrap();
        let names: Vec<_> = h.case_header_iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(names, [&b"Content-Type"[..], b"X-Odd-Case"]);
        assert_eq!(h.headers["x-odd-case"], "a, b");
        assert_eq!((layout.body_len, layout.blocks), (body.len() as u64, 2));
        let mut back = read_block(&f, &layout, &sums, 0, Wait::Disk)
            .unwrap()
            .to_vec();
        back.extend_from_slice(&read_block(&f, &layout, &sums, 1, Wait::Disk).unwrap());
        assert_eq!(back, body);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_flipped_byte_or_a_cut_file_is_caught() {
        let body = vec![7u8; 5000];
        let (_, path) = write_file(&body);
        // A byte of the body changed: the head opens, the block does not.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - TRAILER_FIXED - 8 - 10;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let f = File::open(&path).unwrap();
        let (_, layout, sums) = open(&f, Wait::Disk).unwrap();
        assert!(matches!(
            read_block(&f, &layout, &sums, 0, Wait::Disk),
            Err(Bad::Corrupt("body checksum"))
        ));
        // Cut short (a write that never finished): no trailer.
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        assert!(open(&File::open(&path).unwrap(), Wait::Disk).is_err());
        // A byte of the head changed.
        bytes[PREFIX + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            open(&File::open(&path).unwrap(), Wait::Disk),
            Err(Bad::Corrupt("head checksum"))
        ));
        std::fs::remove_file(path).unwrap();
    }
}
