//! Bad input over the UDP convergence layer (one bundle per datagram): raw garbage, a truncated
//! bundle and a bundle with a bad CRC (RFC 9171 §4.2.1, §5.6 step 1: a bundle that fails
//! validation is discarded) are counted and dropped; the node keeps receiving and delivering,
//! and a bundle stored before is untouched.

use std::net::UdpSocket;
use std::time::Duration;

use bpv7::{BundleBuilder, CreationTimestamp, DtnTime, Eid};
use conformance::*;

fn bundle(seq: u64, data: &[u8]) -> Vec<u8> {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    BundleBuilder::new(
        Eid::ipn(66, 1),
        Eid::ipn(10, 5),
        CreationTimestamp {
            time: DtnTime(unix.as_millis() as u64 - DtnTime::UNIX_OFFSET_SECS * 1000),
            sequence: seq,
        },
        3_600_000,
    )
    .payload(data.to_vec())
    .build()
    .unwrap()
    .to_bytes()
    .unwrap()
    .to_vec()
}

#[test]
fn udp_garbage_is_counted_and_dropped_node_keeps_serving() {
    let dir = TempDir::new("udp-garbage");
    let mut cfg = NodeConfig::new("ipn:10.0", dir.path());
    cfg.udp_port = Some(free_udp_port());
    let node = Dtnd::start("x", dir.path(), cfg);
    bpsend(&node.agent(), "ipn:10.9", &payload(900, 3000)).expect("store a bundle first");
    let before = bad_input_count(&node.metrics());

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = node.udp();
    let mut rng = SplitMix(seed("udp_garbage"));
    for _ in 0..50 {
        let len = rng.range(1, 1400) as usize;
        let junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        sock.send_to(&junk, to).unwrap();
    }
    let good = bundle(1, b"a corrupt one");
    sock.send_to(&good[..good.len() / 2], to).unwrap(); // truncated
    let mut bad = bundle(2, b"a corrupt one");
    let at = bad.windows(13).position(|w| w == b"a corrupt one").unwrap();
    bad[at] ^= 1; // payload CRC-32C mismatch
    sock.send_to(&bad, to).unwrap();

    wait_for(
        "UDP garbage counted (dtn_cla_bad_input_total / dtn_bundles_discarded_total)",
        Duration::from_secs(10),
        || (bad_input_count(&node.metrics()) > before).then_some(()),
    );
    // Still receiving: a valid datagram is delivered (resent until it arrives: UDP may drop).
    let recv = bprecv_json(&node.agent(), "ipn:10.5", 1, Duration::from_secs(30));
    let ok = bundle(3, b"valid after garbage");
    for _ in 0..5 {
        sock.send_to(&ok, to).unwrap();
    }
    let out = recv.wait(Duration::from_secs(40));
    let got = parse_bprecv_json(&out.stdout).unwrap();
    assert!(
        out.success() && got.len() == 1 && got[0].payload == b"valid after garbage",
        "valid bundle not delivered after garbage: {:?} {}\n{}",
        out.status,
        out.stderr,
        node.log_tail()
    );
    let out = bprecv_json(&node.agent(), "ipn:10.9", 1, Duration::from_secs(30))
        .wait(Duration::from_secs(40));
    let got = parse_bprecv_json(&out.stdout).unwrap();
    assert!(
        out.success() && got.len() == 1,
        "stored bundle lost: {}",
        out.stderr
    );
    assert_eq!(check_payload(&got[0].payload), Ok(900));
    // The same valid bundle sent five times is delivered once (§5.1 identity, duplicates).
    assert_nothing_more(&node.agent(), "ipn:10.5", Duration::from_secs(2));
}
