//! # bpv7 — the Bundle Protocol version 7 bundle format (RFC 9171)
//!
//! Pure data-format crate: no I/O, no clock, no async. It implements RFC 9171 §4 (bundle
//! format: EIDs, primary and canonical blocks, CRC-16/X-25 and CRC-32C, the previous node,
//! bundle age and hop count extension blocks), §5.8–5.9 (fragmentation and reassembly),
//! §6.1 (administrative records and bundle status reports), the three-element `ipn` EID of
//! RFC 9758, and keeps BPSec (RFC 9172) BIB/BCB blocks as opaque typed blocks.
//!
//! Decoding from [`bytes::Bytes`] is zero-copy for block data; [`ParsedBundle::forward`]
//! rewrites only the blocks that change on forwarding and returns the new bundle as chunks.
//!
//! ```
//! use bpv7::*;
//! use bytes::Bytes;
//!
//! // build
//! let bundle = BundleBuilder::new(
//!     "ipn:1.1".parse().unwrap(),
//!     "dtn://dest/app".parse().unwrap(),
//!     CreationTimestamp::new(784_111_200_000, 1),
//!     3_600_000,
//! )
//! .hop_count(16, 0)
//! .payload(&b"hello"[..])
//! .build()
//! .unwrap();
//! // encode → decode (zero-copy: the payload is a slice of `wire`)
//! let wire = Bytes::from(bundle.encode().unwrap());
//! let parsed = ParsedBundle::decode(wire.clone()).unwrap();
//! assert_eq!(parsed.bundle, bundle);
//! assert_eq!(parsed.bundle.payload().as_ptr(), wire[wire.len() - 5 - 6..].as_ptr());
//! // forward: previous node set, hop count incremented, payload untouched
//! let out = parsed
//!     .forward(&ForwardParams { previous_node: Some(Eid::ipn(5, 0)), ..Default::default() })
//!     .unwrap();
//! let next = Bundle::decode(out.concat()).unwrap();
//! assert_eq!(next.hop_count(), Some(HopCount { limit: 16, count: 1 }));
//! assert_eq!(next.previous_node(), Some(Eid::ipn(5, 0)));
//! assert_eq!(next.payload(), &b"hello"[..]);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod bundle;
mod cbor;
mod eid;
mod error;
mod fragment;
mod types;

pub use admin::{AdminRecord, ReasonCode, StatusAssertion, StatusReport, ADMIN_STATUS_REPORT};
pub use bundle::{
    unprocessable_block_action, BlockDisposition, BlockProcessing, Bundle, BundleBuilder,
    BundleChunks, CanonicalBlock, DecodeOptions, ForwardParams, ParsedBundle, PrimaryBlock,
    UnprocessableAction, MAX_BLOCKS,
};
pub use cbor::MAX_DEPTH as MAX_CBOR_DEPTH;
pub use eid::{Eid, MAX_EID_LEN, SCHEME_DTN, SCHEME_IPN};
pub use error::{Error, Result};
pub use fragment::{fragment, Reassembler, ReassemblerConfig};
pub use types::{
    BlockFlags, BlockType, BundleFlags, BundleId, CrcType, CreationTimestamp, DtnTime,
    FragmentInfo, HopCount,
};
