//! The agent protocol's wire format: length-prefixed CBOR frames (RFC 8949) between an
//! application and its node. Bundle fields follow RFC 9171 (§4.2.3 status-report request flags,
//! §4.2.6 DTN time, §5.1 bundle identity); the protocol itself is this project's own, in the
//! spirit of ION's `bp_send`/`bp_receive` and dtn7-rs's WebSocket API, and is specified in
//! `docs/agent-protocol.md`.
//!
//! # Framing
//! Each frame is a 4-byte big-endian length `L` followed by exactly `L` bytes holding ONE CBOR
//! item: a definite-length array `[version, type, ...fields]`. `version` is
//! [`PROTOCOL_VERSION`] in every frame (a frame with another version is answered with an
//! `unsupported_version` error and the connection is closed). A receiver checks `L` against its
//! frame limit before it allocates anything; a frame over the limit, or one that does not decode,
//! closes that connection only. A decoder ignores array elements after the fields it knows, so a
//! later minor revision may append fields.
//!
//! # Messages
//! | type | name | direction | fields after `[version, type]` |
//! | --- | --- | --- | --- |
//! | 1 | register | app → node | `id, endpoint: text` |
//! | 2 | unregister | app → node | `id, registration: uint` |
//! | 3 | send | app → node | `id, destination: text, lifetime_ms: uint, priority: uint, source: text/null, report_to: text/null, requests: uint, no_fragment: bool, payload: bytes` |
//! | 4 | ack | app → node | `id, registration: uint, token: uint` |
//! | 5 | info | app → node | `id` |
//! | 6 | stats | app → node | `id` |
//! | 32 | ok | node → app | `id` |
//! | 33 | registered | node → app | `id, registration: uint` |
//! | 34 | sent | node → app | `id, bundle_id` |
//! | 35 | info_reply | node → app | `id, node_id: text, version: text, neighbours: [text], registrations: [text]` |
//! | 36 | stats_reply | node → app | `id, [[name, help, kind, {label: value}, value: float]...]` |
//! | 37 | error | node → app | `id, kind: uint, message: text, detail` |
//! | 64 | delivery | node → app (pushed) | `registration, token, bundle_id, destination, report_to, lifetime_ms, payload: bytes` |
//!
//! `id` is a request id chosen by the client and echoed in the response; responses may come in
//! any order and pushed deliveries may arrive between a request and its response. The server
//! uses id 0 for an error about the connection itself (bad frame, frame too large, busy,
//! shutting down), after which it closes the connection; clients should start their ids at 1.
//! `bundle_id` is `[source, creation_ms, sequence]` or, for a fragment,
//! `[source, creation_ms, sequence, fragment_offset, total_adu_length]` (RFC 9171 §5.1).
//! `priority` is 0 bulk, 1 normal, 2 expedited. `requests` is a bit set: 1 received,
//! 2 forwarded, 4 delivered, 8 deleted (RFC 9171 §4.2.3 status-report requests); other bits are
//! ignored. Metric `kind` is 0 counter, 1 gauge. Error kinds and details are listed at
//! [`WireError`]. Payloads are definite-length byte strings (zero copy: the decoded payload is a
//! slice of the frame).

use bytes::{Buf, Bytes, BytesMut};
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::api::{
    AgentError, BundleIdent, Delivery, DeliveryToken, Metric, MetricKind, NodeInfo, NodeStats,
    Priority, RegistrationId, SendAccepted, SendRequest, StatusRequests,
};

/// The protocol version carried in every frame.
pub const PROTOCOL_VERSION: u64 = 1;

/// Bytes of the length prefix in front of each frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// Room for a frame's fields besides the payload: a frame limit is a bundle size plus this.
pub const FRAME_HEADROOM: usize = 64 * 1024;

/// The default frame limit: a 64 MiB payload plus [`FRAME_HEADROOM`].
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024 + FRAME_HEADROOM;

/// A client-chosen request id, echoed in the response (0 is reserved for connection errors).
pub type RequestId = u64;

/// Message type codes (the second element of every frame array).
mod ty {
    pub const REGISTER: u64 = 1;
    pub const UNREGISTER: u64 = 2;
    pub const SEND: u64 = 3;
    pub const ACK: u64 = 4;
    pub const INFO: u64 = 5;
    pub const STATS: u64 = 6;
    pub const OK: u64 = 32;
    pub const REGISTERED: u64 = 33;
    pub const SENT: u64 = 34;
    pub const INFO_REPLY: u64 = 35;
    pub const STATS_REPLY: u64 = 36;
    pub const ERROR: u64 = 37;
    pub const DELIVERY: u64 = 64;
}

/// Status-report request bits of the `send` message's `requests` field.
mod req_bits {
    pub const RECEIVED: u64 = 1;
    pub const FORWARDED: u64 = 2;
    pub const DELIVERED: u64 = 4;
    pub const DELETED: u64 = 8;
}

/// One agent protocol frame, decoded.
#[derive(Clone, Debug)]
pub enum Message {
    /// A request from an application.
    Request {
        /// Echoed in the response.
        id: RequestId,
        /// What is asked.
        request: Request,
    },
    /// The node's answer to request `id` (or, with id 0, an error about the connection).
    Response {
        /// The request's id.
        id: RequestId,
        /// The answer.
        response: Response,
    },
    /// A bundle pushed to a registered application.
    Delivery {
        /// The registration it was delivered to (use it in the ack).
        registration: RegistrationId,
        /// The bundle.
        delivery: Delivery,
    },
}

/// Requests an application makes.
#[derive(Clone, Debug)]
pub enum Request {
    /// Register an endpoint; deliveries are pushed on this connection.
    Register {
        /// Endpoint EID in text form.
        endpoint: String,
    },
    /// End a registration of this connection.
    Unregister {
        /// The registration.
        registration: RegistrationId,
    },
    /// Send one bundle.
    Send(SendRequest),
    /// Acknowledge a delivery: the bundle may leave the node's store.
    Ack {
        /// The registration the delivery came on.
        registration: RegistrationId,
        /// The delivery's token.
        token: DeliveryToken,
    },
    /// Ask for node information.
    Info,
    /// Ask for all metrics.
    Stats,
}

/// Answers of the node.
#[derive(Clone, Debug)]
pub enum Response {
    /// Done (unregister, ack).
    Ok,
    /// The new registration's id.
    Registered(RegistrationId),
    /// The bundle is accepted and stored.
    Sent(SendAccepted),
    /// Node information.
    Info(NodeInfo),
    /// Metrics.
    Stats(NodeStats),
    /// The request (or, with id 0, the connection) was refused.
    Error(WireError),
}

/// An error carried by an `error` frame.
///
/// | kind | meaning | detail |
/// | --- | --- | --- |
/// | 1 | invalid request | text |
/// | 2 | store full | text |
/// | 3 | bundle too large | `[size, limit]` |
/// | 4 | endpoint already registered | endpoint text |
/// | 5 | unknown registration | registration uint |
/// | 6 | storage error | text |
/// | 7 | node shutting down | null |
/// | 16 | bad frame (does not decode) | null |
/// | 17 | frame too large | null |
/// | 18 | unsupported protocol version | null |
/// | 19 | busy: too many clients | null |
/// | 20 | unexpected message (e.g. a response sent to the node) | null |
///
/// `message` is always a human-readable sentence; a kind a receiver does not know is kept as
/// [`ProtocolErrorKind::Unknown`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The node core refused the request.
    Agent(AgentError),
    /// The agent server refused a frame or the connection.
    Protocol {
        /// What went wrong.
        kind: ProtocolErrorKind,
        /// A human-readable sentence.
        message: String,
    },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Agent(e) => e.fmt(f),
            WireError::Protocol { message, .. } => f.write_str(message),
        }
    }
}

/// Connection-level error kinds of the agent server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolErrorKind {
    /// A frame did not decode.
    BadFrame,
    /// A frame's length is over the receiver's limit.
    FrameTooLarge,
    /// A frame's version is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The server has its maximum number of clients.
    Busy,
    /// A message that the server does not accept (e.g. a response).
    UnexpectedMessage,
    /// A kind this implementation does not know (from a later revision).
    Unknown(u64),
}

impl ProtocolErrorKind {
    fn code(self) -> u64 {
        match self {
            ProtocolErrorKind::BadFrame => 16,
            ProtocolErrorKind::FrameTooLarge => 17,
            ProtocolErrorKind::UnsupportedVersion => 18,
            ProtocolErrorKind::Busy => 19,
            ProtocolErrorKind::UnexpectedMessage => 20,
            ProtocolErrorKind::Unknown(c) => c,
        }
    }

    fn from_code(code: u64) -> Self {
        match code {
            16 => ProtocolErrorKind::BadFrame,
            17 => ProtocolErrorKind::FrameTooLarge,
            18 => ProtocolErrorKind::UnsupportedVersion,
            19 => ProtocolErrorKind::Busy,
            20 => ProtocolErrorKind::UnexpectedMessage,
            c => ProtocolErrorKind::Unknown(c),
        }
    }
}

/// Why a frame could not be read, encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The frame's length prefix is over the limit (checked before allocating).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame carries another protocol version.
    #[error("unsupported agent protocol version {0} (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u64),
    /// The frame's message type is unknown.
    #[error("unknown message type {0}")]
    UnknownType(u64),
    /// The frame is not valid CBOR of the expected shape.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A message arrived where it makes no sense (e.g. an unrequested response).
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// An I/O error while reading or writing frames.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<minicbor::decode::Error> for ProtoError {
    fn from(e: minicbor::decode::Error) -> Self {
        ProtoError::Malformed(e.to_string())
    }
}

fn malformed(what: &str) -> ProtoError {
    ProtoError::Malformed(what.to_string())
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// An encoded frame: the length prefix and fields in `head`, then the payload bytes (the last
/// field of `send` and `delivery`, written without copying).
#[derive(Clone, Debug)]
pub struct EncodedFrame {
    /// Length prefix and every byte before the payload's contents.
    pub head: Vec<u8>,
    /// The payload's contents (empty for messages without a payload).
    pub payload: Bytes,
}

impl EncodedFrame {
    /// Total bytes on the wire, length prefix included.
    pub fn wire_len(&self) -> usize {
        self.head.len() + self.payload.len()
    }

    /// The frame's body length (the value of the length prefix).
    pub fn body_len(&self) -> usize {
        self.wire_len() - FRAME_HEADER_LEN
    }

    /// The whole frame in one buffer (copies the payload; for tests and small frames).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.wire_len());
        v.extend_from_slice(&self.head);
        v.extend_from_slice(&self.payload);
        v
    }

    /// Write the frame (the payload is written from its own buffer, not copied).
    pub async fn write_to<W: AsyncWrite + Unpin + ?Sized>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.head).await?;
        if !self.payload.is_empty() {
            w.write_all(&self.payload).await?;
        }
        Ok(())
    }
}

type Enc = Encoder<Vec<u8>>;
type EncResult = Result<(), minicbor::encode::Error<std::convert::Infallible>>;

fn opt_str(e: &mut Enc, s: Option<&str>) -> EncResult {
    match s {
        Some(s) => e.str(s)?,
        None => e.null()?,
    };
    Ok(())
}

fn encode_ident(e: &mut Enc, id: &BundleIdent) -> EncResult {
    match id.fragment {
        None => {
            e.array(3)?
                .str(&id.source)?
                .u64(id.creation_ms)?
                .u64(id.sequence)?;
        }
        Some((off, total)) => {
            e.array(5)?
                .str(&id.source)?
                .u64(id.creation_ms)?
                .u64(id.sequence)?
                .u64(off)?
                .u64(total)?;
        }
    }
    Ok(())
}

fn priority_code(p: Priority) -> u64 {
    match p {
        Priority::Bulk => 0,
        Priority::Normal => 1,
        Priority::Expedited => 2,
    }
}

fn request_bits(r: StatusRequests) -> u64 {
    let mut bits = 0;
    if r.received {
        bits |= req_bits::RECEIVED;
    }
    if r.forwarded {
        bits |= req_bits::FORWARDED;
    }
    if r.delivered {
        bits |= req_bits::DELIVERED;
    }
    if r.deleted {
        bits |= req_bits::DELETED;
    }
    bits
}

fn encode_error(e: &mut Enc, err: &WireError) -> EncResult {
    let message = err.to_string();
    match err {
        WireError::Agent(a) => {
            let code = match a {
                AgentError::Invalid(_) => 1,
                AgentError::StoreFull(_) => 2,
                AgentError::TooLarge { .. } => 3,
                AgentError::AlreadyRegistered(_) => 4,
                AgentError::UnknownRegistration(_) => 5,
                AgentError::Storage(_) => 6,
                AgentError::ShuttingDown => 7,
            };
            e.u64(code)?.str(&message)?;
            match a {
                AgentError::Invalid(s)
                | AgentError::StoreFull(s)
                | AgentError::AlreadyRegistered(s)
                | AgentError::Storage(s) => e.str(s)?,
                AgentError::TooLarge { size, limit } => e.array(2)?.u64(*size)?.u64(*limit)?,
                AgentError::UnknownRegistration(r) => e.u64(*r)?,
                AgentError::ShuttingDown => e.null()?,
            };
        }
        WireError::Protocol { kind, .. } => {
            e.u64(kind.code())?.str(&message)?.null()?;
        }
    }
    Ok(())
}

impl Message {
    /// Encode the message as one frame. Fails only when the frame would exceed the 4-byte
    /// length prefix (a payload of 4 GiB or more).
    pub fn encode(&self) -> Result<EncodedFrame, ProtoError> {
        let mut e = Encoder::new(vec![0u8; FRAME_HEADER_LEN]);
        let payload = self
            .encode_fields(&mut e)
            .map_err(|err| ProtoError::Malformed(format!("cannot encode: {err}")))?;
        let mut head = e.into_writer();
        let body = head.len() - FRAME_HEADER_LEN + payload.len();
        let len = u32::try_from(body).map_err(|_| ProtoError::FrameTooLarge {
            len: body,
            max: u32::MAX as usize,
        })?;
        head[..FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        Ok(EncodedFrame { head, payload })
    }

    /// Encode everything but the payload's contents; returns the payload.
    fn encode_fields(
        &self,
        e: &mut Enc,
    ) -> Result<Bytes, minicbor::encode::Error<std::convert::Infallible>> {
        let v = PROTOCOL_VERSION;
        match self {
            Message::Request { id, request } => match request {
                Request::Register { endpoint } => {
                    e.array(4)?
                        .u64(v)?
                        .u64(ty::REGISTER)?
                        .u64(*id)?
                        .str(endpoint)?;
                }
                Request::Unregister { registration } => {
                    e.array(4)?
                        .u64(v)?
                        .u64(ty::UNREGISTER)?
                        .u64(*id)?
                        .u64(*registration)?;
                }
                Request::Send(r) => {
                    e.array(11)?
                        .u64(v)?
                        .u64(ty::SEND)?
                        .u64(*id)?
                        .str(&r.destination)?
                        .u64(r.lifetime_ms)?
                        .u64(priority_code(r.priority))?;
                    opt_str(e, r.source.as_deref())?;
                    opt_str(e, r.report_to.as_deref())?;
                    e.u64(request_bits(r.requests))?
                        .bool(r.no_fragment)?
                        .bytes_len(r.payload.len() as u64)?;
                    return Ok(r.payload.clone());
                }
                Request::Ack {
                    registration,
                    token,
                } => {
                    e.array(5)?
                        .u64(v)?
                        .u64(ty::ACK)?
                        .u64(*id)?
                        .u64(*registration)?
                        .u64(*token)?;
                }
                Request::Info => {
                    e.array(3)?.u64(v)?.u64(ty::INFO)?.u64(*id)?;
                }
                Request::Stats => {
                    e.array(3)?.u64(v)?.u64(ty::STATS)?.u64(*id)?;
                }
            },
            Message::Response { id, response } => {
                let (t, n) = match response {
                    Response::Ok => (ty::OK, 3),
                    Response::Registered(_) => (ty::REGISTERED, 4),
                    Response::Sent(_) => (ty::SENT, 4),
                    Response::Info(_) => (ty::INFO_REPLY, 7),
                    Response::Stats(_) => (ty::STATS_REPLY, 4),
                    Response::Error(_) => (ty::ERROR, 6),
                };
                e.array(n)?.u64(v)?.u64(t)?.u64(*id)?;
                match response {
                    Response::Ok => {}
                    Response::Registered(r) => {
                        e.u64(*r)?;
                    }
                    Response::Sent(s) => encode_ident(e, &s.id)?,
                    Response::Info(i) => {
                        e.str(&i.node_id)?
                            .str(&i.version)?
                            .array(i.neighbours.len() as u64)?;
                        for n in &i.neighbours {
                            e.str(n)?;
                        }
                        e.array(i.registrations.len() as u64)?;
                        for r in &i.registrations {
                            e.str(r)?;
                        }
                    }
                    Response::Stats(s) => {
                        e.array(s.metrics.len() as u64)?;
                        for m in &s.metrics {
                            let kind = match m.kind {
                                MetricKind::Counter => 0,
                                MetricKind::Gauge => 1,
                            };
                            e.array(5)?
                                .str(&m.name)?
                                .str(&m.help)?
                                .u64(kind)?
                                .map(m.labels.len() as u64)?;
                            for (k, v) in &m.labels {
                                e.str(k)?.str(v)?;
                            }
                            e.f64(m.value)?;
                        }
                    }
                    Response::Error(err) => encode_error(e, err)?,
                }
            }
            Message::Delivery {
                registration,
                delivery: d,
            } => {
                e.array(9)?
                    .u64(v)?
                    .u64(ty::DELIVERY)?
                    .u64(*registration)?
                    .u64(d.token)?;
                encode_ident(e, &d.id)?;
                e.str(&d.destination)?
                    .str(&d.report_to)?
                    .u64(d.lifetime_ms)?
                    .bytes_len(d.payload.len() as u64)?;
                return Ok(d.payload.clone());
            }
        }
        Ok(Bytes::new())
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// A cursor over the elements of the frame's array: counts what is left so that a missing
/// field is an error and extra trailing fields are skipped.
struct Fields<'b> {
    d: Decoder<'b>,
    left: u64,
}

impl<'b> Fields<'b> {
    fn next(&mut self, what: &str) -> Result<&mut Decoder<'b>, ProtoError> {
        if self.left == 0 {
            return Err(ProtoError::Malformed(format!("missing field {what}")));
        }
        self.left -= 1;
        Ok(&mut self.d)
    }

    fn u64(&mut self, what: &str) -> Result<u64, ProtoError> {
        Ok(self.next(what)?.u64()?)
    }

    fn string(&mut self, what: &str) -> Result<String, ProtoError> {
        Ok(self.next(what)?.str()?.to_string())
    }

    fn opt_string(&mut self, what: &str) -> Result<Option<String>, ProtoError> {
        let d = self.next(what)?;
        if d.datatype()? == Type::Null {
            d.null()?;
            Ok(None)
        } else {
            Ok(Some(d.str()?.to_string()))
        }
    }

    /// A definite-length byte string, as a zero-copy slice of `frame`.
    fn payload(&mut self, frame: &Bytes, what: &str) -> Result<Bytes, ProtoError> {
        let b = self.next(what)?.bytes()?;
        Ok(frame.slice_ref(b))
    }

    fn finish(mut self, frame_len: usize) -> Result<(), ProtoError> {
        while self.left > 0 {
            self.d.skip()?;
            self.left -= 1;
        }
        if self.d.position() != frame_len {
            return Err(malformed("bytes after the frame's CBOR item"));
        }
        Ok(())
    }
}

fn decode_text_array(d: &mut Decoder<'_>) -> Result<Vec<String>, ProtoError> {
    let n = d
        .array()?
        .ok_or_else(|| malformed("indefinite-length array"))?;
    // Each element takes at least one byte: bound the loop by the input before allocating.
    if n > d.input().len().saturating_sub(d.position()) as u64 {
        return Err(malformed("array longer than the frame"));
    }
    let mut v = Vec::with_capacity(n as usize);
    for _ in 0..n {
        v.push(d.str()?.to_string());
    }
    Ok(v)
}

fn decode_ident(d: &mut Decoder<'_>) -> Result<BundleIdent, ProtoError> {
    let n = d
        .array()?
        .ok_or_else(|| malformed("indefinite-length bundle id"))?;
    let fragment = match n {
        3 => None,
        5 => Some(()),
        _ => return Err(malformed("bundle id must have 3 or 5 elements")),
    };
    let source = d.str()?.to_string();
    let creation_ms = d.u64()?;
    let sequence = d.u64()?;
    let fragment = match fragment {
        Some(()) => Some((d.u64()?, d.u64()?)),
        None => None,
    };
    Ok(BundleIdent {
        source,
        creation_ms,
        sequence,
        fragment,
    })
}

fn decode_f64(d: &mut Decoder<'_>) -> Result<f64, ProtoError> {
    Ok(match d.datatype()? {
        Type::F16 => {
            // minicbor decodes half floats only with its `half` feature: read the two bytes.
            let pos = d.position();
            let b = d
                .input()
                .get(pos + 1..pos + 3)
                .ok_or_else(|| malformed("truncated half float"))?;
            let h = u16::from_be_bytes([b[0], b[1]]);
            d.set_position(pos + 3);
            half_to_f64(h)
        }
        Type::F32 => d.f32()? as f64,
        Type::F64 => d.f64()?,
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => d.u64()? as f64,
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => d.i64()? as f64,
        other => {
            return Err(ProtoError::Malformed(format!(
                "expected a number, got {other}"
            )))
        }
    })
}

/// IEEE 754 binary16 to f64 (RFC 8949 Appendix D).
fn half_to_f64(h: u16) -> f64 {
    let exp = (h >> 10) & 0x1f;
    let mant = (h & 0x3ff) as f64;
    let val = match exp {
        0 => mant * 2f64.powi(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (mant + 1024.0) * 2f64.powi(e as i32 - 25),
    };
    if h & 0x8000 != 0 {
        -val
    } else {
        val
    }
}

fn decode_stats(d: &mut Decoder<'_>) -> Result<NodeStats, ProtoError> {
    let n = d
        .array()?
        .ok_or_else(|| malformed("indefinite-length metric list"))?;
    if n > d.input().len().saturating_sub(d.position()) as u64 {
        return Err(malformed("metric list longer than the frame"));
    }
    let mut metrics = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if d.array()? != Some(5) {
            return Err(malformed("a metric is a 5-element array"));
        }
        let name = d.str()?.to_string();
        let help = d.str()?.to_string();
        let kind = match d.u64()? {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            k => return Err(ProtoError::Malformed(format!("unknown metric kind {k}"))),
        };
        let nl = d
            .map()?
            .ok_or_else(|| malformed("indefinite-length label map"))?;
        if nl > d.input().len().saturating_sub(d.position()) as u64 {
            return Err(malformed("label map longer than the frame"));
        }
        let mut labels = Vec::with_capacity(nl as usize);
        for _ in 0..nl {
            labels.push((d.str()?.to_string(), d.str()?.to_string()));
        }
        let value = decode_f64(d)?;
        metrics.push(Metric {
            name,
            help,
            kind,
            labels,
            value,
        });
    }
    Ok(NodeStats { metrics })
}

fn decode_error(f: &mut Fields<'_>) -> Result<WireError, ProtoError> {
    let kind = f.u64("error kind")?;
    let message = f.string("error message")?;
    let d = f.next("error detail")?;
    let text = |d: &mut Decoder<'_>| -> Result<String, ProtoError> { Ok(d.str()?.to_string()) };
    Ok(match kind {
        1 => WireError::Agent(AgentError::Invalid(text(d)?)),
        2 => WireError::Agent(AgentError::StoreFull(text(d)?)),
        3 => {
            if d.array()? != Some(2) {
                return Err(malformed("too-large detail is [size, limit]"));
            }
            WireError::Agent(AgentError::TooLarge {
                size: d.u64()?,
                limit: d.u64()?,
            })
        }
        4 => WireError::Agent(AgentError::AlreadyRegistered(text(d)?)),
        5 => WireError::Agent(AgentError::UnknownRegistration(d.u64()?)),
        6 => WireError::Agent(AgentError::Storage(text(d)?)),
        7 => {
            d.skip()?;
            WireError::Agent(AgentError::ShuttingDown)
        }
        code => {
            d.skip()?;
            WireError::Protocol {
                kind: ProtocolErrorKind::from_code(code),
                message,
            }
        }
    })
}

impl Message {
    /// Decode one frame body (without its length prefix). Payloads are slices of `frame`.
    pub fn decode(frame: &Bytes) -> Result<Message, ProtoError> {
        let mut d = Decoder::new(frame);
        let n = d
            .array()?
            .ok_or_else(|| malformed("a frame is a definite-length array"))?;
        if n < 3 {
            return Err(malformed("a frame array has at least 3 elements"));
        }
        let version = d.u64()?;
        if version != PROTOCOL_VERSION {
            return Err(ProtoError::UnsupportedVersion(version));
        }
        let t = d.u64()?;
        let mut f = Fields { d, left: n - 2 };
        let msg = match t {
            ty::REGISTER..=ty::STATS => {
                let id = f.u64("id")?;
                let request = match t {
                    ty::REGISTER => Request::Register {
                        endpoint: f.string("endpoint")?,
                    },
                    ty::UNREGISTER => Request::Unregister {
                        registration: f.u64("registration")?,
                    },
                    ty::SEND => {
                        let destination = f.string("destination")?;
                        let lifetime_ms = f.u64("lifetime")?;
                        let priority = match f.u64("priority")? {
                            0 => Priority::Bulk,
                            1 => Priority::Normal,
                            2 => Priority::Expedited,
                            p => return Err(ProtoError::Malformed(format!("priority {p}"))),
                        };
                        let source = f.opt_string("source")?;
                        let report_to = f.opt_string("report_to")?;
                        let bits = f.u64("requests")?;
                        let no_fragment = f.next("no_fragment")?.bool()?;
                        let payload = f.payload(frame, "payload")?;
                        Request::Send(SendRequest {
                            source,
                            destination,
                            payload,
                            lifetime_ms,
                            priority,
                            report_to,
                            requests: StatusRequests {
                                received: bits & req_bits::RECEIVED != 0,
                                forwarded: bits & req_bits::FORWARDED != 0,
                                delivered: bits & req_bits::DELIVERED != 0,
                                deleted: bits & req_bits::DELETED != 0,
                            },
                            no_fragment,
                        })
                    }
                    ty::ACK => Request::Ack {
                        registration: f.u64("registration")?,
                        token: f.u64("token")?,
                    },
                    ty::INFO => Request::Info,
                    _ => Request::Stats,
                };
                Message::Request { id, request }
            }
            ty::OK..=ty::ERROR => {
                let id = f.u64("id")?;
                let response = match t {
                    ty::OK => Response::Ok,
                    ty::REGISTERED => Response::Registered(f.u64("registration")?),
                    ty::SENT => Response::Sent(SendAccepted {
                        id: decode_ident(f.next("bundle id")?)?,
                    }),
                    ty::INFO_REPLY => {
                        let node_id = f.string("node_id")?;
                        let version = f.string("version")?;
                        let neighbours = decode_text_array(f.next("neighbours")?)?;
                        let registrations = decode_text_array(f.next("registrations")?)?;
                        Response::Info(NodeInfo {
                            node_id,
                            version,
                            neighbours,
                            registrations,
                        })
                    }
                    ty::STATS_REPLY => Response::Stats(decode_stats(f.next("metrics")?)?),
                    _ => Response::Error(decode_error(&mut f)?),
                };
                Message::Response { id, response }
            }
            ty::DELIVERY => {
                let registration = f.u64("registration")?;
                let token = f.u64("token")?;
                let id = decode_ident(f.next("bundle id")?)?;
                let destination = f.string("destination")?;
                let report_to = f.string("report_to")?;
                let lifetime_ms = f.u64("lifetime")?;
                let payload = f.payload(frame, "payload")?;
                Message::Delivery {
                    registration,
                    delivery: Delivery {
                        token,
                        id,
                        destination,
                        report_to,
                        lifetime_ms,
                        payload,
                    },
                }
            }
            other => return Err(ProtoError::UnknownType(other)),
        };
        f.finish(frame.len())?;
        Ok(msg)
    }
}

// ---------------------------------------------------------------------------------------------
// Framing

/// Splits a byte stream into frame bodies (sans-IO): the length prefix is checked against the
/// limit before any buffer is reserved for the body.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder refusing frame bodies longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { max_frame }
    }

    /// The next complete frame body in `buf`, or `None` if more bytes are needed (after
    /// reserving room for them, never more than the limit allows).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtoError> {
        if buf.len() < FRAME_HEADER_LEN {
            buf.reserve(FRAME_HEADER_LEN);
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max_frame {
            return Err(ProtoError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let want = FRAME_HEADER_LEN + len;
        if buf.len() < want {
            buf.reserve(want - buf.len());
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

/// Reads frames from an async byte stream. `read_frame` is cancel-safe: a frame that was
/// partly read when the future was dropped is continued by the next call.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader refusing frames longer than `max_frame` bytes.
    pub fn new(inner: R, max_frame: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            decoder: FrameDecoder::new(max_frame),
        }
    }

    /// The next frame body; `Ok(None)` at a clean end of stream (between frames).
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, ProtoError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(8 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(ProtoError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a frame",
                )));
            }
        }
    }

    /// Read and discard input until end of stream, at most `limit` bytes (used after refusing
    /// a frame, so that the peer reads our error frame rather than a connection reset).
    pub async fn drain(&mut self, limit: usize) {
        self.buf.clear();
        let mut scratch = [0u8; 16 * 1024];
        let mut total = 0usize;
        while total < limit {
            match self.inner.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(a: &Message, b: &Message) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    fn body(frame: &EncodedFrame) -> Bytes {
        Bytes::from(frame.to_vec()).slice(FRAME_HEADER_LEN..)
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-z0-9:/._é-]{0,24}"
    }

    fn ident() -> impl Strategy<Value = BundleIdent> {
        (
            text(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of((any::<u64>(), any::<u64>())),
        )
            .prop_map(|(source, creation_ms, sequence, fragment)| BundleIdent {
                source,
                creation_ms,
                sequence,
                fragment,
            })
    }

    fn payload() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
    }

    fn priority() -> impl Strategy<Value = Priority> {
        prop_oneof![
            Just(Priority::Bulk),
            Just(Priority::Normal),
            Just(Priority::Expedited)
        ]
    }

    fn agent_error() -> impl Strategy<Value = AgentError> {
        prop_oneof![
            text().prop_map(AgentError::Invalid),
            text().prop_map(AgentError::StoreFull),
            (any::<u64>(), any::<u64>())
                .prop_map(|(size, limit)| AgentError::TooLarge { size, limit }),
            text().prop_map(AgentError::AlreadyRegistered),
            any::<u64>().prop_map(AgentError::UnknownRegistration),
            text().prop_map(AgentError::Storage),
            Just(AgentError::ShuttingDown),
        ]
    }

    fn wire_error() -> impl Strategy<Value = WireError> {
        prop_oneof![
            agent_error().prop_map(WireError::Agent),
            (
                prop_oneof![
                    Just(ProtocolErrorKind::BadFrame),
                    Just(ProtocolErrorKind::FrameTooLarge),
                    Just(ProtocolErrorKind::UnsupportedVersion),
                    Just(ProtocolErrorKind::Busy),
                    Just(ProtocolErrorKind::UnexpectedMessage),
                    (100u64..).prop_map(ProtocolErrorKind::Unknown),
                ],
                text()
            )
                .prop_map(|(kind, message)| WireError::Protocol { kind, message }),
        ]
    }

    fn metric() -> impl Strategy<Value = Metric> {
        (
            text(),
            text(),
            any::<bool>(),
            proptest::collection::vec((text(), text()), 0..3),
            any::<f64>(),
        )
            .prop_map(|(name, help, gauge, labels, value)| Metric {
                name,
                help,
                kind: if gauge {
                    MetricKind::Gauge
                } else {
                    MetricKind::Counter
                },
                labels,
                value,
            })
    }

    fn send_request() -> impl Strategy<Value = SendRequest> {
        (
            proptest::option::of(text()),
            text(),
            payload(),
            any::<u64>(),
            priority(),
            proptest::option::of(text()),
            any::<[bool; 4]>(),
            any::<bool>(),
        )
            .prop_map(
                |(source, destination, payload, lifetime_ms, priority, report_to, r, nf)| {
                    SendRequest {
                        source,
                        destination,
                        payload,
                        lifetime_ms,
                        priority,
                        report_to,
                        requests: StatusRequests {
                            received: r[0],
                            forwarded: r[1],
                            delivered: r[2],
                            deleted: r[3],
                        },
                        no_fragment: nf,
                    }
                },
            )
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            text().prop_map(|endpoint| Request::Register { endpoint }),
            any::<u64>().prop_map(|registration| Request::Unregister { registration }),
            send_request().prop_map(Request::Send),
            (any::<u64>(), any::<u64>()).prop_map(|(registration, token)| Request::Ack {
                registration,
                token
            }),
            Just(Request::Info),
            Just(Request::Stats),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            Just(Response::Ok),
            any::<u64>().prop_map(Response::Registered),
            ident().prop_map(|id| Response::Sent(SendAccepted { id })),
            (
                text(),
                text(),
                proptest::collection::vec(text(), 0..4),
                proptest::collection::vec(text(), 0..4)
            )
                .prop_map(|(node_id, version, neighbours, registrations)| {
                    Response::Info(NodeInfo {
                        node_id,
                        version,
                        neighbours,
                        registrations,
                    })
                }),
            proptest::collection::vec(metric(), 0..5)
                .prop_map(|metrics| Response::Stats(NodeStats { metrics })),
            wire_error().prop_map(Response::Error),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u64>(), request()).prop_map(|(id, request)| Message::Request { id, request }),
            (any::<u64>(), response())
                .prop_map(|(id, response)| Message::Response { id, response }),
            (
                any::<u64>(),
                any::<u64>(),
                ident(),
                text(),
                text(),
                any::<u64>(),
                payload()
            )
                .prop_map(
                    |(registration, token, id, destination, report_to, lifetime_ms, payload)| {
                        Message::Delivery {
                            registration,
                            delivery: Delivery {
                                token,
                                id,
                                destination,
                                report_to,
                                lifetime_ms,
                                payload,
                            },
                        }
                    }
                ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_message_round_trips(msg in message()) {
            let frame = msg.encode().unwrap();
            let bytes = frame.to_vec();
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            prop_assert_eq!(len, bytes.len() - FRAME_HEADER_LEN);
            let back = Message::decode(&body(&frame)).unwrap();
            prop_assert!(same(&msg, &back), "{:?} != {:?}", msg, back);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(&Bytes::from(bytes.clone()));
            let mut buf = BytesMut::from(&bytes[..]);
            let dec = FrameDecoder::new(256);
            for _ in 0..bytes.len() + 1 {
                match dec.decode(&mut buf) {
                    Ok(Some(f)) => { let _ = Message::decode(&f); }
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn mutated_frames_never_panic(msg in message(), pos in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = body(&msg.encode().unwrap()).to_vec();
            if !bytes.is_empty() {
                let p = pos % bytes.len();
                bytes[p] = byte;
            }
            let _ = Message::decode(&Bytes::from(bytes.clone()));
            bytes.truncate(pos % (bytes.len() + 1));
            let _ = Message::decode(&Bytes::from(bytes));
        }
    }

    #[test]
    fn half_floats_decode() {
        assert_eq!(half_to_f64(0x3c00), 1.0);
        assert_eq!(half_to_f64(0xc400), -4.0);
        assert_eq!(half_to_f64(0x0001), 5.960464477539063e-8);
        assert_eq!(half_to_f64(0x7bff), 65504.0);
        assert!(half_to_f64(0x7e00).is_nan());
        let mut d = Decoder::new(&[0xf9, 0x3e, 0x00]);
        assert_eq!(decode_f64(&mut d).unwrap(), 1.5);
        let mut d = Decoder::new(&[0xf9, 0x3e]);
        assert!(decode_f64(&mut d).is_err());
    }

    #[test]
    fn payload_is_a_slice_of_the_frame() {
        let msg = Message::Request {
            id: 7,
            request: Request::Send(SendRequest {
                source: None,
                destination: "ipn:2.1".into(),
                payload: Bytes::from(vec![0xAB; 10_000]),
                lifetime_ms: 1000,
                priority: Priority::Normal,
                report_to: None,
                requests: StatusRequests::default(),
                no_fragment: false,
            }),
        };
        let frame = msg.encode().unwrap();
        assert_eq!(
            frame.payload.len(),
            10_000,
            "payload is not copied into the head"
        );
        let body = body(&frame);
        let Message::Request {
            request: Request::Send(r),
            ..
        } = Message::decode(&body).unwrap()
        else {
            panic!("not a send")
        };
        let range = body.as_ptr_range();
        assert!(
            range.contains(&r.payload.as_ptr()),
            "decoded payload points into the frame"
        );
    }

    #[test]
    fn known_encoding_of_a_register_frame() {
        let frame = Message::Request {
            id: 1,
            request: Request::Register {
                endpoint: "ipn:1.5".into(),
            },
        }
        .encode()
        .unwrap();
        // 0x84 array(4), 01 version, 01 register, 01 id, 0x67 "ipn:1.5"
        let expect = [
            0, 0, 0, 12, 0x84, 1, 1, 1, 0x67, b'i', b'p', b'n', b':', b'1', b'.', b'5',
        ];
        assert_eq!(frame.to_vec(), expect);
    }

    #[test]
    fn version_and_type_are_checked() {
        let bad_version = Bytes::from_static(&[0x83, 2, 5, 1]);
        assert!(matches!(
            Message::decode(&bad_version),
            Err(ProtoError::UnsupportedVersion(2))
        ));
        let bad_type = Bytes::from_static(&[0x83, 1, 9, 1]);
        assert!(matches!(
            Message::decode(&bad_type),
            Err(ProtoError::UnknownType(9))
        ));
        let ok = Bytes::from_static(&[0x83, 1, 5, 1]);
        assert!(matches!(
            Message::decode(&ok),
            Ok(Message::Request {
                id: 1,
                request: Request::Info
            })
        ));
    }

    #[test]
    fn extra_trailing_fields_are_ignored_but_trailing_bytes_are_not() {
        // [1, 5, 1, "future"] : info with an extra field
        let mut v = vec![0x84, 1, 5, 1, 0x66];
        v.extend_from_slice(b"future");
        assert!(Message::decode(&Bytes::from(v.clone())).is_ok());
        v.push(0);
        assert!(matches!(
            Message::decode(&Bytes::from(v)),
            Err(ProtoError::Malformed(_))
        ));
        // a missing field
        let short = Bytes::from_static(&[0x83, 1, 4, 1]);
        assert!(matches!(
            Message::decode(&short),
            Err(ProtoError::Malformed(_))
        ));
    }

    #[test]
    fn huge_declared_arrays_do_not_allocate() {
        // info_reply whose neighbour list claims 2^32 elements in a 20-byte frame
        let v = vec![
            0x87, 1, 35, 1, 0x60, 0x60, 0x9a, 0xff, 0xff, 0xff, 0xff, 0x60,
        ];
        assert!(Message::decode(&Bytes::from(v)).is_err());
    }

    #[test]
    fn frame_decoder_refuses_before_reserving() {
        let dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let cap = buf.capacity();
        assert!(matches!(
            dec.decode(&mut buf),
            Err(ProtoError::FrameTooLarge {
                len: 0xffff_ffff,
                max: 1024
            })
        ));
        assert_eq!(buf.capacity(), cap);
        // a frame exactly at the limit is accepted
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&1024u32.to_be_bytes());
        assert!(dec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[0u8; 1024]);
        assert_eq!(dec.decode(&mut buf).unwrap().unwrap().len(), 1024);
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn frame_reader_splits_a_stream_and_reports_truncation() {
        let a = Message::Request {
            id: 1,
            request: Request::Info,
        }
        .encode()
        .unwrap()
        .to_vec();
        let mut stream = a.clone();
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&a[..3]);
        let mut r = FrameReader::new(&stream[..], 1024);
        assert!(r.read_frame().await.unwrap().is_some());
        assert!(r.read_frame().await.unwrap().is_some());
        assert!(matches!(r.read_frame().await, Err(ProtoError::Io(_))));
        let mut r = FrameReader::new(&a[..], 1024);
        assert!(r.read_frame().await.unwrap().is_some());
        assert!(r.read_frame().await.unwrap().is_none());
    }
}
