//! TCPCLv4 wire codec: the contact header (RFC 9174 §4.2) and every session message (§4.6 SESS_INIT,
//! §5.1.1 KEEPALIVE, §5.1.2 MSG_REJECT, §5.2.2 XFER_SEGMENT, §5.2.3 XFER_ACK, §5.2.4 XFER_REFUSE,
//! §6.1 SESS_TERM), session and transfer extension items (§4.8, §5.2.5) including the Transfer
//! Length extension (§5.2.5.1).
//!
//! Decoding is incremental: [`Message::decode`] looks at a receive buffer and returns `Ok(None)`
//! until a whole message is present, then splits exactly that message off the buffer. Every length
//! field is checked against [`DecodeLimits`] *before* anything is buffered or allocated, and
//! segment data is a zero-copy [`Bytes`] view of the receive buffer. All integers are big-endian.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The four-octet magic that starts every contact header (§4.2): "dtn!".
pub const MAGIC: [u8; 4] = *b"dtn!";
/// The protocol version this codec speaks (§4.2).
pub const VERSION: u8 = 4;
/// Length of a contact header on the wire (§4.2).
pub const CONTACT_HEADER_LEN: usize = 6;
/// Contact header flag CAN_TLS (§4.2, Table 2).
pub const CONTACT_FLAG_CAN_TLS: u8 = 0x01;
/// Extension item flag CRITICAL (§4.8, §5.2.5).
pub const EXT_FLAG_CRITICAL: u8 = 0x01;
/// Transfer extension type of the Transfer Length extension (§5.2.5.1).
pub const EXT_TRANSFER_LENGTH: u16 = 0x0001;
/// XFER_SEGMENT / XFER_ACK flag END (§5.2.2, Table 5).
pub const XFER_FLAG_END: u8 = 0x01;
/// XFER_SEGMENT / XFER_ACK flag START (§5.2.2, Table 5).
pub const XFER_FLAG_START: u8 = 0x02;
/// SESS_TERM flag REPLY (§6.1, Table 8).
pub const SESS_TERM_FLAG_REPLY: u8 = 0x01;

/// Errors found while decoding bytes from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The contact header does not start with "dtn!" (§4.3: close the connection).
    #[error("contact header magic is not \"dtn!\"")]
    BadMagic,
    /// The message type octet is not one RFC 9174 defines (§5.1.2: MSG_REJECT "Message Type Unknown").
    #[error("unknown message type {0:#04x}")]
    UnknownMessageType(u8),
    /// An XFER_SEGMENT carries more data than our segment MRU (§4.7).
    #[error("segment data length {len} exceeds our segment MRU {limit}")]
    SegmentTooLong {
        /// Data length announced by the peer.
        len: u64,
        /// Our segment MRU.
        limit: u64,
    },
    /// An extension-items field is longer than we accept.
    #[error("extension items length {len} exceeds limit {limit}")]
    ExtensionsTooLong {
        /// Announced length.
        len: u64,
        /// Our limit.
        limit: u64,
    },
    /// An extension items field does not consist of whole items.
    #[error("malformed extension items")]
    MalformedExtensions,
    /// The SESS_INIT node ID is not UTF-8 (§4.6).
    #[error("node ID is not UTF-8")]
    NodeIdNotUtf8,
    /// A Transfer Length extension whose value is not exactly 8 octets (§5.2.5.1).
    #[error("Transfer Length extension with a value of {0} octets")]
    BadTransferLength(usize),
}

/// Bounds applied while decoding, so a peer cannot make us buffer more than we agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest XFER_SEGMENT data length accepted: our advertised segment MRU (§4.7).
    pub segment_mru: u64,
    /// Largest session or transfer extension items field accepted, in octets.
    pub max_extensions_len: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            segment_mru: 1 << 20,
            max_extensions_len: 64 * 1024,
        }
    }
}

impl DecodeLimits {
    /// The largest whole message these limits admit, in octets (bounds a receive buffer).
    pub fn max_message_len(&self) -> u64 {
        // XFER_SEGMENT: type, flags, transfer id, extension length, extensions, data length, data.
        1 + 1 + 8 + 4 + u64::from(self.max_extensions_len) + 8 + self.segment_mru
    }
}

/// A contact header (§4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactHeader {
    /// Protocol version (4 for RFC 9174).
    pub version: u8,
    /// Contact header flags (CAN_TLS = 0x01).
    pub flags: u8,
}

impl ContactHeader {
    /// Whether the CAN_TLS flag is set (§4.2).
    pub fn can_tls(&self) -> bool {
        self.flags & CONTACT_FLAG_CAN_TLS != 0
    }

    /// Appends the six header octets to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_slice(&MAGIC);
        buf.put_u8(self.version);
        buf.put_u8(self.flags);
    }

    /// Decodes a contact header from the front of `buf`; `Ok(None)` until six octets are present.
    /// Checks only the magic (§4.3); the version is left to the session to judge.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<ContactHeader>, Error> {
        let have = buf.len().min(MAGIC.len());
        if buf[..have] != MAGIC[..have] {
            return Err(Error::BadMagic);
        }
        if buf.len() < CONTACT_HEADER_LEN {
            return Ok(None);
        }
        buf.advance(4);
        let version = buf.get_u8();
        let flags = buf.get_u8();
        Ok(Some(ContactHeader { version, flags }))
    }
}

/// Message type codes (§5.1, Table 4 / IANA "TCPCLv4 Message Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// XFER_SEGMENT.
    XferSegment = 0x01,
    /// XFER_ACK.
    XferAck = 0x02,
    /// XFER_REFUSE.
    XferRefuse = 0x03,
    /// KEEPALIVE.
    Keepalive = 0x04,
    /// SESS_TERM.
    SessTerm = 0x05,
    /// MSG_REJECT.
    MsgReject = 0x06,
    /// SESS_INIT.
    SessInit = 0x07,
}

impl MessageType {
    /// Maps a type octet to a known type.
    pub fn from_u8(v: u8) -> Option<MessageType> {
        Some(match v {
            0x01 => MessageType::XferSegment,
            0x02 => MessageType::XferAck,
            0x03 => MessageType::XferRefuse,
            0x04 => MessageType::Keepalive,
            0x05 => MessageType::SessTerm,
            0x06 => MessageType::MsgReject,
            0x07 => MessageType::SessInit,
            _ => return None,
        })
    }
}

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $val:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $var,)*
            /// A code this implementation does not know (kept for round trips and logging).
            Other(u8),
        }
        impl From<u8> for $name {
            fn from(v: u8) -> Self {
                match v { $($val => $name::$var,)* other => $name::Other(other) }
            }
        }
        impl From<$name> for u8 {
            fn from(v: $name) -> u8 {
                match v { $($name::$var => $val,)* $name::Other(o) => o }
            }
        }
    };
}

code_enum!(
    /// SESS_TERM reason codes (§6.1, Table 9).
    SessTermReason {
        /// Unknown.
        Unknown = 0x00,
        /// Idle timeout (§5.1.1).
        IdleTimeout = 0x01,
        /// Version mismatch (§4.3).
        VersionMismatch = 0x02,
        /// Entity busy.
        Busy = 0x03,
        /// Contact failure (§4.7, §4.8).
        ContactFailure = 0x04,
        /// Resource exhaustion.
        ResourceExhaustion = 0x05,
    }
);

code_enum!(
    /// XFER_REFUSE reason codes (§5.2.4, Table 7).
    RefuseReason {
        /// Unknown.
        Unknown = 0x00,
        /// The receiver already has the complete bundle.
        Completed = 0x01,
        /// Receiver's resources exhausted.
        NoResources = 0x02,
        /// Receiver has encountered a problem requiring the bundle to be retransmitted.
        Retransmit = 0x03,
        /// Some issue with the bundle data or the transfer extension data.
        NotAcceptable = 0x04,
        /// A failure processing the transfer extension items.
        ExtensionFailure = 0x05,
        /// The receiving entity is in the process of terminating the session.
        SessionTerminating = 0x06,
    }
);

code_enum!(
    /// MSG_REJECT reason codes (§5.1.2, Table 6).
    RejectReason {
        /// The message type is unknown.
        TypeUnknown = 0x01,
        /// The message is known but not supported.
        Unsupported = 0x02,
        /// The message is known but unexpected in this state.
        Unexpected = 0x03,
    }
);

/// A session extension item (§4.8) or transfer extension item (§5.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionItem {
    /// Item flags (CRITICAL = 0x01).
    pub flags: u8,
    /// Item type.
    pub item_type: u16,
    /// Item value.
    pub value: Bytes,
}

impl ExtensionItem {
    /// Whether the CRITICAL flag is set.
    pub fn critical(&self) -> bool {
        self.flags & EXT_FLAG_CRITICAL != 0
    }

    /// The critical Transfer Length extension carrying `len` (§5.2.5.1).
    pub fn transfer_length(len: u64) -> ExtensionItem {
        ExtensionItem {
            flags: EXT_FLAG_CRITICAL,
            item_type: EXT_TRANSFER_LENGTH,
            value: Bytes::copy_from_slice(&len.to_be_bytes()),
        }
    }

    fn encoded_len(&self) -> usize {
        5 + self.value.len()
    }

    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.flags);
        buf.put_u16(self.item_type);
        buf.put_u16(self.value.len() as u16);
        buf.put_slice(&self.value);
    }
}

fn items_len(items: &[ExtensionItem]) -> usize {
    items.iter().map(ExtensionItem::encoded_len).sum()
}

fn decode_items(mut raw: Bytes) -> Result<Vec<ExtensionItem>, Error> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        if raw.len() < 5 {
            return Err(Error::MalformedExtensions);
        }
        let flags = raw.get_u8();
        let item_type = raw.get_u16();
        let len = raw.get_u16() as usize;
        if raw.len() < len {
            return Err(Error::MalformedExtensions);
        }
        out.push(ExtensionItem {
            flags,
            item_type,
            value: raw.split_to(len),
        });
    }
    Ok(out)
}

/// SESS_INIT (§4.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessInit {
    /// Keepalive interval in seconds (0 disables keepalives).
    pub keepalive: u16,
    /// Segment MRU: the largest XFER_SEGMENT data the sender of this message accepts.
    pub segment_mru: u64,
    /// Transfer MRU: the largest whole transfer the sender of this message accepts.
    pub transfer_mru: u64,
    /// The sender's node ID (a URI, UTF-8).
    pub node_id: String,
    /// Session extension items.
    pub extensions: Vec<ExtensionItem>,
}

/// SESS_TERM (§6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessTerm {
    /// Flags (REPLY = 0x01).
    pub flags: u8,
    /// Reason for ending the session.
    pub reason: SessTermReason,
}

impl SessTerm {
    /// Whether this acknowledges a SESS_TERM from the peer.
    pub fn is_reply(&self) -> bool {
        self.flags & SESS_TERM_FLAG_REPLY != 0
    }
}

/// XFER_SEGMENT (§5.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XferSegment {
    /// Flags (START = 0x02, END = 0x01).
    pub flags: u8,
    /// Transfer ID.
    pub transfer_id: u64,
    /// Transfer extension items; present on the wire only when START is set.
    pub extensions: Vec<ExtensionItem>,
    /// Segment data (a view of the receive buffer).
    pub data: Bytes,
}

impl XferSegment {
    /// Whether START is set.
    pub fn is_start(&self) -> bool {
        self.flags & XFER_FLAG_START != 0
    }
    /// Whether END is set.
    pub fn is_end(&self) -> bool {
        self.flags & XFER_FLAG_END != 0
    }

    /// Encodes everything except the data, so the data can be written without copying.
    pub fn encode_header(&self, buf: &mut BytesMut) {
        buf.put_u8(MessageType::XferSegment as u8);
        buf.put_u8(self.flags);
        buf.put_u64(self.transfer_id);
        if self.is_start() {
            buf.put_u32(items_len(&self.extensions) as u32);
            for item in &self.extensions {
                item.encode(buf);
            }
        }
        buf.put_u64(self.data.len() as u64);
    }

    /// The value of a Transfer Length extension, if present (§5.2.5.1).
    pub fn transfer_length(&self) -> Result<Option<u64>, Error> {
        match self
            .extensions
            .iter()
            .find(|i| i.item_type == EXT_TRANSFER_LENGTH)
        {
            None => Ok(None),
            Some(item) => {
                let arr: [u8; 8] = item
                    .value
                    .as_ref()
                    .try_into()
                    .map_err(|_| Error::BadTransferLength(item.value.len()))?;
                Ok(Some(u64::from_be_bytes(arr)))
            }
        }
    }
}

/// XFER_ACK (§5.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XferAck {
    /// Flags, copied from the acknowledged segment.
    pub flags: u8,
    /// Transfer ID.
    pub transfer_id: u64,
    /// Cumulative number of data octets received in this transfer.
    pub acknowledged_length: u64,
}

/// XFER_REFUSE (§5.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XferRefuse {
    /// Why the transfer is refused.
    pub reason: RefuseReason,
    /// Transfer ID.
    pub transfer_id: u64,
}

/// MSG_REJECT (§5.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgReject {
    /// Why the message is rejected.
    pub reason: RejectReason,
    /// The message type octet of the rejected message.
    pub rejected_header: u8,
}

/// Any TCPCLv4 message after the contact header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// SESS_INIT (§4.6).
    SessInit(SessInit),
    /// SESS_TERM (§6.1).
    SessTerm(SessTerm),
    /// XFER_SEGMENT (§5.2.2).
    XferSegment(XferSegment),
    /// XFER_ACK (§5.2.3).
    XferAck(XferAck),
    /// XFER_REFUSE (§5.2.4).
    XferRefuse(XferRefuse),
    /// KEEPALIVE (§5.1.1).
    Keepalive,
    /// MSG_REJECT (§5.1.2).
    MsgReject(MsgReject),
}

/// Reads big-endian integers from a slice without consuming the buffer; `None` = need more bytes.
struct Peek<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Peek<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_be_bytes(s.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|s| u64::from_be_bytes(s.try_into().unwrap_or([0; 8])))
    }
}

/// Returns `Ok(None)` (need more bytes) when the peeked field is not yet in the buffer.
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

impl Message {
    /// The message type of this message.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::SessInit(_) => MessageType::SessInit,
            Message::SessTerm(_) => MessageType::SessTerm,
            Message::XferSegment(_) => MessageType::XferSegment,
            Message::XferAck(_) => MessageType::XferAck,
            Message::XferRefuse(_) => MessageType::XferRefuse,
            Message::Keepalive => MessageType::Keepalive,
            Message::MsgReject(_) => MessageType::MsgReject,
        }
    }

    /// Appends the whole message to `buf` (segment data is copied; see
    /// [`XferSegment::encode_header`] for the zero-copy path).
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Message::SessInit(m) => {
                buf.put_u8(MessageType::SessInit as u8);
                buf.put_u16(m.keepalive);
                buf.put_u64(m.segment_mru);
                buf.put_u64(m.transfer_mru);
                buf.put_u16(m.node_id.len() as u16);
                buf.put_slice(m.node_id.as_bytes());
                buf.put_u32(items_len(&m.extensions) as u32);
                for item in &m.extensions {
                    item.encode(buf);
                }
            }
            Message::SessTerm(m) => {
                buf.put_u8(MessageType::SessTerm as u8);
                buf.put_u8(m.flags);
                buf.put_u8(m.reason.into());
            }
            Message::XferSegment(m) => {
                m.encode_header(buf);
                buf.put_slice(&m.data);
            }
            Message::XferAck(m) => {
                buf.put_u8(MessageType::XferAck as u8);
                buf.put_u8(m.flags);
                buf.put_u64(m.transfer_id);
                buf.put_u64(m.acknowledged_length);
            }
            Message::XferRefuse(m) => {
                buf.put_u8(MessageType::XferRefuse as u8);
                buf.put_u8(m.reason.into());
                buf.put_u64(m.transfer_id);
            }
            Message::Keepalive => buf.put_u8(MessageType::Keepalive as u8),
            Message::MsgReject(m) => {
                buf.put_u8(MessageType::MsgReject as u8);
                buf.put_u8(m.reason.into());
                buf.put_u8(m.rejected_header);
            }
        }
    }

    /// Encodes the message into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }

    /// Decodes one message from the front of `buf`. Returns `Ok(None)` and leaves `buf` untouched
    /// when more bytes are needed; on success exactly the message's bytes are removed. Lengths are
    /// checked against `limits` as soon as they are read, before waiting for the data they announce.
    pub fn decode(buf: &mut BytesMut, limits: &DecodeLimits) -> Result<Option<Message>, Error> {
        let mut p = Peek {
            b: &buf[..],
            pos: 0,
        };
        let ty = need!(p.u8());
        let ty = MessageType::from_u8(ty).ok_or(Error::UnknownMessageType(ty))?;
        // Offsets of variable parts within the message, resolved once the whole message is present.
        let msg = match ty {
            MessageType::Keepalive => {
                buf.advance(1);
                return Ok(Some(Message::Keepalive));
            }
            MessageType::SessTerm => {
                let flags = need!(p.u8());
                let reason = need!(p.u8()).into();
                Message::SessTerm(SessTerm { flags, reason })
            }
            MessageType::MsgReject => {
                let reason = need!(p.u8()).into();
                let rejected_header = need!(p.u8());
                Message::MsgReject(MsgReject {
                    reason,
                    rejected_header,
                })
            }
            MessageType::XferRefuse => {
                let reason = need!(p.u8()).into();
                let transfer_id = need!(p.u64());
                Message::XferRefuse(XferRefuse {
                    reason,
                    transfer_id,
                })
            }
            MessageType::XferAck => {
                let flags = need!(p.u8());
                let transfer_id = need!(p.u64());
                let acknowledged_length = need!(p.u64());
                Message::XferAck(XferAck {
                    flags,
                    transfer_id,
                    acknowledged_length,
                })
            }
            MessageType::SessInit => {
                let keepalive = need!(p.u16());
                let segment_mru = need!(p.u64());
                let transfer_mru = need!(p.u64());
                let id_len = need!(p.u16()) as usize;
                let id_start = p.pos;
                need!(p.take(id_len));
                let ext_len = need!(p.u32());
                if ext_len > limits.max_extensions_len {
                    return Err(Error::ExtensionsTooLong {
                        len: ext_len.into(),
                        limit: limits.max_extensions_len.into(),
                    });
                }
                let ext_start = p.pos;
                need!(p.take(ext_len as usize));
                let total = p.pos;
                let whole = buf.split_to(total).freeze();
                let node_id = std::str::from_utf8(&whole[id_start..id_start + id_len])
                    .map_err(|_| Error::NodeIdNotUtf8)?
                    .to_owned();
                let extensions = decode_items(whole.slice(ext_start..total))?;
                return Ok(Some(Message::SessInit(SessInit {
                    keepalive,
                    segment_mru,
                    transfer_mru,
                    node_id,
                    extensions,
                })));
            }
            MessageType::XferSegment => {
                let flags = need!(p.u8());
                let transfer_id = need!(p.u64());
                let mut ext = 0..0;
                if flags & XFER_FLAG_START != 0 {
                    let ext_len = need!(p.u32());
                    if ext_len > limits.max_extensions_len {
                        return Err(Error::ExtensionsTooLong {
                            len: ext_len.into(),
                            limit: limits.max_extensions_len.into(),
                        });
                    }
                    let start = p.pos;
                    need!(p.take(ext_len as usize));
                    ext = start..p.pos;
                }
                let data_len = need!(p.u64());
                // §4.7: a segment longer than our segment MRU is refused before it is buffered.
                if data_len > limits.segment_mru {
                    return Err(Error::SegmentTooLong {
                        len: data_len,
                        limit: limits.segment_mru,
                    });
                }
                let data_start = p.pos;
                need!(p.take(data_len as usize));
                let whole = buf.split_to(p.pos).freeze();
                let extensions = decode_items(whole.slice(ext))?;
                return Ok(Some(Message::XferSegment(XferSegment {
                    flags,
                    transfer_id,
                    extensions,
                    data: whole.slice(data_start..),
                })));
            }
        };
        buf.advance(p.pos);
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn items() -> impl Strategy<Value = Vec<ExtensionItem>> {
        prop::collection::vec(
            (
                any::<u8>(),
                any::<u16>(),
                prop::collection::vec(any::<u8>(), 0..20),
            )
                .prop_map(|(flags, item_type, v)| ExtensionItem {
                    flags,
                    item_type,
                    value: v.into(),
                }),
            0..4,
        )
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                any::<u16>(),
                any::<u64>(),
                any::<u64>(),
                "[a-z:/0-9.]{0,40}",
                items()
            )
                .prop_map(
                    |(keepalive, segment_mru, transfer_mru, node_id, extensions)| {
                        Message::SessInit(SessInit {
                            keepalive,
                            segment_mru,
                            transfer_mru,
                            node_id,
                            extensions,
                        })
                    }
                ),
            (any::<u8>(), any::<u8>()).prop_map(|(flags, r)| Message::SessTerm(SessTerm {
                flags,
                reason: r.into()
            })),
            (
                any::<u8>(),
                any::<u64>(),
                items(),
                prop::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(flags, transfer_id, extensions, data)| {
                    let extensions = if flags & XFER_FLAG_START != 0 {
                        extensions
                    } else {
                        Vec::new()
                    };
                    Message::XferSegment(XferSegment {
                        flags,
                        transfer_id,
                        extensions,
                        data: data.into(),
                    })
                }),
            (any::<u8>(), any::<u64>(), any::<u64>()).prop_map(|(flags, transfer_id, l)| {
                Message::XferAck(XferAck {
                    flags,
                    transfer_id,
                    acknowledged_length: l,
                })
            }),
            (any::<u8>(), any::<u64>()).prop_map(|(r, transfer_id)| Message::XferRefuse(
                XferRefuse {
                    reason: r.into(),
                    transfer_id
                }
            )),
            Just(Message::Keepalive),
            (any::<u8>(), any::<u8>()).prop_map(|(r, h)| Message::MsgReject(MsgReject {
                reason: r.into(),
                rejected_header: h
            })),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(m in message()) {
            let bytes = m.to_bytes();
            let mut buf = BytesMut::from(&bytes[..]);
            let limits = DecodeLimits::default();
            let got = Message::decode(&mut buf, &limits).unwrap().unwrap();
            prop_assert_eq!(&got, &m);
            prop_assert!(buf.is_empty());
            // Every strict prefix asks for more bytes and leaves the buffer untouched.
            for cut in [0, bytes.len() / 2, bytes.len().saturating_sub(1)] {
                if cut < bytes.len() {
                    let mut part = BytesMut::from(&bytes[..cut]);
                    prop_assert_eq!(Message::decode(&mut part, &limits).unwrap(), None);
                    prop_assert_eq!(part.len(), cut);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let limits = DecodeLimits { segment_mru: 64, max_extensions_len: 64 };
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..200 {
                match Message::decode(&mut buf, &limits) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let mut buf = BytesMut::from(&data[..]);
            let _ = ContactHeader::decode(&mut buf);
        }

        #[test]
        fn contact_header_round_trip(version in any::<u8>(), flags in any::<u8>()) {
            let mut buf = BytesMut::new();
            ContactHeader { version, flags }.encode(&mut buf);
            prop_assert_eq!(ContactHeader::decode(&mut buf).unwrap(), Some(ContactHeader { version, flags }));
        }
    }

    #[test]
    fn oversized_segment_is_refused_before_buffering() {
        let limits = DecodeLimits {
            segment_mru: 100,
            max_extensions_len: 16,
        };
        let mut buf = BytesMut::new();
        buf.put_u8(1);
        buf.put_u8(XFER_FLAG_END);
        buf.put_u64(7);
        buf.put_u64(101); // no data follows: the length alone is enough to refuse
        assert_eq!(
            Message::decode(&mut buf, &limits),
            Err(Error::SegmentTooLong {
                len: 101,
                limit: 100
            })
        );
        let mut buf = BytesMut::new();
        buf.put_u8(1);
        buf.put_u8(XFER_FLAG_START);
        buf.put_u64(7);
        buf.put_u32(u32::MAX);
        assert!(matches!(
            Message::decode(&mut buf, &limits),
            Err(Error::ExtensionsTooLong { .. })
        ));
    }

    #[test]
    fn bad_magic_detected_early() {
        let mut buf = BytesMut::from(&b"dtx"[..]);
        assert_eq!(ContactHeader::decode(&mut buf), Err(Error::BadMagic));
        let mut buf = BytesMut::from(&b"dt"[..]);
        assert_eq!(ContactHeader::decode(&mut buf), Ok(None));
    }
}
