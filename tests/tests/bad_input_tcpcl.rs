//! Issue 5, bad input over TCPCLv4: a fake neighbour (this test, writing raw RFC 9174 bytes)
//! sends a corrupt bundle (bad CRC), oversize transfers (over the node's `max_bundle_size`, which
//! is its TCPCL transfer MRU) and garbage. Each case checks that the node answers per RFC 9174
//! (§5.2.4 XFER_REFUSE, §5.1.2 MSG_REJECT, §6.1 SESS_TERM, §4.3 close on a bad magic), counts the
//! event in its metrics, keeps serving another neighbour and a local application, and that a
//! bundle it stored before is untouched and still delivered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bpv7::{BundleBuilder, CreationTimestamp, DtnTime, Eid};
use bytes::BytesMut;
use conformance::*;
use convergence::tcpcl::message::{
    ContactHeader, DecodeLimits, Message, RefuseReason, RejectReason,
};

/// Message types (RFC 9174 §5.1, Table 4).
const XFER_SEGMENT: u8 = 0x01;
const XFER_ACK: u8 = 0x02;
const SESS_INIT: u8 = 0x07;
/// XFER_SEGMENT flags (§5.2.2).
const START: u8 = 0x02;
const END: u8 = 0x01;

/// The stored-before bundle: index and size, sent by a local app to an unregistered endpoint.
const STORED_IDX: u32 = 900;
const STORED_LEN: usize = 5000;

/// A node `ipn:10.0` with one configured neighbour `ipn:66.0` (the fake) and a bundle already
/// in its store for `ipn:10.9`.
struct Scene {
    _dir: TempDir,
    node: Dtnd,
    before: f64,
}

impl Scene {
    fn start(test: &str, max_bundle_size: Option<u64>) -> Scene {
        Scene::start_with(test, max_bundle_size, None)
    }

    /// [`Scene::start`] with a store quota of `quota_bundles` bundles.
    fn start_with(test: &str, max_bundle_size: Option<u64>, quota_bundles: Option<u64>) -> Scene {
        let dir = TempDir::new(test);
        let mut cfg = NodeConfig::new("ipn:10.0", dir.path());
        cfg.max_bundle_size = max_bundle_size;
        cfg.quota_bundles = quota_bundles;
        cfg.neighbours.push(Neighbour {
            name: "fake".into(),
            node: "ipn:66.0".into(),
            link: Link::Tcpcl(free_tcp_port()),
            accept_primary_without_crc: false,
        });
        let node = Dtnd::start("x", dir.path(), cfg);
        bpsend(&node.agent(), "ipn:10.9", &payload(STORED_IDX, STORED_LEN))
            .expect("store a bundle before the bad input");
        let before = bad_input_count(&node.metrics());
        Scene {
            _dir: dir,
            node,
            before,
        }
    }

    /// The bad input was counted (bounded wait for the counter).
    fn assert_counted(&self, what: &str) {
        let before = self.before;
        wait_for(
            &format!("{what} counted in dtn_cla_bad_input_total / dtn_bundles_discarded_total / dtn_bundles_refused_total"),
            Duration::from_secs(10),
            || (bad_input_count(&self.node.metrics()) > before).then_some(()),
        );
    }

    /// Another neighbour is served, the local application too, and the stored bundle is intact.
    fn assert_still_serving(&self) {
        let mut good = Fake::connect(self.node.tcpcl(), "ipn:67.0");
        let bundle = valid_bundle(67, 5, 1, b"a good bundle after the bad input".to_vec());
        good.send_raw(&segment(START | END, 1, None, &bundle));
        match good.expect(
            "XFER_ACK of the good bundle",
            |m| matches!(m, Message::XferAck(a) if a.flags & END != 0),
        ) {
            Message::XferAck(a) => assert_eq!(a.acknowledged_length, bundle.len() as u64),
            m => panic!("{m:?}"),
        }
        let out = bprecv_json(&self.node.agent(), "ipn:10.5", 1, Duration::from_secs(30))
            .wait(Duration::from_secs(40));
        let got = parse_bprecv_json(&out.stdout).unwrap();
        assert!(
            out.success()
                && got.len() == 1
                && got[0].payload == b"a good bundle after the bad input",
            "good bundle not delivered: {:?} {}\n{}",
            out.status,
            out.stderr,
            self.node.log_tail()
        );
        let out = bprecv_json(&self.node.agent(), "ipn:10.9", 1, Duration::from_secs(30))
            .wait(Duration::from_secs(40));
        let got = parse_bprecv_json(&out.stdout).unwrap();
        assert!(
            out.success() && got.len() == 1,
            "stored bundle not delivered: {}",
            out.stderr
        );
        assert_eq!(check_payload(&got[0].payload), Ok(STORED_IDX));
        assert_eq!(got[0].payload.len(), STORED_LEN);
    }
}

/// A raw TCPCLv4 peer speaking bytes written by hand; replies are parsed with the
/// `convergence` codec.
struct Fake {
    s: TcpStream,
    rx: BytesMut,
}

impl Fake {
    /// Connects without any exchange.
    fn raw(addr: SocketAddr) -> Fake {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        Fake {
            s,
            rx: BytesMut::new(),
        }
    }

    /// Contact header exchange (§4.2) only.
    fn contact(addr: SocketAddr) -> Fake {
        let mut f = Fake::raw(addr);
        f.send_raw(b"dtn!\x04\x00");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(h) = ContactHeader::decode(&mut f.rx).expect("node's contact header") {
                assert_eq!(h.version, 4);
                return f;
            }
            assert!(f.fill(deadline), "no contact header from the node");
        }
    }

    /// Contact headers and SESS_INIT (§4.6) as `node_id`.
    fn connect(addr: SocketAddr, node_id: &str) -> Fake {
        let mut f = Fake::contact(addr);
        f.send_raw(&sess_init(node_id));
        match f.expect("SESS_INIT", |m| matches!(m, Message::SessInit(_))) {
            Message::SessInit(i) => assert!(i.segment_mru > 0),
            m => panic!("{m:?}"),
        }
        f
    }

    fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write to node");
    }

    /// Reads more bytes; false at EOF or the deadline.
    fn fill(&mut self, deadline: Instant) -> bool {
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    self.rx.extend_from_slice(&buf[..n]);
                    return true;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// The next message; `None` at EOF (or after 10 s of silence).
    fn next(&mut self) -> Option<Message> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let limits = DecodeLimits {
            segment_mru: 64 << 20,
            max_extensions_len: 65536,
        };
        loop {
            if let Some(m) = Message::decode(&mut self.rx, &limits).expect("node sent garbage") {
                return Some(m);
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// Skips messages (at most 1,000) until `pred` holds; panics at EOF.
    fn expect(&mut self, what: &str, pred: impl Fn(&Message) -> bool) -> Message {
        let mut seen = Vec::new();
        for _ in 0..1000 {
            match self.next() {
                Some(m) if pred(&m) => return m,
                Some(m) => seen.push(format!("{m:?}").chars().take(120).collect::<String>()),
                None => break,
            }
        }
        panic!("expected {what}; got {seen:?} then EOF/silence");
    }

    /// Reads until EOF (bounded); returns the messages seen.
    fn until_eof(&mut self) -> Vec<Message> {
        let mut v = Vec::new();
        for _ in 0..1000 {
            match self.next() {
                Some(m) => v.push(m),
                None => return v,
            }
        }
        panic!("the node kept talking: {v:?}");
    }
}

/// SESS_INIT (§4.6): keepalive 0, segment MRU 1 MiB, transfer MRU 64 MiB, no extensions.
fn sess_init(node_id: &str) -> Vec<u8> {
    let mut v = vec![SESS_INIT];
    v.extend_from_slice(&0u16.to_be_bytes());
    v.extend_from_slice(&(1u64 << 20).to_be_bytes());
    v.extend_from_slice(&(64u64 << 20).to_be_bytes());
    v.extend_from_slice(&(node_id.len() as u16).to_be_bytes());
    v.extend_from_slice(node_id.as_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v
}

/// XFER_SEGMENT (§5.2.2), with a critical Transfer Length extension (§5.2.5.1) when given.
/// The extension items length and items are present only in a START segment (§5.2.2).
fn segment(flags: u8, id: u64, transfer_length: Option<u64>, data: &[u8]) -> Vec<u8> {
    let mut v = vec![XFER_SEGMENT, flags];
    v.extend_from_slice(&id.to_be_bytes());
    match transfer_length {
        _ if flags & START == 0 => {}
        Some(len) => {
            v.extend_from_slice(&13u32.to_be_bytes());
            v.push(0x01); // CRITICAL
            v.extend_from_slice(&1u16.to_be_bytes());
            v.extend_from_slice(&8u16.to_be_bytes());
            v.extend_from_slice(&len.to_be_bytes());
        }
        None => v.extend_from_slice(&0u32.to_be_bytes()),
    }
    v.extend_from_slice(&(data.len() as u64).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn now_dtn_ms() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    unix.as_millis() as u64 - DtnTime::UNIX_OFFSET_SECS * 1000
}

/// A valid bundle from `ipn:<node>.1` to `ipn:10.<service>` (CRC-32C on every block).
fn valid_bundle(node: u64, service: u64, seq: u64, data: Vec<u8>) -> Vec<u8> {
    BundleBuilder::new(
        Eid::ipn(node, 1),
        Eid::ipn(10, service),
        CreationTimestamp {
            time: DtnTime(now_dtn_ms()),
            sequence: seq,
        },
        3_600_000,
    )
    .payload(data)
    .build()
    .unwrap()
    .to_bytes()
    .unwrap()
    .to_vec()
}

#[test]
fn tcpcl_corrupt_bundle_is_refused_counted_and_nothing_else_is_touched() {
    let scene = Scene::start("bad-crc", None);
    let mut fake = Fake::connect(scene.node.tcpcl(), "ipn:66.0");
    let data = b"corrupt me, corrupt me, corrupt me".to_vec();
    let mut bundle = valid_bundle(66, 5, 1, data.clone());
    let at = bundle
        .windows(data.len())
        .position(|w| w == &data[..])
        .expect("payload in the encoding");
    bundle[at + 3] ^= 0x20; // the payload block's CRC-32C no longer matches (RFC 9171 §4.2.1)
    fake.send_raw(&segment(START | END, 7, Some(bundle.len() as u64), &bundle));
    // §5.2.4: "Not Acceptable": some issue with the bundle data; the sender must not retry it as
    // is. The node answers only after checking the bundle (RFC 9171 §5.6), never with an ack.
    let m = fake.expect("XFER_REFUSE of the corrupt bundle", |m| {
        matches!(m, Message::XferRefuse(_))
            || matches!(m, Message::XferAck(a) if a.flags & END != 0)
    });
    match m {
        Message::XferRefuse(r) => {
            assert_eq!(r.transfer_id, 7);
            assert_eq!(r.reason, RefuseReason::NotAcceptable);
        }
        m => panic!("the corrupt bundle was not refused: {m:?}"),
    }
    scene.assert_counted("the corrupt bundle");
    // The session survives a refused transfer: a good bundle on it is acknowledged.
    let good = valid_bundle(66, 6, 2, b"after".to_vec());
    fake.send_raw(&segment(START | END, 8, None, &good));
    fake.expect(
        "XFER_ACK of transfer 8",
        |m| matches!(m, Message::XferAck(a) if a.transfer_id == 8 && a.flags & END != 0),
    );
    scene.assert_still_serving();
}

#[test]
fn tcpcl_transfer_to_a_full_store_is_refused_with_no_resources_until_there_is_room() {
    // Issue 5: the store quota gives back-pressure; RFC 9174 §5.2.4: XFER_REFUSE reason
    // "No Resources" (the sender may try again later), never an ack for a bundle not stored.
    let scene = Scene::start_with("full-store", None, Some(1));
    let mut fake = Fake::connect(scene.node.tcpcl(), "ipn:66.0");
    let bundle = valid_bundle(66, 5, 1, b"no room for me yet".to_vec());
    fake.send_raw(&segment(START | END, 9, Some(bundle.len() as u64), &bundle));
    match fake.expect("an answer to transfer 9", |m| {
        matches!(m, Message::XferRefuse(_))
            || matches!(m, Message::XferAck(a) if a.flags & END != 0)
    }) {
        Message::XferRefuse(r) => {
            assert_eq!(r.transfer_id, 9);
            assert_eq!(r.reason, RefuseReason::NoResources);
        }
        m => panic!("a bundle beyond the quota was acknowledged: {m:?}"),
    }
    scene.assert_counted("the refused transfer");
    // The stored bundle is untouched; once it is delivered there is room, and the same
    // bundle sent again is taken.
    let out = bprecv_json(&scene.node.agent(), "ipn:10.9", 1, Duration::from_secs(30))
        .wait(Duration::from_secs(40));
    let got = parse_bprecv_json(&out.stdout).unwrap();
    assert!(out.success() && got.len() == 1, "{}", out.stderr);
    assert_eq!(check_payload(&got[0].payload), Ok(STORED_IDX));
    fake.send_raw(&segment(
        START | END,
        10,
        Some(bundle.len() as u64),
        &bundle,
    ));
    fake.expect(
        "XFER_ACK of transfer 10",
        |m| matches!(m, Message::XferAck(a) if a.transfer_id == 10 && a.flags & END != 0),
    );
}

#[test]
fn tcpcl_oversize_transfer_announced_by_length_extension_is_refused() {
    let scene = Scene::start("oversize-ext", Some(256 << 10));
    let mut fake = Fake::connect(scene.node.tcpcl(), "ipn:66.0");
    let chunk = vec![0x5au8; 64 << 10];
    // §5.2.5.1: the Transfer Length says 1 MiB, over the node's 256 KiB transfer MRU (§4.7).
    fake.send_raw(&segment(START, 3, Some(1 << 20), &chunk));
    match fake.expect("XFER_REFUSE of transfer 3", |m| {
        matches!(m, Message::XferRefuse(_))
    }) {
        Message::XferRefuse(r) => {
            assert_eq!(r.transfer_id, 3);
            assert_eq!(r.reason, RefuseReason::NoResources);
        }
        m => panic!("{m:?}"),
    }
    scene.assert_counted("the oversize transfer");
    scene.assert_still_serving();
}

#[test]
fn tcpcl_oversize_transfer_without_length_is_refused_when_it_exceeds_the_limit() {
    let scene = Scene::start("oversize-stream", Some(256 << 10));
    let mut fake = Fake::connect(scene.node.tcpcl(), "ipn:66.0");
    let chunk = vec![0xa5u8; 64 << 10];
    // No Transfer Length extension: the receiver only learns the size as segments arrive.
    fake.send_raw(&segment(START, 4, None, &chunk));
    for _ in 0..4 {
        fake.send_raw(&segment(0, 4, None, &chunk));
    }
    fake.send_raw(&segment(END, 4, None, &chunk));
    match fake.expect("XFER_REFUSE of transfer 4", |m| {
        matches!(m, Message::XferRefuse(_))
    }) {
        Message::XferRefuse(r) => {
            assert_eq!(r.transfer_id, 4);
            assert_eq!(r.reason, RefuseReason::NoResources);
        }
        m => panic!("{m:?}"),
    }
    scene.assert_counted("the oversize transfer");
    scene.assert_still_serving();
}

#[test]
fn tcpcl_unknown_message_type_gets_msg_reject_and_sess_term() {
    let scene = Scene::start("garbage-type", None);
    let mut fake = Fake::connect(scene.node.tcpcl(), "ipn:66.0");
    fake.send_raw(&[0xee, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]);
    // §5.1.2: MSG_REJECT "Message Type Unknown" echoing the header; the stream cannot be parsed
    // further, so the session ends (§6.1 SESS_TERM).
    match fake.expect("MSG_REJECT", |m| matches!(m, Message::MsgReject(_))) {
        Message::MsgReject(r) => {
            assert_eq!(r.reason, RejectReason::TypeUnknown);
            assert_eq!(r.rejected_header, 0xee);
        }
        m => panic!("{m:?}"),
    }
    let rest = fake.until_eof();
    assert!(
        rest.iter().any(|m| matches!(m, Message::SessTerm(_))),
        "no SESS_TERM before close: {rest:?}"
    );
    scene.assert_counted("the garbage message");
    scene.assert_still_serving();
}

#[test]
fn tcpcl_bad_magic_closes_the_connection() {
    let scene = Scene::start("garbage-magic", None);
    let mut fake = Fake::raw(scene.node.tcpcl());
    fake.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // §4.3: a contact header without "dtn!" closes the TCP connection, no SESS_TERM.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut replies = 0;
    while fake.fill(deadline) {
        replies += 1;
        assert!(replies < 100, "the node keeps answering garbage");
    }
    assert!(
        Instant::now() < deadline,
        "connection not closed after a bad magic"
    );
    assert!(
        fake.rx.is_empty() || fake.rx.starts_with(b"dtn!"),
        "the node answered a bad magic with {:?}",
        &fake.rx[..fake.rx.len().min(32)]
    );
    scene.assert_counted("the bad contact header");
    scene.assert_still_serving();
}

#[test]
fn tcpcl_transfer_before_sess_init_gets_msg_reject() {
    let scene = Scene::start("garbage-order", None);
    let mut fake = Fake::contact(scene.node.tcpcl());
    // An XFER_ACK before SESS_INIT is unexpected (§5.1.2 "Message Unexpected").
    let mut ack = vec![XFER_ACK, START | END];
    ack.extend_from_slice(&1u64.to_be_bytes());
    ack.extend_from_slice(&10u64.to_be_bytes());
    fake.send_raw(&ack);
    match fake.expect("MSG_REJECT", |m| matches!(m, Message::MsgReject(_))) {
        Message::MsgReject(r) => {
            assert_eq!(r.reason, RejectReason::Unexpected);
            assert_eq!(r.rejected_header, XFER_ACK);
        }
        m => panic!("{m:?}"),
    }
    scene.assert_counted("the out-of-order message");
    // The session goes on: SESS_INIT now, then a good transfer.
    fake.send_raw(&sess_init("ipn:66.0"));
    fake.expect("SESS_INIT", |m| matches!(m, Message::SessInit(_)));
    let good = valid_bundle(66, 6, 3, b"in order now".to_vec());
    fake.send_raw(&segment(START | END, 2, None, &good));
    fake.expect(
        "XFER_ACK of transfer 2",
        |m| matches!(m, Message::XferAck(a) if a.transfer_id == 2 && a.flags & END != 0),
    );
    scene.assert_still_serving();
}
