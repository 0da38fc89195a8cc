//! `bpgen` command-line behaviour that needs no node: the TCP reference mode and argument
//! checks. (Sending through real nodes is covered by `tests/tests/relay_bench.rs`.)

use std::process::Command;

#[test]
fn tcp_reference_prints_a_json_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_bpgen"))
        .args([
            "--tcp-reference",
            "--count",
            "2000",
            "--size",
            "1024",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(v["mode"], "tcp_reference");
    assert_eq!(v["count"], 2000);
    assert!(v["per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn too_small_payloads_and_unreachable_nodes_fail_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_bpgen"))
        .args(["--size", "4", "ipn:2.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 8"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_bpgen"))
        .args([
            "--node",
            &format!("127.0.0.1:{port}"),
            "--count",
            "1",
            "ipn:2.1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("connecting to"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
