//! Blobs benchmark: per-operation latency of put, get, list and delete of a 64 KiB blob, for the
//! embedded adapter (files in a temp dir) and the Cloud Storage adapter on the emulator
//! (`scripts/install-tools.sh` installs it), in the same run.
//!
//! ```text
//! cargo bench -p devgem-infra --bench blobs           # N = 300 of each operation
//! cargo bench -p devgem-infra --bench blobs -- 0.2    # N scaled by 0.2
//! BLOBS_BENCH_SCALE=0.2 cargo bench -p devgem-infra --bench blobs
//! ```
//!
//! Each operation runs sequentially from one task, timed around the port's call:
//! - put: `put_bytes` of 64 KiB to a new key `bench/<group>/<i>` (groups of 10 keys);
//! - get: `get` and reading the whole stream;
//! - list: `list("bench/<group>/")`, which returns the 10 blobs of one group;
//! - delete: `delete` of each key (the blob exists).
//!
//! The emulator is a single Python process on loopback: its numbers measure the adapter and
//! client stack plus the emulator, not Cloud Storage's own latency.

use bytes::Bytes;
use devgem_common::ports::blobs::{BlobKey, Blobs, BlobsExt};
use devgem_infra::gcp::emulators::storage::StorageEmulator;
use devgem_infra::gcp::storage::GcsBlobs;
use devgem_infra::local::LocalBlobs;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

mod support;
use support::{Percentiles, percentiles};

const N: usize = 300;
const WARMUP: usize = 20;
const BLOB_BYTES: usize = 64 * 1024;
const GROUP: usize = 10;

fn key(i: usize) -> BlobKey {
    BlobKey::parse(&format!("bench/{:04}/{:02}", i / GROUP, i % GROUP)).expect("bench key")
}

#[derive(Debug)]
struct Measured {
    adapter: &'static str,
    ops: Vec<(&'static str, Percentiles)>,
}

async fn bench(adapter: &'static str, blobs: &dyn Blobs, n: usize) -> Measured {
    let body = Bytes::from((0..BLOB_BYTES).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    // Warm-up: connections, caches, the emulator's first requests.
    for i in 0..WARMUP {
        let k = BlobKey::parse(&format!("warmup/{i}")).expect("key");
        blobs.put_bytes(&k, body.clone()).await.expect("warm-up put");
        blobs.get_bytes(&k).await.expect("warm-up get");
        blobs.list("warmup/").await.expect("warm-up list");
        blobs.delete(&k).await.expect("warm-up delete");
    }

    let mut put = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        blobs.put_bytes(&key(i), body.clone()).await.expect("put");
        put.push(started.elapsed());
    }
    let mut get = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let mut stream = blobs.get(&key(i)).await.expect("get");
        let mut size = 0;
        while let Some(chunk) = stream.next().await {
            size += chunk.expect("chunk").len();
        }
        get.push(started.elapsed());
        assert_eq!(size, BLOB_BYTES);
    }
    let groups = n.div_ceil(GROUP);
    let mut list = Vec::with_capacity(n);
    for i in 0..n {
        let group = i % groups;
        let started = Instant::now();
        let found = blobs.list(&format!("bench/{group:04}/")).await.expect("list");
        list.push(started.elapsed());
        assert!(!found.is_empty() && found.len() <= GROUP);
    }
    let mut delete = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let existed = blobs.delete(&key(i)).await.expect("delete");
        delete.push(started.elapsed());
        assert!(existed);
    }
    Measured {
        adapter,
        ops: vec![
            ("put", percentiles(put)),
            ("get", percentiles(get)),
            ("list (10)", percentiles(list)),
            ("delete", percentiles(delete)),
        ],
    }
}

/// The scale factor: the first numeric CLI argument (cargo bench passes `--bench` too), else
/// `BLOBS_BENCH_SCALE`, else 1.
fn scale() -> f64 {
    let from_args = std::env::args().skip(1).find_map(|a| a.parse::<f64>().ok());
    let from_env = || std::env::var("BLOBS_BENCH_SCALE").ok().and_then(|s| s.parse::<f64>().ok());
    let scale = from_args.or_else(from_env).unwrap_or(1.0);
    assert!(scale > 0.0 && scale.is_finite(), "the scale must be a positive number, got {scale}");
    scale
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let n = ((N as f64 * scale()).round() as usize).max(GROUP);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "blobs benchmark: {n} operations of each kind after {WARMUP} warm-up rounds, {} KiB blobs",
        BLOB_BYTES / 1024
    );
    println!("{cores} cores, tokio multi-thread with 2 workers, one task issuing requests sequentially\n");

    let results = runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let local = LocalBlobs::open(dir.path()).expect("open local blobs");
        let local = bench("local (files)", &local, n).await;

        let emulator = StorageEmulator::start("devgem-bench").await.expect("start the Cloud Storage emulator");
        let gcs = GcsBlobs::connect(&emulator.config()).await.expect("connect to the emulator");
        let gcs = bench("GCS (emulator)", &gcs, n).await;
        vec![local, gcs]
    });

    println!("latency per operation (ms)");
    println!("{:<16} {:<10} {:>8} {:>8} {:>8} {:>8} {:>8}", "adapter", "operation", "p50", "p90", "p99", "max", "mean");
    for result in &results {
        for (op, p) in &result.ops {
            println!(
                "{:<16} {:<10} {:>8} {:>8} {:>8} {:>8} {:>8}",
                result.adapter,
                op,
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.max),
                ms(p.mean)
            );
        }
    }
}
