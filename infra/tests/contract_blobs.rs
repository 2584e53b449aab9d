//! The Blobs contract: one suite of checks that every adapter of the port passes, run here against
//! the embedded adapter (files in a temp dir) and the Cloud Storage adapter (on the emulator that
//! `scripts/install-tools.sh` installs; without it the GCS test fails and says so).

use bytes::Bytes;
use devgem_common::ports::blobs::{BlobError, BlobKey, Blobs, BlobsExt, ByteStream};
use devgem_infra::gcp::emulators::storage::StorageEmulator;
use devgem_infra::gcp::storage::{GcsBlobs, REPLAYABLE_LIMIT};
use devgem_infra::local::LocalBlobs;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const MIB: usize = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

fn key(raw: &str) -> BlobKey {
    BlobKey::parse(raw).expect("valid key")
}

/// `len` bytes of a pattern that depends on `seed` and the position, so a misplaced chunk shows.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i / 7) as u8).wrapping_mul(31).wrapping_add(seed) ^ (i as u8)).collect()
}

/// `data` as a stream of `chunk`-sized pieces, yielding to the runtime between pieces.
fn chunked(data: Vec<u8>, chunk: usize) -> ByteStream {
    let data = Bytes::from(data);
    let pieces: Vec<Bytes> =
        (0..data.len()).step_by(chunk.max(1)).map(|at| data.slice(at..(at + chunk).min(data.len()))).collect();
    Box::pin(futures_util::stream::iter(pieces).then(|piece| async move {
        tokio::task::yield_now().await;
        Ok(piece)
    }))
}

/// Reads a blob whole, counting the chunks it came in.
async fn read_all(blobs: &dyn Blobs, key: &BlobKey) -> Result<(Vec<u8>, usize), BlobError> {
    let mut stream = blobs.get(key).await?;
    let mut out = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
        chunks += 1;
    }
    Ok((out, chunks))
}

async fn keys_under(blobs: &dyn Blobs, prefix: &str) -> Vec<(String, u64)> {
    blobs.list(prefix).await.expect("list").into_iter().map(|m| (m.key.to_string(), m.size)).collect()
}

/// Every check, each under its own top-level prefix so that they do not see each other's blobs.
async fn suite(blobs: &dyn Blobs) {
    round_trip(blobs).await;
    empty_blob(blobs).await;
    large_blobs_stream_both_ways(blobs).await;
    replace_is_atomic_for_readers(blobs).await;
    a_failed_put_keeps_the_old_blob(blobs).await;
    list_matches_prefixes_segment_wise_or_not(blobs).await;
    list_returns_more_than_a_page(blobs).await;
    delete_says_whether_there_was_a_blob(blobs).await;
    missing_blobs_are_not_found(blobs).await;
    prefixes_of_keys_are_not_blobs(blobs).await;
    keys_cannot_reach_other_objects(blobs).await;
}

async fn round_trip(blobs: &dyn Blobs) {
    let k = key("rt/builds/d-1/log.txt");
    let body = Bytes::from_static(b"step 1/3: FROM python:3.12\n");
    assert_eq!(blobs.put_bytes(&k, body.clone()).await.expect("put"), body.len() as u64);
    assert_eq!(blobs.get_bytes(&k).await.expect("get"), body);
    let binary = Bytes::from((0..=255u8).cycle().take(3000).collect::<Vec<_>>());
    let k2 = key("rt/binary.bin");
    blobs.put_bytes(&k2, binary.clone()).await.expect("put binary");
    assert_eq!(blobs.get_bytes(&k2).await.expect("get binary"), binary, "every byte value survives");
}

async fn empty_blob(blobs: &dyn Blobs) {
    let k = key("empty/nothing");
    assert_eq!(blobs.put_bytes(&k, Bytes::new()).await.expect("put empty"), 0);
    assert!(blobs.get_bytes(&k).await.expect("get empty").is_empty());
    assert_eq!(keys_under(blobs, "empty/").await, [("empty/nothing".to_owned(), 0)]);
    // A stream with no chunks at all is an empty blob too.
    let k2 = key("empty/no-chunks");
    let nothing: ByteStream = Box::pin(futures_util::stream::empty());
    assert_eq!(blobs.put(&k2, nothing).await.expect("put no chunks"), 0);
    assert!(blobs.get_bytes(&k2).await.expect("get").is_empty());
}

async fn large_blobs_stream_both_ways(blobs: &dyn Blobs) {
    // Over REPLAYABLE_LIMIT, so the GCS adapter streams it (resumable upload, two chunks).
    let size = 10 * MIB;
    assert!(size > REPLAYABLE_LIMIT);
    let data = pattern(7, size);
    let k = key("large/source.tar");
    assert_eq!(blobs.put(&k, chunked(data.clone(), CHUNK)).await.expect("put large"), size as u64);
    let (back, chunks) = read_all(blobs, &k).await.expect("get large");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the large blob comes back byte for byte");
    assert!(chunks > 1, "a large blob is read as a stream of chunks, got {chunks}");
    assert_eq!(keys_under(blobs, "large/").await, [("large/source.tar".to_owned(), size as u64)]);

    // A body that fits the replayable buffer, in many small chunks.
    let data = pattern(9, 3 * MIB + 17);
    let k = key("large/medium.bin");
    assert_eq!(blobs.put(&k, chunked(data.clone(), 1000)).await.expect("put medium"), data.len() as u64);
    assert!(blobs.get_bytes(&k).await.expect("get medium") == data);
}

async fn replace_is_atomic_for_readers(blobs: &dyn Blobs) {
    let k = key("atomic/blob");
    // Different bytes and lengths, so that any mix of the two shows.
    let old = vec![b'o'; 600 * 1024];
    let new = vec![b'n'; 900 * 1024];
    blobs.put_bytes(&k, Bytes::from(old.clone())).await.expect("put old");

    let written = AtomicBool::new(false);
    let writer = async {
        for round in 0..3 {
            let body = if round % 2 == 0 { new.clone() } else { old.clone() };
            blobs.put(&k, chunked(body, 16 * 1024)).await.expect("replace");
        }
        blobs.put(&k, chunked(new.clone(), 16 * 1024)).await.expect("replace");
        written.store(true, Ordering::SeqCst);
    };
    let reader = async {
        let mut reads = 0;
        loop {
            let done = written.load(Ordering::SeqCst);
            let (body, _) = read_all(blobs, &k).await.expect("read during replace");
            assert!(
                body == old || body == new,
                "read {} bytes that are neither the old blob nor the new one",
                body.len()
            );
            reads += 1;
            if done {
                assert!(body == new, "after the last put, readers see it");
                return reads;
            }
        }
    };
    let ((), reads) = tokio::join!(writer, reader);
    assert!(reads > 1, "the reader overlapped the writes");
}

async fn a_failed_put_keeps_the_old_blob(blobs: &dyn Blobs) {
    // Small: fails while the adapter reads ahead. Large: once the upload has begun. Huge: after
    // a first 8 MiB chunk of a resumable upload has reached Cloud Storage.
    for (name, good_bytes) in [("small", 1000), ("large", REPLAYABLE_LIMIT + 2 * MIB), ("huge", 12 * MIB)] {
        let k = key(&format!("failed/{name}"));
        blobs.put_bytes(&k, Bytes::from_static(b"old")).await.expect("put old");
        let failing: ByteStream = Box::pin(
            chunked(pattern(3, good_bytes), CHUNK)
                .chain(futures_util::stream::iter([Err(BlobError::Unavailable("the client went away".into()))])),
        );
        let error = blobs.put(&k, failing).await.expect_err("the body failed");
        assert!(error.to_string().contains("the client went away"), "the body's own error comes back: {error}");
        assert_eq!(blobs.get_bytes(&k).await.expect("old blob").as_ref(), b"old", "{name}: the old blob is intact");
    }
    assert_eq!(
        keys_under(blobs, "failed/").await,
        [("failed/huge".to_owned(), 3), ("failed/large".to_owned(), 3), ("failed/small".to_owned(), 3)]
    );
}

async fn list_matches_prefixes_segment_wise_or_not(blobs: &dyn Blobs) {
    // Put in an order that is not the sorted one; sizes differ so they can be told apart.
    let blobs_to_put = ["lst/ab", "lst/a/x", "lst/a/bc", "lst/a/b/d/e", "lst/a/b/c", "lst/a/b-"];
    for (i, raw) in blobs_to_put.iter().enumerate() {
        blobs.put_bytes(&key(raw), Bytes::from(vec![b'x'; i + 1])).await.expect("put");
    }
    let sized = |names: &[&str]| -> Vec<(String, u64)> {
        names
            .iter()
            .map(|n| (n.to_string(), blobs_to_put.iter().position(|p| p == n).map(|i| i as u64 + 1).expect("known")))
            .collect()
    };
    assert_eq!(
        keys_under(blobs, "lst/a/b").await,
        sized(&["lst/a/b-", "lst/a/b/c", "lst/a/b/d/e", "lst/a/bc"]),
        "a prefix matches within a segment too, sorted by key"
    );
    assert_eq!(keys_under(blobs, "lst/a/b/").await, sized(&["lst/a/b/c", "lst/a/b/d/e"]));
    assert_eq!(
        keys_under(blobs, "lst/").await,
        sized(&["lst/a/b-", "lst/a/b/c", "lst/a/b/d/e", "lst/a/bc", "lst/a/x", "lst/ab"])
    );
    assert_eq!(keys_under(blobs, "lst/a/b/c").await, sized(&["lst/a/b/c"]), "a whole key is a prefix of itself");
    assert!(keys_under(blobs, "lst/zzz").await.is_empty());
    assert!(keys_under(blobs, "lst/a/b/c/").await.is_empty());
    let everything = keys_under(blobs, "").await;
    assert!(everything.windows(2).all(|w| w[0].0 < w[1].0), "the whole listing is sorted");
    assert!(everything.iter().any(|(k, _)| k == "lst/ab") && everything.iter().any(|(k, _)| k == "rt/binary.bin"));
}

/// More blobs than one page of a Cloud Storage listing (1,000), in an order that is not theirs.
async fn list_returns_more_than_a_page(blobs: &dyn Blobs) {
    const COUNT: usize = 1050;
    let names: Vec<String> = (0..COUNT).map(|i| format!("many/{:04}", (i * 7919) % COUNT)).collect();
    futures_util::stream::iter(&names)
        .for_each_concurrent(16, |name| async move {
            blobs.put_bytes(&key(name), Bytes::from_static(b"m")).await.expect("put");
        })
        .await;
    let listed = keys_under(blobs, "many/").await;
    assert_eq!(listed.len(), COUNT, "every page was read");
    let mut expected = names.clone();
    expected.sort();
    assert!(listed.iter().map(|(k, _)| k).eq(expected.iter()), "sorted, each once");
    assert_eq!(keys_under(blobs, "many/10").await.len(), 50, "a prefix across the page boundary");
}

async fn delete_says_whether_there_was_a_blob(blobs: &dyn Blobs) {
    let k = key("del/one");
    let other = key("del/one-more");
    blobs.put_bytes(&k, Bytes::from_static(b"1")).await.expect("put");
    blobs.put_bytes(&other, Bytes::from_static(b"2")).await.expect("put");
    assert!(blobs.delete(&k).await.expect("delete"), "there was a blob");
    assert!(!blobs.delete(&k).await.expect("delete again"), "there was none the second time");
    assert!(blobs.get(&k).await.err().expect("gone").is_not_found());
    assert_eq!(keys_under(blobs, "del/").await, [("del/one-more".to_owned(), 1)], "only that blob went");
    assert!(!blobs.delete(&key("del/never/was")).await.expect("delete a key never written"));
}

async fn missing_blobs_are_not_found(blobs: &dyn Blobs) {
    for raw in ["missing/x", "rt/builds/d-1/log.txt.bak", "rt/builds/d-1/log"] {
        let error = blobs.get(&key(raw)).await.err().expect("missing");
        assert!(error.is_not_found(), "{raw}: {error}");
        assert!(error.to_string().contains(raw), "the error names the key: {error}");
    }
}

/// A key that is only a prefix of other keys (a directory, to a file system), or that goes on
/// below a blob's key, names no blob (a file system answers EISDIR and ENOTDIR there).
async fn prefixes_of_keys_are_not_blobs(blobs: &dyn Blobs) {
    blobs.put_bytes(&key("dir/a/b"), Bytes::from_static(b"b")).await.expect("put");
    for missing in ["dir/a", "dir/a/b/c"] {
        let error = blobs.get(&key(missing)).await.err().expect("not a blob");
        assert!(error.is_not_found(), "{missing}: {error}");
        assert!(!blobs.delete(&key(missing)).await.expect("delete"), "there is no blob {missing}");
    }
    assert_eq!(blobs.get_bytes(&key("dir/a/b")).await.expect("dir/a/b").as_ref(), b"b");
}

async fn keys_cannot_reach_other_objects(blobs: &dyn Blobs) {
    // Keys that would be URL or path tricks are refused before they reach any adapter.
    for trick in [
        "a%2F..",
        "a/%2e%2e/b",
        "%2e%2e",
        "?x",
        "a?alt=json",
        "#",
        "a#frag",
        "a/../b",
        "..",
        "a/./b",
        "a b",
        "a\nb",
        "a+b",
        "a;b",
        "a:b",
        "a%00",
        "a\\..\\b",
        "/abs",
        "a//b",
        "~",
        "a&b=c",
        "ks/%2F",
        "ks/*",
    ] {
        assert!(BlobKey::parse(trick).is_err(), "{trick:?} must be refused");
    }
    // Keys full of dots and dashes are legal names, stored literally, each its own object.
    let target = key("ks/target");
    blobs.put_bytes(&target, Bytes::from_static(b"target")).await.expect("put target");
    let odd = ["ks/...", "ks/..a", "ks/a..", "ks/.a", "ks/-", "ks/_", "ks/target.", "ks/.target", "ks/...target"];
    for raw in odd {
        blobs.put_bytes(&key(raw), Bytes::from(raw.as_bytes().to_vec())).await.expect("put odd key");
    }
    assert_eq!(blobs.get_bytes(&target).await.expect("target").as_ref(), b"target", "no odd key reached the target");
    for raw in odd {
        assert_eq!(blobs.get_bytes(&key(raw)).await.expect("get odd key").as_ref(), raw.as_bytes(), "{raw}");
    }
    let mut expected: Vec<String> = odd.iter().map(|s| s.to_string()).chain(["ks/target".to_owned()]).collect();
    expected.sort();
    let listed: Vec<String> = keys_under(blobs, "ks/").await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(listed, expected);
    // List prefixes are plain strings, not URLs or patterns: encoded or wild ones match nothing.
    for prefix in ["ks%2F", "ks/%2E%2E", "ks/*", "ks/?", "?", "#", "ks/../", "ks\\", "%", "ks/.%2E"] {
        assert!(keys_under(blobs, prefix).await.is_empty(), "{prefix:?} matched something");
    }
    assert!(blobs.delete(&key("ks/..a")).await.expect("delete"));
    assert_eq!(blobs.get_bytes(&key("ks/...")).await.expect("sibling").as_ref(), b"ks/...", "only that one went");
}

#[tokio::test]
async fn local_blobs_pass_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = LocalBlobs::open(dir.path()).expect("open");
    suite(&blobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_blobs_on_the_emulator_pass_the_contract() {
    let emulator = StorageEmulator::start("devgem-contract").await.expect("start the Cloud Storage emulator");
    let blobs = GcsBlobs::connect(&emulator.config()).await.expect("connect");
    tokio::time::timeout(Duration::from_secs(300), suite(&blobs)).await.expect("the suite finishes in time");
}
