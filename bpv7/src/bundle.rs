//! Bundles: the primary block (RFC 9171 §4.3.1), canonical blocks (§4.3.2), the extension
//! blocks of §4.4, whole-bundle structure (§4.1), CRCs over received bytes (§4.2.1), the
//! canonical encoder, the zero-copy decoder, and the forwarding rewrite of §5.4 (previous node,
//! bundle age and hop count updated without touching the primary block or the payload bytes).
//!
//! Leniency decisions (RFC 9171 §4.1 allows a receiver to transform non-conformant input; we
//! choose to reject, because forwarding copies the received bytes unchanged and must therefore
//! only ever forward conformant encodings):
//! - a definite-length outer array → [`Error::DefiniteOuterArray`];
//! - any non-shortest CBOR head → [`Error::NonCanonicalEncoding`];
//! - an indefinite-length primary or canonical block or byte string → [`Error::IndefiniteLength`];
//! - a CBOR tag before the bundle → [`Error::UnexpectedType`].
//!
//! Reserved bits of the bundle and block flags are ignored and preserved (§4.2.3, §4.2.4).
//! Unknown EID schemes are kept byte for byte.
//!
//! Two RFC rules are relaxable through [`DecodeOptions`] because RFC 9173 Appendix A prints
//! bundles that break them: a primary block without CRC and no BIB over it (§4.3.1), and a zero
//! creation time without a Bundle Age block (§4.4.2). Both are enforced by default.

use crate::cbor::{self, Reader, MT_ARRAY};
use crate::eid::Eid;
use crate::types::*;
use crate::{Error, ReasonCode, Result};
use bytes::Bytes;
use core::ops::Range;

/// Maximum number of canonical blocks accepted in one bundle.
pub const MAX_BLOCKS: usize = 256;

/// The primary block (RFC 9171 §4.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PrimaryBlock {
    /// Bundle processing control flags. The fragment bit must agree with `fragment`.
    pub flags: BundleFlags,
    /// CRC type of the primary block.
    pub crc_type: CrcType,
    /// Destination EID.
    pub destination: Eid,
    /// Source node ID.
    pub source: Eid,
    /// Report-to EID.
    pub report_to: Eid,
    /// Creation timestamp.
    pub creation: CreationTimestamp,
    /// Lifetime in milliseconds.
    pub lifetime_ms: u64,
    /// Fragment offset and total ADU length, present iff the bundle is a fragment.
    pub fragment: Option<FragmentInfo>,
}

impl PrimaryBlock {
    /// Append the canonical encoding, including the CRC.
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let n =
            8 + if self.fragment.is_some() { 2 } else { 0 } + u64::from(!self.crc_type.is_none());
        cbor::write_array(out, n);
        cbor::write_uint(out, 7);
        cbor::write_uint(out, self.flags.0);
        cbor::write_uint(out, self.crc_type.code());
        self.destination.encode_to(out);
        self.source.encode_to(out);
        self.report_to.encode_to(out);
        cbor::write_array(out, 2);
        cbor::write_uint(out, self.creation.time.0);
        cbor::write_uint(out, self.creation.sequence);
        cbor::write_uint(out, self.lifetime_ms);
        if let Some(f) = self.fragment {
            cbor::write_uint(out, f.offset);
            cbor::write_uint(out, f.total_adu_length);
        }
        append_crc(out, start, self.crc_type);
    }

    fn decode(r: &mut Reader<'_>) -> Result<PrimaryBlock> {
        let start = r.pos();
        let h = r.peek()?;
        if h >> 5 != MT_ARRAY {
            return Err(Error::MissingPrimaryBlock);
        }
        let n = r.array()?;
        // §4.3.1: 8 to 11 elements (the exact count is checked below, once the fragment flag
        // and CRC type are known).
        if n < 3 {
            return Err(Error::PrimaryBlockLength {
                found: n,
                expected: 8,
            });
        }
        let version = r.uint()?;
        // §4.3.1: version 7.
        if version != 7 {
            return Err(Error::UnsupportedVersion(version));
        }
        let flags = BundleFlags(r.uint()?);
        let crc_type = CrcType::from_code(r.uint()?)?;
        let is_frag = flags.contains(BundleFlags::IS_FRAGMENT);
        let expected = 8 + if is_frag { 2 } else { 0 } + u64::from(!crc_type.is_none());
        // §4.3.1: element count consistent with the fragment flag and CRC type.
        if n != expected {
            return Err(Error::PrimaryBlockLength { found: n, expected });
        }
        let destination = Eid::decode(r)?;
        let source = Eid::decode(r)?;
        let report_to = Eid::decode(r)?;
        if r.array()? != 2 {
            return Err(Error::UnexpectedType {
                offset: r.pos(),
                expected: "creation timestamp [time, seq]",
            });
        }
        let creation = CreationTimestamp {
            time: DtnTime(r.uint()?),
            sequence: r.uint()?,
        };
        let lifetime_ms = r.uint()?;
        let fragment = if is_frag {
            let offset = r.uint()?;
            let total_adu_length = r.uint()?;
            Some(FragmentInfo {
                offset,
                total_adu_length,
            })
        } else {
            None
        };
        verify_crc(r, start, crc_type, 0)?;
        Ok(PrimaryBlock {
            flags,
            crc_type,
            destination,
            source,
            report_to,
            creation,
            lifetime_ms,
            fragment,
        })
    }
}

/// Append the CRC field for a block starting at `start` in `out` (RFC 9171 §4.2.1).
fn append_crc(out: &mut Vec<u8>, start: usize, crc: CrcType) {
    if crc.is_none() {
        return;
    }
    cbor::write_head(out, cbor::MT_BYTES, crc.len() as u64);
    let at = out.len();
    out.resize(at + crc.len(), 0);
    let v = crc.compute(&out[start..]);
    out[at..].copy_from_slice(&v[..crc.len()]);
}

/// Read the CRC field and check it over the received bytes `start..` (RFC 9171 §4.2.1).
fn verify_crc(r: &mut Reader<'_>, start: usize, crc: CrcType, block: u64) -> Result<()> {
    if crc.is_none() {
        return Ok(());
    }
    let span = match r.bytes_span() {
        Ok(s) => s,
        Err(Error::UnexpectedType { .. }) | Err(Error::IndefiniteLength { .. }) => {
            return Err(Error::CrcLength { block })
        }
        Err(e) => return Err(e),
    };
    if span.len() != crc.len() {
        return Err(Error::CrcLength { block });
    }
    let computed = crc.compute(&r.buf()[start..span.end]);
    // Compared as fixed-size arrays (zero-padded like `computed`): no memcmp call.
    let mut stored = [0u8; 4];
    stored[..span.len()].copy_from_slice(&r.buf()[span]);
    if computed != stored {
        return Err(Error::CrcMismatch { block });
    }
    Ok(())
}

/// A canonical block (RFC 9171 §4.3.2): extension block or payload block.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CanonicalBlock {
    /// Block type.
    pub block_type: BlockType,
    /// Block number (1 for the payload, unique, never 0).
    pub number: u64,
    /// Block processing control flags.
    pub flags: BlockFlags,
    /// CRC type of this block.
    pub crc_type: CrcType,
    /// Block-type-specific data (the content of the CBOR byte string). For a decoded bundle,
    /// a zero-copy slice of the received bytes.
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser_bytes"))]
    pub data: Bytes,
}

#[cfg(feature = "serde")]
fn ser_bytes<S: serde::Serializer>(b: &Bytes, s: S) -> core::result::Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

impl CanonicalBlock {
    /// A block with the given fields.
    pub fn new(
        block_type: BlockType,
        number: u64,
        flags: BlockFlags,
        crc_type: CrcType,
        data: Bytes,
    ) -> Self {
        CanonicalBlock {
            block_type,
            number,
            flags,
            crc_type,
            data,
        }
    }

    /// A previous node block (§4.4.1) naming `node`.
    pub fn previous_node(number: u64, node: &Eid, crc_type: CrcType) -> Self {
        Self::new(
            BlockType::PreviousNode,
            number,
            BlockFlags::empty(),
            crc_type,
            node.to_cbor().into(),
        )
    }

    /// A bundle age block (§4.4.2) with `age_ms`.
    pub fn bundle_age(number: u64, age_ms: u64, crc_type: CrcType) -> Self {
        let mut d = Vec::with_capacity(9);
        cbor::write_uint(&mut d, age_ms);
        Self::new(
            BlockType::BundleAge,
            number,
            BlockFlags::empty(),
            crc_type,
            d.into(),
        )
    }

    /// A hop count block (§4.4.3).
    pub fn hop_count(number: u64, hc: HopCount, crc_type: CrcType) -> Self {
        Self::new(
            BlockType::HopCount,
            number,
            BlockFlags::empty(),
            crc_type,
            encode_hop_count(hc).into(),
        )
    }

    /// Encoded size of the block header and CRC, excluding the data bytes themselves.
    pub fn overhead_len(&self, data_len: usize) -> usize {
        1 + cbor::head_len(self.block_type.code())
            + cbor::head_len(self.number)
            + cbor::head_len(self.flags.0)
            + 1
            + cbor::head_len(data_len as u64)
            + if self.crc_type.is_none() {
                0
            } else {
                1 + self.crc_type.len()
            }
    }

    /// Total encoded size of this block.
    pub fn encoded_len(&self) -> usize {
        self.overhead_len(self.data.len()) + self.data.len()
    }

    /// Append the canonical encoding, including the CRC.
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        encode_block(
            out,
            self.block_type,
            self.number,
            self.flags,
            self.crc_type,
            &self.data,
        );
    }

    /// The canonical encoding as `Bytes`.
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode_to(&mut v);
        v.into()
    }

    /// Previous node EID, if this is a previous node block (§4.4.1).
    pub fn as_previous_node(&self) -> Option<Result<Eid>> {
        (self.block_type == BlockType::PreviousNode)
            .then(|| Eid::from_cbor(&self.data).map_err(|_| self.malformed()))
    }

    /// Bundle age in ms, if this is a bundle age block (§4.4.2).
    pub fn as_bundle_age(&self) -> Option<Result<u64>> {
        (self.block_type == BlockType::BundleAge).then(|| {
            let mut r = Reader::new(&self.data);
            match r.uint() {
                Ok(v) if r.remaining() == 0 => Ok(v),
                _ => Err(self.malformed()),
            }
        })
    }

    /// Hop limit and count, if this is a hop count block (§4.4.3).
    pub fn as_hop_count(&self) -> Option<Result<HopCount>> {
        (self.block_type == BlockType::HopCount).then(|| {
            let mut r = Reader::new(&self.data);
            let parse = |r: &mut Reader<'_>| -> Result<HopCount> {
                if r.array()? != 2 {
                    return Err(Error::Invalid("hop count"));
                }
                Ok(HopCount {
                    limit: r.uint()?,
                    count: r.uint()?,
                })
            };
            match parse(&mut r) {
                Ok(hc) if r.remaining() == 0 => {
                    // §4.4.3: the hop limit MUST be in the range 1 through 255.
                    if !(1..=255).contains(&hc.limit) {
                        return Err(Error::HopLimitOutOfRange(hc.limit));
                    }
                    Ok(hc)
                }
                _ => Err(self.malformed()),
            }
        })
    }

    /// Security target block numbers, if this is a BIB or BCB (RFC 9172 §3.6: the first item
    /// of the abstract security block is the array of targets).
    pub fn security_targets(&self) -> Option<Result<Vec<u64>>> {
        matches!(self.block_type, BlockType::Bib | BlockType::Bcb).then(|| {
            let mut r = Reader::new(&self.data);
            let n = r.array().map_err(|_| self.malformed())?;
            let mut t = Vec::with_capacity(n as usize);
            for _ in 0..n {
                t.push(r.uint().map_err(|_| self.malformed())?);
            }
            Ok(t)
        })
    }

    fn malformed(&self) -> Error {
        Error::MalformedBlockData {
            block: self.number,
            block_type: self.block_type.code(),
        }
    }

    fn decode(r: &mut Reader<'_>, src: &Bytes) -> Result<CanonicalBlock> {
        let start = r.pos();
        let n = r.array()?;
        if !(5..=6).contains(&n) {
            return Err(Error::BlockLength {
                found: n,
                expected: 6,
            });
        }
        let block_type = r.uint()?;
        let number = r.uint()?;
        let flags = BlockFlags(r.uint()?);
        let crc_type = CrcType::from_code(r.uint()?)?;
        let expected = 5 + u64::from(!crc_type.is_none());
        // §4.3.2: a CRC field is present iff the CRC type is non-zero.
        if n != expected {
            return Err(Error::BlockLength { found: n, expected });
        }
        let span = r.bytes_span()?;
        verify_crc(r, start, crc_type, number)?;
        if block_type == 0 {
            return Err(Error::ReservedBlockType);
        }
        Ok(CanonicalBlock {
            block_type: BlockType::from_code(block_type),
            number,
            flags,
            crc_type,
            data: src.slice(span),
        })
    }
}

fn encode_hop_count(hc: HopCount) -> Vec<u8> {
    let mut d = Vec::with_capacity(4);
    cbor::write_array(&mut d, 2);
    cbor::write_uint(&mut d, hc.limit);
    cbor::write_uint(&mut d, hc.count);
    d
}

fn encode_block(
    out: &mut Vec<u8>,
    t: BlockType,
    number: u64,
    flags: BlockFlags,
    crc: CrcType,
    data: &[u8],
) {
    let start = out.len();
    cbor::write_array(out, 5 + u64::from(!crc.is_none()));
    cbor::write_uint(out, t.code());
    cbor::write_uint(out, number);
    cbor::write_uint(out, flags.0);
    cbor::write_uint(out, crc.code());
    cbor::write_bytes(out, data);
    append_crc(out, start, crc);
}

/// Options for the rules that RFC 9173 Appendix A bundles break (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// §4.3.1: reject a primary block without CRC unless a BIB targets it (default true).
    pub require_primary_crc: bool,
    /// §4.4.2: reject a zero creation time without a Bundle Age block (default true).
    pub require_bundle_age: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            require_primary_crc: true,
            require_bundle_age: true,
        }
    }
}

impl DecodeOptions {
    /// Relaxed options that accept the RFC 9173 Appendix A example bundles.
    pub fn rfc9173_examples() -> Self {
        DecodeOptions {
            require_primary_crc: false,
            require_bundle_age: false,
        }
    }
}

/// An owned bundle: primary block and canonical blocks in wire order, payload block last.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Bundle {
    /// The primary block.
    pub primary: PrimaryBlock,
    /// Canonical blocks in wire order; the payload block (number 1) is last.
    pub blocks: Vec<CanonicalBlock>,
}

impl Bundle {
    /// Decode and validate with default options; the payload is a slice of `bytes`.
    pub fn decode(bytes: Bytes) -> Result<Bundle> {
        Ok(ParsedBundle::decode(bytes)?.bundle)
    }

    /// Decode and validate under `opts`; the payload is a slice of `bytes`.
    pub fn decode_with(bytes: Bytes, opts: &DecodeOptions) -> Result<Bundle> {
        Ok(ParsedBundle::decode_with(bytes, opts)?.bundle)
    }

    /// Decode and validate from a slice (copies the input once into `Bytes`).
    pub fn decode_slice(bytes: &[u8]) -> Result<Bundle> {
        Self::decode(Bytes::copy_from_slice(bytes))
    }

    /// The bundle identity (RFC 9171 §5.8/§5.9).
    pub fn id(&self) -> BundleId {
        BundleId {
            source: self.primary.source.clone(),
            timestamp: self.primary.creation,
            fragment: self
                .primary
                .fragment
                .map(|f| (f.offset, self.payload().len() as u64)),
        }
    }

    /// The payload block. Panics only on a hand-built bundle without one; decoded and built
    /// bundles always have it.
    pub fn payload_block(&self) -> &CanonicalBlock {
        self.blocks
            .iter()
            .find(|b| b.block_type == BlockType::Payload)
            .expect("bundle has a payload block")
    }

    /// The payload bytes (empty if a hand-built bundle has no payload block).
    pub fn payload(&self) -> &Bytes {
        static EMPTY: Bytes = Bytes::from_static(&[]);
        self.blocks
            .iter()
            .find(|b| b.block_type == BlockType::Payload)
            .map(|b| &b.data)
            .unwrap_or(&EMPTY)
    }

    /// Find a block by number.
    pub fn block(&self, number: u64) -> Option<&CanonicalBlock> {
        self.blocks.iter().find(|b| b.number == number)
    }

    /// The first block of the given type.
    pub fn block_of_type(&self, t: BlockType) -> Option<&CanonicalBlock> {
        self.blocks.iter().find(|b| b.block_type == t)
    }

    /// Previous node (§4.4.1), if present and well-formed.
    pub fn previous_node(&self) -> Option<Eid> {
        self.block_of_type(BlockType::PreviousNode)?
            .as_previous_node()?
            .ok()
    }

    /// Bundle age in ms (§4.4.2), if present and well-formed.
    pub fn bundle_age(&self) -> Option<u64> {
        self.block_of_type(BlockType::BundleAge)?
            .as_bundle_age()?
            .ok()
    }

    /// Hop count (§4.4.3), if present and well-formed.
    pub fn hop_count(&self) -> Option<HopCount> {
        self.block_of_type(BlockType::HopCount)?
            .as_hop_count()?
            .ok()
    }

    /// True if the hop count block shows more hops than the limit (§4.4.3: delete the bundle
    /// with reason code 9 "Hop limit exceeded").
    pub fn hop_limit_exceeded(&self) -> bool {
        self.hop_count().is_some_and(|h| h.count > h.limit)
    }

    /// True if the payload is an administrative record (§4.2.3 bit 1).
    pub fn is_admin_record(&self) -> bool {
        self.primary.flags.contains(BundleFlags::ADMIN_RECORD)
    }

    /// Parse the payload as an administrative record (§6.1); only when the flag is set.
    pub fn admin_record(&self) -> Result<crate::AdminRecord> {
        if !self.is_admin_record() {
            return Err(Error::NotAdminRecord);
        }
        crate::AdminRecord::decode(self.payload())
    }

    /// The bundle's age in ms at `now` (§4.4.2, §5.4): the Bundle Age block's value when
    /// present (plus `extra_dwell_ms` spent here), else `now - creation time` when the creation
    /// time and `now` are known.
    pub fn age_ms(&self, now: Option<DtnTime>, extra_dwell_ms: u64) -> Option<u64> {
        if let Some(age) = self.bundle_age() {
            return Some(age.saturating_add(extra_dwell_ms));
        }
        let created = self.primary.creation.time.0;
        match now {
            Some(now) if created != 0 => Some(now.0.saturating_sub(created)),
            _ => None,
        }
    }

    /// True if the bundle's lifetime has expired (§4.3.1, §5.4: age ≥ lifetime → delete with
    /// reason code 1 "Lifetime expired").
    pub fn is_expired(&self, now: Option<DtnTime>, extra_dwell_ms: u64) -> bool {
        match self.age_ms(now, extra_dwell_ms) {
            Some(age) => age >= self.primary.lifetime_ms,
            None => false,
        }
    }

    /// Apply the unprocessable-block rules (§4.2.4, §5.6 step 4) to every block the node cannot
    /// process (decided by `supported`).
    pub fn unprocessable_blocks(&self, supported: impl Fn(BlockType) -> bool) -> BlockProcessing {
        let mut out = BlockProcessing::default();
        for b in &self.blocks {
            if supported(b.block_type) {
                continue;
            }
            let a = unprocessable_block_action(b.flags);
            out.report |= a.report.is_some();
            match a.disposition {
                BlockDisposition::DeleteBundle => {
                    out.delete_bundle = Some(ReasonCode::BlockUnsupported)
                }
                BlockDisposition::DiscardBlock => out.discard_blocks.push(b.number),
                BlockDisposition::Keep => {}
            }
        }
        out
    }

    /// Validate the whole-bundle rules of RFC 9171 §4 with default options.
    pub fn validate(&self) -> Result<()> {
        self.validate_with(&DecodeOptions::default())
    }

    /// Validate the whole-bundle rules of RFC 9171 §4.
    pub fn validate_with(&self, opts: &DecodeOptions) -> Result<()> {
        validate(self, opts)
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        let mut p = Vec::new();
        self.primary.encode_to(&mut p);
        2 + p.len() + self.blocks.iter().map(|b| b.encoded_len()).sum::<usize>()
    }

    /// Validate, then encode canonically (RFC 9171 §4.1: indefinite outer array, deterministic
    /// CBOR everywhere else).
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.encode_with(&DecodeOptions::default())
    }

    /// Validate under `opts`, then encode canonically.
    pub fn encode_with(&self, opts: &DecodeOptions) -> Result<Vec<u8>> {
        self.validate_with(opts)?;
        Ok(self.encode_unchecked())
    }

    pub(crate) fn encode_unchecked(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(0x9f);
        self.primary.encode_to(&mut out);
        for b in &self.blocks {
            b.encode_to(&mut out);
        }
        out.push(0xff);
        out
    }

    /// Validate, then encode into `Bytes`.
    pub fn to_bytes(&self) -> Result<Bytes> {
        self.encode().map(Bytes::from)
    }
}

/// What a node must do with one block it cannot process (RFC 9171 §4.2.4, §5.6 step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockDisposition {
    /// Keep the block and forward it unchanged.
    Keep,
    /// Remove the block from the bundle.
    DiscardBlock,
    /// Delete the whole bundle (reason code 11 "Block unsupported").
    DeleteBundle,
}

/// The outcome of the unprocessable-block rule for one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnprocessableAction {
    /// What to do with the block / bundle.
    pub disposition: BlockDisposition,
    /// `Some(reason)` if a status report is requested (reception report, or deletion report
    /// when the bundle is deleted), with the reason code to use.
    pub report: Option<ReasonCode>,
}

/// Apply RFC 9171 §4.2.4 / §5.6 step 4 to a block that cannot be processed: "delete bundle"
/// (bit 2) wins over "discard block" (bit 4); "report" (bit 1) requests a status report with
/// reason code 11 "Block unsupported" (§6.1.1). Note: RFC 9171 uses code 11 here; code 8 "Block
/// unintelligible" is for blocks that cannot be parsed at all (see [`Error::reason_code`]).
pub fn unprocessable_block_action(flags: BlockFlags) -> UnprocessableAction {
    let disposition = if flags.contains(BlockFlags::DELETE_BUNDLE_IF_UNPROCESSABLE) {
        BlockDisposition::DeleteBundle
    } else if flags.contains(BlockFlags::DISCARD_IF_UNPROCESSABLE) {
        BlockDisposition::DiscardBlock
    } else {
        BlockDisposition::Keep
    };
    let report = flags
        .contains(BlockFlags::REPORT_IF_UNPROCESSABLE)
        .then_some(ReasonCode::BlockUnsupported);
    UnprocessableAction {
        disposition,
        report,
    }
}

/// Combined outcome of [`Bundle::unprocessable_blocks`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockProcessing {
    /// `Some(reason)` if the bundle must be deleted.
    pub delete_bundle: Option<ReasonCode>,
    /// Numbers of blocks to remove before forwarding.
    pub discard_blocks: Vec<u64>,
    /// True if a status report is requested (reason 11 "Block unsupported").
    pub report: bool,
}

fn validate(b: &Bundle, opts: &DecodeOptions) -> Result<()> {
    let p = &b.primary;
    // §4.3.1: fragment fields present iff the fragment flag is set.
    if p.flags.contains(BundleFlags::IS_FRAGMENT) != p.fragment.is_some() {
        return Err(Error::Invalid(
            "fragment flag disagrees with fragment fields",
        ));
    }
    // §4.2.3: admin records request no status reports.
    if p.flags.contains(BundleFlags::ADMIN_RECORD) && p.flags.requests_reports() {
        return Err(Error::AdminRecordRequestsReports);
    }
    // §4.2.3: anonymous bundles must not be fragmented nor request reports.
    if p.source.is_null()
        && (!p.flags.contains(BundleFlags::MUST_NOT_FRAGMENT)
            || p.flags.requests_reports()
            || p.fragment.is_some())
    {
        return Err(Error::AnonymousBundleFlags);
    }
    // §4.2.3 / §4.3.1: fragment offset < total ADU length.
    if let Some(f) = p.fragment {
        if f.offset >= f.total_adu_length {
            return Err(Error::FragmentOffsetBeyondTotal {
                offset: f.offset,
                total: f.total_adu_length,
            });
        }
    }
    if b.blocks.len() > MAX_BLOCKS {
        return Err(Error::Invalid("too many blocks"));
    }
    // Block numbers below 64 seen so far, as bits (the usual case, no hashing); larger ones
    // are compared with the blocks before (at most MAX_BLOCKS of them).
    let mut small_numbers: u64 = 0;
    let mut seen_payload = false;
    let (mut prev, mut age, mut hop) = (0, 0, 0);
    let mut bcb_targets = Vec::new();
    let mut bib_targets_primary = false;
    for (i, blk) in b.blocks.iter().enumerate() {
        if seen_payload {
            // §4.1: the payload block is the last block.
            return Err(if blk.block_type == BlockType::Payload {
                Error::DuplicatePayloadBlock
            } else {
                Error::PayloadNotLast
            });
        }
        match blk.block_type {
            BlockType::Payload => {
                seen_payload = true;
                // §4.3.2: the payload block number is 1.
                if blk.number != 1 {
                    return Err(Error::PayloadBlockNumber(blk.number));
                }
            }
            BlockType::Unknown(0) => return Err(Error::ReservedBlockType),
            _ => {}
        }
        // §4.3.2: block number 0 is the primary block's.
        if blk.number == 0 {
            return Err(Error::BlockNumberZero);
        }
        // §4.3.2: block numbers are unique.
        let duplicate = if blk.number < 64 {
            let bit = 1u64 << blk.number;
            let seen = small_numbers & bit != 0;
            small_numbers |= bit;
            seen
        } else {
            b.blocks[..i].iter().any(|o| o.number == blk.number)
        };
        if duplicate {
            return Err(Error::DuplicateBlockNumber(blk.number));
        }
        // §4.4: at most one of each of these extension blocks.
        let counter = match blk.block_type {
            BlockType::PreviousNode => Some(&mut prev),
            BlockType::BundleAge => Some(&mut age),
            BlockType::HopCount => Some(&mut hop),
            _ => None,
        };
        if let Some(c) = counter {
            *c += 1;
            if *c > 1 {
                return Err(Error::DuplicateExtensionBlock(blk.block_type.code()));
            }
        }
        // §4.2.4: no "report if unprocessable" in admin-record or anonymous bundles.
        if (p.flags.contains(BundleFlags::ADMIN_RECORD) || p.source.is_null())
            && blk.flags.contains(BlockFlags::REPORT_IF_UNPROCESSABLE)
        {
            return Err(Error::AdminRecordBlockReportFlag(blk.number));
        }
        // RFC 9172 §3.6: the first item of a BCB is its target list.
        if blk.block_type == BlockType::Bcb {
            if let Some(t) = blk.security_targets() {
                bcb_targets.extend(t?);
            }
        }
    }
    // RFC 9172 §3.6: a BIB's target list, unless the BIB itself is encrypted by a BCB.
    for blk in b
        .blocks
        .iter()
        .filter(|x| x.block_type == BlockType::Bib && !bcb_targets.contains(&x.number))
    {
        if let Some(t) = blk.security_targets() {
            bib_targets_primary |= t?.contains(&0);
        }
    }
    // §4.1: exactly one payload block.
    if !seen_payload {
        return Err(Error::MissingPayloadBlock);
    }
    // §4.4: typed extension blocks are well-formed (unless encrypted by a BCB, RFC 9172).
    for blk in b.blocks.iter().filter(|x| !bcb_targets.contains(&x.number)) {
        if let Some(r) = blk.as_previous_node() {
            r?;
        }
        if let Some(r) = blk.as_bundle_age() {
            r?;
        }
        if let Some(r) = blk.as_hop_count() {
            r?;
        }
    }
    // §4.4.2: creation time 0 requires a bundle age block.
    if opts.require_bundle_age && p.creation.time.0 == 0 && age == 0 {
        return Err(Error::MissingBundleAge);
    }
    // §4.3.1: no primary CRC only when a BIB targets the primary block.
    if opts.require_primary_crc && p.crc_type.is_none() && !bib_targets_primary {
        return Err(Error::PrimaryCrcMissing);
    }
    // §5.8: a fragment's payload lies inside the ADU.
    if let Some(f) = p.fragment {
        let len = b.payload().len() as u64;
        if !matches!(f.offset.checked_add(len), Some(end) if end <= f.total_adu_length) {
            return Err(Error::FragmentBeyondTotal);
        }
    }
    Ok(())
}

/// A decoded bundle that remembers the received bytes and each block's span, so unchanged
/// blocks can be forwarded as zero-copy slices.
#[derive(Debug, Clone)]
pub struct ParsedBundle {
    /// The decoded bundle; block data are slices of `raw`.
    pub bundle: Bundle,
    raw: Bytes,
    primary_span: Range<usize>,
    block_spans: Vec<Range<usize>>,
}

impl ParsedBundle {
    /// Decode and validate with default options (RFC 9171 §4).
    pub fn decode(bytes: Bytes) -> Result<ParsedBundle> {
        Self::decode_with(bytes, &DecodeOptions::default())
    }

    /// Decode and validate (RFC 9171 §4); the bundle must be exactly `bytes`.
    pub fn decode_with(bytes: Bytes, opts: &DecodeOptions) -> Result<ParsedBundle> {
        let len = bytes.len();
        let (p, used) = Self::decode_prefix_with(bytes, opts)?;
        // §4.1: nothing follows the bundle.
        if used != len {
            return Err(Error::TrailingBytes(len - used));
        }
        Ok(p)
    }

    /// Decode one bundle from the start of `bytes`, returning it and the bytes it used (for a
    /// block that carries several concatenated bundles, as ION's LTP does).
    pub fn decode_prefix_with(bytes: Bytes, opts: &DecodeOptions) -> Result<(ParsedBundle, usize)> {
        let mut r = Reader::new(&bytes);
        let first = r.peek()?;
        if first != 0x9f {
            // §4.1: a bundle is an indefinite-length array.
            return Err(if first >> 5 == MT_ARRAY {
                Error::DefiniteOuterArray
            } else {
                Error::UnexpectedType {
                    offset: 0,
                    expected: "indefinite-length bundle array",
                }
            });
        }
        r.head()?;
        if r.peek().map_err(|_| Error::MissingBreak)? == 0xff {
            return Err(Error::MissingPrimaryBlock);
        }
        let ps = r.pos();
        let primary = PrimaryBlock::decode(&mut r)?;
        let primary_span = ps..r.pos();
        // Most bundles carry a few extension blocks and the payload: one allocation each.
        let mut blocks = Vec::with_capacity(8);
        let mut block_spans = Vec::with_capacity(8);
        loop {
            // §4.1: the bundle ends with a break byte.
            let b = r.peek().map_err(|_| Error::MissingBreak)?;
            if b == 0xff {
                r.head().ok();
                break;
            }
            if blocks.len() >= MAX_BLOCKS {
                return Err(Error::Invalid("too many blocks"));
            }
            let s = r.pos();
            let blk = CanonicalBlock::decode(&mut r, &bytes)?;
            block_spans.push(s..r.pos());
            blocks.push(blk);
        }
        let used = r.pos();
        let bundle = Bundle { primary, blocks };
        validate(&bundle, opts)?;
        Ok((
            ParsedBundle {
                bundle,
                raw: bytes,
                primary_span,
                block_spans,
            },
            used,
        ))
    }

    /// The received bytes.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The primary block's exact received bytes.
    pub fn primary_bytes(&self) -> Bytes {
        self.raw.slice(self.primary_span.clone())
    }

    /// The exact received bytes of the `i`-th canonical block (wire order).
    pub fn block_bytes(&self, i: usize) -> Option<Bytes> {
        self.block_spans.get(i).map(|s| self.raw.slice(s.clone()))
    }

    /// Rewrite for forwarding (RFC 9171 §5.4, §4.4): set the previous node block, add the dwell
    /// time to the bundle age block, increment (or insert) the hop count, remove the blocks
    /// listed in `params.remove_blocks`. The primary block and every unchanged block (including
    /// the payload) are zero-copy slices of the received bytes; cost is independent of the
    /// payload size. Errors with [`Error::HopLimitExceeded`] when the hop count would exceed
    /// the limit (delete the bundle with reason code 9).
    pub fn forward(&self, params: &ForwardParams) -> Result<BundleChunks> {
        let mut chunks = Vec::with_capacity(self.bundle.blocks.len() + 4);
        chunks.push(Bytes::from_static(&[0x9f]));
        chunks.push(self.primary_bytes());
        let mut have_prev = false;
        let mut have_hop = false;
        let mut max_num = 1;
        for b in &self.bundle.blocks {
            max_num = max_num.max(b.number);
        }
        let mut payload_chunk = None;
        for (i, b) in self.bundle.blocks.iter().enumerate() {
            if params.remove_blocks.contains(&b.number) && b.block_type != BlockType::Payload {
                continue;
            }
            let raw = self.raw.slice(self.block_spans[i].clone());
            match b.block_type {
                BlockType::Payload => payload_chunk = Some(raw),
                BlockType::PreviousNode => {
                    have_prev = true;
                    match &params.previous_node {
                        Some(node) => {
                            let mut nb = CanonicalBlock::previous_node(b.number, node, b.crc_type);
                            nb.flags = b.flags;
                            chunks.push(nb.to_bytes());
                        }
                        None => chunks.push(raw),
                    }
                }
                BlockType::BundleAge => {
                    let age = b.as_bundle_age().and_then(|r| r.ok());
                    match age {
                        Some(age) if params.dwell_ms > 0 => {
                            let mut nb = CanonicalBlock::bundle_age(
                                b.number,
                                age.saturating_add(params.dwell_ms),
                                b.crc_type,
                            );
                            nb.flags = b.flags;
                            chunks.push(nb.to_bytes());
                        }
                        _ => chunks.push(raw),
                    }
                }
                BlockType::HopCount => {
                    have_hop = true;
                    match b.as_hop_count().and_then(|r| r.ok()) {
                        Some(hc) => {
                            let count = hc.count.saturating_add(1);
                            // §4.4.3: exceeding the hop limit → delete (reason code 9).
                            if count > hc.limit {
                                return Err(Error::HopLimitExceeded);
                            }
                            let mut nb = CanonicalBlock::hop_count(
                                b.number,
                                HopCount {
                                    limit: hc.limit,
                                    count,
                                },
                                b.crc_type,
                            );
                            nb.flags = b.flags;
                            chunks.push(nb.to_bytes());
                        }
                        None => chunks.push(raw),
                    }
                }
                _ => chunks.push(raw),
            }
        }
        if !have_prev {
            if let Some(node) = &params.previous_node {
                max_num += 1;
                chunks.push(
                    CanonicalBlock::previous_node(max_num, node, params.new_block_crc).to_bytes(),
                );
            }
        }
        if !have_hop {
            if let Some(limit) = params.insert_hop_limit {
                if !(1..=255).contains(&limit) {
                    return Err(Error::HopLimitOutOfRange(limit));
                }
                max_num += 1;
                let hc = HopCount { limit, count: 1 };
                chunks
                    .push(CanonicalBlock::hop_count(max_num, hc, params.new_block_crc).to_bytes());
            }
        }
        chunks.push(payload_chunk.ok_or(Error::MissingPayloadBlock)?);
        chunks.push(Bytes::from_static(&[0xff]));
        Ok(BundleChunks { chunks })
    }
}

/// Parameters of [`ParsedBundle::forward`].
#[derive(Debug, Clone, Default)]
pub struct ForwardParams {
    /// This node's ID, written to the previous node block (replaced or inserted), if `Some`.
    pub previous_node: Option<Eid>,
    /// Milliseconds the bundle spent at this node, added to the bundle age block if present.
    pub dwell_ms: u64,
    /// If the bundle has no hop count block, insert one with this limit and count 1.
    pub insert_hop_limit: Option<u64>,
    /// CRC type for inserted blocks.
    pub new_block_crc: CrcType,
    /// Block numbers to remove (e.g. from [`Bundle::unprocessable_blocks`]); never the payload.
    pub remove_blocks: Vec<u64>,
}

/// An encoded bundle as a list of byte chunks, for vectored writes or concatenation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleChunks {
    /// The chunks, in order.
    pub chunks: Vec<Bytes>,
}

impl BundleChunks {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }

    /// True if there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Concatenate into one buffer (copies).
    pub fn concat(&self) -> Bytes {
        let mut v = Vec::with_capacity(self.len());
        for c in &self.chunks {
            v.extend_from_slice(c);
        }
        v.into()
    }
}

/// Builds a [`Bundle`] (block numbers are assigned from 2 upward in insertion order).
#[derive(Debug, Clone)]
pub struct BundleBuilder {
    primary: PrimaryBlock,
    extensions: Vec<CanonicalBlock>,
    payload: Bytes,
    payload_flags: BlockFlags,
    payload_crc: CrcType,
}

impl BundleBuilder {
    /// A builder for a bundle from `source` to `destination`; report-to defaults to the source;
    /// primary and payload CRC default to CRC-32C.
    pub fn new(
        source: Eid,
        destination: Eid,
        creation: CreationTimestamp,
        lifetime_ms: u64,
    ) -> Self {
        let mut flags = BundleFlags::empty();
        if source.is_null() {
            flags |= BundleFlags::MUST_NOT_FRAGMENT;
        }
        BundleBuilder {
            primary: PrimaryBlock {
                flags,
                crc_type: CrcType::Crc32c,
                destination,
                report_to: source.clone(),
                source,
                creation,
                lifetime_ms,
                fragment: None,
            },
            extensions: Vec::new(),
            payload: Bytes::new(),
            payload_flags: BlockFlags::empty(),
            payload_crc: CrcType::Crc32c,
        }
    }

    /// Set the report-to EID.
    pub fn report_to(mut self, eid: Eid) -> Self {
        self.primary.report_to = eid;
        self
    }

    /// Set the bundle processing control flags (the fragment bit follows `fragment`).
    pub fn flags(mut self, flags: BundleFlags) -> Self {
        self.primary.flags = flags;
        self
    }

    /// Set the primary block's CRC type.
    pub fn crc_type(mut self, crc: CrcType) -> Self {
        self.primary.crc_type = crc;
        self
    }

    /// Make the bundle a fragment.
    pub fn fragment(mut self, info: FragmentInfo) -> Self {
        self.primary.fragment = Some(info);
        self
    }

    /// Set the payload.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Set the payload block's flags and CRC type.
    pub fn payload_block(mut self, flags: BlockFlags, crc: CrcType) -> Self {
        self.payload_flags = flags;
        self.payload_crc = crc;
        self
    }

    /// Mark the payload as an administrative record (and request no reports).
    pub fn admin_record(mut self, record: &crate::AdminRecord) -> Self {
        self.primary.flags |= BundleFlags::ADMIN_RECORD;
        self.payload = record.encode().into();
        self
    }

    /// Add an extension block (type, flags, CRC, data); its number is assigned.
    pub fn block(
        mut self,
        block_type: BlockType,
        flags: BlockFlags,
        crc: CrcType,
        data: impl Into<Bytes>,
    ) -> Self {
        let n = 2 + self.extensions.len() as u64;
        self.extensions
            .push(CanonicalBlock::new(block_type, n, flags, crc, data.into()));
        self
    }

    /// Add a previous node block.
    pub fn previous_node(self, node: &Eid) -> Self {
        self.block(
            BlockType::PreviousNode,
            BlockFlags::empty(),
            CrcType::Crc32c,
            node.to_cbor(),
        )
    }

    /// Add a bundle age block.
    pub fn bundle_age(self, age_ms: u64) -> Self {
        let d = CanonicalBlock::bundle_age(0, age_ms, CrcType::None).data;
        self.block(
            BlockType::BundleAge,
            BlockFlags::empty(),
            CrcType::Crc32c,
            d,
        )
    }

    /// Add a hop count block.
    pub fn hop_count(self, limit: u64, count: u64) -> Self {
        let d = encode_hop_count(HopCount { limit, count });
        self.block(BlockType::HopCount, BlockFlags::empty(), CrcType::Crc32c, d)
    }

    /// Validate and build.
    pub fn build(self) -> Result<Bundle> {
        let mut primary = self.primary;
        primary
            .flags
            .set(BundleFlags::IS_FRAGMENT, primary.fragment.is_some());
        let mut blocks = self.extensions;
        blocks.push(CanonicalBlock::new(
            BlockType::Payload,
            1,
            self.payload_flags,
            self.payload_crc,
            self.payload,
        ));
        let b = Bundle { primary, blocks };
        b.validate()?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdminRecord, StatusReport};

    fn builder() -> BundleBuilder {
        BundleBuilder::new(
            Eid::ipn(1, 1),
            Eid::ipn(2, 1),
            CreationTimestamp::new(1000, 7),
            60_000,
        )
    }

    #[test]
    fn flag_combination_rules() {
        let e = builder()
            .flags(BundleFlags::ADMIN_RECORD | BundleFlags::REPORT_DELIVERY)
            .build();
        assert_eq!(e, Err(Error::AdminRecordRequestsReports));
        let anon = BundleBuilder::new(Eid::Null, Eid::ipn(2, 1), CreationTimestamp::new(1, 0), 10);
        assert!(
            anon.clone().build().is_ok(),
            "builder sets must-not-fragment for dtn:none"
        );
        assert_eq!(
            anon.clone().flags(BundleFlags::empty()).build(),
            Err(Error::AnonymousBundleFlags)
        );
        assert_eq!(
            anon.flags(BundleFlags::MUST_NOT_FRAGMENT | BundleFlags::REPORT_RECEPTION)
                .build(),
            Err(Error::AnonymousBundleFlags)
        );
        let e = builder()
            .flags(BundleFlags::ADMIN_RECORD)
            .block(
                BlockType::Unknown(200),
                BlockFlags::REPORT_IF_UNPROCESSABLE,
                CrcType::None,
                vec![],
            )
            .build();
        assert_eq!(e, Err(Error::AdminRecordBlockReportFlag(2)));
        let zero = BundleBuilder::new(
            Eid::ipn(1, 1),
            Eid::ipn(2, 1),
            CreationTimestamp::new(0, 0),
            10,
        );
        assert_eq!(zero.clone().build(), Err(Error::MissingBundleAge));
        assert!(zero.bundle_age(0).build().is_ok());
        assert_eq!(
            builder().hop_count(0, 0).build(),
            Err(Error::HopLimitOutOfRange(0))
        );
        assert_eq!(
            builder().hop_count(256, 0).build(),
            Err(Error::HopLimitOutOfRange(256))
        );
        assert_eq!(
            builder().crc_type(CrcType::None).build(),
            Err(Error::PrimaryCrcMissing)
        );
    }

    #[test]
    fn primary_without_crc_allowed_when_bib_targets_it() {
        // BIB data: targets [0], context 1, flags 0, results [] (enough for the target list).
        let bib = vec![0x81, 0x00, 0x01, 0x00, 0x80];
        let b = builder()
            .crc_type(CrcType::None)
            .block(BlockType::Bib, BlockFlags::empty(), CrcType::None, bib)
            .build();
        let b = b.unwrap();
        let enc = b.encode().unwrap();
        assert_eq!(Bundle::decode(enc.into()).unwrap(), b);
    }

    #[test]
    fn reserved_flag_bits_preserved() {
        let b = builder()
            .flags(BundleFlags(0x8000_0000 | 0x80))
            .payload_block(BlockFlags(0x40 | 0x100), CrcType::Crc16)
            .payload(&b"x"[..])
            .build()
            .unwrap();
        let d = Bundle::decode(b.encode().unwrap().into()).unwrap();
        assert_eq!(d.primary.flags.reserved_bits(), 0x8000_0080);
        assert_eq!(d.payload_block().flags.reserved_bits(), 0x140);
    }

    #[test]
    fn forward_rewrites_only_changed_blocks() {
        let payload: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
        let b = builder()
            .previous_node(&Eid::ipn(7, 0))
            .bundle_age(100)
            .hop_count(3, 1)
            .block(
                BlockType::Unknown(193),
                BlockFlags::REPLICATE,
                CrcType::Crc16,
                vec![1, 2],
            )
            .payload(payload)
            .build()
            .unwrap();
        let raw = Bytes::from(b.encode().unwrap());
        let p = ParsedBundle::decode(raw.clone()).unwrap();
        let params = ForwardParams {
            previous_node: Some(Eid::ipn(9, 0)),
            dwell_ms: 50,
            ..Default::default()
        };
        let out = p.forward(&params).unwrap();
        // The primary block and payload block are slices of the received buffer (no copy).
        assert_eq!(out.chunks[1].as_ptr(), p.primary_bytes().as_ptr());
        let pay = &out.chunks[out.chunks.len() - 2];
        assert_eq!(pay.as_ptr(), p.block_bytes(4).unwrap().as_ptr());
        assert!(out.chunks.iter().filter(|c| c.len() > 1000).all(|c| {
            let base = raw.as_ptr() as usize;
            (c.as_ptr() as usize) >= base && (c.as_ptr() as usize) < base + raw.len()
        }));
        let f = Bundle::decode(out.concat()).unwrap();
        assert_eq!(f.previous_node(), Some(Eid::ipn(9, 0)));
        assert_eq!(f.bundle_age(), Some(150));
        assert_eq!(f.hop_count(), Some(HopCount { limit: 3, count: 2 }));
        assert_eq!(f.block(5).unwrap().data.as_ref(), &[1, 2]);
        assert_eq!(f.payload(), b.payload());
        // Next hops: count 3 is allowed, 4 exceeds the limit.
        let p2 = ParsedBundle::decode(out.concat()).unwrap();
        let out2 = p2.forward(&params).unwrap();
        let p3 = ParsedBundle::decode(out2.concat()).unwrap();
        assert_eq!(p3.forward(&params), Err(Error::HopLimitExceeded));
        // Removing a block.
        let out = p
            .forward(&ForwardParams {
                remove_blocks: vec![5],
                ..Default::default()
            })
            .unwrap();
        assert!(Bundle::decode(out.concat()).unwrap().block(5).is_none());
    }

    #[test]
    fn forward_inserts_blocks() {
        let b = builder().payload(&b"abc"[..]).build().unwrap();
        let p = ParsedBundle::decode(b.to_bytes().unwrap()).unwrap();
        let out = p
            .forward(&ForwardParams {
                previous_node: Some(Eid::dtn("me", "").unwrap()),
                insert_hop_limit: Some(5),
                new_block_crc: CrcType::Crc16,
                ..Default::default()
            })
            .unwrap();
        let f = Bundle::decode(out.concat()).unwrap();
        assert_eq!(f.previous_node().unwrap().to_string(), "dtn://me/");
        assert_eq!(f.hop_count(), Some(HopCount { limit: 5, count: 1 }));
        assert_eq!(f.blocks.last().unwrap().block_type, BlockType::Payload);
        assert!(!f.hop_limit_exceeded());
    }

    #[test]
    fn unprocessable_rules() {
        let a = unprocessable_block_action(BlockFlags::empty());
        assert_eq!(
            a,
            UnprocessableAction {
                disposition: BlockDisposition::Keep,
                report: None
            }
        );
        let a = unprocessable_block_action(
            BlockFlags::DELETE_BUNDLE_IF_UNPROCESSABLE | BlockFlags::DISCARD_IF_UNPROCESSABLE,
        );
        assert_eq!(a.disposition, BlockDisposition::DeleteBundle);
        let a = unprocessable_block_action(BlockFlags::REPORT_IF_UNPROCESSABLE);
        assert_eq!(a.report, Some(ReasonCode::BlockUnsupported));
        let b = builder()
            .block(
                BlockType::Unknown(300),
                BlockFlags::DELETE_BUNDLE_IF_UNPROCESSABLE,
                CrcType::None,
                vec![],
            )
            .build()
            .unwrap();
        let r = b.unprocessable_blocks(|t| !matches!(t, BlockType::Unknown(_)));
        assert_eq!(r.delete_bundle, Some(ReasonCode::BlockUnsupported));
    }

    #[test]
    fn structure_errors() {
        let b = builder().payload(&b"abc"[..]).build().unwrap();
        let enc = b.encode().unwrap();
        // concatenated bundles: decode_prefix reads one at a time
        let mut two = enc.clone();
        two.extend_from_slice(&enc);
        let (p, used) =
            ParsedBundle::decode_prefix_with(two.clone().into(), &DecodeOptions::default())
                .unwrap();
        assert_eq!((p.bundle, used), (b.clone(), enc.len()));
        assert_eq!(
            Bundle::decode(two.into()),
            Err(Error::TrailingBytes(enc.len()))
        );
        assert_eq!(
            Bundle::decode_slice(&[0x9f, 0xff]),
            Err(Error::MissingPrimaryBlock)
        );
        assert_eq!(Bundle::decode_slice(&[0x9f]), Err(Error::MissingBreak));
        assert!(Bundle::decode_slice(&[]).is_err());
        // duplicate block numbers, small (bitset) and large (compared with earlier blocks)
        for n in [5u64, 63, 64, 1_000_000] {
            let mut d = b.clone();
            let age = CanonicalBlock::bundle_age(n, 1, CrcType::None);
            let hop = CanonicalBlock::hop_count(
                n,
                HopCount {
                    limit: 30,
                    count: 1,
                },
                CrcType::None,
            );
            d.blocks.insert(0, hop);
            d.blocks.insert(0, age);
            assert_eq!(d.encode(), Err(Error::DuplicateBlockNumber(n)), "{n}");
        }
        // no payload block
        let mut nb = b.clone();
        nb.blocks.clear();
        assert_eq!(nb.encode(), Err(Error::MissingPayloadBlock));
        // payload not last
        let mut nl = b.clone();
        nl.blocks
            .push(CanonicalBlock::bundle_age(3, 1, CrcType::None));
        assert_eq!(nl.encode(), Err(Error::PayloadNotLast));
        let mut dp = b.clone();
        dp.blocks.push(dp.blocks[0].clone());
        assert_eq!(dp.encode(), Err(Error::DuplicatePayloadBlock));
        // every single-byte truncation is rejected without panic
        for i in 0..enc.len() {
            assert!(Bundle::decode_slice(&enc[..i]).is_err());
        }
    }

    #[test]
    fn admin_record_only_with_flag() {
        let rec = AdminRecord::StatusReport(StatusReport::about(
            &BundleId {
                source: Eid::ipn(5, 5),
                timestamp: CreationTimestamp::new(1, 2),
                fragment: None,
            },
            ReasonCode::NoInformation,
        ));
        let b = builder().admin_record(&rec).build().unwrap();
        assert_eq!(
            Bundle::decode(b.to_bytes().unwrap())
                .unwrap()
                .admin_record()
                .unwrap(),
            rec
        );
        let plain = builder().payload(rec.encode()).build().unwrap();
        assert_eq!(plain.admin_record(), Err(Error::NotAdminRecord));
    }

    #[test]
    fn expiry() {
        let b = builder().build().unwrap();
        assert!(!b.is_expired(None, 0));
        assert!(!b.is_expired(Some(DtnTime(60_999)), 0));
        assert!(b.is_expired(Some(DtnTime(61_000)), 0));
        let aged = BundleBuilder::new(
            Eid::ipn(1, 1),
            Eid::ipn(2, 1),
            CreationTimestamp::new(0, 0),
            100,
        )
        .bundle_age(90)
        .build()
        .unwrap();
        assert!(!aged.is_expired(None, 9));
        assert!(aged.is_expired(None, 10));
    }
}
