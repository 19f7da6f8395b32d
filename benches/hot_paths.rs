//! Micro-benchmarks of the per-request hot paths: route match, cache key, Cache-Control
//! parsing and the cacheability decision, storage lookup and insert.
//!
//!     cargo bench --bench hot_paths

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion};
use edge::cache::eviction::TinyUfoEviction;
use edge::cache::key;
use edge::cache::policy;
use edge::cache::store::Store;
use edge::config::{CacheKeySettings, CacheSettings, QueryKey, RouteCache, RouteConfig};
use edge::host::normalize_host;
use edge::origin::router::Router;
use pingora::cache::cache_control::CacheControl;
use pingora::cache::storage::Storage;
use pingora::cache::trace::Span;
use pingora::cache::{CacheMeta, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};

fn routes() -> Vec<RouteConfig> {
    let r = |host: &str, prefix: &str, origin: &str| RouteConfig {
        host: host.into(),
        path_prefix: prefix.into(),
        origin: origin.into(),
        cache: RouteCache::default(),
    };
    let mut v = vec![
        r("*", "/", "default"),
        r("*.example.com", "/static/", "static"),
        r("www.example.com", "/", "www"),
        r("api.example.com", "/v1/", "api"),
    ];
    for i in 0..16 {
        v.push(r(&format!("site{i}.example.org"), "/", "other"));
    }
    v
}

fn bench_routing(c: &mut Criterion) {
    let router = Router::new(&routes());
    c.bench_function("route match (20 routes, wildcard hit)", |b| {
        b.iter(|| {
            let host = normalize_host(black_box("img.Example.com:443"));
            black_box(
                router
                    .route(&host, black_box("/static/app/logo.png"))
                    .is_some(),
            )
        })
    });
}

fn request() -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/static/app.js?v=3&lang=en", None).unwrap();
    r.insert_header("Host", "www.example.com").unwrap();
    r.insert_header("Accept-Language", "en").unwrap();
    r.insert_header("Cookie", "session=abc; currency=EUR")
        .unwrap();
    r
}

fn bench_cache_key(c: &mut Criterion) {
    let req = request();
    let plain = CacheKeySettings::default();
    let rich = CacheKeySettings {
        query: QueryKey::Sort,
        headers: vec!["accept-language".into()],
        cookies: vec!["currency".into()],
    };
    c.bench_function("cache key (url only)", |b| {
        b.iter(|| {
            black_box(key::for_request(
                black_box(&req),
                key::Scheme::Http,
                "www.example.com",
                &plain,
            ))
        })
    });
    c.bench_function("cache key (sorted query, header, cookie)", |b| {
        b.iter(|| {
            black_box(key::for_request(
                black_box(&req),
                key::Scheme::Http,
                "www.example.com",
                &rich,
            ))
        })
    });
}

fn response() -> ResponseHeader {
    let mut r = ResponseHeader::build(200, None).unwrap();
    r.insert_header(
        "Cache-Control",
        "public, max-age=3600, stale-while-revalidate=60",
    )
    .unwrap();
    r.insert_header("Content-Type", "application/javascript")
        .unwrap();
    r.insert_header("ETag", "\"abc123\"").unwrap();
    r
}

fn bench_policy(c: &mut Criterion) {
    let resp = response();
    let (route, settings) = (RouteCache::default(), CacheSettings::default());
    c.bench_function("Cache-Control parse", |b| {
        b.iter(|| black_box(CacheControl::from_resp_headers(black_box(&resp))))
    });
    c.bench_function("cacheability decision (3 fields checked)", |b| {
        b.iter(|| {
            matches!(
                policy::response_cacheable(black_box(&resp), false, &route, &settings),
                RespCacheable::Cacheable(_)
            )
        })
    });
}

fn bench_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The policy the edge runs with (the store admits each fill to it).
    let eviction: &'static TinyUfoEviction =
        Box::leak(Box::new(TinyUfoEviction::new(1 << 30, 1 << 16)));
    let store: &'static Store = Box::leak(Box::new(Store::new(eviction)));
    let span = Span::inactive().handle();
    let meta = CacheMeta::new(
        SystemTime::now() + std::time::Duration::from_secs(3600),
        SystemTime::now(),
        0,
        0,
        response(),
    );
    let body = bytes::Bytes::from(vec![b'x'; 1024]);
    // A populated store: 10k objects.
    rt.block_on(async {
        for i in 0..10_000 {
            let k = pingora::cache::CacheKey::new(format!("http://www.example.com/obj/{i}"), "");
            let mut h = store.get_miss_handler(&k, &meta, &span).await.unwrap();
            h.write_body(body.clone(), true).await.unwrap();
            h.finish().await.unwrap();
        }
    });
    let hot = pingora::cache::CacheKey::new("http://www.example.com/obj/4242", "");
    c.bench_function("store lookup hit (10k objects) + read 1 KiB body", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (_, mut hit) = store.lookup(black_box(&hot), &span).await.unwrap().unwrap();
                black_box(hit.read_body().await.unwrap())
            })
        })
    });
    let mut n = 0u64;
    c.bench_function("store insert 1 KiB object", |b| {
        b.iter(|| {
            n += 1;
            let k = pingora::cache::CacheKey::new(format!("http://www.example.com/new/{n}"), "");
            rt.block_on(async {
                let mut h = store.get_miss_handler(&k, &meta, &span).await.unwrap();
                h.write_body(body.clone(), true).await.unwrap();
                black_box(h.finish().await.unwrap())
            })
        })
    });
}

criterion_group!(
    hot,
    bench_routing,
    bench_cache_key,
    bench_policy,
    bench_store
);
criterion_main!(hot);
