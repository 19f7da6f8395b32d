//! Live heap per cached object: stores N objects of 1 KiB (with a header like an origin's) in
//! the edge's store and TinyUFO, and prints jemalloc's allocated bytes per object. What
//! `cache::store::OBJECT_OVERHEAD` is checked against.
//!
//!     cargo run --release --example object_cost [N]

use std::time::{Duration, SystemTime};

use edge::cache::eviction::TinyUfoEviction;
use edge::cache::store::Store;
use pingora::cache::storage::Storage;
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::http::ResponseHeader;
use tikv_jemalloc_ctl::{epoch, stats};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn allocated() -> usize {
    epoch::advance().unwrap();
    stats::allocated::read().unwrap()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limit = 4usize << 30;
    let eviction: &'static TinyUfoEviction =
        Box::leak(Box::new(TinyUfoEviction::new(limit, limit / (16 << 10))));
    let store: &'static Store = Box::leak(Box::new(Store::new(eviction)));
    let span = Span::inactive().handle();
    let body = bytes::Bytes::from(vec![b'x'; 1024]);
    let before = allocated();
    rt.block_on(async {
        for i in 0..n {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            resp.insert_header("Cache-Control", "max-age=3600").unwrap();
            resp.insert_header("Content-Length", "1024").unwrap();
            let now = SystemTime::now();
            let meta = CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, resp);
            let k = CacheKey::new(format!("http://127.0.0.1:19185/m/{i}/{}", i * 7919), "");
            let mut h = store.get_miss_handler(&k, &meta, &span).await.unwrap();
            h.write_body(body.clone(), true).await.unwrap();
            // The fill admits the object to the eviction policy itself (`Store::admit`).
            h.finish().await.unwrap();
        }
    });
    let per = (allocated() - before) as f64 / n as f64;
    println!(
        "{n} objects: {per:.0} bytes allocated per object ({:.0} accounted per object)",
        store.bytes() as f64 / n as f64
    );
}
