//! Issue 5, end to end: three `dtnd` processes in a line A–B–C over TCPCLv4 (RFC 9174);
//! `bpsend` at A, `bprecv` at C; 1,000 bundles of 10 B to 10 MiB arrive byte-identical, exactly
//! once (RFC 9171 §5: forwarding through a relay, local delivery at the destination).

#[test]
fn tcpcl_line_1000_mixed_bundles_exactly_once() {
    conformance::line_transfer("tcpcl_line", conformance::LineCl::Tcpcl, 1000, 5);
}
