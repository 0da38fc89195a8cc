//! The real `dtnd` binary: a bad configuration exits 2 with `error: FILE:LINE:COL: reason`;
//! `--print-config` prints a configuration equal to the built-in default; the ready line
//! carries the bound addresses; `/metrics` answers; SIGTERM exits 0 and the sled store reopens.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn dtnd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dtnd"))
}

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("dtnd-bin-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn bad_config_exits_2_with_file_line_col() {
    let dir = temp_dir("bad");
    let file = dir.join("dtnd.toml");
    std::fs::write(&file, "node_id = \"ipn:1.0\"\n\n[store]\nbogus_key = 1\n").unwrap();
    let out = dtnd().arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("error: {}:4:", file.display());
    assert!(err.starts_with(&prefix), "stderr: {err}");
    assert!(err.contains("bogus_key"), "stderr: {err}");

    // A semantic error points at its line too.
    std::fs::write(
        &file,
        "[[neighbour]]\nname = \"n2\"\nnode = \"ipn:2.0\"\ntcpcl = \"127.0.0.1:4566\"\n\n[[route]]\ndest = \"*\"\nvia = \"n3\"\n",
    )
    .unwrap();
    let out = dtnd().arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("error: {}:8:", file.display())),
        "stderr: {err}"
    );

    // A missing file is a configuration error as well.
    let out = dtnd()
        .arg("--config")
        .arg(dir.join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn print_config_is_the_default() {
    let out = dtnd().arg("--print-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed = node::config::Config::from_toml(&text, "printed").unwrap();
    assert_eq!(parsed, node::config::Config::default());
}

/// Waits for the child's `dtnd ready {...}` line and returns the JSON object.
fn ready(child: &mut Child) -> serde_json::Value {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT).expect("ready line in time");
    let json = line
        .strip_prefix("dtnd ready ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    serde_json::from_str(json.trim()).unwrap()
}

/// Sends SIGTERM and returns the exit code.
fn terminate(child: Child) -> Option<i32> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = tx.send(child.wait().map(|s| s.code()));
    });
    rx.recv_timeout(WAIT)
        .expect("dtnd exits after SIGTERM")
        .unwrap()
}

fn start(config: &Path) -> Child {
    dtnd()
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn http_get(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn ready_line_metrics_and_sigterm_with_store_reopen() {
    let dir = temp_dir("run");
    let file = dir.join("dtnd.toml");
    std::fs::write(
        &file,
        format!(
            "node_id = \"ipn:7.0\"\n[store]\npath = \"{}\"\n[agent]\ntcp = \"127.0.0.1:0\"\n\
             [metrics]\nhttp = \"127.0.0.1:0\"\n[tcpcl]\nlisten = \"127.0.0.1:0\"\n\
             [udp]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("store").display()
        ),
    )
    .unwrap();
    for round in 0..2 {
        let mut child = start(&file);
        let r = ready(&mut child);
        assert_eq!(r["node_id"], "ipn:7.0");
        assert!(r["unix"].is_null() && r["ltp"].is_null());
        for key in ["agent", "metrics", "tcpcl", "udp"] {
            let a = r[key].as_str().unwrap_or_else(|| panic!("{key} in {r}"));
            assert!(
                a.starts_with("127.0.0.1:") && !a.ends_with(":0"),
                "{key}: {a}"
            );
        }
        let m = http_get(r["metrics"].as_str().unwrap());
        assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
        assert!(m.contains("dtn_store_bundles"), "{m}");
        assert_eq!(terminate(child), Some(0), "round {round}");
    }
    assert!(dir.join("store").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
