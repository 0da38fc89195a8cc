//! RFC 9174 conformance: every vector in `shared/vectors/tcpcl/` through the codec and the session
//! state machine, and the session's answers to misbehaving peers (bad contact header, oversized
//! lengths, unknown message types) in virtual time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use convergence::tcpcl::message::{
    ContactHeader, DecodeLimits, ExtensionItem, Message, MsgReject, RefuseReason, RejectReason,
    SessInit, SessTerm, SessTermReason, XferAck, XferRefuse, XferSegment, XFER_FLAG_END,
    XFER_FLAG_START,
};
use convergence::tcpcl::session::{
    CloseReason, Event, Role, Session, SessionConfig, TransferFailure,
};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/vectors/tcpcl"
    ))
}

fn load(name: &str) -> (Vec<u8>, Value) {
    let hex_text = std::fs::read_to_string(dir().join(format!("{name}.hex"))).unwrap();
    let json = std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap();
    (
        hex::decode(hex_text.trim()).unwrap(),
        serde_json::from_str(&json).unwrap(),
    )
}

fn simple_bundle() -> Vec<u8> {
    let text = std::fs::read_to_string(dir().join("../bpv7/ipn_simple_bp7.hex")).unwrap();
    hex::decode(text.trim()).unwrap()
}

fn limits() -> DecodeLimits {
    DecodeLimits {
        segment_mru: 1 << 20,
        max_extensions_len: 1 << 16,
    }
}

fn decode_one(bytes: &[u8]) -> Message {
    let mut buf = BytesMut::from(bytes);
    let m = Message::decode(&mut buf, &limits()).unwrap().unwrap();
    assert!(buf.is_empty(), "trailing bytes");
    assert_eq!(&m.to_bytes()[..], bytes, "re-encoding differs");
    m
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

/// Everything the session wants to transmit now.
fn drain_tx(s: &mut Session, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        match s.poll_transmit(now) {
            Some(b) => out.extend_from_slice(&b),
            None => return out,
        }
    }
    panic!("transmit queue does not drain");
}

fn parse_all(mut bytes: &[u8], expect_contact_header: bool) -> Vec<Message> {
    if expect_contact_header {
        let mut b = BytesMut::from(&bytes[..6]);
        let h = ContactHeader::decode(&mut b).unwrap().unwrap();
        assert_eq!((h.version, h.flags), (4, 0), "our header: v4, no CAN_TLS");
        bytes = &bytes[6..];
    }
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(Message::decode(&mut buf, &limits()).unwrap().unwrap());
    }
    out
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn config() -> SessionConfig {
    SessionConfig {
        node_id: "ipn:2.0".into(),
        keepalive: 30,
        segment_mru: 1 << 20,
        transfer_mru: 1 << 20,
        ..SessionConfig::default()
    }
}

/// A passive session that has received `contact_header_no_tls` and `sess_init_client`.
fn established_passive(now: Instant) -> Session {
    let mut s = Session::new(Role::Passive, config(), now);
    s.handle_input(&load("contact_header_no_tls").0, now);
    s.handle_input(&load("sess_init_client").0, now);
    assert!(s.is_established());
    let tx = drain_tx(&mut s, now);
    let msgs = parse_all(&tx, true);
    assert!(matches!(&msgs[..], [Message::SessInit(i)] if i.node_id == "ipn:2.0"));
    let ev = events(&mut s);
    assert!(
        matches!(&ev[..], [Event::Established(p)] if p.node_id == "ipn:1.0" && p.keepalive == 30)
    );
    s
}

#[test]
fn vector_count() {
    let n = std::fs::read_dir(dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(n, 16, "tcpcl vector count changed: review the new vectors");
}

#[test]
fn contact_headers() {
    for name in ["contact_header_no_tls", "contact_header_reply_can_tls"] {
        let (bytes, json) = load(name);
        let f = &json["expected_fields"];
        let mut buf = BytesMut::from(&bytes[..]);
        let h = ContactHeader::decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(u64::from(h.version), u(&f["version"]));
        assert_eq!(u64::from(h.flags), u(&f["flags"]));
        assert_eq!(h.can_tls(), f["CAN_TLS"].as_bool().unwrap());
        let mut out = BytesMut::new();
        h.encode(&mut out);
        assert_eq!(&out[..], &bytes[..], "{name}");
    }
}

#[test]
fn peer_can_tls_still_plaintext_session() {
    // §4.4: TLS only if both set CAN_TLS; we do not, so the session proceeds in plaintext.
    let now = Instant::now();
    let mut s = Session::new(Role::Active, config(), now);
    let _ = drain_tx(&mut s, now);
    s.handle_input(&load("contact_header_reply_can_tls").0, now);
    let msgs = parse_all(&drain_tx(&mut s, now), false);
    assert!(matches!(&msgs[..], [Message::SessInit(_)]));
    s.handle_input(&load("sess_init_server_with_extension").0, now);
    let ev = events(&mut s);
    // Negotiated keepalive = min(30, 30); the non-critical extension is ignored.
    assert!(
        matches!(&ev[..], [Event::Established(p)] if p.node_id == "dtn://server/" && p.keepalive == 30 && p.segment_mru == 100_000),
        "{ev:?}"
    );
}

#[test]
fn valid_messages_decode_and_reencode() {
    let (b, j) = load("keepalive");
    assert_eq!(decode_one(&b), Message::Keepalive);
    assert_eq!(u(&j["expected_fields"]["message_type"]), 4);

    let (b, j) = load("sess_init_client");
    let f = &j["expected_fields"];
    let Message::SessInit(m) = decode_one(&b) else {
        panic!()
    };
    assert_eq!(u64::from(m.keepalive), u(&f["keepalive_interval_s"]));
    assert_eq!(m.segment_mru, u(&f["segment_mru"]));
    assert_eq!(m.transfer_mru, u(&f["transfer_mru"]));
    assert_eq!(m.node_id, f["node_id"].as_str().unwrap());
    assert!(m.extensions.is_empty());

    let (b, j) = load("sess_init_server_with_extension");
    let f = &j["expected_fields"];
    let Message::SessInit(m) = decode_one(&b) else {
        panic!()
    };
    assert_eq!(u64::from(m.keepalive), u(&f["keepalive_interval_s"]));
    assert_eq!(m.segment_mru, u(&f["segment_mru"]));
    assert_eq!(m.transfer_mru, u(&f["transfer_mru"]));
    assert_eq!(m.node_id, f["node_id"].as_str().unwrap());
    let item = &f["session_extension_items"][0];
    assert_eq!(m.extensions.len(), 1);
    assert_eq!(u64::from(m.extensions[0].item_type), u(&item["type"]));
    assert_eq!(
        m.extensions[0].critical(),
        item["critical"].as_bool().unwrap()
    );
    assert_eq!(
        hex::encode(&m.extensions[0].value),
        item["value_hex"].as_str().unwrap()
    );

    let (b, j) = load("sess_term_reply");
    let f = &j["expected_fields"];
    let Message::SessTerm(m) = decode_one(&b) else {
        panic!()
    };
    assert_eq!(m.is_reply(), f["REPLY"].as_bool().unwrap());
    assert_eq!(u64::from(u8::from(m.reason)), u(&f["reason_code"]));
    assert_eq!(m.reason, SessTermReason::IdleTimeout);

    for name in ["xfer_ack_end", "xfer_ack_middle"] {
        let (b, j) = load(name);
        let f = &j["expected_fields"];
        let Message::XferAck(m) = decode_one(&b) else {
            panic!()
        };
        assert_eq!(u64::from(m.flags), u(&f["flags"]));
        assert_eq!(m.transfer_id, u(&f["transfer_id"]));
        assert_eq!(m.acknowledged_length, u(&f["acknowledged_length"]));
    }

    let (b, j) = load("xfer_refuse_extension_failure");
    let f = &j["expected_fields"];
    let Message::XferRefuse(m) = decode_one(&b) else {
        panic!()
    };
    assert_eq!(u64::from(u8::from(m.reason)), u(&f["reason_code"]));
    assert_eq!(m.reason, RefuseReason::ExtensionFailure);
    assert_eq!(m.transfer_id, u(&f["transfer_id"]));

    let bundle = simple_bundle();
    let (b, j) = load("xfer_segment_single_with_length_ext");
    let f = &j["expected_fields"];
    let Message::XferSegment(m) = decode_one(&b) else {
        panic!()
    };
    assert!(m.is_start() && m.is_end());
    assert_eq!(u64::from(m.flags), u(&f["flags"]));
    assert_eq!(m.transfer_id, u(&f["transfer_id"]));
    assert_eq!(
        m.transfer_length().unwrap(),
        Some(u(&f["transfer_extension_items"][0]["value"]))
    );
    assert!(m.extensions[0].critical());
    assert_eq!(m.data.len() as u64, u(&f["data_length"]));
    assert_eq!(&m.data[..], &bundle[..]);

    for name in ["xfer_segment_start", "xfer_segment_end"] {
        let (b, j) = load(name);
        let f = &j["expected_fields"];
        let Message::XferSegment(m) = decode_one(&b) else {
            panic!()
        };
        assert_eq!(u64::from(m.flags), u(&f["flags"]));
        assert_eq!(m.transfer_id, u(&f["transfer_id"]));
        assert_eq!(m.data.len() as u64, u(&f["data_length"]));
        assert!(m.extensions.is_empty());
    }
}

#[test]
fn invalid_version_gets_header_then_version_mismatch() {
    let now = Instant::now();
    let mut s = Session::new(Role::Passive, config(), now);
    s.handle_input(&load("invalid_contact_version_3").0, now);
    let msgs = parse_all(&drain_tx(&mut s, now), true);
    assert_eq!(
        msgs,
        vec![Message::SessTerm(SessTerm {
            flags: 0,
            reason: SessTermReason::VersionMismatch
        })]
    );
    assert!(s.is_closed());
    let ev = events(&mut s);
    assert!(ev.contains(&Event::Closed(CloseReason::Terminated(
        SessTermReason::VersionMismatch
    ))));
}

#[test]
fn bad_magic_closes_without_answer() {
    let now = Instant::now();
    let mut s = Session::new(Role::Passive, config(), now);
    s.handle_input(b"GET / HTTP/1.1\r\n", now);
    assert!(s.is_closed());
    assert!(drain_tx(&mut s, now).is_empty());
    assert!(events(&mut s).contains(&Event::Closed(CloseReason::BadMagic)));
}

#[test]
fn unknown_critical_transfer_extension_is_refused() {
    let now = Instant::now();
    let mut s = established_passive(now);
    s.handle_input(&load("invalid_critical_unknown_transfer_extension").0, now);
    let msgs = parse_all(&drain_tx(&mut s, now), false);
    assert_eq!(
        msgs,
        vec![Message::XferRefuse(XferRefuse {
            reason: RefuseReason::ExtensionFailure,
            transfer_id: 4
        })]
    );
    assert!(!s.is_closed());
}

#[test]
fn unknown_message_type_is_rejected() {
    let now = Instant::now();
    let mut s = established_passive(now);
    s.handle_input(&load("invalid_unknown_message_type").0, now);
    let msgs = parse_all(&drain_tx(&mut s, now), false);
    assert_eq!(
        msgs[0],
        Message::MsgReject(MsgReject {
            reason: RejectReason::TypeUnknown,
            rejected_header: 0x0f
        })
    );
    assert!(
        s.is_closed(),
        "the stream cannot be parsed past an unknown type"
    );
}

#[test]
fn unexpected_message_before_sess_init_is_rejected() {
    let now = Instant::now();
    let mut s = Session::new(Role::Passive, config(), now);
    s.handle_input(&load("contact_header_no_tls").0, now);
    s.handle_input(&load("xfer_ack_end").0, now);
    let msgs = parse_all(&drain_tx(&mut s, now), true);
    assert_eq!(
        msgs,
        vec![Message::MsgReject(MsgReject {
            reason: RejectReason::Unexpected,
            rejected_header: 0x02
        })]
    );
}

#[test]
fn oversized_segment_length_ends_session() {
    let now = Instant::now();
    let mut s = established_passive(now);
    let mut m = vec![1u8, XFER_FLAG_START | XFER_FLAG_END];
    m.extend_from_slice(&9u64.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    m.extend_from_slice(&u64::MAX.to_be_bytes());
    s.handle_input(&m, now);
    let msgs = parse_all(&drain_tx(&mut s, now), false);
    assert_eq!(
        msgs,
        vec![Message::SessTerm(SessTerm {
            flags: 0,
            reason: SessTermReason::ResourceExhaustion
        })]
    );
    assert!(s.is_closed());
}

#[test]
fn transfer_over_our_mru_is_refused() {
    let now = Instant::now();
    let mut s = established_passive(now);
    let seg = Message::XferSegment(XferSegment {
        flags: XFER_FLAG_START,
        transfer_id: 7,
        extensions: vec![ExtensionItem::transfer_length((1 << 20) + 1)],
        data: vec![0u8; 10].into(),
    });
    s.handle_input(&seg.to_bytes(), now);
    let msgs = parse_all(&drain_tx(&mut s, now), false);
    assert_eq!(
        msgs,
        vec![Message::XferRefuse(XferRefuse {
            reason: RefuseReason::NoResources,
            transfer_id: 7
        })]
    );
    // Without a Transfer Length extension, the accumulated size decides.
    let mut s = established_passive(now);
    for (i, flags) in [XFER_FLAG_START, 0, XFER_FLAG_END].into_iter().enumerate() {
        let seg = Message::XferSegment(XferSegment {
            flags,
            transfer_id: 8,
            extensions: vec![],
            data: vec![i as u8; 600_000].into(),
        });
        s.handle_input(&seg.to_bytes(), now);
    }
    let msgs = parse_all(&drain_tx(&mut s, now), false);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(matches!(msgs[0], Message::XferAck(a) if a.acknowledged_length == 600_000));
    assert_eq!(
        msgs[1],
        Message::XferRefuse(XferRefuse {
            reason: RefuseReason::NoResources,
            transfer_id: 8
        })
    );
    assert!(events(&mut s)
        .iter()
        .all(|e| matches!(e, Event::BadInput(_))));
}

#[test]
fn session_transcript_replayed() {
    let (bytes, json) = load("session_transcript_active_to_passive");
    assert_eq!(json["messages"].as_array().unwrap().len(), 8);
    let bundle = simple_bundle();
    let now = Instant::now();
    let mut s = Session::new(Role::Passive, config(), now);
    // Feed in awkward pieces to exercise incremental decoding.
    for chunk in bytes.chunks(7) {
        s.handle_input(chunk, now);
    }
    let ev = events(&mut s);
    let received: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Received {
                transfer_id,
                bundle,
            } => Some((*transfer_id, bundle.clone())),
            _ => None,
        })
        .collect();
    assert!(matches!(ev[0], Event::Established(_)));
    assert_eq!(received.len(), 2);
    assert_eq!((received[0].0, &received[0].1[..]), (1, &bundle[..]));
    assert_eq!((received[1].0, &received[1].1[..]), (2, &bundle[..]));
    // Final acks are held until the node has the bundles.
    let before = parse_all(&drain_tx(&mut s, now), true);
    assert!(!before
        .iter()
        .any(|m| matches!(m, Message::XferAck(a) if a.flags & XFER_FLAG_END != 0)));
    assert!(!s.is_closed());
    s.accept_received(1);
    s.accept_received(2);
    let after = parse_all(&drain_tx(&mut s, now), false);
    let all: Vec<Message> = before.into_iter().chain(after).collect();
    let acks: Vec<XferAck> = all
        .iter()
        .filter_map(|m| match m {
            Message::XferAck(a) => Some(*a),
            _ => None,
        })
        .collect();
    let ack = |flags, transfer_id, acknowledged_length| XferAck {
        flags,
        transfer_id,
        acknowledged_length,
    };
    // §5.2.3: one cumulative ack per segment, with that segment's flags.
    assert_eq!(
        acks,
        vec![
            ack(XFER_FLAG_START, 2, 20),
            ack(0, 2, 40),
            ack(XFER_FLAG_START | XFER_FLAG_END, 1, 62),
            ack(XFER_FLAG_END, 2, 62),
        ]
    );
    assert!(matches!(
        all[0],
        Message::SessInit(SessInit { keepalive: 30, .. })
    ));
    // §6.1: the peer's SESS_TERM (idle timeout) is answered with REPLY and the same reason.
    assert!(all.contains(&Message::SessTerm(SessTerm {
        flags: 1,
        reason: SessTermReason::IdleTimeout
    })));
    assert!(
        s.is_closed(),
        "both SESS_TERMs exchanged and nothing in flight"
    );
}

#[test]
fn keepalive_and_idle_timeout_in_virtual_time() {
    let t0 = Instant::now();
    let mut s = established_passive(t0);
    // Keepalive negotiated to 30 s: a KEEPALIVE goes out after 30 s of silence from us.
    let d = s.poll_timeout().unwrap();
    assert_eq!(d, t0 + Duration::from_secs(30));
    s.handle_timeout(d);
    assert_eq!(
        parse_all(&drain_tx(&mut s, d), false),
        vec![Message::Keepalive]
    );
    // Nothing received for 2 × 30 s: SESS_TERM idle timeout (§5.1.1).
    let idle = t0 + Duration::from_secs(60);
    s.handle_timeout(idle);
    assert_eq!(
        parse_all(&drain_tx(&mut s, idle), false),
        vec![Message::SessTerm(SessTerm {
            flags: 0,
            reason: SessTermReason::IdleTimeout
        })]
    );
    // No reply within the termination timeout: closed.
    let end = s.poll_timeout().unwrap();
    s.handle_timeout(end);
    assert!(s.is_closed());
}

#[test]
fn two_sessions_transfer_with_segmentation_and_pipelining() {
    // Active and passive sessions wired back to back in virtual time; the receiver's segment MRU
    // is small so bundles are segmented.
    let now = Instant::now();
    let mut a = Session::new(Role::Active, config(), now);
    let mut p = Session::new(
        Role::Passive,
        SessionConfig {
            segment_mru: 1000,
            transfer_mru: 50_000,
            ..config()
        },
        now,
    );
    let bundles: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 3000 * i as usize + 1]).collect();
    let mut sent = false;
    let mut got = Vec::new();
    let mut done = Vec::new();
    let mut too_large = false;
    for _ in 0..10_000 {
        let ta = drain_tx(&mut a, now);
        p.handle_input(&ta, now);
        let tp = drain_tx(&mut p, now);
        a.handle_input(&tp, now);
        for e in events(&mut p) {
            if let Event::Received {
                transfer_id,
                bundle,
            } = e
            {
                got.push(bundle);
                p.accept_received(transfer_id);
            }
        }
        for e in events(&mut a) {
            match e {
                Event::Transferred { handle } => done.push(handle),
                Event::TransferFailed {
                    handle: 99,
                    reason:
                        TransferFailure::TooLarge {
                            size: 60_000,
                            limit: 50_000,
                        },
                } => too_large = true,
                Event::TransferFailed { .. } => panic!("{e:?}"),
                _ => {}
            }
        }
        if a.is_established() && !sent {
            for (i, b) in bundles.iter().enumerate() {
                a.send_bundle(i as u64, b.clone().into()).unwrap();
            }
            // Larger than the receiver's transfer MRU: failed locally (§4.7).
            a.send_bundle(99, vec![7u8; 60_000].into()).unwrap();
            sent = true;
        }
        if done.len() == 5 && ta.is_empty() && tp.is_empty() {
            break;
        }
    }
    assert_eq!(done, vec![0, 1, 2, 3, 4]);
    assert!(too_large);
    assert_eq!(got.len(), 5);
    for (g, b) in got.iter().zip(&bundles) {
        assert_eq!(&g[..], &b[..]);
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Arbitrary bytes, before or after a valid handshake and in arbitrary chunks, never
        /// panic the session, and every output it produces is well-formed TCPCLv4.
        #[test]
        fn session_survives_arbitrary_input(
            data in prop::collection::vec(any::<u8>(), 0..400),
            handshake in any::<bool>(),
            chunk in 1usize..50,
        ) {
            let now = Instant::now();
            let mut s = if handshake {
                established_passive(now)
            } else {
                Session::new(Role::Passive, config(), now)
            };
            for c in data.chunks(chunk) {
                s.handle_input(c, now);
            }
            s.handle_timeout(now + Duration::from_secs(3600));
            let _ = events(&mut s);
            let tx = drain_tx(&mut s, now);
            let skip = if !handshake && tx.len() >= 6 && tx[..4] == *b"dtn!" { 6 } else { 0 };
            let mut buf = BytesMut::from(&tx[skip..]);
            for _ in 0..1000 {
                if buf.is_empty() {
                    break;
                }
                prop_assert!(Message::decode(&mut buf, &limits()).unwrap().is_some());
            }
        }
    }
}
