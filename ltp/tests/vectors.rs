//! Conformance vectors for the segment codec (RFC 5326 §3) and SDNVs (RFC 6256): every file in
//! `shared/vectors/ltp/` is decoded; valid segments must match the expected fields and re-encode
//! to identical bytes, invalid ones must be rejected with the specific error.

use std::path::PathBuf;

use bytes::Bytes;
use ltp::sdnv::{self, SdnvError};
use ltp::segment::{CancelReason, DataKind, DecodeError, Segment, SegmentBody};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/vectors/ltp"
    ))
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("field {k} missing in {v}"))
}

fn check_sdnv(name: &str, bytes: &[u8], j: &Value) {
    let r = sdnv::decode_u64(bytes);
    match name {
        // 33-bit value: invalid for a u32 decoder, valid for u64 (see the vector's note).
        "sdnv_invalid_u32_overflow" => {
            assert_eq!(
                sdnv::decode_u32(bytes),
                Err(SdnvError::Overflow { bits: 32 })
            );
            assert_eq!(r, Ok((u(j, "value"), bytes.len())));
        }
        "sdnv_invalid_unterminated" => {
            // 16 octets of 0xff: the value overflows 64 bits before the end is reached.
            assert!(matches!(
                r,
                Err(SdnvError::Overflow { .. }) | Err(SdnvError::Unterminated)
            ));
            assert_eq!(sdnv::decode_u64(&bytes[..5]), Err(SdnvError::Unterminated));
        }
        // valid: null: we accept the padding and decode the value.
        "sdnv_noncanonical_leading_0x80" => {
            assert_eq!(r, Ok((u(j, "value"), bytes.len())));
        }
        _ => {
            assert_eq!(j["valid"], Value::Bool(true), "{name}");
            let v = u(j, "value");
            assert_eq!(r, Ok((v, bytes.len())), "{name}");
            let mut out = bytes::BytesMut::new();
            sdnv::encode_u64(v, &mut out);
            assert_eq!(&out[..], bytes, "{name} re-encode");
            assert_eq!(sdnv::encoded_len(v), bytes.len());
        }
    }
}

fn check_valid_segment(name: &str, raw: &Bytes, f: &Value) {
    let seg = Segment::decode(raw).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(u(f, "version"), 0);
    assert_eq!(u64::from(seg.type_code()), u(f, "segment_type"), "{name}");
    assert_eq!(seg.session.originator, u(f, "session_originator_engine_id"));
    assert_eq!(seg.session.number, u(f, "session_number"));
    for (key, exts) in [
        ("header_extensions", &seg.header_extensions),
        ("trailer_extensions", &seg.trailer_extensions),
    ] {
        match f.get(key) {
            Some(Value::Array(a)) => {
                assert_eq!(a.len(), exts.len(), "{name} {key}");
                for (e, x) in a.iter().zip(exts.iter()) {
                    assert_eq!(u64::from(x.tag), u(e, "tag"));
                    assert_eq!(x.value.len() as u64, u(e, "length"));
                    assert_eq!(hex::encode(&x.value), e["value_hex"].as_str().unwrap());
                }
            }
            Some(Value::Number(n)) => assert_eq!(Some(exts.len() as u64), n.as_u64()),
            _ => assert!(exts.is_empty(), "{name} {key}"),
        }
    }
    match &seg.body {
        SegmentBody::Data(d) => {
            assert_eq!(d.client_service_id, u(f, "client_service_id"));
            assert_eq!(d.offset, u(f, "offset"));
            assert_eq!(d.data.len() as u64, u(f, "length"));
            if let Some(a) = f.get("data_ascii").and_then(Value::as_str) {
                assert_eq!(&d.data[..], a.as_bytes());
            }
            // Zero copy: the data is a slice of the datagram.
            let base = raw.as_ptr() as usize;
            let p = d.data.as_ptr() as usize;
            assert!(p >= base && p + d.data.len() <= base + raw.len(), "{name}");
            assert_eq!(d.kind.is_checkpoint(), d.checkpoint.is_some());
            if let Some(cp) = d.checkpoint {
                assert_eq!(cp.checkpoint_serial, u(f, "checkpoint_serial_number"));
                assert_eq!(cp.report_serial, u(f, "report_serial_number"));
            } else {
                assert!(f.get("checkpoint_serial_number").is_none());
            }
            let expected_kind = match u(f, "segment_type") {
                0 => DataKind::Red,
                1 => DataKind::RedCheckpoint,
                2 => DataKind::RedCheckpointEorp,
                3 => DataKind::RedCheckpointEorpEob,
                4 => DataKind::Green,
                7 => DataKind::GreenEob,
                t => panic!("{name}: type {t}"),
            };
            assert_eq!(d.kind, expected_kind);
        }
        SegmentBody::Report(rs) => {
            assert_eq!(rs.report_serial, u(f, "report_serial_number"));
            assert_eq!(rs.checkpoint_serial, u(f, "checkpoint_serial_number"));
            assert_eq!(rs.upper_bound, u(f, "upper_bound"));
            assert_eq!(rs.lower_bound, u(f, "lower_bound"));
            assert_eq!(rs.claims.len() as u64, u(f, "reception_claim_count"));
            let claims = f["claims"].as_array().unwrap();
            assert_eq!(claims.len(), rs.claims.len());
            for (c, e) in rs.claims.iter().zip(claims) {
                // JSON offsets are the wire (lower-bound-relative) form; ours are absolute.
                assert_eq!(c.offset, rs.lower_bound + u(e, "offset"), "{name}");
                assert_eq!(c.length, u(e, "length"));
            }
        }
        SegmentBody::ReportAck { report_serial } => {
            assert_eq!(*report_serial, u(f, "report_serial_number"));
        }
        SegmentBody::CancelFromSender(r) | SegmentBody::CancelFromReceiver(r) => {
            assert_eq!(u64::from(r.code()), u(f, "reason_code"));
            let expected = match f["reason"].as_str().unwrap() {
                "USR_CNCLD" => CancelReason::UserCancelled,
                "UNREACH" => CancelReason::UnreachableClient,
                "RLEXC" => CancelReason::RetransmissionLimitExceeded,
                "MISCOLORED" => CancelReason::Miscolored,
                "SYS_CNCLD" => CancelReason::SystemCancelled,
                "RXMTCYCEXC" => CancelReason::RetransmissionCyclesExceeded,
                other => panic!("{name}: reason {other}"),
            };
            assert_eq!(*r, expected);
        }
        SegmentBody::CancelAckToSender | SegmentBody::CancelAckToReceiver => {}
    }
    assert_eq!(seg.encoded_len(), raw.len(), "{name}");
    assert_eq!(seg.to_bytes(), *raw, "{name}: re-encode differs");
}

fn check_invalid_segment(name: &str, raw: &Bytes) {
    let err = Segment::decode(raw).expect_err(name);
    match name {
        "invalid_data_length_exceeds_segment" => assert_eq!(
            err,
            DecodeError::DataLengthExceedsSegment {
                length: 100,
                available: 10
            }
        ),
        "invalid_segment_type_10" => assert_eq!(err, DecodeError::UndefinedSegmentType(10)),
        "invalid_version_1" => assert_eq!(err, DecodeError::UnsupportedVersion(1)),
        n if n.starts_with("report_segment") => assert!(
            matches!(
                err,
                DecodeError::ReportBoundsInverted { .. } | DecodeError::ClaimOutOfBounds { .. }
            ),
            "{name}: {err}"
        ),
        _ => panic!("{name}: unexpected invalid vector, decoded with {err}"),
    }
}

#[test]
fn all_ltp_vectors() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .expect("vector dir")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "json").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    let (mut sdnvs, mut valid, mut invalid) = (0, 0, 0);
    for name in &names {
        let j: Value = serde_json::from_str(
            &std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let hex_text = std::fs::read_to_string(dir().join(format!("{name}.hex"))).unwrap();
        let raw = Bytes::from(hex::decode(hex_text.trim()).unwrap());
        if name.starts_with("sdnv_") {
            check_sdnv(name, &raw, &j);
            sdnvs += 1;
        } else if j["valid"] == Value::Bool(true) {
            check_valid_segment(name, &raw, &j["expected_fields"]);
            valid += 1;
        } else {
            assert_eq!(j["valid"], Value::Bool(false), "{name}");
            check_invalid_segment(name, &raw);
            invalid += 1;
        }
    }
    assert_eq!(names.len(), 28, "vector count");
    assert_eq!((sdnvs, valid, invalid), (10, 15, 3));
}
