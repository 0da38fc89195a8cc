//! The harness against the real `dtnd`: a line of three nodes starts from generated configs
//! (ready line with the bound addresses), serves Prometheus metrics, survives SIGKILL and restart
//! on the same store, and exits 0 on SIGTERM.

use std::time::Duration;

use conformance::*;

#[test]
fn line_starts_serves_metrics_restarts_and_terminates() {
    let dir = TempDir::new("harness");
    let [a, mut b, c] = start_line(dir.path(), LineCl::Tcpcl, "group");
    assert_eq!(a.ready().node_id, "ipn:1.0");
    assert_eq!(c.ready().node_id, "ipn:3.0");
    assert_eq!(b.tcpcl().port(), b.config.tcpcl_port.unwrap());
    let m = b.metrics();
    assert!(!m.samples.is_empty(), "no metrics");
    assert!(
        m.names().iter().any(|n| n.starts_with("dtn_")),
        "{:?}",
        m.names()
    );
    b.kill();
    assert!(!b.is_running());
    b.restart();
    assert!(b.is_running());
    assert_eq!(b.starts(), 2);
    let st = b
        .terminate(Duration::from_secs(20))
        .expect("dtnd exits on SIGTERM");
    assert!(st.success(), "SIGTERM exit status {st}");
}

#[test]
fn ltp_line_starts_with_its_engines() {
    let dir = TempDir::new("harness-ltp");
    let nodes = start_line(dir.path(), LineCl::Ltp, "memory");
    for (i, n) in nodes.iter().enumerate() {
        let (_, port) = n.config.ltp.expect("ltp");
        let ltp = n
            .ready()
            .ltp
            .clone()
            .expect("ready line names the LTP socket");
        assert!(ltp.ends_with(&format!(":{port}")), "node {i}: {ltp}");
        assert!(n.ready().tcpcl.is_none(), "TCPCL listener is off");
    }
}
