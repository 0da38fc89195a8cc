//! `bpdump` as a user runs it: decoding the shared RFC 9171 vectors, rejecting invalid ones with
//! exit status 1 and a one-line reason, and `bpdump encode` rebuilding a bundle byte for byte.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn vector(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/vectors/bpv7"
    ))
    .join(name)
}

fn bpdump(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bpdump"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bpdump starts");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default())
        .expect("write stdin");
    drop(input);
    child.wait_with_output().expect("bpdump exits")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "bpdump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpdump prints JSON")
}

#[test]
fn describes_primary_and_blocks_of_a_vector() {
    let path = vector("ipn_simple_bp7.hex");
    let v = json(&bpdump(&["--hex", path.to_str().unwrap()], None));
    let p = &v["primary"];
    assert_eq!(p["version"], 7);
    assert_eq!(p["crc_type"], 2);
    assert_eq!(p["destination"], "ipn:2.1");
    assert_eq!(p["source"], "ipn:1.1");
    assert_eq!(p["report_to"], "ipn:1.1");
    assert_eq!(p["creation_time"], 784_111_200_000u64);
    assert_eq!(p["sequence_number"], 1);
    assert_eq!(p["lifetime"], 86_400_000);
    assert!(p.get("fragment_offset").is_none());
    assert_eq!(v["payload_len"], 9);
    let blocks = v["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0]["type"], 1);
    assert_eq!(blocks[0]["number"], 1);
    assert_eq!(blocks[0]["data_len"], 9);
}

#[test]
fn describes_fragments_extension_blocks_and_status_reports() {
    let frag = json(&bpdump(
        &[
            "--hex",
            vector("fragment_offset_50_bp7.hex").to_str().unwrap(),
        ],
        None,
    ));
    assert_eq!(frag["primary"]["fragment_offset"], 50);
    assert_eq!(frag["primary"]["total_adu_length"], 100);

    let ext = json(&bpdump(
        &["--hex", vector("all_ext_blocks_bp7.hex").to_str().unwrap()],
        None,
    ));
    let blocks = ext["blocks"].as_array().unwrap();
    assert!(blocks
        .iter()
        .any(|b| b["type"] == 6 && b["previous_node"].is_string()));
    assert!(blocks.iter().any(|b| b["type"] == 7 && b["age"].is_u64()));
    assert!(blocks
        .iter()
        .any(|b| b["type"] == 10 && b["hop_limit"].is_u64() && b["hop_count"].is_u64()));

    let report = json(&bpdump(
        &[
            "--hex",
            vector("status_report_delivered_bp7.hex").to_str().unwrap(),
        ],
        None,
    ));
    let sr = &report["status_report"];
    assert_eq!(sr["delivered"]["asserted"], true);
    assert_eq!(sr["received"]["asserted"], false);
    assert!(sr["source"].is_string());
}

#[test]
fn reads_binary_from_stdin() {
    let hex_text = std::fs::read_to_string(vector("dtn_eids_bp7.hex")).unwrap();
    let raw = hex::decode(hex_text.trim()).unwrap();
    let v = json(&bpdump(&[], Some(&raw)));
    assert!(v["primary"]["destination"]
        .as_str()
        .unwrap()
        .starts_with("dtn://"));
}

#[test]
fn invalid_bundles_exit_1_with_one_line_reason() {
    for name in [
        "bad_crc16_payload.hex",
        "trailing_bytes_after_bundle.hex",
        "version_6.hex",
    ] {
        let out = bpdump(&["--hex", vector(name).to_str().unwrap()], None);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        assert!(err.starts_with("bpdump: invalid bundle"), "{name}: {err}");
        assert!(out.stdout.is_empty(), "{name}");
    }
    let out = bpdump(&["--hex"], Some(b"zz"));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn encode_rebuilds_vectors_byte_for_byte() {
    for name in [
        "ipn_simple_bp7.hex",
        "all_ext_blocks_bp7.hex",
        "fragment_offset_50_bp7.hex",
        "status_report_delivered_bp7.hex",
        "unknown_block_type_193_flags_02_bp7.hex",
        "dtn_none_source_bp7.hex",
    ] {
        let path = vector(name);
        let wire = hex::decode(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        let described = bpdump(&["--hex", "--payload", path.to_str().unwrap()], None);
        let text = described.stdout.clone();
        json(&described);
        let encoded = bpdump(&["encode"], Some(&text));
        assert!(
            encoded.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&encoded.stderr)
        );
        assert_eq!(encoded.stdout, wire, "{name}: re-encoded bundle differs");
    }
}

#[test]
fn encode_rejects_bad_descriptions() {
    let out = bpdump(&["encode"], Some(br#"{"primary": {"version": 7}}"#));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing field"));
    let out = bpdump(&["encode"], Some(b"not json"));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn example_round_trips_through_encode() {
    let described = bpdump(&["--example", "--payload"], None);
    let v = json(&described);
    assert_eq!(v["payload_len"], 29);
    let encoded = bpdump(&["encode"], Some(&described.stdout));
    let again = bpdump(&["--payload"], Some(&encoded.stdout));
    assert_eq!(json(&again), v);
}
