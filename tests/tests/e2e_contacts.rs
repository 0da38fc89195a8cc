//! Issue 6, end to end: `dtnd` processes on loopback, routing by a shared ION contact plan
//! (Contact Graph Routing, CCSDS SABR 734.3-B-1 §3.2) over LTP (RFC 5326).
//!
//! 1. Bundles sent before any contact exists wait in the store and are delivered, exactly once,
//!    when their contacts open, and not before.
//! 2. A contact cut short (the plan file rewritten while bundles are queued for it) sends the
//!    rest by the alternate route; every bundle arrives exactly once. Also when the contact ends
//!    by the plan itself (2b), and with `on_contact_end = "suspend"`: the LTP session in flight
//!    resumes at the next contact (2c), or, after the last contact, is cancelled and its bundle
//!    routed again (2d).
//! 3. A plan reload (file change) takes effect without a restart; a bad plan file is refused
//!    with its `FILE:LINE` and the node keeps routing by the old plan (and takes a good one
//!    after it).
//! 4. With `reload_check = "0s"` a file change does nothing until SIGHUP, which reloads only the
//!    process it is sent to.
//! 5. An LTP span without a configured rate is paced at its contact's rate.
//!
//! The nodes share one plan file whose first line is an absolute `@` reference, so that every
//! process agrees on each contact's instant; relative times `+N` count from it. Every wait is a
//! bounded poll of the nodes' Prometheus metrics (every 150 ms).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conformance::*;

/// Contact rate of the fast links, bytes/s (also the LTP pacing rate during their contacts).
const FAST: u64 = 10_000_000;
/// How often the tests poll metrics.
const POLL: Duration = Duration::from_millis(150);

/// Polls `f` every [`POLL`] until it returns `Some`, or panics with `what()` after `timeout`.
fn poll<T>(timeout: Duration, what: impl Fn() -> String, f: impl FnMut() -> Option<T>) -> T {
    poll_every(POLL, timeout, what, f)
}

/// Brings the binaries up to date before a test computes its plan's times (a rebuild of `dtnd`
/// can take minutes; the contacts must not start meanwhile). Returns the instant after that,
/// from which the test's wall time counts.
fn built() -> Instant {
    for b in ["dtnd", "bpsend", "bprecv"] {
        bin(b);
    }
    Instant::now()
}

/// `dtn_neighbour_up{neighbour=name}` of `node`.
fn neighbour_up(m: &Metrics, name: &str) -> f64 {
    m.sum_where("dtn_neighbour_up", "neighbour", name)
}

/// The plan file of a test, and every node configured to read it.
fn with_plan(configs: &mut [NodeConfig], plan: &ContactPlanConfig) {
    for c in configs {
        c.contact_plan = Some(plan.clone());
    }
}

fn logs(nodes: &[Dtnd]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {} ---\n{}", n.name, n.log_tail()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks that `bprecv`'s output `out` holds every bundle of `sizes` exactly once,
/// byte-identical; a failure shows `context()` (e.g. the nodes' logs).
fn assert_exactly_once(
    test: &str,
    out: &ToolOutput,
    sizes: &[usize],
    context: impl Fn() -> String,
) {
    let received = parse_bprecv_json(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = check_exactly_once(&received, sizes) {
        panic!(
            "{test}: {e}\nbprecv: {:?} {}\n{}",
            out.status,
            out.stderr,
            context()
        );
    }
}

/// Waits for `bprecv` and checks that every bundle arrived exactly once, byte-identical.
fn check_received(test: &str, recv: Tool, sizes: &[usize], nodes: &[Dtnd]) {
    let out = recv.wait(Duration::from_secs(60));
    assert_exactly_once(test, &out, sizes, || logs(nodes));
    assert!(out.success(), "{test}: bprecv failed: {}", out.stderr);
}

/// Starts `bprecv` at `to` for the bundles of `sizes` to `eid` (giving up after `recv_for`),
/// then sends them from `from` with `workers` `bpsend` threads; returns the receiver.
fn send_all(
    from: &Dtnd,
    to: &Dtnd,
    eid: &str,
    sizes: &[usize],
    workers: usize,
    recv_for: Duration,
) -> Tool {
    let recv = bprecv_json(&to.agent(), eid, sizes.len(), recv_for);
    bpsend_all(
        &from.agent(),
        eid,
        sizes,
        workers,
        Duration::from_secs(20),
        None,
    );
    recv
}

fn sizes(test: &str, n: usize, lo: u64, hi: u64) -> Vec<usize> {
    let mut rng = SplitMix(seed(test));
    (0..n).map(|_| rng.range(lo, hi) as usize).collect()
}

fn plan_file(dir: &Path) -> PathBuf {
    dir.join("contacts.txt")
}

/// Test 1: line 1–2–3 over LTP with 50 ms delay and 3% loss emulated on every link; contacts 1↔2 from
/// +6 s and 2↔3 from +8 s. Twenty bundles sent from 1 to `ipn:3.5` before +6 s wait at node 1
/// (none received by 2, no LTP segment sent), then arrive exactly once, node 2 receiving none
/// before +6 s and node 3 none before +8 s.
#[test]
fn bundles_sent_before_any_contact_wait_and_are_delivered_when_contacts_open() {
    const N: usize = 20;
    let test = "contacts_wait";
    let t0 = built();
    let dir = TempDir::new(test);
    let file = plan_file(dir.path());
    let mut plan = IonPlan::starting_in(Duration::from_millis(500));
    plan.contacts_both(6, 3600, 1, 2, FAST)
        .contacts_both(8, 3600, 2, 3, FAST);
    plan.write(&file);
    let (open12, open23) = (plan.time(6), plan.time(8));
    let nodes = start_nodes(dir.path(), || {
        let mut c = ltp_mesh_configs(dir.path(), &[1, 2, 3], &[(1, 2), (2, 3)]);
        with_plan(&mut c, &ContactPlanConfig::file(&file));
        for n in &mut c {
            for nb in n.neighbours.clone() {
                n.emulation.insert(nb.name, "delay=50ms,loss=3%".into());
            }
        }
        c
    });
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let sizes = sizes(test, N, 100, 20_000);
    let recv = send_all(n1, n3, "ipn:3.5", &sizes, 4, Duration::from_secs(40));
    let sent_at = dtn_now_ms();
    eprintln!(
        "{test}: {N} bundles sent {} ms before the first contact ({:?} after the test start)",
        open12 as i64 - sent_at as i64,
        t0.elapsed()
    );
    assert!(
        sent_at + 500 < open12,
        "{test}: the nodes took too long to start: the bundles were sent {} ms before the \
         first contact",
        open12 as i64 - sent_at as i64
    );

    // Before +6 s: everything waits at node 1, nothing reaches node 2 or 3.
    let mut samples_before = 0;
    loop {
        let (m1, m2, m3) = (n1.metrics(), n2.metrics(), n3.metrics());
        let sampled = dtn_now_ms();
        if sampled >= open12 {
            break;
        }
        samples_before += 1;
        assert_eq!(
            m1.sum("dtn_bundles_waiting"),
            N as f64,
            "{test}: node 1 should hold every bundle waiting for the contact"
        );
        assert_eq!(
            m1.sum("dtn_store_bundles"),
            N as f64,
            "{test}: node 1 store"
        );
        assert_eq!(neighbour_up(&m1, "n2"), 0.0, "{test}: n2 is up before +6 s");
        assert_eq!(
            m1.sum("dtn_ltp_segments_sent_total"),
            0.0,
            "{test}: node 1 sent LTP segments before its contact"
        );
        assert_eq!(
            m2.sum("dtn_bundles_received_total"),
            0.0,
            "{test}: node 2 received bundles before the contact 1→2 (+6 s)"
        );
        assert_eq!(m3.sum("dtn_bundles_delivered_total"), 0.0);
        std::thread::sleep(POLL);
    }
    assert!(samples_before > 0, "{test}: no sample before +6 s");

    // From +6 s: node 2 receives, node 3 not before +8 s; all delivered at node 3.
    let mut first_at_2 = None;
    let mut first_at_3 = None;
    let mut most_waiting_at_2 = 0.0f64;
    poll(
        Duration::from_secs(30),
        || format!("{test}: {N} bundles delivered at node 3\n{}", logs(&nodes)),
        || {
            let (m2, m3) = (n2.metrics(), n3.metrics());
            let sampled = dtn_now_ms();
            if m2.sum("dtn_bundles_received_total") > 0.0 && first_at_2.is_none() {
                first_at_2 = Some(sampled);
            }
            most_waiting_at_2 = most_waiting_at_2.max(m2.sum("dtn_bundles_waiting"));
            if m3.sum("dtn_bundles_received_total") > 0.0 && first_at_3.is_none() {
                first_at_3 = Some(sampled);
                assert!(
                    sampled >= open23,
                    "{test}: node 3 received a bundle {} ms before its contact 2→3 opened",
                    open23 - sampled
                );
            }
            (m3.sum("dtn_bundles_delivered_total") >= N as f64).then_some(())
        },
    );
    let all_at = dtn_now_ms();
    eprintln!(
        "{test}: first at node 2 ≤ +{} ms, first at node 3 ≤ +{} ms, all {N} delivered ≤ +{} ms \
         after the reference ({samples_before} samples before +6 s; at most \
         {most_waiting_at_2} waiting at node 2)",
        first_at_2.map_or(-1, |t| (t - plan.reference) as i64),
        first_at_3.map_or(-1, |t| (t - plan.reference) as i64),
        all_at - plan.reference
    );
    check_received(test, recv, &sizes, &nodes);
    // Between +6 s and +8 s every bundle reached node 2 and waited there for the contact 2→3.
    assert_eq!(
        most_waiting_at_2, N as f64,
        "{test}: the bundles did not all wait at node 2 for the contact 2→3"
    );
    let m1 = n1.metrics();
    assert_eq!(m1.sum("dtn_bundles_waiting"), 0.0);
    assert_eq!(neighbour_up(&m1, "n2"), 1.0);
    assert_eq!(n3.metrics().sum("dtn_bundles_delivered_total"), N as f64);
    assert_nothing_more(&n3.agent(), "ipn:3.5", Duration::from_secs(1));
    eprintln!(
        "{test}: LTP retransmissions (3% emulated loss): node 1 {}, node 2 {}; wall time {:?}",
        m1.sum("dtn_ltp_retransmissions_total"),
        n2.metrics().sum("dtn_ltp_retransmissions_total"),
        t0.elapsed()
    );
}

/// Test 2: diamond 1→{2,3}→4 over LTP. The plan makes the route via 2 the best (light time 1 s
/// against 5 s via 3, every contact fast and open from +0), but node 1's link to 2 is slow in
/// fact (an emulated 400 ms delay, one transfer in flight at a time), so bundles queue for it.
/// While they do, the plan file is rewritten so that the contact 1→2 ends now: node 1 reloads
/// it, the link to 2 goes down, its LTP sessions are cancelled (`on_contact_end = "cancel"`)
/// and the queued bundles are routed again, via 3. Every bundle arrives at node 4 exactly once;
/// some went via 2 before the cut and the rest via 3 after it.
#[test]
fn contact_cut_short_sends_the_rest_by_the_alternate_route() {
    const N: usize = 20;
    let test = "contacts_cut";
    let t0 = built();
    let mut plan = IonPlan::starting_in(Duration::ZERO);
    diamond_contacts(&mut plan, 3600, 5);
    let d = Diamond::start(test, t0, &plan, "cancel", delayed_link_to_2);
    let [n1, n2, n3, _] = d.nodes();
    let (recv, sizes) = d.send(N);
    // Let a few go via 2, then cut the contact 1→2 while the rest are queued for it.
    poll(
        Duration::from_secs(20),
        || format!("{test}: 3 bundles forwarded by node 2\n{}", d.logs()),
        || (n2.metrics().sum("dtn_bundles_forwarded_total") >= 3.0).then_some(()),
    );
    let (m1, m3) = (n1.metrics(), n3.metrics());
    let queued_for_2 = m1.sum_where("dtn_neighbour_queued", "neighbour", "n2");
    assert_eq!(
        m3.sum("dtn_bundles_received_total"),
        0.0,
        "{test}: node 3 got bundles before the cut: the route via 2 should be the only one used"
    );
    assert!(
        queued_for_2 >= 5.0,
        "{test}: only {queued_for_2} bundles queued for node 2 at the cut; the test needs a \
         backlog"
    );
    let mut cut = plan.empty_copy();
    let end12 = plan.now_offset();
    diamond_contacts(&mut cut, end12, 5);
    cut.write(&d.file);
    let cut_at = dtn_now_ms();
    eprintln!(
        "{test}: cut the contact 1→2 at +{end12} s ({queued_for_2} bundles queued for node 2, \
         {} forwarded by node 2, {:?} after the test start)",
        n2.metrics().sum("dtn_bundles_forwarded_total"),
        t0.elapsed()
    );
    poll(
        Duration::from_secs(10),
        || format!("{test}: node 1 takes the link to 2 down\n{}", d.logs()),
        || (neighbour_up(&n1.metrics(), "n2") == 0.0).then_some(()),
    );
    eprintln!(
        "{test}: link 1→2 down {} ms after the plan was rewritten",
        dtn_now_ms() - cut_at
    );
    // Some went via 2 before the cut, the rest via 3 after it.
    d.delivered_via_2_and_3(recv, &sizes, 3.0, 1.0);
}

/// The diamond 1→{2,3}→4 of tests 2–2d: every contact fast and open from +0 for an hour, but
/// the contact 1→2 ends at `+end12`; the light time is 1 s via 2 and `owlt13` s via 3, so the
/// plan makes the route via 2 the best.
fn diamond_contacts(plan: &mut IonPlan, end12: u64, owlt13: u64) -> &mut IonPlan {
    plan.contact(0, end12, 1, 2, FAST)
        .contact(0, 3600, 2, 1, FAST)
        .contacts_both(0, 3600, 1, 3, FAST)
        .contacts_both(0, 3600, 2, 4, FAST)
        .contacts_both(0, 3600, 3, 4, FAST)
        .range(0, 3600, 1, 2, 1)
        .range(0, 3600, 1, 3, owlt13)
}

/// Node 1's link to 2 slow in fact: an emulated 400 ms delay.
fn delayed_link_to_2(n1: &mut NodeConfig) {
    n1.emulation.insert("n2".into(), "delay=400ms".into());
}

/// Node 1's LTP span to 2 paced at 20 kB/s by configuration (`rate`, which the plan does not
/// know: it says the contact is fast).
fn paced_link_to_2(n1: &mut NodeConfig) {
    n1.ltp_options.insert("n2".into(), "rate = 20000".into());
}

/// The diamond's four `dtnd` processes over LTP, routing by one plan file.
struct Diamond {
    test: String,
    /// The test's start (after the build), for its wall time.
    t0: Instant,
    /// Nodes 1 to 4 (stopped when dropped, before the directory is removed).
    nodes: Vec<Dtnd>,
    /// The plan file.
    file: PathBuf,
    _dir: TempDir,
}

impl Diamond {
    /// Writes `plan` to the test's plan file and starts the diamond's nodes routing by it, with
    /// `on_contact_end`; node 1 keeps one transfer in flight at a time, over a link to 2 that
    /// `slow_link_to_2` makes slower than the plan says (so that bundles queue for it).
    fn start(
        test: &str,
        t0: Instant,
        plan: &IonPlan,
        on_contact_end: &str,
        slow_link_to_2: fn(&mut NodeConfig),
    ) -> Diamond {
        let dir = TempDir::new(test);
        let file = plan_file(dir.path());
        plan.write(&file);
        let mut section = ContactPlanConfig::file(&file);
        section.on_contact_end = on_contact_end.into();
        let nodes = start_nodes(dir.path(), || {
            let mut c =
                ltp_mesh_configs(dir.path(), &[1, 2, 3, 4], &[(1, 2), (1, 3), (2, 4), (3, 4)]);
            with_plan(&mut c, &section);
            slow_link_to_2(&mut c[0]);
            c[0].max_in_flight = Some(1);
            c
        });
        Diamond {
            test: test.into(),
            t0,
            nodes,
            file,
            _dir: dir,
        }
    }

    /// Nodes 1 to 4.
    fn nodes(&self) -> [&Dtnd; 4] {
        [
            &self.nodes[0],
            &self.nodes[1],
            &self.nodes[2],
            &self.nodes[3],
        ]
    }

    fn logs(&self) -> String {
        logs(&self.nodes)
    }

    /// Sends `n` bundles of 100–4000 bytes (sizes seeded by the test's name) from node 1 to
    /// `ipn:4.5`, from 4 threads; returns the `bprecv` waiting for them at node 4, and the sizes.
    fn send(&self, n: usize) -> (Tool, Vec<usize>) {
        let sizes = sizes(&self.test, n, 100, 4000);
        let [n1, _, _, n4] = self.nodes();
        let recv = send_all(n1, n4, "ipn:4.5", &sizes, 4, Duration::from_secs(40));
        (recv, sizes)
    }

    /// The end of tests 2 and 2b, the contact 1→2 over for good: waits until node 4 delivered
    /// every bundle of `sizes` and checks that each arrived exactly once, that at least
    /// `least_via2` of them went via node 2 and `least_via3` via node 3 (and all via one of
    /// them), and that node 1, its link to 2 down, holds none.
    fn delivered_via_2_and_3(&self, recv: Tool, sizes: &[usize], least_via2: f64, least_via3: f64) {
        let (test, n) = (&self.test, sizes.len());
        let [n1, n2, n3, n4] = self.nodes();
        poll(
            Duration::from_secs(30),
            || format!("{test}: {n} bundles delivered at node 4\n{}", self.logs()),
            || (n4.metrics().sum("dtn_bundles_delivered_total") >= n as f64).then_some(()),
        );
        check_received(test, recv, sizes, &self.nodes);
        let (m1, m2, m3, m4) = (n1.metrics(), n2.metrics(), n3.metrics(), n4.metrics());
        let (via2, via3) = (
            m2.sum("dtn_bundles_forwarded_total"),
            m3.sum("dtn_bundles_forwarded_total"),
        );
        eprintln!(
            "{test}: forwarded by node 2: {via2}, by node 3: {via3}; duplicates at node 4: {}; \
             LTP export sessions cancelled at node 1: {}; wall time {:?}",
            m4.sum("dtn_bundles_duplicate_total"),
            m1.sum_where("dtn_ltp_sessions_cancelled_total", "direction", "export"),
            self.t0.elapsed()
        );
        assert!(
            via2 >= least_via2,
            "{test}: {via2} bundles went via node 2, not at least {least_via2}"
        );
        assert!(
            via3 >= least_via3,
            "{test}: {via3} bundles went via node 3, not at least {least_via3}"
        );
        assert!(
            via2 + via3 >= n as f64,
            "{test}: {via2} + {via3} forwarded for {n} delivered"
        );
        assert_eq!(neighbour_up(&m1, "n2"), 0.0, "{test}: link 1→2 up");
        assert_eq!(m1.sum("dtn_bundles_waiting"), 0.0);
        assert_eq!(
            m1.sum("dtn_store_bundles"),
            0.0,
            "{test}: node 1 still holds bundles"
        );
        assert_eq!(m4.sum("dtn_bundles_delivered_total"), n as f64);
        assert_nothing_more(&n4.agent(), "ipn:4.5", Duration::from_secs(1));
    }
}

/// Two nodes 1–2 over LTP whose plan `section` names (its file written already).
fn pair(dir: &Path, section: &ContactPlanConfig, log: &str) -> Vec<Dtnd> {
    start_nodes(dir, || {
        let mut c = ltp_mesh_configs(dir, &[1, 2], &[(1, 2)]);
        with_plan(&mut c, section);
        for n in &mut c {
            n.log = log.into();
        }
        c
    })
}

/// Polls until node `n` has `count` bundles waiting; then checks for `hold` that they stay
/// waiting (the link to `to` down, nothing more received at `to`).
fn assert_waiting(test: &str, n: &Dtnd, to: &Dtnd, count: usize, hold: Duration) {
    poll(
        Duration::from_secs(5),
        || format!("{test}: {count} bundles waiting at {}", n.name),
        || (n.metrics().sum("dtn_bundles_waiting") == count as f64).then_some(()),
    );
    let received = to.metrics().sum("dtn_bundles_received_total");
    let until = Instant::now() + hold;
    while Instant::now() < until {
        let m = n.metrics();
        assert_eq!(
            m.sum("dtn_bundles_waiting"),
            count as f64,
            "{test}: waiting"
        );
        assert_eq!(neighbour_up(&m, &to.name), 0.0, "{test}: link up");
        assert_eq!(
            to.metrics().sum("dtn_bundles_received_total"),
            received,
            "{test}: {} received a bundle without a contact",
            to.name
        );
        std::thread::sleep(POLL);
    }
}

/// Test 3: the plan has no contact 1→2 for an hour; bundles sent wait. The plan file is
/// rewritten with a contact now: within a few seconds (`reload_check = "1s"`) they are
/// delivered, by the same process (same pid, started once). Then a plan file with a bad line is
/// written: both nodes refuse it with `contacts.txt:LINE:` in their log and keep routing by the
/// old plan (one more bundle is delivered at once; had the bad file's valid lines been taken,
/// there would be no contact for an hour).
#[test]
fn plan_file_reload_takes_effect_without_restart_and_a_bad_plan_is_refused() {
    const N: usize = 5;
    let test = "contacts_reload";
    let t0 = built();
    let dir = TempDir::new(test);
    let file = plan_file(dir.path());
    let mut later = IonPlan::starting_in(Duration::from_millis(0));
    later.contacts_both(3600, 7200, 1, 2, FAST);
    later.write(&file);
    let nodes = pair(dir.path(), &ContactPlanConfig::file(&file), "warn");
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let pids = (n1.pid(), n2.pid());
    let mut sizes = sizes(test, N + 1, 10, 3000);
    let extra = sizes.pop().expect("N + 1 sizes");
    let recv = send_all(n1, n2, "ipn:2.5", &sizes, 2, Duration::from_secs(30));
    assert_waiting(test, n1, n2, N, Duration::from_secs(2));

    let mut now = later.empty_copy();
    now.contacts_both(0, 7200, 1, 2, FAST);
    now.write(&file);
    let written = Instant::now();
    poll(
        Duration::from_secs(8),
        || format!("{test}: {N} delivered after the reload\n{}", logs(&nodes)),
        || (n2.metrics().sum("dtn_bundles_delivered_total") >= N as f64).then_some(()),
    );
    let took = written.elapsed();
    eprintln!("{test}: {N} bundles delivered {took:?} after the plan file was rewritten");
    check_received(test, recv, &sizes, &nodes);
    assert_eq!(neighbour_up(&n1.metrics(), "n2"), 1.0);

    // A bad plan: valid lines that would mean "no contact for an hour", then a syntax error on
    // line 5 (line 1 is the harness comment, line 2 the reference).
    let mut bad = later.empty_copy();
    bad.contacts_both(3600, 7200, 1, 2, FAST)
        .line("a contact +0 +soon 1 2 1000");
    bad.write(&file);
    assert_eq!(
        bad.text().lines().nth(4),
        Some("a contact +0 +soon 1 2 1000")
    );
    for n in &nodes {
        poll(
            Duration::from_secs(8),
            || format!("{test}: {} logs the refused plan\n{}", n.name, n.log_tail()),
            || {
                let log = n.log_text();
                log.lines()
                    .find(|l| l.contains("contacts.txt:5:"))
                    .map(str::to_string)
            },
        );
    }
    let refused = n1
        .log_text()
        .lines()
        .find(|l| l.contains("contacts.txt:5:"))
        .map(str::to_string)
        .unwrap_or_default();
    eprintln!("{test}: node 1 logged: {refused}");
    assert!(
        refused.contains("WARN") || refused.contains("ERROR"),
        "{test}: the refusal is not logged as a warning: {refused}"
    );
    let recv = bprecv_json(&n2.agent(), "ipn:2.5", 1, Duration::from_secs(10));
    let one = payload(N as u32, extra);
    bpsend(&n1.agent(), "ipn:2.5", &one).expect("bpsend after the bad plan");
    let out = recv.wait(Duration::from_secs(20));
    let got = parse_bprecv_json(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        got.iter()
            .map(|r| check_payload(&r.payload))
            .collect::<Vec<_>>(),
        vec![Ok(N as u32)],
        "{test}: the bundle sent after the bad plan was not delivered by the old plan: {}\n{}",
        out.stderr,
        logs(&nodes)
    );
    let m1 = n1.metrics();
    assert_eq!(
        neighbour_up(&m1, "n2"),
        1.0,
        "{test}: the bad plan took the link down"
    );
    assert_eq!(m1.sum("dtn_bundles_waiting"), 0.0);
    assert_eq!(
        n2.metrics().sum("dtn_bundles_delivered_total"),
        (N + 1) as f64
    );
    // A good plan after the bad one is taken: no contact for an hour, so a bundle waits again.
    later.write(&file);
    poll(
        Duration::from_secs(8),
        || {
            format!(
                "{test}: the good plan after the bad one closes the link\n{}",
                logs(&nodes)
            )
        },
        || (neighbour_up(&n1.metrics(), "n2") == 0.0).then_some(()),
    );
    bpsend(&n1.agent(), "ipn:2.5", &payload(N as u32 + 1, 100)).expect("bpsend");
    assert_waiting(test, n1, n2, 1, Duration::from_millis(500));
    assert_eq!((n1.pid(), n2.pid()), pids, "{test}: a node was restarted");
    assert_eq!((n1.starts(), n2.starts()), (1, 1));
    let mut nodes = nodes;
    for n in &mut nodes {
        assert!(n.is_running(), "{test}: {} is not running", n.name);
    }
    assert_nothing_more(&nodes[1].agent(), "ipn:2.5", Duration::from_secs(1));
    eprintln!("{test}: wall time {:?}", t0.elapsed());
}

/// Test 4: with `reload_check = "0s"` the rewritten plan file is not read until SIGHUP, and
/// SIGHUP reloads only the process it is sent to: bundles at node 1 keep waiting after node 2
/// reloads, and are delivered once node 1 does.
#[test]
fn sighup_reloads_the_plan_when_file_checks_are_off() {
    const N: usize = 3;
    let test = "contacts_sighup";
    let t0 = built();
    let dir = TempDir::new(test);
    let file = plan_file(dir.path());
    let mut later = IonPlan::starting_in(Duration::from_millis(0));
    later.contacts_both(3600, 7200, 1, 2, FAST);
    later.write(&file);
    let mut section = ContactPlanConfig::file(&file);
    section.reload_check = "0s".into();
    let nodes = pair(dir.path(), &section, "info");
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let sizes = sizes(test, N, 10, 3000);
    let recv = send_all(n1, n2, "ipn:2.5", &sizes, 1, Duration::from_secs(30));
    assert_waiting(test, n1, n2, N, Duration::from_millis(300));

    let mut now = later.empty_copy();
    now.contacts_both(0, 7200, 1, 2, FAST);
    now.write(&file);
    // No file checks: still waiting well after a 1 s check would have reloaded it.
    assert_waiting(test, n1, n2, N, Duration::from_millis(2500));

    n2.signal("HUP");
    poll(
        Duration::from_secs(5),
        || format!("{test}: node 2 reloads on SIGHUP\n{}", n2.log_tail()),
        || {
            n2.log_text()
                .contains("SIGHUP: contact plan reloaded")
                .then_some(())
        },
    );
    poll(
        Duration::from_secs(5),
        || format!("{test}: node 2's link to 1 up after SIGHUP"),
        || (neighbour_up(&n2.metrics(), "n1") == 1.0).then_some(()),
    );
    // Node 1 was not signalled: its bundles still wait.
    assert_waiting(test, n1, n2, N, Duration::from_millis(1000));
    assert!(!n1.log_text().contains("SIGHUP"));

    n1.signal("HUP");
    let hup = Instant::now();
    poll(
        Duration::from_secs(8),
        || format!("{test}: {N} delivered after SIGHUP\n{}", logs(&nodes)),
        || (n2.metrics().sum("dtn_bundles_delivered_total") >= N as f64).then_some(()),
    );
    eprintln!(
        "{test}: delivered {:?} after SIGHUP to node 1",
        hup.elapsed()
    );
    check_received(test, recv, &sizes, &nodes);
    assert_eq!((n1.starts(), n2.starts()), (1, 1));
    assert_nothing_more(&n2.agent(), "ipn:2.5", Duration::from_secs(1));
    eprintln!("{test}: wall time {:?}", t0.elapsed());
}

/// Test 2b: as the cut-short test, but the contact 1→2 ends by the plan itself at +3 s (the
/// engine's contact-change timer, no reload), with `on_contact_end = "cancel"`: the bundles
/// queued for 2 and the one in flight are routed again, via 3. Every bundle arrives exactly
/// once at node 4; none reaches node 3 before +3 s.
#[test]
fn planned_contact_end_reroutes_queued_and_cancelled_bundles() {
    const N: usize = 20;
    let test = "contacts_end_cancel";
    let t0 = built();
    let mut plan = IonPlan::starting_in(Duration::ZERO);
    diamond_contacts(&mut plan, 3, 3);
    let d = Diamond::start(test, t0, &plan, "cancel", delayed_link_to_2);
    let [n1, _, n3, _] = d.nodes();
    let (recv, sizes) = d.send(N);
    let end12 = plan.time(3);
    let mut queued_before_end = 0.0;
    loop {
        let (m1, m3) = (n1.metrics(), n3.metrics());
        if dtn_now_ms() >= end12 {
            break;
        }
        assert_eq!(
            m3.sum("dtn_bundles_received_total"),
            0.0,
            "{test}: a bundle went via 3 before the contact 1→2 ended"
        );
        queued_before_end = m1.sum_where("dtn_neighbour_queued", "neighbour", "n2");
        std::thread::sleep(POLL);
    }
    assert!(
        queued_before_end >= 5.0,
        "{test}: only {queued_before_end} bundles queued for node 2 just before the contact \
         ended; the test needs a backlog"
    );
    eprintln!("{test}: {queued_before_end} queued for 2 just before +3 s");
    // At least one went via 2 before the end, and the backlog via 3 after it.
    d.delivered_via_2_and_3(recv, &sizes, 1.0, queued_before_end);
}

/// Diamond 1→{2,3}→4 with `on_contact_end = "suspend"`; node 1 paces its LTP span to 2 at
/// 20 kB/s ([`paced_link_to_2`]), so one 150 kB bundle is still being sent when the contact 1→2
/// ends at +3 s, while five small ones sent after it are queued behind it (one transfer in
/// flight). At the end the small ones are routed again, via 3; the big one's LTP session is
/// suspended. With `reopen`, the plan has another contact 1→2 from then on. Polls until all six
/// arrived at node 4 or `wait` passed; returns the bprecv output, and node 1's and node 2's
/// metrics then.
fn suspended_session(
    test: &str,
    reopen: Option<u64>,
    wait: Duration,
) -> (ToolOutput, Vec<usize>, Metrics, Metrics) {
    let t0 = built();
    let mut plan = IonPlan::starting_in(Duration::from_millis(1000));
    diamond_contacts(&mut plan, 3, 3);
    if let Some(at) = reopen {
        plan.contact(at, 3600, 1, 2, FAST);
    }
    let d = Diamond::start(test, t0, &plan, "suspend", paced_link_to_2);
    let [n1, n2, _, n4] = d.nodes();
    let sizes = vec![150_000, 1000, 1000, 1000, 1000, 1000];
    let recv = bprecv_json(
        &n4.agent(),
        "ipn:4.5",
        sizes.len(),
        wait + Duration::from_secs(8),
    );
    // The big one first, so that it is the one in flight.
    bpsend(&n1.agent(), "ipn:4.5", &payload(0, sizes[0])).expect("bpsend");
    for (i, &len) in sizes.iter().enumerate().skip(1) {
        bpsend(&n1.agent(), "ipn:4.5", &payload(i as u32, len)).expect("bpsend");
    }
    let reopen_at = reopen.map(|s| plan.time(s));
    // Node 2 receives nothing while the contact is suspended (the big bundle is incomplete).
    let until = Instant::now()
        + Duration::from_millis(plan.time(3) - dtn_now_ms().min(plan.time(3)))
        + wait;
    let mut first_at_2 = None;
    while Instant::now() < until && n4.metrics().sum("dtn_bundles_delivered_total") < 6.0 {
        let got = n2.metrics().sum("dtn_bundles_received_total");
        let sampled = dtn_now_ms();
        if got > 0.0 && first_at_2.is_none() {
            first_at_2 = Some(sampled);
            if let Some(r) = reopen_at {
                assert!(
                    sampled >= r,
                    "{test}: node 2 received the big bundle {} ms before the contact reopened",
                    r - sampled
                );
            }
        }
        std::thread::sleep(POLL);
    }
    let (m1, m2) = (n1.metrics(), n2.metrics());
    eprintln!(
        "{test}: {} delivered at node 4 (+{} ms); node 2 received its first at +{:?} ms; node 1: \
         {} in flight to 2, {} in the store, {} LTP exports open, {} cancelled; wall {:?}",
        n4.metrics().sum("dtn_bundles_delivered_total"),
        dtn_now_ms() - plan.reference,
        first_at_2.map(|t| t - plan.reference),
        m1.sum_where("dtn_neighbour_in_flight", "neighbour", "n2"),
        m1.sum("dtn_store_bundles"),
        m1.sum_where("dtn_ltp_sessions_open", "direction", "export"),
        m1.sum_where("dtn_ltp_sessions_cancelled_total", "direction", "export"),
        t0.elapsed()
    );
    let out = recv.wait(Duration::from_secs(20));
    (out, sizes, m1, m2)
}

/// Test 2c: `on_contact_end = "suspend"` with a next contact: the LTP session in flight at the
/// end is suspended, not cancelled, and completes when the contact 1→2 reopens at +7 s (node 2
/// receives nothing before); the bundles queued behind it went via 3. All six arrive exactly
/// once.
#[test]
fn suspended_session_resumes_at_the_next_contact() {
    let test = "contacts_suspend";
    let (out, sizes, m1, m2) = suspended_session(test, Some(7), Duration::from_secs(12));
    assert_exactly_once(test, &out, &sizes, String::new);
    assert_eq!(
        m2.sum("dtn_bundles_received_total"),
        1.0,
        "{test}: only the big one via 2"
    );
    assert_eq!(
        m1.sum_where("dtn_ltp_sessions_cancelled_total", "direction", "export"),
        0.0,
        "{test}: suspend cancelled a session"
    );
    assert_eq!(m1.sum("dtn_store_bundles"), 0.0);
}

/// Test 2d: `on_contact_end = "suspend"` and no later contact 1→2 in the plan: the LTP session
/// suspended at the end of the last contact is cancelled (no link-up cue would ever resume it)
/// and its bundle is routed again, via 3, with the ones queued behind it. All six arrive
/// exactly once; node 2 receives none (the big bundle's block was never complete).
#[test]
fn suspended_session_after_the_last_contact_is_cancelled_and_routed_again() {
    let test = "contacts_suspend_last";
    let (out, sizes, m1, m2) = suspended_session(test, None, Duration::from_secs(10));
    assert_eq!(
        m1.sum_where("dtn_neighbour_in_flight", "neighbour", "n2"),
        0.0,
        "{test}: a bundle is still in flight to node 2 10 s after its last contact ended"
    );
    assert_exactly_once(test, &out, &sizes, String::new);
    assert!(
        m1.sum_where("dtn_ltp_sessions_cancelled_total", "direction", "export") >= 1.0,
        "{test}: the suspended session was not cancelled"
    );
    assert_eq!(m2.sum("dtn_bundles_received_total"), 0.0);
    assert_eq!(m1.sum("dtn_store_bundles"), 0.0);
}

/// Test 5: an LTP neighbour without `rate` in its configuration is paced at the rate of the
/// plan's contact: one 300 kB bundle over a 50 kB/s contact takes at least the time the bytes
/// beyond the LTP pacing burst (64 KiB) need, about 4.7 s, where a fast contact takes well
/// under a second.
#[test]
fn ltp_span_is_paced_at_the_contact_rate() {
    const RATE: u64 = 50_000;
    const SIZE: usize = 300_000;
    let test = "contacts_rate";
    let t0 = built();
    let dir = TempDir::new(test);
    let file = plan_file(dir.path());
    let mut plan = IonPlan::starting_in(Duration::from_millis(0));
    plan.contact(0, 3600, 1, 2, RATE)
        .contact(0, 3600, 2, 1, FAST)
        .range(0, 3600, 1, 2, 1);
    plan.write(&file);
    let nodes = pair(dir.path(), &ContactPlanConfig::file(&file), "warn");
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let recv = bprecv_json(&n2.agent(), "ipn:2.5", 1, Duration::from_secs(30));
    sleep_until_dtn(plan.time(0));
    let sent = Instant::now();
    bpsend(&n1.agent(), "ipn:2.5", &payload(0, SIZE)).expect("bpsend");
    poll(
        Duration::from_secs(20),
        || format!("{test}: the bundle delivered\n{}", logs(&nodes)),
        || (n2.metrics().sum("dtn_bundles_delivered_total") >= 1.0).then_some(()),
    );
    let took = sent.elapsed();
    check_received(test, recv, &[SIZE], &nodes);
    let least = Duration::from_millis(((SIZE as u64 - 65_536) * 1000 / RATE) * 8 / 10);
    eprintln!(
        "{test}: {SIZE} bytes over a {RATE} B/s contact took {took:?} (at least {least:?} \
         expected); wall time {:?}",
        t0.elapsed()
    );
    assert!(
        took >= least,
        "{test}: {SIZE} bytes took {took:?} over a {RATE} B/s contact: the LTP span is not paced \
         at the contact's rate"
    );
}
