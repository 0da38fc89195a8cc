//! LTP segment codec (RFC 5326 §3): the segment header (§3.1: control byte, session ID, extension
//! counts), header and trailer extensions (§3.1.5, §3.3), and every segment content type (§3.2:
//! data §3.2.1, report §3.2.2, report-acknowledgment §3.2.3, cancel and cancel-acknowledgment
//! §3.2.4), with SDNV integers per RFC 6256.
//!
//! Decoding is zero-copy: [`DataSegment::data`] and [`Extension::value`] are slices of the
//! received datagram. Every length read from the wire is checked against the bytes that remain
//! before anything is sliced or allocated, and report claim counts are bounded by
//! [`DecodeLimits`]. 64-bit session numbers and serial numbers (as HDTN sends) are accepted.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::sdnv::{self, SdnvError};

/// An LTP engine ID (RFC 5326 §3.1, an SDNV).
pub type EngineId = u64;

/// Session ID (§3.1): originator engine + session number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    /// Engine ID of the block sender that opened the session.
    pub originator: EngineId,
    /// Session number chosen by the originator.
    pub number: u64,
}

/// A header or trailer extension (RFC 5326 §3.1.5): tag octet, SDNV length, value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// Extension tag (§3.1.5; e.g. 0x00 LTP authentication, 0x01 cookie).
    pub tag: u8,
    /// Extension value (zero-copy slice of the datagram on decode).
    pub value: Bytes,
}

/// One LTP segment (RFC 5326 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Session the segment belongs to.
    pub session: SessionId,
    /// Header extensions, in wire order (at most 15).
    pub header_extensions: Vec<Extension>,
    /// Trailer extensions, in wire order (at most 15).
    pub trailer_extensions: Vec<Extension>,
    /// Segment content (selected by the segment type code).
    pub body: SegmentBody,
}

/// Segment content by segment type (RFC 5326 §3.1.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentBody {
    /// Data segment, types 0-4 and 7 (§3.2.1).
    Data(DataSegment),
    /// Report segment, type 8 (§3.2.2).
    Report(ReportSegment),
    /// Report-acknowledgment segment, type 9 (§3.2.3).
    ReportAck {
        /// Serial number of the report being acknowledged.
        report_serial: u64,
    },
    /// Cancel segment from block sender, type 12 (§3.2.4).
    CancelFromSender(CancelReason),
    /// Cancel-acknowledgment segment to block sender, type 13 (§3.2.4).
    CancelAckToSender,
    /// Cancel segment from block receiver, type 14 (§3.2.4).
    CancelFromReceiver(CancelReason),
    /// Cancel-acknowledgment segment to block receiver, type 15 (§3.2.4).
    CancelAckToReceiver,
}

/// Kind of data segment (RFC 5326 §3.1.3 type codes 0-4 and 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// Type 0: red data, not a checkpoint.
    Red,
    /// Type 1: red data, checkpoint, not end of red part.
    RedCheckpoint,
    /// Type 2: red data, checkpoint, end of red part (EORP).
    RedCheckpointEorp,
    /// Type 3: red data, checkpoint, EORP and end of block (EOB).
    RedCheckpointEorpEob,
    /// Type 4: green data.
    Green,
    /// Type 7: green data, end of block.
    GreenEob,
}

impl DataKind {
    /// The segment type code (§3.1.3).
    pub fn type_code(self) -> u8 {
        match self {
            DataKind::Red => 0,
            DataKind::RedCheckpoint => 1,
            DataKind::RedCheckpointEorp => 2,
            DataKind::RedCheckpointEorpEob => 3,
            DataKind::Green => 4,
            DataKind::GreenEob => 7,
        }
    }
    /// True for red-part data (types 0-3).
    pub fn is_red(self) -> bool {
        matches!(
            self,
            DataKind::Red
                | DataKind::RedCheckpoint
                | DataKind::RedCheckpointEorp
                | DataKind::RedCheckpointEorpEob
        )
    }
    /// True for checkpoint segments (types 1-3), which carry [`CheckpointInfo`].
    pub fn is_checkpoint(self) -> bool {
        matches!(
            self,
            DataKind::RedCheckpoint | DataKind::RedCheckpointEorp | DataKind::RedCheckpointEorpEob
        )
    }
    /// True if the segment ends the red part (types 2 and 3).
    pub fn is_eorp(self) -> bool {
        matches!(
            self,
            DataKind::RedCheckpointEorp | DataKind::RedCheckpointEorpEob
        )
    }
    /// True if the segment ends the block (types 3 and 7).
    pub fn is_eob(self) -> bool {
        matches!(self, DataKind::RedCheckpointEorpEob | DataKind::GreenEob)
    }
}

/// Data segment content (RFC 5326 §3.2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSegment {
    /// Data segment type.
    pub kind: DataKind,
    /// Client service ID the block is for.
    pub client_service_id: u64,
    /// Offset of the data within the block.
    pub offset: u64,
    /// The data (zero-copy slice of the datagram on decode).
    pub data: Bytes,
    /// Checkpoint and report serial numbers; `Some` iff `kind` is a checkpoint.
    pub checkpoint: Option<CheckpointInfo>,
}

/// Checkpoint fields of a red checkpoint data segment (RFC 5326 §3.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Checkpoint serial number.
    pub checkpoint_serial: u64,
    /// Serial number of the report this checkpoint answers (0 if none).
    pub report_serial: u64,
}

/// Report segment content (RFC 5326 §3.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportSegment {
    /// Report serial number.
    pub report_serial: u64,
    /// Checkpoint serial number this report answers (0 for an asynchronous report).
    pub checkpoint_serial: u64,
    /// Upper bound of the block prefix the report covers (exclusive).
    pub upper_bound: u64,
    /// Lower bound of the block prefix the report covers.
    pub lower_bound: u64,
    /// Reception claims, offsets ABSOLUTE within the block (the wire form is relative to the
    /// lower bound, §3.2.2; the codec converts).
    pub claims: Vec<Claim>,
}

/// One reception claim (RFC 5326 §3.2.2), with an absolute block offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Absolute offset within the block.
    pub offset: u64,
    /// Number of contiguous octets received from `offset`.
    pub length: u64,
}

/// Cancel reason codes (RFC 5326 §3.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// 0 USR_CNCLD: client service cancelled the session.
    UserCancelled,
    /// 1 UNREACH: unreachable client service.
    UnreachableClient,
    /// 2 RLEXC: retransmission limit exceeded.
    RetransmissionLimitExceeded,
    /// 3 MISCOLORED: received both red and green data at the same offsets / red after green.
    Miscolored,
    /// 4 SYS_CNCLD: system error condition caused unexpected session termination.
    SystemCancelled,
    /// 5 RXMTCYCEXC: exceeded the retransmission-cycles limit.
    RetransmissionCyclesExceeded,
    /// Any other (reserved) code, kept as received.
    Unknown(u8),
}

impl CancelReason {
    /// Maps a wire reason code to a reason (§3.2.4).
    pub fn from_code(code: u8) -> CancelReason {
        match code {
            0 => CancelReason::UserCancelled,
            1 => CancelReason::UnreachableClient,
            2 => CancelReason::RetransmissionLimitExceeded,
            3 => CancelReason::Miscolored,
            4 => CancelReason::SystemCancelled,
            5 => CancelReason::RetransmissionCyclesExceeded,
            other => CancelReason::Unknown(other),
        }
    }
    /// The wire reason code (§3.2.4).
    pub fn code(self) -> u8 {
        match self {
            CancelReason::UserCancelled => 0,
            CancelReason::UnreachableClient => 1,
            CancelReason::RetransmissionLimitExceeded => 2,
            CancelReason::Miscolored => 3,
            CancelReason::SystemCancelled => 4,
            CancelReason::RetransmissionCyclesExceeded => 5,
            CancelReason::Unknown(c) => c,
        }
    }
}

/// Resource limits applied while decoding, checked before anything is allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Maximum reception claims in one report segment.
    pub max_claims: usize,
    /// Maximum header + trailer extensions in one segment (the wire allows 15 + 15).
    pub max_extensions: usize,
    /// Maximum value length of one extension, in octets.
    pub max_extension_len: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_claims: 4096,
            max_extensions: 30,
            max_extension_len: 65_535,
        }
    }
}

/// Why a segment was rejected; one variant per rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The datagram is empty or ends inside a fixed-size field.
    #[error("segment truncated in {field}")]
    Truncated {
        /// Field being read.
        field: &'static str,
    },
    /// An SDNV field is malformed (RFC 6256 §2.1).
    #[error("bad SDNV in {field}: {source}")]
    Sdnv {
        /// Field being read.
        field: &'static str,
        /// The SDNV error.
        source: SdnvError,
    },
    /// §3.1.1: version number other than 0.
    #[error("unsupported LTP version {0}")]
    UnsupportedVersion(u8),
    /// §3.1.3: segment type codes 5, 6, 10 and 11 are undefined.
    #[error("undefined segment type {0}")]
    UndefinedSegmentType(u8),
    /// §3.1.5: more extensions than [`DecodeLimits::max_extensions`].
    #[error("{count} extensions exceed the limit {max}")]
    TooManyExtensions {
        /// Extensions announced.
        count: usize,
        /// Configured limit.
        max: usize,
    },
    /// §3.1.5: an extension value runs past the end of the segment or over the limit.
    #[error("extension length {length} exceeds the {available} octets available")]
    ExtensionLength {
        /// Declared value length.
        length: u64,
        /// Octets available (or the configured limit).
        available: usize,
    },
    /// §3.2.1: the data length runs past the end of the segment.
    #[error("data length {length} exceeds the {available} octets left in the segment")]
    DataLengthExceedsSegment {
        /// Declared data length.
        length: u64,
        /// Octets left.
        available: usize,
    },
    /// §3.2.1: offset + length overflows 64 bits.
    #[error("data offset {offset} + length {length} overflows")]
    DataRangeOverflow {
        /// Offset field.
        offset: u64,
        /// Length field.
        length: u64,
    },
    /// §3.2.2: lower bound above upper bound.
    #[error("report lower bound {lower} above upper bound {upper}")]
    ReportBoundsInverted {
        /// Lower bound.
        lower: u64,
        /// Upper bound.
        upper: u64,
    },
    /// §3.2.2: more claims than [`DecodeLimits::max_claims`] or than the segment can hold.
    #[error("report claim count {count} exceeds the limit {max}")]
    TooManyClaims {
        /// Claims announced.
        count: u64,
        /// Effective limit.
        max: usize,
    },
    /// §3.2.2: a claim does not lie within [lower bound, upper bound).
    #[error("claim at relative offset {offset} length {length} outside report bounds [{lower}, {upper})")]
    ClaimOutOfBounds {
        /// Relative offset on the wire.
        offset: u64,
        /// Claim length.
        length: u64,
        /// Report lower bound.
        lower: u64,
        /// Report upper bound.
        upper: u64,
    },
    /// §3: octets remain after the last field of the segment.
    #[error("{0} trailing octets after the segment")]
    TrailingBytes(usize),
}

/// The datagram a segment is decoded from: borrowed (data segments get a slice of it) or
/// taken (data segments get the datagram itself, narrowed: no new reference to its buffer).
enum Datagram<'a> {
    Borrowed(&'a Bytes),
    Owned(Bytes),
}

impl Datagram<'_> {
    fn bytes(&self) -> &Bytes {
        match self {
            Datagram::Borrowed(b) => b,
            Datagram::Owned(b) => b,
        }
    }

    /// The octets `range` of the datagram (a data segment's data).
    fn data(self, range: std::ops::Range<usize>) -> Bytes {
        match self {
            Datagram::Borrowed(b) => b.slice(range),
            Datagram::Owned(mut b) => {
                // Without trailer extensions (the usual case) the data runs to the end of the
                // datagram, and truncating changes nothing.
                b.truncate(range.end);
                b.advance(range.start);
                b
            }
        }
    }
}

/// Reads fields from a datagram, tracking the position; all reads are bounds-checked.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeError::Truncated { field })?;
        self.pos += 1;
        Ok(b)
    }
    fn sdnv(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let (v, n) = sdnv::decode_u64(&self.buf[self.pos..])
            .map_err(|source| DecodeError::Sdnv { field, source })?;
        self.pos += n;
        Ok(v)
    }
    /// Slices `len` octets (already checked against `remaining`).
    fn take(&mut self, len: usize) -> Bytes {
        let b = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        b
    }
    /// Reads `count` extensions (§3.1.5). No extensions, the usual case, costs neither an
    /// allocation nor a call.
    #[inline(always)]
    fn extensions(
        &mut self,
        count: usize,
        limits: &DecodeLimits,
    ) -> Result<Vec<Extension>, DecodeError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        self.some_extensions(count, limits)
    }

    fn some_extensions(
        &mut self,
        count: usize,
        limits: &DecodeLimits,
    ) -> Result<Vec<Extension>, DecodeError> {
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            let tag = self.u8("extension tag")?;
            let length = self.sdnv("extension length")?;
            let available = self.remaining().min(limits.max_extension_len);
            // §3.1.5: the value must lie within the segment (and the configured limit).
            if length > available as u64 {
                return Err(DecodeError::ExtensionLength { length, available });
            }
            let value = self.take(length as usize);
            v.push(Extension { tag, value });
        }
        Ok(v)
    }
}

impl Segment {
    /// A segment of `session` without header or trailer extensions (§3.1.4 counts of zero),
    /// as this engine sends every segment.
    pub fn new(session: SessionId, body: SegmentBody) -> Segment {
        Segment {
            session,
            header_extensions: Vec::new(),
            trailer_extensions: Vec::new(),
            body,
        }
    }

    /// Decodes one segment from a whole datagram with default limits; never panics.
    pub fn decode(datagram: &Bytes) -> Result<Segment, DecodeError> {
        Self::decode_with_limits(datagram, &DecodeLimits::default())
    }

    /// Decodes one segment from a whole datagram, enforcing `limits`; never panics.
    pub fn decode_with_limits(
        datagram: &Bytes,
        limits: &DecodeLimits,
    ) -> Result<Segment, DecodeError> {
        Self::decode_from(Datagram::Borrowed(datagram), limits)
    }

    /// As [`decode_with_limits`](Self::decode_with_limits), taking the datagram: a data
    /// segment's data is the datagram itself, narrowed to the data field, where a slice would
    /// take another reference to the buffer (an atomic increment, and a decrement when the
    /// datagram is dropped; per received datagram, on the receiver's hot path).
    pub fn decode_owned(datagram: Bytes, limits: &DecodeLimits) -> Result<Segment, DecodeError> {
        Self::decode_from(Datagram::Owned(datagram), limits)
    }

    /// Decodes every field in order (§3). A data segment's data is taken from the datagram
    /// last, once the trailer extensions after it are read, so that an owned datagram can
    /// become the data. Inlined into both callers, so the owned one moves no struct through
    /// an extra call (measured: a memcpy of the segment per datagram otherwise).
    #[inline(always)]
    fn decode_from(datagram: Datagram<'_>, limits: &DecodeLimits) -> Result<Segment, DecodeError> {
        let mut data_range = None;
        let mut r = Reader {
            buf: datagram.bytes(),
            pos: 0,
        };
        // §3.1.1 control byte: version (high nibble), segment type flags (low nibble).
        let control = r.u8("control byte")?;
        let version = control >> 4;
        if version != 0 {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let type_code = control & 0x0f;
        // §3.1.3: 5, 6, 10 and 11 are undefined segment types.
        if matches!(type_code, 5 | 6 | 10 | 11) {
            return Err(DecodeError::UndefinedSegmentType(type_code));
        }
        // §3.1.2 session ID.
        let originator = r.sdnv("session originator")?;
        let number = r.sdnv("session number")?;
        // §3.1.4 extension counts.
        let counts = r.u8("extension counts")?;
        let (hc, tc) = ((counts >> 4) as usize, (counts & 0x0f) as usize);
        if hc + tc > limits.max_extensions {
            return Err(DecodeError::TooManyExtensions {
                count: hc + tc,
                max: limits.max_extensions,
            });
        }
        let header_extensions = r.extensions(hc, limits)?;
        let mut body = match type_code {
            0..=4 | 7 => {
                let kind = match type_code {
                    0 => DataKind::Red,
                    1 => DataKind::RedCheckpoint,
                    2 => DataKind::RedCheckpointEorp,
                    3 => DataKind::RedCheckpointEorpEob,
                    4 => DataKind::Green,
                    _ => DataKind::GreenEob,
                };
                let client_service_id = r.sdnv("client service id")?;
                let offset = r.sdnv("offset")?;
                let length = r.sdnv("length")?;
                if offset.checked_add(length).is_none() {
                    return Err(DecodeError::DataRangeOverflow { offset, length });
                }
                let checkpoint = if kind.is_checkpoint() {
                    Some(CheckpointInfo {
                        checkpoint_serial: r.sdnv("checkpoint serial")?,
                        report_serial: r.sdnv("report serial")?,
                    })
                } else {
                    None
                };
                // §3.2.1: the client data must lie within the segment.
                if length > r.remaining() as u64 {
                    return Err(DecodeError::DataLengthExceedsSegment {
                        length,
                        available: r.remaining(),
                    });
                }
                // Taken at the end (see above).
                data_range = Some(r.pos..r.pos + length as usize);
                r.pos += length as usize;
                SegmentBody::Data(DataSegment {
                    kind,
                    client_service_id,
                    offset,
                    data: Bytes::new(),
                    checkpoint,
                })
            }
            8 => SegmentBody::Report(decode_report(&mut r, limits)?),
            9 => SegmentBody::ReportAck {
                report_serial: r.sdnv("report serial")?,
            },
            12 => SegmentBody::CancelFromSender(CancelReason::from_code(r.u8("reason code")?)),
            13 => SegmentBody::CancelAckToSender,
            14 => SegmentBody::CancelFromReceiver(CancelReason::from_code(r.u8("reason code")?)),
            _ => SegmentBody::CancelAckToReceiver,
        };
        let trailer_extensions = r.extensions(tc, limits)?;
        // §3: a datagram carries exactly one segment; nothing may follow the trailer.
        if r.remaining() != 0 {
            return Err(DecodeError::TrailingBytes(r.remaining()));
        }
        if let (SegmentBody::Data(d), Some(range)) = (&mut body, data_range) {
            d.data = datagram.data(range);
        }
        Ok(Segment {
            session: SessionId { originator, number },
            header_extensions,
            trailer_extensions,
            body,
        })
    }

    /// The segment type code (§3.1.3) of this segment.
    pub fn type_code(&self) -> u8 {
        match &self.body {
            SegmentBody::Data(d) => d.kind.type_code(),
            SegmentBody::Report(_) => 8,
            SegmentBody::ReportAck { .. } => 9,
            SegmentBody::CancelFromSender(_) => 12,
            SegmentBody::CancelAckToSender => 13,
            SegmentBody::CancelFromReceiver(_) => 14,
            SegmentBody::CancelAckToReceiver => 15,
        }
    }

    /// Appends the wire form of the segment to `out` (canonical SDNVs). At most 15 header and
    /// 15 trailer extensions are written (the count nibbles of §3.1.4); extras are dropped.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_u8(self.type_code());
        sdnv::encode_u64(self.session.originator, out);
        sdnv::encode_u64(self.session.number, out);
        let hc = self.header_extensions.len().min(15);
        let tc = self.trailer_extensions.len().min(15);
        out.put_u8(((hc as u8) << 4) | tc as u8);
        encode_extensions(&self.header_extensions[..hc], out);
        match &self.body {
            SegmentBody::Data(d) => {
                let mut f = [0u8; 5 * sdnv::MAX_U64_LEN];
                let n = write_data_fields(
                    d.client_service_id,
                    d.offset,
                    d.data.len() as u64,
                    d.kind,
                    d.checkpoint,
                    &mut f,
                );
                out.put_slice(&f[..n]);
                out.put_slice(&d.data);
            }
            SegmentBody::Report(rs) => {
                sdnv::encode_u64(rs.report_serial, out);
                sdnv::encode_u64(rs.checkpoint_serial, out);
                sdnv::encode_u64(rs.upper_bound, out);
                sdnv::encode_u64(rs.lower_bound, out);
                sdnv::encode_u64(rs.claims.len() as u64, out);
                for c in &rs.claims {
                    sdnv::encode_u64(c.offset.wrapping_sub(rs.lower_bound), out);
                    sdnv::encode_u64(c.length, out);
                }
            }
            SegmentBody::ReportAck { report_serial } => sdnv::encode_u64(*report_serial, out),
            SegmentBody::CancelFromSender(r) | SegmentBody::CancelFromReceiver(r) => {
                out.put_u8(r.code())
            }
            SegmentBody::CancelAckToSender | SegmentBody::CancelAckToReceiver => {}
        }
        encode_extensions(&self.trailer_extensions[..tc], out);
    }

    /// Exact number of octets [`Segment::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        let mut n = 2
            + sdnv::encoded_len(self.session.originator)
            + sdnv::encoded_len(self.session.number)
            + extensions_len(&self.header_extensions[..self.header_extensions.len().min(15)])
            + extensions_len(&self.trailer_extensions[..self.trailer_extensions.len().min(15)]);
        n += match &self.body {
            SegmentBody::Data(d) => {
                let cp = if d.kind.is_checkpoint() {
                    let cp = d.checkpoint.unwrap_or(CheckpointInfo {
                        checkpoint_serial: 0,
                        report_serial: 0,
                    });
                    sdnv::encoded_len(cp.checkpoint_serial) + sdnv::encoded_len(cp.report_serial)
                } else {
                    0
                };
                sdnv::encoded_len(d.client_service_id)
                    + sdnv::encoded_len(d.offset)
                    + sdnv::encoded_len(d.data.len() as u64)
                    + cp
                    + d.data.len()
            }
            SegmentBody::Report(rs) => {
                sdnv::encoded_len(rs.report_serial)
                    + sdnv::encoded_len(rs.checkpoint_serial)
                    + sdnv::encoded_len(rs.upper_bound)
                    + sdnv::encoded_len(rs.lower_bound)
                    + sdnv::encoded_len(rs.claims.len() as u64)
                    + rs.claims
                        .iter()
                        .map(|c| {
                            sdnv::encoded_len(c.offset.wrapping_sub(rs.lower_bound))
                                + sdnv::encoded_len(c.length)
                        })
                        .sum::<usize>()
            }
            SegmentBody::ReportAck { report_serial } => sdnv::encoded_len(*report_serial),
            SegmentBody::CancelFromSender(_) | SegmentBody::CancelFromReceiver(_) => 1,
            SegmentBody::CancelAckToSender | SegmentBody::CancelAckToReceiver => 0,
        };
        n
    }

    /// Encodes into a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b);
        b.freeze()
    }
}

/// Appends the header of a data segment without extensions (§3.1 header, §3.2.1 data segment
/// fields: everything up to the client data), for a sender that sends the data from the block
/// itself (a datagram of header then data, gathered by the socket, with no copy of the data).
/// `checkpoint` is written only for checkpoint kinds (zero serials if missing).
pub fn encode_data_header(
    session: SessionId,
    kind: DataKind,
    client_service_id: u64,
    offset: u64,
    data_len: u64,
    checkpoint: Option<CheckpointInfo>,
    out: &mut BytesMut,
) {
    DataHeaderPrefix::new(session, client_service_id)
        .encode(kind, offset, data_len, checkpoint, out);
}

/// The octets of a data segment header that stay the same for all of a session's segments
/// (§3.1.2 session ID, §3.1.4 extension counts of zero, §3.2.1 client service ID), encoded
/// once: a sender then writes per segment only the type octet and the offset, length and
/// checkpoint fields. [`DataHeaderPrefix::encode`] writes what [`encode_data_header`] does.
#[derive(Clone, Copy, Debug)]
pub struct DataHeaderPrefix {
    bytes: [u8; 3 * sdnv::MAX_U64_LEN + 1],
    len: u8,
}

impl DataHeaderPrefix {
    /// The prefix of `session`'s data segments for client service `client_service_id`.
    pub fn new(session: SessionId, client_service_id: u64) -> DataHeaderPrefix {
        let mut bytes = [0u8; 3 * sdnv::MAX_U64_LEN + 1];
        let mut n = sdnv::write_u64(session.originator, &mut bytes);
        n += sdnv::write_u64(session.number, &mut bytes[n..]);
        bytes[n] = 0; // no header or trailer extensions
        n += 1;
        n += sdnv::write_u64(client_service_id, &mut bytes[n..]);
        DataHeaderPrefix {
            bytes,
            len: n as u8,
        }
    }

    /// Octets of the header of a data segment of this session ([`data_segment_overhead`]).
    pub fn overhead(
        &self,
        kind: DataKind,
        offset: u64,
        data_len: u64,
        checkpoint: Option<CheckpointInfo>,
    ) -> usize {
        1 + usize::from(self.len)
            + sdnv::encoded_len(offset)
            + sdnv::encoded_len(data_len)
            + checkpoint_fields_len(kind, checkpoint)
    }

    /// Appends the header of a data segment of this session ([`encode_data_header`]).
    pub fn encode(
        &self,
        kind: DataKind,
        offset: u64,
        data_len: u64,
        checkpoint: Option<CheckpointInfo>,
        out: &mut BytesMut,
    ) {
        let mut h = [0u8; MAX_DATA_HEADER];
        h[0] = kind.type_code();
        // The whole prefix array (a copy of fixed size), of which the first `len` octets count.
        h[1..1 + self.bytes.len()].copy_from_slice(&self.bytes);
        let mut n = 1 + usize::from(self.len);
        n += sdnv::write_u64(offset, &mut h[n..]);
        n += sdnv::write_u64(data_len, &mut h[n..]);
        n += write_checkpoint_fields(kind, checkpoint, &mut h[n..]);
        out.extend_from_slice(&h[..n]);
    }
}

/// Octets of a data segment's checkpoint fields (§3.2.1: present in checkpoints only).
fn checkpoint_fields_len(kind: DataKind, checkpoint: Option<CheckpointInfo>) -> usize {
    match (kind.is_checkpoint(), checkpoint) {
        (true, Some(c)) => {
            sdnv::encoded_len(c.checkpoint_serial) + sdnv::encoded_len(c.report_serial)
        }
        (true, None) => 2,
        (false, _) => 0,
    }
}

/// Most octets a data segment header without extensions takes (§3.1, §3.2.1: the type octet,
/// the extension counts, and at most seven SDNVs of 64-bit values, 10 octets each).
pub const MAX_DATA_HEADER: usize = 2 + 7 * sdnv::MAX_U64_LEN;

/// The §3.2.1 fields of a data segment before the client data, written at the start of `out`
/// (at least five, or seven for a checkpoint, times [`sdnv::MAX_U64_LEN`] octets); returns
/// their length.
fn write_data_fields(
    client_service_id: u64,
    offset: u64,
    data_len: u64,
    kind: DataKind,
    checkpoint: Option<CheckpointInfo>,
    out: &mut [u8],
) -> usize {
    let mut n = sdnv::write_u64(client_service_id, out);
    n += sdnv::write_u64(offset, &mut out[n..]);
    n += sdnv::write_u64(data_len, &mut out[n..]);
    n + write_checkpoint_fields(kind, checkpoint, &mut out[n..])
}

/// The §3.2.1 checkpoint and report serial numbers of a checkpoint (zero serials if missing;
/// nothing for other kinds), written at the start of `out`; returns their length.
fn write_checkpoint_fields(
    kind: DataKind,
    checkpoint: Option<CheckpointInfo>,
    out: &mut [u8],
) -> usize {
    if !kind.is_checkpoint() {
        return 0;
    }
    let cp = checkpoint.unwrap_or(CheckpointInfo {
        checkpoint_serial: 0,
        report_serial: 0,
    });
    let n = sdnv::write_u64(cp.checkpoint_serial, out);
    n + sdnv::write_u64(cp.report_serial, &mut out[n..])
}

/// Length of the encoded header of a data segment carrying `data_len` octets (everything except
/// the data itself); lets a sender size segments to a maximum datagram size.
pub fn data_segment_overhead(
    session: SessionId,
    kind: DataKind,
    client_service_id: u64,
    offset: u64,
    data_len: u64,
    checkpoint: Option<CheckpointInfo>,
) -> usize {
    DataHeaderPrefix::new(session, client_service_id).overhead(kind, offset, data_len, checkpoint)
}

fn decode_report(r: &mut Reader<'_>, limits: &DecodeLimits) -> Result<ReportSegment, DecodeError> {
    let report_serial = r.sdnv("report serial")?;
    let checkpoint_serial = r.sdnv("checkpoint serial")?;
    let upper_bound = r.sdnv("upper bound")?;
    let lower_bound = r.sdnv("lower bound")?;
    // §3.2.2: the report covers [lower bound, upper bound).
    if lower_bound > upper_bound {
        return Err(DecodeError::ReportBoundsInverted {
            lower: lower_bound,
            upper: upper_bound,
        });
    }
    let count = r.sdnv("reception claim count")?;
    // §3.2.2: bound the claim count before allocating: by the limit and by the octets left
    // (each claim is at least two one-octet SDNVs).
    let max = limits.max_claims.min(r.remaining() / 2);
    if count > max as u64 {
        return Err(DecodeError::TooManyClaims { count, max });
    }
    let mut claims = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let rel = r.sdnv("claim offset")?;
        let length = r.sdnv("claim length")?;
        // §3.2.2: claim offsets are relative to the lower bound, and every claimed octet must
        // lie within [lower bound, upper bound).
        let out_of_bounds = ClaimOutOfBounds {
            offset: rel,
            length,
            lower: lower_bound,
            upper: upper_bound,
        };
        let start = lower_bound
            .checked_add(rel)
            .ok_or_else(|| out_of_bounds.clone().into_err())?;
        let end = start
            .checked_add(length)
            .ok_or_else(|| out_of_bounds.clone().into_err())?;
        if end > upper_bound {
            return Err(out_of_bounds.into_err());
        }
        claims.push(Claim {
            offset: start,
            length,
        });
    }
    Ok(ReportSegment {
        report_serial,
        checkpoint_serial,
        upper_bound,
        lower_bound,
        claims,
    })
}

#[derive(Clone)]
struct ClaimOutOfBounds {
    offset: u64,
    length: u64,
    lower: u64,
    upper: u64,
}

impl ClaimOutOfBounds {
    fn into_err(self) -> DecodeError {
        DecodeError::ClaimOutOfBounds {
            offset: self.offset,
            length: self.length,
            lower: self.lower,
            upper: self.upper,
        }
    }
}

fn encode_extensions(exts: &[Extension], out: &mut BytesMut) {
    for e in exts {
        out.put_u8(e.tag);
        sdnv::encode_u64(e.value.len() as u64, out);
        out.put_slice(&e.value);
    }
}

fn extensions_len(exts: &[Extension]) -> usize {
    exts.iter()
        .map(|e| 1 + sdnv::encoded_len(e.value.len() as u64) + e.value.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn session() -> impl Strategy<Value = SessionId> {
        (any::<u64>(), any::<u64>())
            .prop_map(|(originator, number)| SessionId { originator, number })
    }

    fn extensions() -> impl Strategy<Value = Vec<Extension>> {
        proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|(tag, v)| {
                Extension {
                    tag,
                    value: Bytes::from(v),
                }
            }),
            0..4,
        )
    }

    fn reason() -> impl Strategy<Value = CancelReason> {
        any::<u8>().prop_map(CancelReason::from_code)
    }

    fn body() -> impl Strategy<Value = SegmentBody> {
        let data = (
            prop_oneof![
                Just(DataKind::Red),
                Just(DataKind::RedCheckpoint),
                Just(DataKind::RedCheckpointEorp),
                Just(DataKind::RedCheckpointEorpEob),
                Just(DataKind::Green),
                Just(DataKind::GreenEob),
            ],
            any::<u64>(),
            0..u64::MAX / 2,
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(kind, csid, offset, data, cs, rs)| {
                SegmentBody::Data(DataSegment {
                    kind,
                    client_service_id: csid,
                    offset,
                    data: Bytes::from(data),
                    checkpoint: kind.is_checkpoint().then_some(CheckpointInfo {
                        checkpoint_serial: cs,
                        report_serial: rs,
                    }),
                })
            });
        let report = (
            any::<u64>(),
            any::<u64>(),
            0..u64::MAX / 2,
            proptest::collection::vec((0..1000u64, 0..1000u64), 0..8),
        )
            .prop_map(|(rs, cs, lower, raw)| {
                let mut claims = Vec::new();
                let mut at = lower;
                for (gap, len) in raw {
                    claims.push(Claim {
                        offset: at + gap,
                        length: len,
                    });
                    at += gap + len;
                }
                SegmentBody::Report(ReportSegment {
                    report_serial: rs,
                    checkpoint_serial: cs,
                    upper_bound: at + 7,
                    lower_bound: lower,
                    claims,
                })
            });
        prop_oneof![
            data,
            report,
            any::<u64>().prop_map(|report_serial| SegmentBody::ReportAck { report_serial }),
            reason().prop_map(SegmentBody::CancelFromSender),
            reason().prop_map(SegmentBody::CancelFromReceiver),
            Just(SegmentBody::CancelAckToSender),
            Just(SegmentBody::CancelAckToReceiver),
        ]
    }

    fn segment() -> impl Strategy<Value = Segment> {
        (session(), extensions(), extensions(), body()).prop_map(|(session, h, t, body)| Segment {
            session,
            header_extensions: h,
            trailer_extensions: t,
            body,
        })
    }

    proptest! {
        #[test]
        fn round_trip(seg in segment()) {
            let b = seg.to_bytes();
            prop_assert_eq!(b.len(), seg.encoded_len());
            let back = Segment::decode(&b).unwrap();
            prop_assert_eq!(back, seg);
        }

        #[test]
        fn data_header_prefix_encodes_the_header_segment_encode_writes(
            session in session(),
            body in body(),
        ) {
            let SegmentBody::Data(d) = body else {
                return Ok(());
            };
            let seg = Segment {
                session,
                header_extensions: vec![],
                trailer_extensions: vec![],
                body: SegmentBody::Data(d.clone()),
            };
            let len = d.data.len() as u64;
            let prefix = DataHeaderPrefix::new(session, d.client_service_id);
            let mut header = BytesMut::new();
            prefix.encode(d.kind, d.offset, len, d.checkpoint, &mut header);
            // The whole segment's encoding (a separate path) is that header, then the data.
            let whole = seg.to_bytes();
            prop_assert_eq!(&whole[..header.len()], &header[..]);
            prop_assert_eq!(&whole[header.len()..], &d.data[..]);
            let overhead = data_segment_overhead(session, d.kind, d.client_service_id, d.offset, len, d.checkpoint);
            prop_assert_eq!(prefix.overhead(d.kind, d.offset, len, d.checkpoint), overhead);
            prop_assert_eq!(overhead, header.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let b = Bytes::from(b);
            let decoded = Segment::decode(&b);
            // Taking the datagram decodes the same, error or segment.
            prop_assert_eq!(
                &Segment::decode_owned(b.clone(), &DecodeLimits::default()),
                &decoded
            );
            if let Ok(seg) = decoded {
                // Whatever decodes must re-decode identically from its own encoding.
                prop_assert_eq!(Segment::decode(&seg.to_bytes()).unwrap(), seg);
            }
        }

        #[test]
        fn decode_owned_round_trips_with_extensions_on_both_sides(seg in segment()) {
            // A data segment's data is the datagram narrowed at both ends (trailer extensions
            // follow it), also when the datagram is a slice of a larger buffer, as a datagram
            // of a GRO buffer is.
            let mut buf = BytesMut::from(&b"before"[..]);
            buf.extend_from_slice(&seg.to_bytes());
            buf.extend_from_slice(b"after");
            let whole = buf.freeze();
            let datagram = whole.slice(6..whole.len() - 5);
            let back = Segment::decode_owned(datagram, &DecodeLimits::default()).unwrap();
            prop_assert_eq!(back, seg);
        }

        #[test]
        fn truncation_is_an_error(seg in segment(), cut in any::<prop::sample::Index>()) {
            let b = seg.to_bytes();
            let n = cut.index(b.len());
            // Every field is mandatory and every count explicit: no strict prefix is a segment.
            prop_assert!(Segment::decode(&b.slice(..n)).is_err());
        }
    }

    #[test]
    fn rejects_undefined_types_and_versions() {
        for t in [5u8, 6, 10, 11] {
            let b = Bytes::from(vec![t, 1, 1, 0]);
            assert_eq!(
                Segment::decode(&b),
                Err(DecodeError::UndefinedSegmentType(t))
            );
        }
        let b = Bytes::from(vec![0x2d, 1, 1, 0]);
        assert_eq!(Segment::decode(&b), Err(DecodeError::UnsupportedVersion(2)));
        assert_eq!(
            Segment::decode(&Bytes::new()),
            Err(DecodeError::Truncated {
                field: "control byte"
            })
        );
    }

    #[test]
    fn report_bounds_enforced() {
        // lower 60 > upper 50 (HDTN's unit-test values).
        let b = Bytes::from(vec![0x08, 1, 1, 0, 1, 1, 50, 60, 1, 0, 1]);
        assert_eq!(
            Segment::decode(&b),
            Err(DecodeError::ReportBoundsInverted {
                lower: 60,
                upper: 50
            })
        );
        // claim [10+5, 10+5+10) beyond upper 20.
        let b = Bytes::from(vec![0x08, 1, 1, 0, 1, 1, 20, 10, 1, 5, 10]);
        assert!(matches!(
            Segment::decode(&b),
            Err(DecodeError::ClaimOutOfBounds { .. })
        ));
        // claim count far beyond what the segment holds: rejected before allocating.
        let b = Bytes::from(vec![
            0x08, 1, 1, 0, 1, 1, 20, 10, 0x8f, 0xff, 0xff, 0x7f, 0, 1,
        ]);
        assert!(matches!(
            Segment::decode(&b),
            Err(DecodeError::TooManyClaims { .. })
        ));
        let limits = DecodeLimits {
            max_claims: 1,
            ..DecodeLimits::default()
        };
        let b = Bytes::from(vec![0x08, 1, 1, 0, 1, 1, 20, 0, 2, 0, 1, 2, 1]);
        assert!(Segment::decode(&b).is_ok());
        assert_eq!(
            Segment::decode_with_limits(&b, &limits),
            Err(DecodeError::TooManyClaims { count: 2, max: 1 })
        );
    }

    #[test]
    fn extension_and_trailing_checks() {
        // header extension claims 5 value octets, 1 present.
        let b = Bytes::from(vec![0x0d, 1, 1, 0x10, 0x44, 5, 0]);
        assert!(matches!(
            Segment::decode(&b),
            Err(DecodeError::ExtensionLength { length: 5, .. })
        ));
        let b = Bytes::from(vec![0x0d, 1, 1, 0, 0]);
        assert_eq!(Segment::decode(&b), Err(DecodeError::TrailingBytes(1)));
        let limits = DecodeLimits {
            max_extensions: 1,
            ..DecodeLimits::default()
        };
        let b = Bytes::from(vec![0x0d, 1, 1, 0x11, 1, 0, 2, 0]);
        assert!(Segment::decode(&b).is_ok());
        assert_eq!(
            Segment::decode_with_limits(&b, &limits),
            Err(DecodeError::TooManyExtensions { count: 2, max: 1 })
        );
    }

    #[test]
    fn data_overhead_matches_encoding() {
        let seg = Segment {
            session: SessionId {
                originator: 7,
                number: 1 << 40,
            },
            header_extensions: vec![],
            trailer_extensions: vec![],
            body: SegmentBody::Data(DataSegment {
                kind: DataKind::RedCheckpoint,
                client_service_id: 1,
                offset: 123_456,
                data: Bytes::from(vec![0u8; 1000]),
                checkpoint: Some(CheckpointInfo {
                    checkpoint_serial: 99,
                    report_serial: 0,
                }),
            }),
        };
        let SegmentBody::Data(d) = &seg.body else {
            unreachable!()
        };
        let oh = data_segment_overhead(seg.session, d.kind, 1, 123_456, 1000, d.checkpoint);
        assert_eq!(oh + 1000, seg.encoded_len());
    }
}
