//! Bundle store figures (issue 5): insert+remove of 1 KiB bundles (memory, group commit,
//! sync; and group commit with every write awaited, as a relay does before acknowledging),
//! restart (open + `iter_meta`) with 100,000 stored 1 KiB bundles (aim < 2 s), and resident
//! memory per stored bundle. The machine reference measured in the same run is the raw
//! sequential write+fsync throughput of a plain file of the same total size, and the time to
//! read that file back.
//!
//! `cargo bench -p node --bench store` (criterion, small samples). Set `STORE_BENCH_N` to change
//! the restart population (default 100,000).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bpv7::{BundleId, CreationTimestamp, Eid};
use criterion::{Criterion, Throughput};
use node::store::{BundleKey, Durability, InsertOutcome, Store, StoreConfig};

const SIZE: usize = 1024;

fn key(n: u64) -> BundleKey {
    BundleKey::from_id(&BundleId {
        source: Eid::Ipn {
            node: 12,
            service: 1,
        },
        timestamp: CreationTimestamp::new(800_000_000_000 + n / 1000, n % 1000),
        fragment: None,
    })
}

fn config(path: &Path, durability: Durability) -> StoreConfig {
    StoreConfig {
        path: path.to_path_buf(),
        durability,
        quota_bytes: u64::MAX,
        quota_bundles: u64::MAX,
    }
}

const GROUP: Durability = Durability::GroupCommit {
    max_delay: Duration::from_millis(5),
};

fn bench_dir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("dtn-store-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// Resident set size in bytes (Linux `/proc/self/statm`).
fn rss() -> u64 {
    let mut s = String::new();
    if std::fs::File::open("/proc/self/statm")
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_err()
    {
        return 0;
    }
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn meta_blob(n: u64) -> [u8; 24] {
    // About the size of the engine's metadata: a few numbers and flags.
    let mut m = [0u8; 24];
    m[..8].copy_from_slice(&n.to_be_bytes());
    m
}

/// RAM per stored bundle for the memory backend.
fn memory_rss_report(n: u64) {
    let payload = vec![0xa5u8; SIZE];
    let before = rss();
    let store = Store::open(&config(Path::new("unused"), Durability::Memory)).unwrap();
    for i in 0..n {
        store.insert(&key(i), i, &meta_blob(i), &payload).unwrap();
    }
    let after = rss();
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "store memory backend: {n} bundles of {SIZE} B: RSS +{:.1} MiB = {per:.0} B per bundle ({:.0} B overhead over the bundle bytes)",
        (after - before) as f64 / 1048576.0,
        per - SIZE as f64
    );
    drop(store);
}

/// Fill a sled store with `n` bundles, then time reopen and a full `iter_meta`.
fn restart_report(n: u64) {
    let dir = bench_dir("restart");
    let payload = vec![0x5au8; SIZE];
    let t = Instant::now();
    {
        let store = Store::open(&config(&dir, GROUP)).unwrap();
        for i in 0..n {
            store.insert(&key(i), i, &meta_blob(i), &payload).unwrap();
        }
        store.flush().unwrap();
    }
    let fill = t.elapsed();
    let disk = dir_size(&dir);
    println!(
        "store restart: filled {n} bundles of {SIZE} B in {:.2} s ({:.0} bundles/s, group commit), {:.1} MiB on disk",
        fill.as_secs_f64(),
        n as f64 / fill.as_secs_f64(),
        disk as f64 / 1048576.0
    );
    let mut times = Vec::new();
    for run in 0..3 {
        let rss0 = rss();
        let t = Instant::now();
        let store = Store::open(&config(&dir, GROUP)).unwrap();
        let opened = t.elapsed();
        let mut count = 0u64;
        for r in store.iter_meta() {
            std::hint::black_box(r.unwrap());
            count += 1;
        }
        let total = t.elapsed();
        assert_eq!(count, n);
        assert_eq!(store.usage().bundles, n);
        let rss1 = rss();
        println!(
            "store restart run {run}: open {:.3} s, open + iter_meta of {count} records {:.3} s; RSS after {:.1} MiB (+{:.1} MiB, {:.0} B per stored bundle)",
            opened.as_secs_f64(),
            total.as_secs_f64(),
            rss1 as f64 / 1048576.0,
            rss1.saturating_sub(rss0) as f64 / 1048576.0,
            rss1.saturating_sub(rss0) as f64 / n as f64
        );
        times.push(total);
        drop(store);
    }
    // A fresh process, as a restarted node: time and resident memory of open + iter_meta.
    match std::process::Command::new(std::env::current_exe().unwrap())
        .env("STORE_BENCH_OPEN", &dir)
        .output()
    {
        Ok(o) => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Err(e) => println!("store restart in a fresh process: could not run: {e}"),
    }
    times.sort();
    println!(
        "store restart with {n} bundles: median {:.3} s (aim < 2 s)",
        times[times.len() / 2].as_secs_f64()
    );
    reference_report(&dir, disk);
    let _ = std::fs::remove_dir_all(&dir);
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Machine reference: write+fsync then read back a plain file of the store's size.
fn reference_report(dir: &Path, bytes: u64) {
    let path = dir.with_extension("ref");
    let chunk = vec![0x33u8; 1 << 20];
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&path).unwrap();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        f.sync_all().unwrap();
    }
    let w = t.elapsed();
    let t = Instant::now();
    let mut buf = Vec::with_capacity(bytes as usize);
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    let r = t.elapsed();
    println!(
        "machine reference: plain file of {:.1} MiB: write+fsync {:.3} s ({:.0} MiB/s), read back {:.3} s ({:.0} MiB/s, page cache)",
        bytes as f64 / 1048576.0,
        w.as_secs_f64(),
        bytes as f64 / 1048576.0 / w.as_secs_f64(),
        r.as_secs_f64(),
        bytes as f64 / 1048576.0 / r.as_secs_f64()
    );
    // Per-write fsync reference for the Sync mode: 4 KiB write + fdatasync, 200 times.
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&path).unwrap();
        for _ in 0..200 {
            f.write_all(&chunk[..4096]).unwrap();
            f.sync_data().unwrap();
        }
    }
    println!(
        "machine reference: 4 KiB write + fdatasync: {:.0} per second",
        200.0 / t.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_file(&path);
}

fn bench_insert_remove(c: &mut Criterion) {
    let payload = vec![0xc3u8; SIZE];
    let mut g = c.benchmark_group("store insert+remove 1 KiB");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(2));
    for (name, durability) in [
        ("memory", Durability::Memory),
        ("group commit", GROUP),
        ("sync", Durability::Sync),
    ] {
        let dir = bench_dir(name);
        let store = Store::open(&config(&dir, durability)).unwrap();
        let mut i = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                let k = key(i);
                i += 1;
                store.insert(&k, i, &meta_blob(i), &payload).unwrap();
                store.remove(&k).unwrap();
            })
        });
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    // As a relay: a window of 256 bundles inserted, each durable (awaited) before it is
    // forwarded and removed.
    for (name, durability) in [("memory", Durability::Memory), ("group commit", GROUP)] {
        let dir = bench_dir("relay");
        let store = Store::open(&config(&dir, durability)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut i = 0u64;
        g.throughput(Throughput::Elements(256));
        g.bench_function(format!("{name}, 256 awaited durable then removed"), |b| {
            b.iter(|| {
                let keys: Vec<BundleKey> = (0..256).map(|j| key(i + j)).collect();
                i += 256;
                let mut waits = Vec::with_capacity(256);
                for k in &keys {
                    if let InsertOutcome::Stored(t) =
                        store.insert(k, i, &meta_blob(i), &payload).unwrap()
                    {
                        waits.push(store.persisted(t));
                    }
                }
                rt.block_on(async {
                    for w in waits {
                        w.await.unwrap();
                    }
                });
                for k in &keys {
                    store.remove(k).unwrap();
                }
            })
        });
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

/// Child mode (`STORE_BENCH_OPEN=DIR`): open the store, read all metadata, report.
fn open_child(dir: &Path) {
    let rss0 = rss();
    let t = Instant::now();
    let store = Store::open(&config(dir, GROUP)).unwrap();
    let mut count = 0u64;
    let mut meta_bytes = 0u64;
    for r in store.iter_meta() {
        meta_bytes += r.unwrap().meta.len() as u64;
        count += 1;
    }
    let took = t.elapsed();
    let rss1 = rss();
    println!(
        "store restart in a fresh process: open + iter_meta of {count} records ({meta_bytes} B of metadata) {:.3} s; RSS {:.1} -> {:.1} MiB, {:.0} B per stored bundle",
        took.as_secs_f64(),
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        rss1.saturating_sub(rss0) as f64 / count.max(1) as f64
    );
}

fn main() {
    if let Some(dir) = std::env::var_os("STORE_BENCH_OPEN") {
        open_child(Path::new(&dir));
        return;
    }
    let n: u64 = std::env::var("STORE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    memory_rss_report(n);
    restart_report(n);
    let mut c = Criterion::default().configure_from_args();
    bench_insert_remove(&mut c);
    c.final_summary();
}
