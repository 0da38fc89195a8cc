//! Support for the tests of every crate of the workspace: loopback ports ([`ports`]), the
//! independent implementations that interoperability tests start ([`peers`]) and scratch
//! directories ([`temp_dir`]).
//!
//! It sits below all the crates (it depends on none of them) so that `ltp`, `convergence` and
//! `node` can use it as well as the cross-crate tests. Test support only: no crate depends on
//! it outside `[dev-dependencies]`.

pub mod peers;
pub mod ports;
pub mod temp_dir;

pub use peers::{interop_peer, InteropPeer, PeerProcess};
pub use ports::{free_tcp_addr, free_tcp_port, free_udp_addr, free_udp_port, TEST_PORTS};
pub use temp_dir::TempDir;
