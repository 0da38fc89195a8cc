//! Issue 5, end to end: three `dtnd` processes in a line A–B–C over LTP (RFC 5326, red data;
//! RFC 9171 §7 convergence layer); `bpsend` at A, `bprecv` at C; 1,000 bundles of 10 B to
//! 10 MiB arrive byte-identical, exactly once.

#[test]
fn ltp_line_1000_mixed_bundles_exactly_once() {
    conformance::line_transfer("ltp_line", conformance::LineCl::Ltp, 1000, 5);
}
