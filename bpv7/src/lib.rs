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
//! ## Main types
//!
//! - [`Eid`]: `dtn:none`, `dtn://node/demux`, `ipn:N.S`, `ipn:A.N.S` (RFC 9758), unknown schemes
//!   kept as raw CBOR; `FromStr`/`Display` round-trip, [`Eid::to_cbor`]/[`Eid::from_cbor`].
//! - [`Bundle`] (owned; [`BundleBuilder`]), [`PrimaryBlock`], [`CanonicalBlock`], [`BundleFlags`],
//!   [`BlockFlags`], [`CrcType`], [`BlockType`], [`CreationTimestamp`], [`DtnTime`], [`BundleId`].
//! - [`ParsedBundle`]: a decoded bundle with the received bytes and block spans;
//!   [`ParsedBundle::forward`] → [`BundleChunks`].
//! - [`AdminRecord`], [`StatusReport`], [`ReasonCode`] (RFC 9171 §6.1).
//! - [`fragment`], [`Reassembler`] (RFC 9171 §5.8–5.9).
//! - [`unprocessable_block_action`] / [`Bundle::unprocessable_blocks`] (§4.2.4, §5.6),
//!   [`Bundle::is_expired`] (§5.4), [`Bundle::hop_limit_exceeded`] (§4.4.3).
//! - [`Error`]: one variant per rule; [`Error::reason_code`] gives the status-report reason.
//!
//! ## Decisions
//!
//! - Non-conformant encodings (definite outer array, non-shortest CBOR heads, indefinite
//!   items inside blocks, tagged bundles) are **rejected**, not canonicalised (RFC 9171 §4.1
//!   allows either): forwarding copies received bytes, so only canonical input is accepted.
//!   Output is always canonical.
//! - Reserved bundle/block flag bits are ignored and preserved (§4.2.3, §4.2.4).
//! - Two-element `ipn` EIDs are plain u64 pairs as in RFC 9171; RFC 9758's reading of node
//!   numbers ≥ 2^32 as allocator-qualified is not applied (`ipn_large_node_numbers_bp7`).
//! - An unprocessable block maps to reason code 11 "Block unsupported" as RFC 9171 §5.6
//!   specifies; a malformed bundle maps to 8 "Block unintelligible".
//! - The RFC 9173 Appendix A bundles break §4.3.1 and §4.4.2; they are rejected by default and
//!   accepted with [`DecodeOptions::rfc9173_examples`] (A.3 is conformant and decodes with the
//!   defaults).
//! - A BIB encrypted by a BCB (RFC 9172) is not parsed; known extension blocks targeted by a
//!   BCB are not checked for well-formedness.
//!
//! ## Example
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
