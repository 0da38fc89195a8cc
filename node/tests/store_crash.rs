//! Crash consistency of the bundle store (RFC 9171 §5 custody storage; DESIGN "nothing
//! acknowledged is lost"): a child process writes, updates and removes bundles in `Sync` and
//! `GroupCommit` mode (with plain and with held inserts, `Store::insert_held`) and reports each
//! write once it is durable; the parent SIGKILLs it at
//! random moments and checks on reopen that every reported write is there (or gone, for
//! removals), no record is half-written, the expiry index matches the metadata and the usage
//! counters are exact.
//!
//! The child is this test binary re-executed with `STORE_CRASH_CHILD=1`, running the test
//! `crash_child`; without that variable `crash_child` returns at once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bpv7::{BundleId, CreationTimestamp, Eid};
use node::store::{BundleKey, Durability, InsertOutcome, Store, StoreConfig, Ticket};

const KILLS: u64 = 12;

fn key(n: u64) -> BundleKey {
    BundleKey::from_id(&BundleId {
        source: Eid::Ipn {
            node: 9,
            service: 1,
        },
        timestamp: CreationTimestamp::new(1, n),
        fragment: None,
    })
}

fn index_of(k: &BundleKey) -> u64 {
    k.to_id().expect("stored key decodes").timestamp.sequence
}

fn bundle(n: u64) -> Vec<u8> {
    let len = 64 + (n.wrapping_mul(7919) % 3000) as usize;
    (0..len)
        .map(|i| (n as u8) ^ (i as u8).wrapping_mul(31))
        .collect()
}

fn meta(n: u64) -> Vec<u8> {
    format!("meta-{n}").into_bytes()
}

fn updated_meta(n: u64) -> Vec<u8> {
    format!("updated-{n}").into_bytes()
}

fn config(dir: &Path, group: bool) -> StoreConfig {
    StoreConfig {
        path: dir.to_path_buf(),
        durability: if group {
            Durability::GroupCommit {
                max_delay: Duration::from_millis(3),
            }
        } else {
            Durability::Sync
        },
        quota_bytes: u64::MAX,
        quota_bundles: u64::MAX,
    }
}

/// Child mode: write until killed (at most 60 s), reporting durable writes on stdout:
/// `P n` stored, `U n` metadata updated, `R n` removed; `u n` / `r n` announce an update or
/// removal before it starts (after it the record may be either way until `U` / `R`).
#[test]
fn crash_child() {
    if std::env::var_os("STORE_CRASH_CHILD").is_none() {
        return;
    }
    let dir = PathBuf::from(std::env::var("STORE_CRASH_DIR").unwrap());
    let mode = std::env::var("STORE_CRASH_MODE").unwrap();
    let group = mode != "sync";
    let held = mode == "held";
    let mut n: u64 = std::env::var("STORE_CRASH_START").unwrap().parse().unwrap();
    let store = Store::open(&config(&dir, group)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    // Removals and updates become reportable once a later write is durable.
    let mut pending: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut batch = Vec::new();
        let mut all = Ticket::NONE;
        for _ in 0..8 {
            let inserted = if held {
                store.insert_held(&key(n), n, &meta(n), &bundle(n).into())
            } else {
                store.insert(&key(n), n, &meta(n), &bundle(n))
            };
            match inserted.unwrap() {
                InsertOutcome::Stored(t) => all = all.and(t),
                InsertOutcome::Duplicate => panic!("duplicate {n}"),
            }
            batch.push(n);
            n += 1;
        }
        rt.block_on(store.persisted(all)).unwrap();
        for line in pending.drain(..) {
            writeln!(out, "{line}").unwrap();
        }
        for &b in &batch {
            writeln!(out, "P {b}").unwrap();
        }
        out.flush().unwrap();
        // Touch the batch just reported: remove one, update another.
        writeln!(out, "r {}\nu {}", batch[0], batch[1]).unwrap();
        out.flush().unwrap();
        assert!(store.remove(&key(batch[0])).unwrap());
        pending.push(format!("R {}", batch[0]));
        store
            .update_meta(&key(batch[1]), &updated_meta(batch[1]))
            .unwrap();
        pending.push(format!("U {}", batch[1]));
    }
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What the metadata of a reported bundle must be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MetaState {
    Original,
    /// An update was announced but not reported durable.
    Either,
    Updated,
}

#[derive(Default)]
struct Expected {
    /// Reported stored (and not reported removed).
    present: BTreeMap<u64, MetaState>,
    /// Removal announced, not reported durable: may be present or not.
    maybe_removed: BTreeSet<u64>,
    removed: BTreeSet<u64>,
}

/// Check the reopened store against what the children reported.
fn verify(dir: &Path, exp: &Expected) -> usize {
    let store = Store::open(&config(dir, false)).unwrap();
    for (&n, &state) in &exp.present {
        let k = key(n);
        let Some(b) = store.get(&k).unwrap() else {
            assert!(
                exp.maybe_removed.contains(&n),
                "bundle {n} reported persisted but missing"
            );
            continue;
        };
        assert_eq!(&b[..], &bundle(n)[..], "bytes of {n}");
        let m = store
            .get_meta(&k)
            .unwrap()
            .expect("meta of a stored bundle");
        let ok = match state {
            MetaState::Original => m.meta[..] == meta(n)[..],
            MetaState::Updated => m.meta[..] == updated_meta(n)[..],
            MetaState::Either => m.meta[..] == meta(n)[..] || m.meta[..] == updated_meta(n)[..],
        };
        assert!(ok, "meta of {n} ({state:?}): {:?}", m.meta);
    }
    for &n in &exp.removed {
        assert!(
            !store.contains(&key(n)).unwrap(),
            "bundle {n} reported removed but present"
        );
    }
    // Every record complete: meta decodes, bytes match it, the expiry index matches.
    let mut keys = BTreeSet::new();
    let (mut bytes, mut count) = (0u64, 0u64);
    for r in store.iter_meta() {
        let m = r.expect("no corrupt meta record");
        let n = index_of(&m.key);
        let b = store.get(&m.key).unwrap().expect("meta without bundle");
        assert_eq!(&b[..], &bundle(n)[..], "bytes of unreported {n}");
        assert_eq!(m.size, b.len() as u64);
        assert_eq!(m.expiry_ms, n);
        assert!(m.meta[..] == meta(n)[..] || m.meta[..] == updated_meta(n)[..]);
        bytes += m.size;
        count += 1;
        keys.insert(m.key);
    }
    let indexed: BTreeSet<BundleKey> = store
        .expired(u64::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(indexed, keys, "expiry index differs from the metadata");
    let u = store.usage();
    assert_eq!((u.bundles, u.bytes), (count, bytes), "usage counters");
    keys.len()
}

#[test]
fn kill_9_loses_nothing_reported() {
    let dir = std::env::temp_dir().join(format!("dtn-store-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("store_crash seed {seed}");
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().unwrap();
    let mut exp = Expected::default();
    let started = Instant::now();
    for round in 0..KILLS {
        let mode = ["sync", "group", "held"][round as usize % 3];
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("STORE_CRASH_CHILD", "1")
            .env("STORE_CRASH_DIR", &dir)
            .env("STORE_CRASH_MODE", mode)
            .env("STORE_CRASH_START", (round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    // A line cut by the kill has no newline: not a report.
                    Ok(_) if line.ends_with(b"\n") => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                    Ok(_) => return,
                }
            }
        });
        // Wait for the child to open the store, then let it write for a random time.
        let wait_until = Instant::now() + Duration::from_secs(30);
        loop {
            let left = wait_until.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("child ready within 30 s");
            if line.windows(5).any(|w| w == b"READY") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20 + rng.next() % 250));
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        reader.join().unwrap();
        let mut reports = 0;
        for line in rx.try_iter() {
            let s = String::from_utf8_lossy(&line);
            let mut parts = s.split_whitespace();
            let (Some(kind), Some(n)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "P" => {
                    exp.present.insert(n, MetaState::Original);
                }
                "u" => {
                    exp.present.insert(n, MetaState::Either);
                }
                "U" => {
                    exp.present.insert(n, MetaState::Updated);
                }
                "r" => {
                    exp.maybe_removed.insert(n);
                }
                "R" => {
                    exp.present.remove(&n);
                    exp.maybe_removed.remove(&n);
                    exp.removed.insert(n);
                }
                _ => continue,
            }
            reports += 1;
        }
        let stored = verify(&dir, &exp);
        eprintln!("round {round} ({mode}): {reports} reports, {stored} stored");
        assert!(
            started.elapsed() < Duration::from_secs(80),
            "crash test over its time bound"
        );
    }
    assert!(
        exp.present.len() > 100 && !exp.removed.is_empty(),
        "children reported too little to test anything: {} stored",
        exp.present.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
