//! The one error type of the crate: a variant per rule of RFC 9171 §4 (and §5.8, §6.1) that a
//! bundle can break, plus CBOR well-formedness (RFC 8949) and API misuse.

/// Result alias for this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Every way decoding, validating, encoding or processing a bundle can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- CBOR well-formedness (RFC 8949; RFC 9171 §4.1) ----
    /// RFC 8949 §3: the input ended inside an item.
    #[error("truncated CBOR input")]
    Truncated,
    /// RFC 8949 §3: a reserved additional-information value or invalid item.
    #[error("malformed CBOR at offset {offset}")]
    MalformedCbor {
        /// Byte offset of the offending item.
        offset: usize,
    },
    /// RFC 9171 §4.1 / RFC 8949 §4.2.1: an integer or length not in its shortest form.
    #[error("non-deterministic (non-shortest) CBOR encoding at offset {offset}")]
    NonCanonicalEncoding {
        /// Byte offset of the offending head.
        offset: usize,
    },
    /// RFC 9171 §4.1: only the outer bundle array may be indefinite-length.
    #[error("indefinite-length item at offset {offset} where a definite length is required")]
    IndefiniteLength {
        /// Byte offset of the offending head.
        offset: usize,
    },
    /// RFC 9171 §4.1 / RFC 8949 §3: a CBOR item of the wrong type.
    #[error("expected {expected} at offset {offset}")]
    UnexpectedType {
        /// Byte offset of the offending item.
        offset: usize,
        /// What was expected.
        expected: &'static str,
    },
    /// RFC 8949 §3: a length or count larger than the bytes that follow (checked before allocating).
    #[error("length or count at offset {offset} exceeds the remaining input")]
    LengthExceedsInput {
        /// Byte offset of the offending head.
        offset: usize,
    },
    /// Nesting deeper than [`crate::MAX_CBOR_DEPTH`].
    #[error("CBOR nesting too deep at offset {offset}")]
    NestingTooDeep {
        /// Byte offset where the limit was hit.
        offset: usize,
    },

    // ---- whole-bundle structure (RFC 9171 §4.1, §4.3) ----
    /// RFC 9171 §4.1: a bundle is an indefinite-length CBOR array.
    #[error("outer bundle array is not indefinite-length")]
    DefiniteOuterArray,
    /// RFC 9171 §4.1: the indefinite array must end with the 0xff break.
    #[error("bundle array has no terminating break")]
    MissingBreak,
    /// RFC 9171 §4.1: nothing may follow the bundle's break byte.
    #[error("{0} trailing bytes after the bundle")]
    TrailingBytes(usize),
    /// RFC 9171 §4.1: the first item of a bundle is the primary block.
    #[error("the bundle has no primary block")]
    MissingPrimaryBlock,
    /// RFC 9171 §4.1: exactly one payload block.
    #[error("the bundle has no payload block")]
    MissingPayloadBlock,
    /// RFC 9171 §4.1: exactly one payload block.
    #[error("the bundle has more than one payload block")]
    DuplicatePayloadBlock,
    /// RFC 9171 §4.1: the payload block is the last block of the bundle.
    #[error("the payload block is not the last block")]
    PayloadNotLast,
    /// RFC 9171 §4.3.2: the payload block's number is always 1.
    #[error("payload block number is {0}, must be 1")]
    PayloadBlockNumber(u64),
    /// RFC 9171 §4.3.2: block number 0 is reserved for the primary block.
    #[error("a canonical block uses the reserved block number 0")]
    BlockNumberZero,
    /// RFC 9171 §4.3.2: block numbers are unique within a bundle.
    #[error("duplicate block number {0}")]
    DuplicateBlockNumber(u64),
    /// RFC 9171 §4.4: at most one block of this extension type per bundle.
    #[error("more than one block of type {0}")]
    DuplicateExtensionBlock(u64),
    /// RFC 9171 §4.4.2: a bundle whose creation time is zero must carry a Bundle Age block.
    #[error("creation time is zero and there is no bundle age block")]
    MissingBundleAge,
    /// RFC 9171 §4.4.3: the hop limit is in 1..=255.
    #[error("hop limit {0} outside 1..=255")]
    HopLimitOutOfRange(u64),
    /// RFC 9171 §4.4.3: forwarding would make the hop count exceed the hop limit (reason code 9).
    #[error("hop limit exceeded")]
    HopLimitExceeded,

    // ---- primary block (RFC 9171 §4.3.1) ----
    /// RFC 9171 §4.3.1: version must be 7.
    #[error("bundle protocol version {0}, expected 7")]
    UnsupportedVersion(u64),
    /// RFC 9171 §4.2.1: CRC type is 0, 1 or 2.
    #[error("unknown CRC type {0}")]
    UnknownCrcType(u64),
    /// RFC 9171 §4.3.1: the primary block has 8..=11 elements, consistent with the fragment
    /// flag and the CRC type.
    #[error("primary block has {found} elements, expected {expected}")]
    PrimaryBlockLength {
        /// Elements present.
        found: u64,
        /// Elements required by the fragment flag and CRC type.
        expected: u64,
    },
    /// RFC 9171 §4.2.3: fragment offset must be less than the total ADU length.
    #[error("fragment offset {offset} not less than total ADU length {total}")]
    FragmentOffsetBeyondTotal {
        /// Fragment offset.
        offset: u64,
        /// Total application data unit length.
        total: u64,
    },
    /// RFC 9171 §5.8: fragment offset + payload length exceeds the total ADU length.
    #[error("fragment extends beyond the total ADU length")]
    FragmentBeyondTotal,
    /// RFC 9171 §4.3.1: a primary block without CRC is allowed only when a BIB targets it.
    #[error("primary block has no CRC and no BIB targets it")]
    PrimaryCrcMissing,
    /// RFC 9171 §4.2.3: an administrative record must not request status reports.
    #[error("administrative record bundle requests status reports")]
    AdminRecordRequestsReports,
    /// RFC 9171 §4.2.3: a bundle with source dtn:none must have must-not-fragment set and
    /// request no status reports.
    #[error("anonymous bundle (source dtn:none) must not be fragmentable or request reports")]
    AnonymousBundleFlags,
    /// RFC 9171 §4.2.4: blocks of admin-record bundles and of anonymous bundles (source
    /// dtn:none) must not set "report if unprocessable".
    #[error("block {0} of an administrative-record or anonymous bundle requests a status report")]
    AdminRecordBlockReportFlag(u64),

    // ---- CRC (RFC 9171 §4.2.1) ----
    /// RFC 9171 §4.2.1: CRC over the received bytes does not match (block 0 = primary).
    #[error("CRC mismatch in block {block}")]
    CrcMismatch {
        /// Block number (0 for the primary block).
        block: u64,
    },
    /// RFC 9171 §4.2.1: the CRC field has the wrong size for its CRC type.
    #[error("CRC field of block {block} has the wrong length")]
    CrcLength {
        /// Block number (0 for the primary block).
        block: u64,
    },

    // ---- canonical blocks (RFC 9171 §4.3.2, §4.4) ----
    /// RFC 9171 §4.3.2: a canonical block has 5 (no CRC) or 6 elements.
    #[error("canonical block has {found} elements, expected {expected}")]
    BlockLength {
        /// Elements present.
        found: u64,
        /// Elements required by the CRC type.
        expected: u64,
    },
    /// RFC 9171 §4.3.2: block type 0 is reserved.
    #[error("block type 0 is reserved")]
    ReservedBlockType,
    /// RFC 9171 §4.4: the block-type-specific data of a known extension block is malformed.
    #[error("malformed data in block {block} (type {block_type})")]
    MalformedBlockData {
        /// Block number.
        block: u64,
        /// Block type.
        block_type: u64,
    },

    // ---- endpoint IDs (RFC 9171 §4.2.5.1, RFC 9758) ----
    /// RFC 9171 §4.2.5.1: malformed endpoint ID.
    #[error("invalid endpoint ID: {0}")]
    InvalidEid(&'static str),

    // ---- administrative records (RFC 9171 §6.1) ----
    /// RFC 9171 §6.1: malformed administrative record.
    #[error("malformed administrative record: {0}")]
    MalformedAdminRecord(&'static str),
    /// RFC 9171 §6.1: the payload is parsed as an administrative record only when the
    /// "ADU is an administrative record" flag is set.
    #[error("bundle is not an administrative record")]
    NotAdminRecord,

    // ---- fragmentation (RFC 9171 §5.8, §5.9) ----
    /// RFC 9171 §4.2.3/§5.8: the bundle has "must not fragment" set.
    #[error("bundle must not be fragmented")]
    MustNotFragment,
    /// RFC 9171 §5.8: the fragment size limit leaves no room for payload bytes.
    #[error("maximum fragment size {0} too small")]
    FragmentSizeTooSmall(usize),
    /// RFC 9171 §5.9: a fragment does not belong to / disagrees with its bundle.
    #[error("inconsistent fragment: {0}")]
    InconsistentFragment(&'static str),
    /// The reassembler's configured memory bound would be exceeded.
    #[error("reassembly limit reached: {0}")]
    ReassemblyLimit(&'static str),
    /// An operation that needs a fragment was given a whole bundle.
    #[error("bundle is not a fragment")]
    NotAFragment,

    // ---- building / encoding ----
    /// A value cannot be encoded (e.g. an invalid bundle built by hand).
    #[error("cannot encode: {0}")]
    Invalid(&'static str),
}

impl Error {
    /// The RFC 9171 §6.1.1 status-report reason code that fits a bundle rejected with this error:
    /// "Hop limit exceeded" (9) or "Block unintelligible" (8) for everything else.
    pub fn reason_code(&self) -> crate::ReasonCode {
        match self {
            Error::HopLimitExceeded => crate::ReasonCode::HopLimitExceeded,
            _ => crate::ReasonCode::BlockUnintelligible,
        }
    }
}
