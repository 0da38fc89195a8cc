//! Route query time on a generated plan of 100 nodes and 10,000 contacts (one day, contacts of
//! 5 to 60 minutes, every pair ranged): cold (fresh computation with Yen's k = 3, and a single
//! Dijkstra) and warm (answer from the route cache). Aims: < 20 ms cold, < 1 ms warm. The
//! machine reference measured in the same run is a 10,000-element sort of u64.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use node::routing::{Contact, ContactPlan, Range, Router};

const S: u64 = 1000;
const NODES: u64 = 100;
const CONTACTS: usize = 10_000;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn plan() -> ContactPlan {
    let mut rng = Lcg(42);
    let mut p = ContactPlan::new();
    while p.contact_count() < CONTACTS {
        let from = 1 + rng.below(NODES);
        let to = 1 + rng.below(NODES);
        if from == to {
            continue;
        }
        let start = rng.below(86_400) * S;
        let dur = (300 + rng.below(3300)) * S;
        let _ = p.add_contact(Contact {
            from,
            to,
            start,
            end: start + dur,
            rate: 1_000 + rng.below(1_000_000),
            confidence: 1.0,
        });
    }
    for a in 1..=NODES {
        for b in (a + 1)..=NODES {
            p.add_range(Range {
                from: a,
                to: b,
                start: 0,
                end: 200_000 * S,
                owlt: (1 + rng.below(10)) * S,
            })
            .expect("disjoint ranges");
        }
    }
    p
}

fn bench(c: &mut Criterion) {
    let p = plan();
    let mut router = Router::new(1, p.clone());
    let mut dests = (2..=NODES).cycle();
    let mut g = c.benchmark_group("cgr_100_nodes_10k_contacts");
    g.sample_size(20);
    g.bench_function("cold_dijkstra", |b| {
        b.iter(|| {
            let d = dests.next().unwrap_or(2);
            black_box(router.route_uncached(d, 10_000, u64::MAX, 0, &[]))
        })
    });
    g.bench_function("cold_yen_k3", |b| {
        b.iter(|| {
            let d = dests.next().unwrap_or(2);
            black_box(router.routes(d, 10_000, u64::MAX, 0, &[], 3))
        })
    });
    // Warm: fill the cache for every destination, then query.
    for d in 2..=NODES {
        router.route(d, 10_000, u64::MAX, 0, &[]);
    }
    g.bench_function("warm_cached", |b| {
        b.iter(|| {
            let d = dests.next().unwrap_or(2);
            black_box(router.route(d, 10_000, u64::MAX, 0, &[]))
        })
    });
    g.bench_function("reference_sort_10k_u64", |b| {
        let mut rng = Lcg(7);
        let v: Vec<u64> = (0..10_000).map(|_| rng.next()).collect();
        b.iter(|| {
            let mut w = v.clone();
            w.sort_unstable();
            black_box(w)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
