//! Unit tests of the store: objects written and read through pingora-cache's storage interface.
//!
//! Over 600 lines of tests in one file: they share the store's set-up and fill helpers below,
//! and read in the store's own order (writes and reads, eviction, memory, purges).

use super::purge::PURGES_KEPT;
use super::*;
use crate::cache::eviction::TinyUfoEviction;
use pingora::cache::trace::Span;

/// A store of its own per test (Pingora wants `'static` parts, as `Cache::new` leaks them).
fn store() -> (&'static Store, &'static TinyUfoEviction) {
    let eviction: &'static TinyUfoEviction =
        Box::leak(Box::new(TinyUfoEviction::new(64 << 20, 1024)));
    (Box::leak(Box::new(Store::new(eviction))), eviction)
}

fn span() -> SpanHandle {
    Span::inactive().handle()
}

/// A fixed clock: freshness is judged against times the test passes, never the real one.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// A 200 created at `t0`, fresh for 60 s, with these header fields.
fn meta(fields: &[(&str, &str)]) -> CacheMeta {
    let mut header = ResponseHeader::build(200, None).unwrap();
    for (k, v) in fields {
        header.append_header(k.to_string(), *v).unwrap();
    }
    CacheMeta::new(t0() + Duration::from_secs(60), t0(), 0, 0, header)
}

fn key(primary: &str) -> CacheKey {
    CacheKey::new(primary, "")
}

/// Variant `v` of a URL, as pingora-cache stores one: the key and the meta both carry the
/// variance, and the response says `Vary`.
fn variant(primary: &str, v: u8) -> (CacheKey, CacheMeta) {
    let mut k = key(primary);
    k.set_variance_key([v; 16]);
    let mut m = meta(&[("Vary", "Accept-Encoding")]);
    m.set_variance_key([v; 16]);
    (k, m)
}

/// Stores an object as a miss does (a fill, chunk by chunk); returns the size it reports.
pub(crate) async fn fill(
    store: &'static Store,
    key: &CacheKey,
    meta: &CacheMeta,
    chunks: &[&str],
) -> usize {
    let mut h = store.get_miss_handler(key, meta, &span()).await.unwrap();
    for (i, c) in chunks.iter().enumerate() {
        let eof = i + 1 == chunks.len();
        h.write_body(Bytes::copy_from_slice(c.as_bytes()), eof)
            .await
            .unwrap();
    }
    match h.finish().await.unwrap() {
        MissFinishType::Created(size) => size,
        MissFinishType::Appended(..) => panic!("a fill creates, it does not append"),
    }
}

async fn body_of(mut hit: HitHandler) -> String {
    let mut body = Vec::new();
    while let Some(chunk) = hit.read_body().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).unwrap()
}

async fn stored_body(store: &'static Store, key: &CacheKey) -> Option<String> {
    let (_, hit) = store.lookup(key, &span()).await.unwrap()?;
    Some(body_of(hit).await)
}

/// What a complete object weighs: its meta (internal fields, header as written), body, URL and
/// the fixed overhead.
fn expected_size(meta: &CacheMeta, body_len: usize, url: &str) -> usize {
    StoredMeta::of(meta).unwrap().size() + body_len + url.len() + OBJECT_OVERHEAD
}

#[tokio::test]
async fn a_complete_object_is_stored_and_read_back() {
    let (store, _) = store();
    let k = key("http://a.com/x");
    let m = meta(&[("Content-Type", "text/plain")]);
    assert!(store.lookup(&k, &span()).await.unwrap().is_none());
    fill(store, &k, &m, &["hello ", "world"]).await;
    assert_eq!(store.objects(), 1);
    let (found, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
    assert_eq!(found.response_header().status.as_u16(), 200);
    assert_eq!(
        found.response_header().headers.get("content-type").unwrap(),
        "text/plain"
    );
    assert_eq!(found.fresh_until(), t0() + Duration::from_secs(60));
    // A small body is kept in one piece: one read hands it all out.
    assert_eq!(
        hit.read_body().await.unwrap().as_deref(),
        Some(&b"hello world"[..])
    );
    assert_eq!(hit.read_body().await.unwrap(), None);
    // A range of it (a Range request's hit) ends once the range is sent.
    let (_, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
    hit.seek(6, None).unwrap();
    assert_eq!(body_of(hit).await, "world");
    assert!(store
        .lookup(&key("http://a.com/y"), &span())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_reader_follows_an_object_still_being_written() {
    let (store, _) = store();
    let k = key("http://a.com/slow");
    let mut fill = store
        .get_miss_handler(&k, &meta(&[]), &span())
        .await
        .unwrap();
    fill.write_body(Bytes::from_static(b"one "), false)
        .await
        .unwrap();
    let (_, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
    assert!(!hit.can_seek());
    assert_eq!(
        hit.read_body().await.unwrap().as_deref(),
        Some(&b"one "[..])
    );
    fill.write_body(Bytes::from_static(b"two"), true)
        .await
        .unwrap();
    assert_eq!(hit.read_body().await.unwrap().as_deref(), Some(&b"two"[..]));
    assert_eq!(hit.read_body().await.unwrap(), None);
    assert_eq!(store.objects(), 0, "not stored before the fill finishes");
    fill.finish().await.unwrap();
    assert_eq!(store.objects(), 1);
    assert_eq!(stored_body(store, &k).await.as_deref(), Some("one two"));
}

#[tokio::test]
async fn an_abandoned_fill_leaves_nothing() {
    let (store, _) = store();
    let k = key("http://a.com/failed");
    let mut fill = store
        .get_miss_handler(&k, &meta(&[]), &span())
        .await
        .unwrap();
    fill.write_body(Bytes::from_static(b"part"), false)
        .await
        .unwrap();
    drop(fill);
    assert!(store.lookup(&k, &span()).await.unwrap().is_none());
    assert_eq!((store.objects(), store.bytes()), (0, 0));
}

#[tokio::test]
async fn fresh_hit_is_only_for_fresh_complete_objects_that_do_not_vary() {
    let (store, _) = store();
    let k = key("http://a.com/f");
    let at = |secs| t0() + Duration::from_secs(secs);
    assert!(store.fresh_hit(&k.primary_bin(), at(1)).is_none(), "absent");

    let mut writing = store
        .get_miss_handler(&k, &meta(&[]), &span())
        .await
        .unwrap();
    writing
        .write_body(Bytes::from_static(b"body"), true)
        .await
        .unwrap();
    assert!(
        store.fresh_hit(&k.primary_bin(), at(1)).is_none(),
        "not finished"
    );
    writing.finish().await.unwrap();

    let hit = store.fresh_hit(&k.primary_bin(), at(10)).unwrap();
    assert_eq!(hit.header.status.as_u16(), 200);
    assert_eq!(hit.body_len(), 4);
    assert_eq!(hit.body.concat(), b"body");
    assert_eq!(hit.age, Duration::from_secs(10));
    assert_eq!(hit.fresh_until, at(60));
    assert!(
        store.fresh_hit(&k.primary_bin(), at(60)).is_some(),
        "last fresh second"
    );
    assert!(store.fresh_hit(&k.primary_bin(), at(61)).is_none(), "stale");

    // Revalidated (new meta, same body): fresh again, its age counted from the update.
    let mut header = ResponseHeader::build(200, None).unwrap();
    header.insert_header("ETag", "\"v2\"").unwrap();
    let renewed = CacheMeta::new(at(200), at(100), 0, 0, header);
    assert!(store.update_meta(&k, &renewed, &span()).await.unwrap());
    let hit = store.fresh_hit(&k.primary_bin(), at(130)).unwrap();
    assert_eq!(hit.age, Duration::from_secs(30));
    assert_eq!(hit.header.headers.get("etag").unwrap(), "\"v2\"");
    assert!(!store
        .update_meta(&key("http://a.com/none"), &renewed, &span())
        .await
        .unwrap());

    // A response with Vary, even stored without a variance, is left to pingora-cache.
    let v = key("http://a.com/vary");
    fill(store, &v, &meta(&[("Vary", "Accept")]), &["v"]).await;
    assert!(store.fresh_hit(&v.primary_bin(), at(1)).is_none());
    assert!(store.lookup(&v, &span()).await.unwrap().is_some());
    // And a variant is stored under its combined key, never the primary one.
    let (kv, mv) = variant("http://a.com/variant", 1);
    fill(store, &kv, &mv, &["v1"]).await;
    assert!(store.fresh_hit(&kv.primary_bin(), at(1)).is_none());
    assert!(store.fresh_hit(&kv.combined_bin(), at(1)).is_none());
    assert_eq!(stored_body(store, &kv).await.as_deref(), Some("v1"));
}

#[tokio::test]
async fn sizes_count_meta_body_url_and_overhead() {
    let (store, _) = store();
    let m = meta(&[("Content-Type", "text/plain")]);
    let a = key("http://a.com/a");
    let size_a = fill(store, &a, &m, &["12345", "67890"]).await;
    assert_eq!(size_a, expected_size(&m, 10, "http://a.com/a"));
    assert_eq!(store.bytes(), size_a);

    // Extra key lines (header and cookie values) are not part of the URL counted.
    let b = key("http://a.com/b\nx-device:mobile");
    let size_b = fill(store, &b, &m, &["xyz"]).await;
    assert_eq!(size_b, expected_size(&m, 3, "http://a.com/b"));
    assert_eq!(store.bytes(), size_a + size_b);

    // A new version replaces the old one's size.
    let size_a2 = fill(store, &a, &m, &["a longer body than before"]).await;
    assert_eq!(store.bytes(), size_a2 + size_b);
    assert_eq!(store.objects(), 2);

    // A new meta changes the size by the difference of the serialized metas.
    let mut header = ResponseHeader::build(200, None).unwrap();
    header.insert_header("Content-Type", "text/plain").unwrap();
    header.insert_header("X-Long", "y".repeat(300)).unwrap();
    let bigger = CacheMeta::new(t0(), t0(), 0, 0, header);
    store.update_meta(&b, &bigger, &span()).await.unwrap();
    let size_b2 = expected_size(&bigger, 3, "http://a.com/b");
    assert!(size_b2 > size_b);
    assert_eq!(store.bytes(), size_a2 + size_b2);
    store.update_meta(&b, &m, &span()).await.unwrap();
    assert_eq!(store.bytes(), size_a2 + size_b);

    assert_eq!(store.purge_url("http://a.com/a"), 1);
    assert_eq!(store.bytes(), size_b);
    assert_eq!(store.purge_url("http://a.com/b"), 1);
    assert_eq!((store.objects(), store.bytes()), (0, 0));
}

#[tokio::test]
async fn purge_by_url_removes_every_variant_of_that_url_only() {
    let (store, _) = store();
    let (v1, m1) = variant("http://a.com/p", 1);
    let (v2, m2) = variant("http://a.com/p", 2);
    fill(store, &v1, &m1, &["gzip"]).await;
    fill(store, &v2, &m2, &["br"]).await;
    fill(
        store,
        &key("http://a.com/p\ncookie:lang=fr"),
        &meta(&[]),
        &["fr"],
    )
    .await;
    fill(store, &key("http://a.com/p2"), &meta(&[]), &["p2"]).await;
    fill(store, &key("http://b.com/p"), &meta(&[]), &["b"]).await;
    assert_eq!(store.purge_url("http://a.com/p"), 3);
    assert_eq!(store.objects(), 2);
    assert!(store.lookup(&v1, &span()).await.unwrap().is_none());
    assert!(store.lookup(&v2, &span()).await.unwrap().is_none());
    assert_eq!(
        stored_body(store, &key("http://a.com/p2")).await.as_deref(),
        Some("p2")
    );
    assert_eq!(
        stored_body(store, &key("http://b.com/p")).await.as_deref(),
        Some("b")
    );
    assert_eq!(store.purge_url("http://a.com/p"), 0);
    assert_eq!(store.purge_url("http://a.com/"), 0, "a URL, not a prefix");
}

#[tokio::test]
async fn purge_by_prefix_removes_the_urls_that_start_with_it() {
    let (store, _) = store();
    for url in [
        "http://a.com/img/1.png",
        "http://a.com/img/2.png",
        "http://a.com/img/sub/3.png",
        "http://a.com/imgs/4.png",
        "http://a.com/css/site.css",
    ] {
        fill(store, &key(url), &meta(&[]), &[url]).await;
    }
    assert_eq!(store.purge_prefix("http://a.com/img/"), 3);
    assert_eq!(store.objects(), 2);
    assert!(stored_body(store, &key("http://a.com/imgs/4.png"))
        .await
        .is_some());
    assert!(stored_body(store, &key("http://a.com/css/site.css"))
        .await
        .is_some());
    assert_eq!(store.purge_prefix("http://b.com/"), 0);
    assert_eq!(store.purge_prefix("http://a.com/"), 2);
    assert_eq!((store.objects(), store.bytes()), (0, 0));
}

#[tokio::test]
async fn purge_by_tag_uses_surrogate_key_and_cache_tag() {
    let (store, _) = store();
    let one = key("http://a.com/1");
    let two = key("http://a.com/2");
    let three = key("http://a.com/3");
    // Surrogate-Key is space-separated, Cache-Tag comma-separated; a tag in both counts once.
    let m1 = meta(&[("Surrogate-Key", "red  blue"), ("Cache-Tag", "green, red")]);
    fill(store, &one, &m1, &["1"]).await;
    fill(store, &two, &meta(&[("Surrogate-Key", "blue")]), &["2"]).await;
    fill(store, &three, &meta(&[("Cache-Tag", "a,,b")]), &["3"]).await;
    assert_eq!(store.purge_tag("nothing"), 0);
    assert_eq!(store.purge_tag("red"), 1);
    assert!(store.lookup(&one, &span()).await.unwrap().is_none());
    // The removed object left every index: its other tags no longer find it.
    assert_eq!(store.purge_tag("green"), 0);
    assert_eq!(store.purge_tag("blue"), 1);
    assert_eq!(store.purge_tag(""), 0);
    assert_eq!(store.purge_tag("b"), 1);
    assert_eq!((store.objects(), store.bytes()), (0, 0));
}

#[tokio::test]
async fn has_other_variants_sees_the_other_variants_of_a_url() {
    let (store, _) = store();
    let (v1, m1) = variant("http://a.com/v", 1);
    let (v2, m2) = variant("http://a.com/v", 2);
    assert!(!store.has_other_variants(&v1));
    fill(store, &v1, &m1, &["one"]).await;
    assert!(!store.has_other_variants(&v1), "only its own");
    assert!(store.has_other_variants(&v2));
    fill(store, &v2, &m2, &["two"]).await;
    assert!(store.has_other_variants(&v1));
    assert!(store.has_other_variants(&v2));
    let other_url = variant("http://a.com/w", 1).0;
    assert!(!store.has_other_variants(&other_url));
    let outcome = store
        .purge(
            PurgeTarget::Active(&v1.to_compact()),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, PurgeOutcome::Purged(None)));
    assert!(!store.has_other_variants(&v2));
    assert!(store.has_other_variants(&v1));
}

#[tokio::test]
async fn a_purge_during_a_fill_is_not_undone_by_it() {
    let (store, _) = store();
    let k = key("http://a.com/racing");
    fill(store, &k, &meta(&[]), &["old"]).await;
    // A refill starts, then the operator purges the URL: the refill must not bring the
    // purged content back when it finishes.
    let mut refill = store
        .get_miss_handler(&k, &meta(&[]), &span())
        .await
        .unwrap();
    refill
        .write_body(Bytes::from_static(b"new"), true)
        .await
        .unwrap();
    assert_eq!(store.purge_url("http://a.com/racing"), 1);
    assert!(matches!(
        refill.finish().await.unwrap(),
        MissFinishType::Created(0)
    ));
    assert!(store.lookup(&k, &span()).await.unwrap().is_none());
    assert_eq!((store.objects(), store.bytes()), (0, 0));
    // The same for pingora-cache's purge of the key during a first fill.
    let mut first = store
        .get_miss_handler(&k, &meta(&[]), &span())
        .await
        .unwrap();
    first
        .write_body(Bytes::from_static(b"first"), true)
        .await
        .unwrap();
    let target = k.to_compact();
    let outcome = store
        .purge(
            PurgeTarget::Active(&target),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome, PurgeOutcome::NotFound),
        "nothing complete"
    );
    assert!(matches!(
        first.finish().await.unwrap(),
        MissFinishType::Created(0)
    ));
    assert_eq!((store.objects(), store.bytes()), (0, 0));
}

/// A first fill of `url` (tagged `red`) with one chunk written, still in flight.
async fn first_fill_in_flight(store: &'static Store, url: &str) -> (CacheKey, MissHandler) {
    let k = key(url);
    let m = meta(&[("Surrogate-Key", "red")]);
    let mut h = store.get_miss_handler(&k, &m, &span()).await.unwrap();
    h.write_body(Bytes::from_static(b"before "), false)
        .await
        .unwrap();
    assert!(
        store.lookup(&k, &span()).await.unwrap().is_some(),
        "readers follow it"
    );
    (k, h)
}

/// The client a purged fill is for still reads it through its write tag, as pingora-cache does
/// right after `get_miss_handler` (it panics if that finds nothing): a task that reads the
/// body to its end while the test writes the rest.
async fn own_client(
    store: &'static Store,
    k: &CacheKey,
    h: &MissHandler,
) -> tokio::task::JoinHandle<String> {
    let (_, hit) = store
        .lookup_streaming_write(k, h.streaming_write_tag(), &span())
        .await
        .unwrap()
        .expect("the writer's client finds its write by tag");
    tokio::spawn(body_of(hit))
}

#[tokio::test]
async fn a_purge_during_a_first_fill_stops_it_being_stored() {
    let (store, _) = store();
    type Purge = fn(&Store) -> usize;
    let purges: [(&str, Purge); 3] = [
        ("url", |s| s.purge_url("http://a.com/first")),
        ("prefix", |s| s.purge_prefix("http://a.com/fi")),
        ("tag", |s| s.purge_tag("red")),
    ];
    for (kind, purge) in purges {
        let (k, mut h) = first_fill_in_flight(store, "http://a.com/first").await;
        assert_eq!(purge(store), 0, "{kind}: nothing stored yet");
        // Requests after the purge do not join the purged fill: they go to the origin.
        assert!(
            store.lookup(&k, &span()).await.unwrap().is_none(),
            "{kind}: a lookup after the purge found the fill"
        );
        let client = own_client(store, &k, &h).await;
        h.write_body(Bytes::from_static(b"after"), true)
            .await
            .unwrap();
        assert!(
            matches!(h.finish().await.unwrap(), MissFinishType::Created(0)),
            "{kind}"
        );
        assert!(
            store.lookup(&k, &span()).await.unwrap().is_none(),
            "{kind}: the purged fill was stored"
        );
        assert_eq!((store.objects(), store.bytes()), (0, 0), "{kind}");
        assert_eq!(client.await.unwrap(), "before after", "{kind}: its client");
    }
}

#[tokio::test]
async fn a_purge_of_something_else_leaves_a_first_fill_alone() {
    let (store, _) = store();
    let (k, mut h) = first_fill_in_flight(store, "http://a.com/first").await;
    assert_eq!(store.purge_url("http://a.com/firs"), 0);
    assert_eq!(store.purge_url("http://a.com/first/"), 0);
    assert_eq!(store.purge_prefix("http://a.com/other"), 0);
    assert_eq!(store.purge_tag("blue"), 0);
    assert_eq!(store.purge_tag("re"), 0);
    h.write_body(Bytes::from_static(b"after"), true)
        .await
        .unwrap();
    h.finish().await.unwrap();
    assert_eq!(
        stored_body(store, &k).await.as_deref(),
        Some("before after")
    );
}

/// The meta of a response whose request went to the origin at purge epoch `start`, as the
/// proxy hands it over (tagged `red`).
fn meta_since(start: u64) -> CacheMeta {
    let mut m = meta(&[("Surrogate-Key", "red")]);
    m.extensions_mut().insert(FillStart(start));
    m
}

#[tokio::test]
async fn a_purge_before_the_response_header_keeps_the_fill_out() {
    let (store, _) = store();
    let k = key("http://a.com/waiting");
    for kind in ["url", "prefix", "tag", "key"] {
        // The request goes out, the operator purges, then the response header arrives.
        let start = store.purge_epoch();
        match kind {
            "url" => _ = store.purge_url("http://a.com/waiting"),
            "prefix" => _ = store.purge_prefix("http://a.com/wait"),
            "tag" => _ = store.purge_tag("red"),
            _ => {
                let target = k.to_compact();
                let invalidation = PurgeType::Invalidation;
                store
                    .purge(PurgeTarget::Active(&target), invalidation, &span())
                    .await
                    .unwrap();
            }
        }
        let mut h = store
            .get_miss_handler(&k, &meta_since(start), &span())
            .await
            .unwrap();
        h.write_body(Bytes::from_static(b"old"), false)
            .await
            .unwrap();
        assert!(
            store.lookup(&k, &span()).await.unwrap().is_none(),
            "{kind}: a request after the purge joined a fill from before it"
        );
        let client = own_client(store, &k, &h).await;
        h.write_body(Bytes::new(), true).await.unwrap();
        assert!(
            matches!(h.finish().await.unwrap(), MissFinishType::Created(0)),
            "{kind}"
        );
        assert_eq!((store.objects(), store.bytes()), (0, 0), "{kind}");
        assert_eq!(client.await.unwrap(), "old", "{kind}: its client");
    }
    // A request sent after the purge (its epoch read after it) is stored as usual, as is one
    // that only an eviction of its key came after.
    let start = store.purge_epoch();
    let target = k.to_compact();
    store
        .purge(PurgeTarget::Active(&target), PurgeType::Eviction, &span())
        .await
        .unwrap();
    fill(store, &k, &meta_since(start), &["new"]).await;
    assert_eq!(stored_body(store, &k).await.as_deref(), Some("new"));
}

#[tokio::test]
async fn purges_of_other_things_do_not_keep_a_waiting_fill_out() {
    let (store, _) = store();
    let k = key("http://a.com/waiting");
    let start = store.purge_epoch();
    store.purge_url("http://a.com/other");
    store.purge_prefix("http://a.com/x");
    store.purge_tag("blue");
    let target = key("http://a.com/other").to_compact();
    store
        .purge(
            PurgeTarget::Active(&target),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .unwrap();
    fill(store, &k, &meta_since(start), &["kept"]).await;
    assert_eq!(stored_body(store, &k).await.as_deref(), Some("kept"));
}

#[tokio::test]
async fn the_purges_remembered_are_bounded() {
    let (store, _) = store();
    let k = key("http://a.com/slow");
    let start = store.purge_epoch();
    for i in 0..PURGES_KEPT {
        store.purge_url(&format!("http://a.com/other/{i}"));
    }
    assert_eq!(store.read().purges.recent.len(), PURGES_KEPT);
    // Every purge since its start is still known, none covers it: stored.
    fill(store, &k, &meta_since(start), &["kept"]).await;
    assert_eq!(stored_body(store, &k).await.as_deref(), Some("kept"));
    store.purge_url("http://a.com/slow");
    // One purge more than remembered: a fill older than all of them may have been covered
    // by the one forgotten, so it is not stored; a younger one is.
    let start = store.purge_epoch();
    for i in 0..=PURGES_KEPT {
        store.purge_tag(&format!("t{i}"));
    }
    assert_eq!(store.read().purges.recent.len(), PURGES_KEPT);
    fill(store, &k, &meta_since(start), &["old"]).await;
    assert_eq!(store.objects(), 0);
    fill(store, &k, &meta_since(start + 2), &["young"]).await;
    assert_eq!(stored_body(store, &k).await.as_deref(), Some("young"));
}

#[tokio::test]
async fn invalidations_remove_what_is_stored_and_are_not_remembered() {
    let (store, _) = store();
    let k = key("http://a.com/item");
    fill(store, &k, &meta(&[]), &["item"]).await;
    let epoch = store.purge_epoch();
    assert_eq!(store.invalidate_url("http://a.com/item"), 1);
    assert_eq!(store.objects(), 0);
    // They follow every successful unsafe request: they must not flush out the purges.
    assert_eq!(store.purge_epoch(), epoch);
    assert!(store.read().purges.recent.is_empty());
}

#[tokio::test]
async fn purges_tell_the_eviction_manager_but_evictions_do_not() {
    let (store, eviction) = store();
    let a = key("http://a.com/a");
    let b = key("http://a.com/b");
    // A fill admits what it stored (`Store::admit`).
    fill(store, &a, &meta(&[]), &["a"]).await;
    fill(store, &b, &meta(&[]), &["b"]).await;
    assert_eq!(eviction.total_items(), 2);
    // The operator's purge: the manager must forget the object too.
    assert_eq!(store.purge_url("http://a.com/a"), 1);
    assert_eq!(eviction.total_items(), 1);
    // An eviction comes from the manager, which already forgot the entry.
    let outcome = store
        .purge(
            PurgeTarget::Active(&b.to_compact()),
            PurgeType::Eviction,
            &span(),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, PurgeOutcome::Purged(None)));
    assert_eq!(eviction.total_items(), 1);
    assert_eq!(store.objects(), 0);
    let again = store
        .purge(
            PurgeTarget::Active(&b.to_compact()),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .unwrap();
    assert!(matches!(again, PurgeOutcome::NotFound));
}

#[tokio::test]
async fn a_soft_purge_marks_stale_and_keeps_the_object_for_revalidation() {
    let (store, _) = store();
    let now = SystemTime::now();
    let fresh = |fields: &[(&str, &str)]| {
        let mut header = ResponseHeader::build(200, None).unwrap();
        for (k, v) in fields {
            header.append_header(k.to_string(), *v).unwrap();
        }
        // Fresh for an hour, may be served stale for 30 s while it revalidates.
        CacheMeta::new(now + Duration::from_secs(3600), now, 30, 0, header)
    };
    let (a, b, c) = (
        key("http://a.com/s/a"),
        key("http://a.com/s/b"),
        key("http://a.com/t/c"),
    );
    fill(store, &a, &fresh(&[("Surrogate-Key", "red")]), &["a"]).await;
    fill(store, &b, &fresh(&[]), &["b"]).await;
    fill(store, &c, &fresh(&[("Surrogate-Key", "red")]), &["c"]).await;
    let bytes = store.bytes();

    assert_eq!(store.purge_named(Named::Tag("red"), PurgeMode::Soft), 2);
    assert_eq!(store.objects(), 3, "nothing removed");
    let later = SystemTime::now();
    for k in [&a, &c] {
        assert!(store.fresh_hit(&k.primary_bin(), later).is_none(), "stale");
        let (m, _) = store.lookup(k, &span()).await.unwrap().unwrap();
        assert!(!m.is_fresh(later));
        assert!(
            m.serve_stale_while_revalidate(later),
            "its window counts from the purge"
        );
        assert_eq!(
            m.headers().get("surrogate-key").unwrap(),
            "red",
            "header as stored"
        );
    }
    assert!(
        store.fresh_hit(&b.primary_bin(), later).is_some(),
        "not named"
    );
    assert_eq!(
        store.purge_named(Named::Tag("red"), PurgeMode::Soft),
        0,
        "already stale: idempotent"
    );
    assert_eq!(
        store.purge_named(Named::Prefix("http://a.com/s/"), PurgeMode::Soft),
        1
    );
    assert_eq!(
        store.purge_named(Named::Url("http://a.com/s/b"), PurgeMode::Soft),
        0
    );
    // Serialized freshness is the same size: what the store counts did not drift.
    assert_eq!(store.bytes(), bytes);
    assert_eq!(
        store.purge_named(Named::Prefix("http://a.com/"), PurgeMode::Hard),
        3
    );
    assert_eq!((store.objects(), store.bytes()), (0, 0));
}

/// The store admits each fill to memory's eviction policy itself and removes, before the fill
/// returns, what the policy evicted (pingora-cache runs without an eviction manager, which
/// would spawn a task per miss to do it).
#[tokio::test]
async fn a_fill_admits_itself_and_evicts_inline() {
    // Room for about three 1 KiB objects (each weighs its body plus the per-object overhead).
    let eviction: &'static TinyUfoEviction =
        Box::leak(Box::new(TinyUfoEviction::new(3 * size_of_one(), 1024)));
    let store: &'static Store = Box::leak(Box::new(Store::new(eviction)));
    let body = "x".repeat(1024);
    for i in 0..20 {
        let k = key(&format!("http://a.com/{i}"));
        fill(store, &k, &meta(&[]), &[&body]).await;
        assert!(
            store.bytes() <= eviction.total_size(),
            "memory holds only what the policy admitted"
        );
    }
    assert!(store.objects() <= 3, "{} objects kept", store.objects());
    assert_eq!(store.objects(), eviction.total_items());
    assert!(eviction.evicted_items() >= 17);
    // A fill's size as the store counts it: 1 KiB of body, the header, the URL, the overhead.
    fn size_of_one() -> usize {
        size_of(
            &StoredMeta::of(&meta(&[])).unwrap(),
            1024,
            "http://a.com/10",
        ) + 8
    }
}
