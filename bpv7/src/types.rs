//! Small value types of RFC 9171: DTN time (§4.2.6), creation timestamps (§4.2.7), bundle
//! processing control flags (§4.2.3), block processing control flags (§4.2.4), CRC types and
//! CRC computation (§4.2.1), block types (§4.3.2, §9.1), and bundle identity (§5.8/§5.9).

use crate::eid::Eid;
use crate::{Error, Result};
use core::fmt;

/// DTN time: milliseconds since 2000-01-01T00:00:00Z (RFC 9171 §4.2.6). 0 means "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DtnTime(pub u64);

impl DtnTime {
    /// Seconds between the Unix epoch and the DTN epoch (2000-01-01T00:00:00Z).
    pub const UNIX_OFFSET_SECS: u64 = 946_684_800;

    /// DTN time from Unix time in milliseconds (saturating at 0 before 2000).
    pub fn from_unix_millis(ms: u64) -> DtnTime {
        DtnTime(ms.saturating_sub(Self::UNIX_OFFSET_SECS * 1000))
    }

    /// Unix time in milliseconds.
    pub fn to_unix_millis(self) -> u64 {
        self.0.saturating_add(Self::UNIX_OFFSET_SECS * 1000)
    }

    /// Milliseconds since the DTN epoch.
    pub fn millis(self) -> u64 {
        self.0
    }
}

/// Creation timestamp: creation time and sequence number (RFC 9171 §4.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CreationTimestamp {
    /// Creation time; 0 if the source had no accurate clock.
    pub time: DtnTime,
    /// Sequence number distinguishing bundles created in the same millisecond.
    pub sequence: u64,
}

impl CreationTimestamp {
    /// A timestamp from raw milliseconds and sequence number.
    pub fn new(time_ms: u64, sequence: u64) -> Self {
        CreationTimestamp {
            time: DtnTime(time_ms),
            sequence,
        }
    }
}

macro_rules! flag_type {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $flag:ident = $v:expr,)* } known = $known:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize))]
        pub struct $name(pub u64);
        impl $name {
            $($(#[$fm])* pub const $flag: $name = $name($v);)*
            /// Every bit this implementation assigns a meaning to; other bits are reserved,
            /// ignored on receipt and preserved on re-encode.
            pub const KNOWN: u64 = $known;
            /// No flags.
            pub const fn empty() -> Self { $name(0) }
            /// Raw bits.
            pub const fn bits(self) -> u64 { self.0 }
            /// True if every bit of `other` is set.
            pub const fn contains(self, other: $name) -> bool { self.0 & other.0 == other.0 }
            /// Set or clear the bits of `other`.
            pub fn set(&mut self, other: $name, on: bool) {
                if on { self.0 |= other.0 } else { self.0 &= !other.0 }
            }
            /// Reserved (unassigned) bits that are set.
            pub const fn reserved_bits(self) -> u64 { self.0 & !Self::KNOWN }
        }
        impl core::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, o: $name) -> $name { $name(self.0 | o.0) }
        }
        impl core::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, o: $name) { self.0 |= o.0 }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x})", stringify!($name), self.0)
            }
        }
    };
}

flag_type! {
    /// Bundle processing control flags (RFC 9171 §4.2.3).
    BundleFlags {
        /// Bit 0: the bundle is a fragment.
        IS_FRAGMENT = 0x01,
        /// Bit 1: the payload is an administrative record.
        ADMIN_RECORD = 0x02,
        /// Bit 2: the bundle must not be fragmented.
        MUST_NOT_FRAGMENT = 0x04,
        /// Bit 5: user application acknowledgement requested.
        APP_ACK_REQUESTED = 0x20,
        /// Bit 6: status time requested in reports.
        STATUS_TIME_REQUESTED = 0x40,
        /// Bit 14: request reporting of bundle reception.
        REPORT_RECEPTION = 0x4000,
        /// Bit 16: request reporting of bundle forwarding.
        REPORT_FORWARDING = 0x1_0000,
        /// Bit 17: request reporting of bundle delivery.
        REPORT_DELIVERY = 0x2_0000,
        /// Bit 18: request reporting of bundle deletion.
        REPORT_DELETION = 0x4_0000,
    } known = 0x7_4067
}

impl BundleFlags {
    /// All four status-report request flags.
    pub const ALL_REPORTS: BundleFlags = BundleFlags(0x7_4000);

    /// True if any status report is requested.
    pub const fn requests_reports(self) -> bool {
        self.0 & Self::ALL_REPORTS.0 != 0
    }
}

flag_type! {
    /// Block processing control flags (RFC 9171 §4.2.4).
    BlockFlags {
        /// Bit 0: block must be replicated in every fragment.
        REPLICATE = 0x01,
        /// Bit 1: transmit a status report if the block can't be processed.
        REPORT_IF_UNPROCESSABLE = 0x02,
        /// Bit 2: delete the bundle if the block can't be processed.
        DELETE_BUNDLE_IF_UNPROCESSABLE = 0x04,
        /// Bit 4: discard the block if it can't be processed.
        DISCARD_IF_UNPROCESSABLE = 0x10,
    } known = 0x17
}

/// CRC type of a block (RFC 9171 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum CrcType {
    /// 0: no CRC.
    None,
    /// 1: CRC-16/X-25 (crc crate `CRC_16_IBM_SDLC`), 2 bytes.
    Crc16,
    /// 2: CRC-32C (crc crate `CRC_32_ISCSI`), 4 bytes.
    #[default]
    Crc32c,
}

// Slice-by-16 tables: the CRC runs over whole payloads on decode, so throughput matters.
pub(crate) const CRC16: crc::Crc<u16, crc::Table<16>> =
    crc::Crc::<u16, crc::Table<16>>::new(&crc::CRC_16_IBM_SDLC);
/// Blocks up to this long (octets, without the CRC field) are checksummed from a stack copy.
const SHORT_BLOCK: usize = 124;
#[cfg(test)]
pub(crate) const CRC32C: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

impl CrcType {
    /// From the wire code (RFC 9171 §4.2.1: only 0, 1, 2 are defined).
    pub fn from_code(v: u64) -> Result<CrcType> {
        match v {
            0 => Ok(CrcType::None),
            1 => Ok(CrcType::Crc16),
            2 => Ok(CrcType::Crc32c),
            other => Err(Error::UnknownCrcType(other)),
        }
    }

    /// The wire code.
    pub fn code(self) -> u64 {
        match self {
            CrcType::None => 0,
            CrcType::Crc16 => 1,
            CrcType::Crc32c => 2,
        }
    }

    /// Size of the CRC value in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            CrcType::None => 0,
            CrcType::Crc16 => 2,
            CrcType::Crc32c => 4,
        }
    }

    /// True for [`CrcType::None`].
    pub fn is_none(self) -> bool {
        self == CrcType::None
    }

    /// The CRC (big-endian bytes, `len()` of them) of `block`, an encoded block whose final
    /// `len()` bytes are the CRC field; that field is treated as zero (RFC 9171 §4.2.1).
    pub(crate) fn compute(self, block: &[u8]) -> [u8; 4] {
        let n = self.len();
        let body = &block[..block.len() - n];
        let mut out = [0u8; 4];
        match self {
            CrcType::None => {}
            CrcType::Crc16 => {
                let mut d = CRC16.digest();
                d.update(body);
                d.update(&[0, 0]);
                out[..2].copy_from_slice(&d.finalize().to_be_bytes());
            }
            CrcType::Crc32c => {
                // The `crc32c` crate uses the SSE 4.2 / ARMv8 CRC instructions when the CPU has
                // them (detected at run time), a table otherwise; same polynomial as
                // `CRC_32_ISCSI` (checked against it in the tests).
                let crc = if body.len() <= SHORT_BLOCK {
                    // Short blocks (primary, extension blocks): one call over a stack copy
                    // with the zeroed CRC field, instead of two.
                    let mut buf = [0u8; SHORT_BLOCK + 4];
                    buf[..body.len()].copy_from_slice(body);
                    crc32c::crc32c(&buf[..body.len() + 4])
                } else {
                    crc32c::crc32c_append(crc32c::crc32c(body), &[0, 0, 0, 0])
                };
                out.copy_from_slice(&crc.to_be_bytes());
            }
        }
        out
    }
}

/// Block type code (RFC 9171 §4.3.2 and §9.1; BPSec RFC 9172).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum BlockType {
    /// 1: bundle payload block.
    Payload,
    /// 6: previous node block (§4.4.1).
    PreviousNode,
    /// 7: bundle age block (§4.4.2).
    BundleAge,
    /// 10: hop count block (§4.4.3).
    HopCount,
    /// 11: block integrity block (RFC 9172).
    Bib,
    /// 12: block confidentiality block (RFC 9172).
    Bcb,
    /// Any other type code (kept with its bytes).
    Unknown(u64),
}

impl BlockType {
    /// From the wire code.
    pub fn from_code(v: u64) -> BlockType {
        match v {
            1 => BlockType::Payload,
            6 => BlockType::PreviousNode,
            7 => BlockType::BundleAge,
            10 => BlockType::HopCount,
            11 => BlockType::Bib,
            12 => BlockType::Bcb,
            o => BlockType::Unknown(o),
        }
    }

    /// The wire code.
    pub fn code(self) -> u64 {
        match self {
            BlockType::Payload => 1,
            BlockType::PreviousNode => 6,
            BlockType::BundleAge => 7,
            BlockType::HopCount => 10,
            BlockType::Bib => 11,
            BlockType::Bcb => 12,
            BlockType::Unknown(o) => o,
        }
    }
}

/// Fragment fields of the primary block (RFC 9171 §4.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FragmentInfo {
    /// Offset of this fragment's payload within the original ADU.
    pub offset: u64,
    /// Total length of the original application data unit.
    pub total_adu_length: u64,
}

/// The RFC's bundle identity: source, creation timestamp and, for a fragment, the fragment
/// offset and payload length (RFC 9171 §5.8/§5.9, "bundle ID"). Hashable store key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BundleId {
    /// Source node ID.
    pub source: Eid,
    /// Creation timestamp.
    pub timestamp: CreationTimestamp,
    /// `(fragment offset, payload length)` when the bundle is a fragment.
    pub fragment: Option<(u64, u64)>,
}

impl BundleId {
    /// The identity of the whole (unfragmented) bundle this one belongs to.
    pub fn whole(&self) -> BundleId {
        BundleId {
            source: self.source.clone(),
            timestamp: self.timestamp,
            fragment: None,
        }
    }
}

impl fmt::Display for BundleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.source, self.timestamp.time.0, self.timestamp.sequence
        )?;
        if let Some((o, l)) = self.fragment {
            write!(f, "/{o}+{l}")?;
        }
        Ok(())
    }
}

/// Hop count block contents (RFC 9171 §4.4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HopCount {
    /// Hop limit, 1..=255.
    pub limit: u64,
    /// Hops taken so far.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_values() {
        // Standard check values for "123456789".
        assert_eq!(CRC16.checksum(b"123456789"), 0x906e);
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // `compute` (stack copy for short blocks, two calls for long ones) equals the table CRC
        // over the block with its CRC field zeroed, on both sides of the short-block limit.
        for len in [
            0usize,
            1,
            10,
            SHORT_BLOCK - 1,
            SHORT_BLOCK,
            SHORT_BLOCK + 1,
            1000,
        ] {
            let mut block: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            block.extend_from_slice(&[0xaa; 4]);
            let mut zeroed = block.clone();
            zeroed[len..].fill(0);
            let want = CRC32C.checksum(&zeroed).to_be_bytes();
            assert_eq!(CrcType::Crc32c.compute(&block), want, "len {len}");
        }
        // The accelerated CRC-32C equals the table one on every length and alignment.
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0, 1, 3, 4, 7, 8, 15, 16, 63, 64, 1000, 4999] {
            for off in [0, 1, 3] {
                let d = &data[off..off + len.min(data.len() - off)];
                assert_eq!(crc32c::crc32c(d), CRC32C.checksum(d), "len {len} off {off}");
            }
        }
    }

    #[test]
    fn dtn_time_epoch() {
        assert_eq!(DtnTime::from_unix_millis(946_684_800_000), DtnTime(0));
        assert_eq!(DtnTime(5).to_unix_millis(), 946_684_800_005);
    }
}
