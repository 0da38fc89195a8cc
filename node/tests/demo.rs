//! `dtnd demo` in-process: the three-node Mars-relay scenario over LTP on loopback UDP with the
//! built-in contact plan, light times and loss. Every bundle is delivered exactly once, none
//! faster than the light time of its path (1 s + 2 s), some waited for contacts, and the summary
//! is printed. Takes about 40 s of wall time (the plan's length).

use std::time::Duration;

use node::demo::{run, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_delivers_everything_once_through_the_contacts() {
    let opts = DemoOptions::default();
    let mut out = Vec::new();
    let report = tokio::time::timeout(Duration::from_secs(90), run(&opts, &mut out))
        .await
        .expect("the demo ends by its own deadline")
        .expect("demo runs");
    let text = String::from_utf8(out).unwrap();
    assert_eq!(report.sent, 130, "{text}");
    assert_eq!(report.delivered, report.sent, "{text}");
    assert_eq!(report.duplicates, 0, "{text}");
    // Light time alone is 3 s from ground to surface; emulated delays make it real.
    assert!(
        report.latencies_ms.iter().all(|&l| l >= 3000),
        "a bundle arrived faster than light: {:?}\n{text}",
        &report.latencies_ms[..5.min(report.latencies_ms.len())]
    );
    // Bundles sent while the ground has no contact wait for the one at +22 s.
    assert!(report.max_waiting > 0, "{text}");
    assert!(report.latency_quantile(0.99).unwrap() >= 12_000, "{text}");
    assert!(report.elapsed < Duration::from_secs(60), "{text}");
    assert!(text.contains("end-to-end latency: median"), "{text}");
    assert!(text.contains("links ground-relay"), "{text}");
}

#[test]
fn demo_plan_is_a_valid_shared_plan() {
    use node::routing::{ContactPlan, PlanOptions};
    let text = node::demo::demo_plan(800_000_000_000);
    // The `@` line makes the plan independent of each node's own start time.
    let a = ContactPlan::parse_ion(&text, "demo", &PlanOptions::new(0)).unwrap();
    let b = ContactPlan::parse_ion(&text, "demo", &PlanOptions::new(123_456)).unwrap();
    assert_eq!(a.contact_count(), 8);
    let starts = |p: &ContactPlan| p.contacts().map(|c| c.start).collect::<Vec<_>>();
    assert_eq!(starts(&a), starts(&b));
    assert_eq!(a.owlt(1, 2, 800_000_005_000), Some(1000));
    assert_eq!(a.owlt(3, 2, 800_000_005_000), Some(2000));
}
