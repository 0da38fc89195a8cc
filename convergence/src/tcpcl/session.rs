//! Sans-IO TCPCLv4 session state machine (RFC 9174): contact header exchange and validation
//! (§4.2–§4.4), SESS_INIT negotiation (§4.6–§4.8), bundle transfers with segmentation, cumulative
//! acknowledgement and refusal (§5.2), KEEPALIVE and the idle timeout (§5.1.1), MSG_REJECT
//! (§5.1.2) and session termination (§6.1).
//!
//! The session never reads a clock or a socket. The driver feeds it received bytes
//! ([`Session::handle_input`]), commands ([`Session::send_bundle`], [`Session::accept_received`],
//! [`Session::terminate`]) and the current time, and drains bytes to write
//! ([`Session::poll_transmit`]), events ([`Session::poll_event`]) and the next deadline
//! ([`Session::poll_timeout`], [`Session::handle_timeout`]).
//!
//! TLS (§4.4) is not offered: we never set CAN_TLS, so whatever the peer sets, the session is
//! plaintext (TLS is used only when both entities set CAN_TLS).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::message::{
    ContactHeader, DecodeLimits, Error as CodecError, ExtensionItem, Message, MessageType,
    MsgReject, RefuseReason, RejectReason, SessInit, SessTerm, SessTermReason, XferAck, XferRefuse,
    XferSegment, EXT_TRANSFER_LENGTH, SESS_TERM_FLAG_REPLY, VERSION, XFER_FLAG_END,
    XFER_FLAG_START,
};

/// Which side opened the TCP connection (§3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We connected: we send our contact header first.
    Active,
    /// We accepted: we wait for the peer's contact header.
    Passive,
}

/// Local session parameters.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our node ID, sent in SESS_INIT.
    pub node_id: String,
    /// Keepalive interval we propose, in seconds (0 = no keepalives).
    pub keepalive: u16,
    /// Largest segment data we accept (our segment MRU).
    pub segment_mru: u64,
    /// Largest transfer we accept (our transfer MRU).
    pub transfer_mru: u64,
    /// Largest extension-items field accepted from the peer.
    pub max_extensions_len: u32,
    /// Time allowed for the contact header and SESS_INIT exchange.
    pub setup_timeout: Duration,
    /// Time allowed after SESS_TERM for the reply and in-progress transfers before closing.
    pub term_timeout: Duration,
    /// Most outgoing transfers sent but not yet fully acknowledged (pipelining window).
    pub max_unacked: usize,
    /// Most bundles queued in the session before `send_bundle` reports it full.
    pub max_queued: usize,
    /// Fail (rather than attempt) a transfer larger than the peer's transfer MRU (§4.7).
    pub enforce_peer_transfer_mru: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            node_id: "dtn://unnamed/".into(),
            keepalive: 30,
            segment_mru: 1 << 20,
            transfer_mru: 64 << 20,
            max_extensions_len: 64 * 1024,
            setup_timeout: Duration::from_secs(10),
            term_timeout: Duration::from_secs(10),
            max_unacked: 64,
            max_queued: 64,
            enforce_peer_transfer_mru: true,
        }
    }
}

/// What the peer announced and what was negotiated (§4.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerParams {
    /// The peer's node ID.
    pub node_id: String,
    /// Negotiated keepalive interval in seconds: the minimum of both proposals (0 = none).
    pub keepalive: u16,
    /// The peer's segment MRU: our outgoing segments are at most this long.
    pub segment_mru: u64,
    /// The peer's transfer MRU.
    pub transfer_mru: u64,
}

/// Why an outgoing transfer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferFailure {
    /// The peer sent XFER_REFUSE (§5.2.4).
    Refused(RefuseReason),
    /// The session ended before the transfer was fully acknowledged.
    SessionEnded,
    /// The session ended before the transfer started: the bundle may be sent on a new session.
    NotStarted,
    /// The bundle is larger than the peer's transfer MRU (§4.7) and
    /// [`SessionConfig::enforce_peer_transfer_mru`] is set.
    TooLarge {
        /// Bundle length.
        size: u64,
        /// The peer's transfer MRU.
        limit: u64,
    },
}

/// Why the session closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// SESS_TERM was exchanged (§6.1); the reason is the one in the first SESS_TERM.
    Terminated(SessTermReason),
    /// The peer's contact header had the wrong magic (§4.3).
    BadMagic,
    /// The contact header or SESS_INIT exchange did not finish in time (§4.3).
    SetupTimeout,
    /// The peer sent bytes that cannot be parsed as TCPCLv4.
    ProtocolError(String),
    /// The peer closed the TCP connection (reported by the driver).
    ConnectionLost,
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// SESS_INIT exchange complete: transfers may flow (§4.7).
    Established(PeerParams),
    /// A whole bundle arrived. Its final XFER_ACK is held until the driver calls
    /// [`Session::accept_received`] with this transfer ID.
    Received {
        /// The peer's transfer ID.
        transfer_id: u64,
        /// The reassembled bundle.
        bundle: Bytes,
    },
    /// An outgoing bundle was fully acknowledged.
    Transferred {
        /// The caller's handle given to [`Session::send_bundle`].
        handle: u64,
    },
    /// An outgoing bundle failed.
    TransferFailed {
        /// The caller's handle.
        handle: u64,
        /// Why.
        reason: TransferFailure,
    },
    /// The peer sent something invalid (counted and logged by the driver).
    BadInput(String),
    /// The session is over: flush the remaining transmit bytes and close the connection.
    Closed(CloseReason),
}

/// Errors of [`Session::send_bundle`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendBundleError {
    /// The session's queue is full.
    #[error("session queue full")]
    QueueFull,
    /// The session is ending or closed; no new transfers start (§6.1).
    #[error("session is terminating")]
    Terminating,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitContactHeader,
    AwaitSessInit,
    Established,
    Closed,
}

struct Outgoing {
    handle: u64,
    transfer_id: u64,
    data: Bytes,
    sent: usize,
}

struct Incoming {
    transfer_id: u64,
    parts: Vec<Bytes>,
    len: u64,
}

struct Termination {
    reason: SessTermReason,
    sent: bool,
    received: bool,
    deadline: Instant,
}

/// One TCPCLv4 session (sans-IO).
pub struct Session {
    role: Role,
    config: SessionConfig,
    limits: DecodeLimits,
    state: State,
    rx: BytesMut,
    tx: VecDeque<Bytes>,
    events: VecDeque<Event>,
    peer: Option<PeerParams>,
    setup_deadline: Instant,
    last_rx: Instant,
    last_tx: Instant,
    term: Option<Termination>,
    next_transfer_id: u64,
    queue: VecDeque<(u64, Bytes)>,
    current: Option<Outgoing>,
    unacked: VecDeque<Outgoing>,
    incoming: Option<Incoming>,
    /// Transfer whose remaining segments are discarded after we refused it (§5.2.4).
    refused_incoming: Option<u64>,
    /// Final acks held until the bundle is handed to the node.
    held_acks: VecDeque<XferAck>,
}

impl Session {
    /// Creates a session on a freshly connected TCP stream; an active session queues its contact
    /// header at once (§4.1), a passive one waits for the peer's.
    pub fn new(role: Role, config: SessionConfig, now: Instant) -> Session {
        let limits = DecodeLimits {
            segment_mru: config.segment_mru,
            max_extensions_len: config.max_extensions_len,
        };
        let mut s = Session {
            role,
            limits,
            state: State::AwaitContactHeader,
            rx: BytesMut::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            peer: None,
            setup_deadline: now + config.setup_timeout,
            last_rx: now,
            last_tx: now,
            term: None,
            next_transfer_id: 0,
            queue: VecDeque::new(),
            current: None,
            unacked: VecDeque::new(),
            incoming: None,
            refused_incoming: None,
            held_acks: VecDeque::new(),
            config,
        };
        if role == Role::Active {
            s.push_contact_header();
        }
        s
    }

    /// The peer's parameters once the session is established.
    pub fn peer(&self) -> Option<&PeerParams> {
        self.peer.as_ref()
    }

    /// Whether SESS_INIT negotiation has completed and the session is not closed.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the session has closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether new bundles may be queued (established, not terminating, queue not full).
    pub fn can_send(&self) -> bool {
        self.state == State::Established
            && self.term.is_none()
            && self.queue.len() < self.config.max_queued
    }

    /// Largest receive buffer the driver needs: one whole message at our limits.
    pub fn max_message_len(&self) -> u64 {
        self.limits.max_message_len()
    }

    /// Bytes buffered but not yet parsed.
    pub fn buffered_input(&self) -> usize {
        self.rx.len()
    }

    fn push_contact_header(&mut self) {
        let mut b = BytesMut::with_capacity(6);
        // CAN_TLS is not set: we do not offer TLS (§4.4).
        ContactHeader {
            version: VERSION,
            flags: 0,
        }
        .encode(&mut b);
        self.tx.push_back(b.freeze());
    }

    fn push(&mut self, m: Message) {
        self.tx.push_back(m.to_bytes());
    }

    fn push_sess_init(&mut self) {
        self.push(Message::SessInit(SessInit {
            keepalive: self.config.keepalive,
            segment_mru: self.config.segment_mru,
            transfer_mru: self.config.transfer_mru,
            node_id: self.config.node_id.clone(),
            extensions: Vec::new(),
        }));
    }

    /// Queues a bundle for transfer; `handle` comes back in `Transferred`/`TransferFailed`.
    pub fn send_bundle(&mut self, handle: u64, bundle: Bytes) -> Result<(), SendBundleError> {
        // §6.1: after SESS_TERM no new transfer begins.
        if self.term.is_some() || self.state == State::Closed {
            return Err(SendBundleError::Terminating);
        }
        if self.queue.len() >= self.config.max_queued {
            return Err(SendBundleError::QueueFull);
        }
        self.queue.push_back((handle, bundle));
        Ok(())
    }

    /// The node has taken the bundle of `transfer_id`: send its final XFER_ACK now (the node's
    /// "acknowledge only once stored" rule hooks in here).
    pub fn accept_received(&mut self, transfer_id: u64) {
        if let Some(pos) = self
            .held_acks
            .iter()
            .position(|a| a.transfer_id == transfer_id)
        {
            if let Some(ack) = self.held_acks.remove(pos) {
                if self.state != State::Closed {
                    self.push(Message::XferAck(ack));
                }
            }
        }
        self.maybe_finish_term();
    }

    /// The node refuses the completely received bundle of `transfer_id`: its final XFER_ACK is
    /// replaced by XFER_REFUSE with `reason`.
    ///
    /// RFC 9174 §5.2.4 lets a receiver refuse a transfer at any point while receiving it, and
    /// notes that a refusal may cross the last segment on the wire; a transfer is complete for
    /// the sender only once the final XFER_ACK covering its whole length arrives (§5.2.3). The
    /// held final ack has not been sent, so refusing here is within the procedure: the sender
    /// sees XFER_REFUSE for a transfer still awaiting its acknowledgement.
    pub fn refuse_received(&mut self, transfer_id: u64, reason: RefuseReason) {
        if let Some(pos) = self
            .held_acks
            .iter()
            .position(|a| a.transfer_id == transfer_id)
        {
            self.held_acks.remove(pos);
            if self.state != State::Closed {
                self.push(Message::XferRefuse(XferRefuse {
                    reason,
                    transfer_id,
                }));
            }
        }
        self.maybe_finish_term();
    }

    /// Final acknowledgements held for the node's verdict.
    pub fn held_acks(&self) -> usize {
        self.held_acks.len()
    }

    /// Starts session termination with `reason` (§6.1).
    pub fn terminate(&mut self, reason: SessTermReason, now: Instant) {
        match self.state {
            State::Closed => {}
            State::Established | State::AwaitSessInit => self.send_term(reason, now),
            State::AwaitContactHeader => self.close(CloseReason::Terminated(reason)),
        }
    }

    /// The driver saw the TCP connection close or fail.
    pub fn connection_lost(&mut self) {
        if self.state != State::Closed {
            let reason = match &self.term {
                Some(t) if t.sent && t.received => CloseReason::Terminated(t.reason),
                _ => CloseReason::ConnectionLost,
            };
            self.close(reason);
        }
    }

    fn send_term(&mut self, reason: SessTermReason, now: Instant) {
        if self.term.as_ref().is_some_and(|t| t.sent) {
            return;
        }
        self.push(Message::SessTerm(SessTerm { flags: 0, reason }));
        self.term = Some(Termination {
            reason,
            sent: true,
            received: false,
            deadline: now + self.config.term_timeout,
        });
        self.fail_queued();
        self.maybe_finish_term();
    }

    fn fail_queued(&mut self) {
        while let Some((handle, _)) = self.queue.pop_front() {
            self.events.push_back(Event::TransferFailed {
                handle,
                reason: TransferFailure::NotStarted,
            });
        }
    }

    /// Closes once both SESS_TERMs are exchanged and no transfer is in progress (§6.1).
    fn maybe_finish_term(&mut self) {
        if let Some(t) = &self.term {
            if t.sent
                && t.received
                && self.current.is_none()
                && self.unacked.is_empty()
                && self.incoming.is_none()
                && self.held_acks.is_empty()
            {
                let reason = t.reason;
                self.close(CloseReason::Terminated(reason));
            }
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.fail_queued();
        for o in self
            .current
            .take()
            .into_iter()
            .chain(self.unacked.drain(..))
        {
            self.events.push_back(Event::TransferFailed {
                handle: o.handle,
                reason: TransferFailure::SessionEnded,
            });
        }
        self.incoming = None;
        self.held_acks.clear();
        self.events.push_back(Event::Closed(reason));
    }

    fn bad_input(&mut self, detail: String) {
        self.events.push_back(Event::BadInput(detail));
    }

    /// Feeds bytes received from the peer.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if self.state == State::Closed {
            return;
        }
        self.rx.extend_from_slice(data);
        self.process_input(now);
    }

    /// Feeds bytes already in a `BytesMut` (avoids a copy when the buffer is empty).
    pub fn handle_input_buf(&mut self, data: &mut BytesMut, now: Instant) {
        if self.state == State::Closed {
            data.clear();
            return;
        }
        if self.rx.is_empty() {
            std::mem::swap(&mut self.rx, data);
        } else {
            self.rx.extend_from_slice(data);
            data.clear();
        }
        self.process_input(now);
    }

    fn process_input(&mut self, now: Instant) {
        if !self.rx.is_empty() {
            self.last_rx = now;
        }
        // Bounded: each iteration consumes at least one octet or returns.
        while self.state != State::Closed && !self.rx.is_empty() {
            if self.state == State::AwaitContactHeader {
                match ContactHeader::decode(&mut self.rx) {
                    Ok(None) => return,
                    Ok(Some(h)) => self.on_contact_header(h, now),
                    Err(e) => {
                        // §4.3: without the magic the connection is closed, no SESS_TERM.
                        self.bad_input(format!("contact header: {e}"));
                        self.close(CloseReason::BadMagic);
                    }
                }
                continue;
            }
            match Message::decode(&mut self.rx, &self.limits) {
                Ok(None) => return,
                Ok(Some(m)) => self.on_message(m, now),
                Err(e) => self.on_decode_error(e, now),
            }
        }
    }

    fn on_contact_header(&mut self, h: ContactHeader, now: Instant) {
        if self.role == Role::Passive {
            // §4.3: the passive entity answers with its own header, even before rejecting a version.
            self.push_contact_header();
        }
        if h.version != VERSION {
            // §4.3: a version we do not speak ends the session with reason "Version mismatch".
            self.bad_input(format!("contact header version {}", h.version));
            self.push(Message::SessTerm(SessTerm {
                flags: 0,
                reason: SessTermReason::VersionMismatch,
            }));
            self.rx.clear();
            self.close(CloseReason::Terminated(SessTermReason::VersionMismatch));
            return;
        }
        // §4.4: TLS only if both set CAN_TLS; we never do, so the peer's flag changes nothing.
        self.state = State::AwaitSessInit;
        if self.role == Role::Active {
            // §4.6: the active entity sends SESS_INIT once the contact headers are exchanged.
            self.push_sess_init();
        }
        let _ = now;
    }

    fn on_decode_error(&mut self, e: CodecError, now: Instant) {
        self.bad_input(e.to_string());
        // The stream cannot be parsed past this point: answer, then close without waiting.
        match e {
            CodecError::UnknownMessageType(t) => {
                // §5.1.2: MSG_REJECT "Message Type Unknown" echoing the header octet.
                self.push(Message::MsgReject(MsgReject {
                    reason: RejectReason::TypeUnknown,
                    rejected_header: t,
                }));
                self.push(Message::SessTerm(SessTerm {
                    flags: 0,
                    reason: SessTermReason::Unknown,
                }));
            }
            CodecError::SegmentTooLong { .. } | CodecError::ExtensionsTooLong { .. } => {
                // §4.7: the peer ignored our MRU; we cannot buffer this, so the session ends.
                self.push(Message::SessTerm(SessTerm {
                    flags: 0,
                    reason: SessTermReason::ResourceExhaustion,
                }));
            }
            _ => {
                self.push(Message::SessTerm(SessTerm {
                    flags: 0,
                    reason: SessTermReason::ContactFailure,
                }));
            }
        }
        let _ = now;
        self.rx.clear();
        self.close(CloseReason::ProtocolError(e.to_string()));
    }

    fn reject(&mut self, reason: RejectReason, t: MessageType) {
        self.bad_input(format!("unexpected {t:?}"));
        self.push(Message::MsgReject(MsgReject {
            reason,
            rejected_header: t as u8,
        }));
    }

    fn on_message(&mut self, m: Message, now: Instant) {
        match (self.state, m) {
            (_, Message::SessTerm(t)) => self.on_sess_term(t, now),
            (_, Message::MsgReject(r)) => {
                self.bad_input(format!(
                    "peer rejected message {:#04x}: {:?}",
                    r.rejected_header, r.reason
                ));
            }
            (State::AwaitSessInit, Message::SessInit(init)) => self.on_sess_init(init, now),
            (State::AwaitSessInit, other) => {
                // §5.1.2: anything but SESS_INIT/SESS_TERM before negotiation is unexpected.
                self.reject(RejectReason::Unexpected, other.message_type());
            }
            (State::Established, Message::SessInit(_)) => {
                self.reject(RejectReason::Unexpected, MessageType::SessInit);
            }
            (State::Established, Message::Keepalive) => {}
            (State::Established, Message::XferSegment(seg)) => self.on_segment(seg),
            (State::Established, Message::XferAck(ack)) => self.on_ack(ack),
            (State::Established, Message::XferRefuse(r)) => self.on_refuse(r),
            (State::AwaitContactHeader | State::Closed, _) => {}
        }
        self.maybe_finish_term();
    }

    fn on_sess_init(&mut self, init: SessInit, now: Instant) {
        if self.role == Role::Passive {
            // §4.6: the passive entity answers the active entity's SESS_INIT with its own.
            self.push_sess_init();
        }
        // §4.8: an unknown critical session extension ends the session ("Contact Failure").
        if let Some(item) = init.extensions.iter().find(|i| i.critical()) {
            self.bad_input(format!(
                "unknown critical session extension {}",
                item.item_type
            ));
            self.send_term(SessTermReason::ContactFailure, now);
            return;
        }
        // §4.6/§4.7: the node ID must be a URI; a zero segment MRU makes transfers impossible.
        if !valid_node_id(&init.node_id) || init.segment_mru == 0 {
            self.bad_input(format!(
                "SESS_INIT unacceptable: node ID {:?}, segment MRU {}",
                init.node_id, init.segment_mru
            ));
            self.send_term(SessTermReason::ContactFailure, now);
            return;
        }
        // §4.7: the negotiated keepalive is the minimum of both proposals.
        let params = PeerParams {
            node_id: init.node_id,
            keepalive: init.keepalive.min(self.config.keepalive),
            segment_mru: init.segment_mru,
            transfer_mru: init.transfer_mru,
        };
        self.peer = Some(params.clone());
        self.state = State::Established;
        self.events.push_back(Event::Established(params));
    }

    fn on_sess_term(&mut self, t: SessTerm, now: Instant) {
        match &mut self.term {
            Some(term) => {
                term.received = true;
                if !t.is_reply() && term.sent {
                    // Both sides sent SESS_TERM at once: each message also acts as the reply.
                }
            }
            None => {
                // §6.1: answer with SESS_TERM carrying REPLY and the same reason.
                self.push(Message::SessTerm(SessTerm {
                    flags: SESS_TERM_FLAG_REPLY,
                    reason: t.reason,
                }));
                self.term = Some(Termination {
                    reason: t.reason,
                    sent: true,
                    received: true,
                    deadline: now + self.config.term_timeout,
                });
                self.fail_queued();
            }
        }
        if self.state != State::Established {
            let reason = t.reason;
            self.close(CloseReason::Terminated(reason));
        }
    }

    fn refuse(&mut self, transfer_id: u64, reason: RefuseReason) {
        self.push(Message::XferRefuse(XferRefuse {
            reason,
            transfer_id,
        }));
        self.refused_incoming = Some(transfer_id);
        self.incoming = None;
    }

    fn on_segment(&mut self, seg: XferSegment) {
        if seg.is_start() {
            if let Some(old) = self.incoming.take() {
                self.bad_input(format!(
                    "transfer {} started while transfer {} was incomplete",
                    seg.transfer_id, old.transfer_id
                ));
            }
            self.refused_incoming = None;
            // §6.1: after SESS_TERM new incoming transfers are refused.
            if self.term.is_some() {
                self.refuse(seg.transfer_id, RefuseReason::SessionTerminating);
                return;
            }
            // §5.2.5: an unknown critical transfer extension refuses the transfer.
            if seg
                .extensions
                .iter()
                .any(|i| i.critical() && i.item_type != EXT_TRANSFER_LENGTH)
            {
                self.bad_input("unknown critical transfer extension".into());
                self.refuse(seg.transfer_id, RefuseReason::ExtensionFailure);
                return;
            }
            match seg.transfer_length() {
                Err(e) => {
                    self.bad_input(e.to_string());
                    self.refuse(seg.transfer_id, RefuseReason::ExtensionFailure);
                    return;
                }
                // §4.7/§5.2.5.1: a transfer longer than our transfer MRU is refused up front.
                Ok(Some(total)) if total > self.config.transfer_mru => {
                    self.bad_input(format!("transfer length {total} over our transfer MRU"));
                    self.refuse(seg.transfer_id, RefuseReason::NoResources);
                    return;
                }
                Ok(_) => {}
            }
            self.incoming = Some(Incoming {
                transfer_id: seg.transfer_id,
                parts: Vec::new(),
                len: 0,
            });
        } else {
            match &self.incoming {
                Some(inc) if inc.transfer_id == seg.transfer_id => {}
                _ => {
                    if self.refused_incoming == Some(seg.transfer_id) {
                        // §5.2.4: segments of a refused transfer are discarded.
                        if seg.is_end() {
                            self.refused_incoming = None;
                        }
                    } else {
                        self.reject(RejectReason::Unexpected, MessageType::XferSegment);
                    }
                    return;
                }
            }
        }
        let transfer_mru = self.config.transfer_mru;
        let Some(inc) = self.incoming.as_mut() else {
            return;
        };
        let new_len = inc.len + seg.data.len() as u64;
        // §4.7: decided by our own transfer MRU whatever the sender assumed (dtn7-rs 0.21 ignores
        // the peer's transfer MRU and sends larger transfers).
        if new_len > transfer_mru {
            let id = inc.transfer_id;
            self.bad_input(format!(
                "transfer {id} grows past our transfer MRU {transfer_mru}"
            ));
            self.refuse(id, RefuseReason::NoResources);
            if seg.is_end() {
                self.refused_incoming = None;
            }
            return;
        }
        inc.len = new_len;
        if !seg.data.is_empty() {
            inc.parts.push(seg.data);
        }
        // §5.2.3: one cumulative XFER_ACK per segment, echoing that segment's flags.
        let ack = XferAck {
            flags: seg.flags & (XFER_FLAG_START | XFER_FLAG_END),
            transfer_id: seg.transfer_id,
            acknowledged_length: new_len,
        };
        if ack.flags & XFER_FLAG_END != 0 {
            let Some(inc) = self.incoming.take() else {
                return;
            };
            let bundle = concat(inc.parts, inc.len as usize);
            self.held_acks.push_back(ack);
            self.events.push_back(Event::Received {
                transfer_id: inc.transfer_id,
                bundle,
            });
        } else {
            self.push(Message::XferAck(ack));
        }
    }

    fn on_ack(&mut self, ack: XferAck) {
        let in_current = self
            .current
            .as_ref()
            .is_some_and(|c| c.transfer_id == ack.transfer_id);
        let pos = self
            .unacked
            .iter()
            .position(|o| o.transfer_id == ack.transfer_id);
        let total = if in_current {
            self.current.as_ref().map(|c| c.data.len() as u64)
        } else {
            pos.and_then(|p| self.unacked.get(p))
                .map(|o| o.data.len() as u64)
        };
        let Some(total) = total else {
            self.bad_input(format!("XFER_ACK for unknown transfer {}", ack.transfer_id));
            return;
        };
        if ack.acknowledged_length > total {
            self.bad_input(format!(
                "XFER_ACK length {} beyond transfer length {total}",
                ack.acknowledged_length
            ));
            return;
        }
        // A transfer is confirmed only by an ack covering its whole length. Its END flag should be
        // set (§5.2.3), but dtn7-rs 0.21 sends every XFER_ACK with flags 0: accept on length alone.
        if ack.acknowledged_length == total && !in_current {
            if let Some(o) = pos.and_then(|p| self.unacked.remove(p)) {
                self.events
                    .push_back(Event::Transferred { handle: o.handle });
            }
        }
    }

    fn on_refuse(&mut self, r: XferRefuse) {
        let o = if self
            .current
            .as_ref()
            .is_some_and(|c| c.transfer_id == r.transfer_id)
        {
            // §5.2.4: the sender stops sending segments of a refused transfer.
            self.current.take()
        } else {
            self.unacked
                .iter()
                .position(|o| o.transfer_id == r.transfer_id)
                .and_then(|p| self.unacked.remove(p))
        };
        match o {
            Some(o) => self.events.push_back(Event::TransferFailed {
                handle: o.handle,
                reason: TransferFailure::Refused(r.reason),
            }),
            None => self.bad_input(format!(
                "XFER_REFUSE for unknown transfer {}",
                r.transfer_id
            )),
        }
    }

    /// Next bytes to write to the connection, if any. Control messages go first, then the next
    /// segment of the current outgoing transfer (segment data is a zero-copy view of the bundle).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        if let Some(b) = self.tx.pop_front() {
            self.last_tx = now;
            return Some(b);
        }
        if self.state != State::Established {
            return None;
        }
        if self.current.is_none() && self.unacked.len() < self.config.max_unacked {
            // §6.1: no transfer begins after SESS_TERM (the queue was failed then).
            while let Some((handle, data)) = self.queue.pop_front() {
                let limit = self.peer.as_ref().map_or(u64::MAX, |p| p.transfer_mru);
                if self.config.enforce_peer_transfer_mru && data.len() as u64 > limit {
                    self.events.push_back(Event::TransferFailed {
                        handle,
                        reason: TransferFailure::TooLarge {
                            size: data.len() as u64,
                            limit,
                        },
                    });
                    continue;
                }
                let transfer_id = self.next_transfer_id;
                // §5.2.1: transfer IDs increase by one per transfer.
                self.next_transfer_id = self.next_transfer_id.wrapping_add(1);
                self.current = Some(Outgoing {
                    handle,
                    transfer_id,
                    data,
                    sent: 0,
                });
                break;
            }
        }
        let peer_mru = self.peer.as_ref().map_or(1, |p| p.segment_mru.max(1));
        let cur = self.current.as_mut()?;
        let start = cur.sent == 0;
        let remaining = cur.data.len() - cur.sent;
        let n = remaining.min(usize::try_from(peer_mru).unwrap_or(usize::MAX));
        let data = cur.data.slice(cur.sent..cur.sent + n);
        cur.sent += n;
        let end = cur.sent == cur.data.len();
        let mut flags = 0;
        let mut extensions = Vec::new();
        if start {
            flags |= XFER_FLAG_START;
            // §5.2.5.1: announce the whole length so the receiver can refuse early.
            extensions.push(ExtensionItem::transfer_length(cur.data.len() as u64));
        }
        if end {
            flags |= XFER_FLAG_END;
        }
        let seg = XferSegment {
            flags,
            transfer_id: cur.transfer_id,
            extensions,
            data,
        };
        if end {
            if let Some(done) = self.current.take() {
                self.unacked.push_back(done);
            }
        }
        self.last_tx = now;
        let mut head = BytesMut::with_capacity(64);
        seg.encode_header(&mut head);
        if seg.data.len() <= 4096 {
            head.extend_from_slice(&seg.data);
            Some(head.freeze())
        } else {
            // Header first, data as its own zero-copy chunk.
            self.tx.push_front(seg.data);
            Some(head.freeze())
        }
    }

    /// Whether `poll_transmit` would return something now.
    pub fn has_transmit(&self) -> bool {
        !self.tx.is_empty()
            || (self.state == State::Established
                && (self.current.is_some()
                    || (!self.queue.is_empty() && self.unacked.len() < self.config.max_unacked)))
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn keepalive(&self) -> Option<Duration> {
        match &self.peer {
            Some(p) if p.keepalive > 0 => Some(Duration::from_secs(p.keepalive.into())),
            _ => None,
        }
    }

    /// The next instant at which [`Session::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::AwaitContactHeader | State::AwaitSessInit => {
                let mut t = self.setup_deadline;
                if let Some(term) = &self.term {
                    t = t.min(term.deadline);
                }
                Some(t)
            }
            State::Established => {
                let mut t = self.term.as_ref().map(|t| t.deadline);
                if let Some(ka) = self.keepalive() {
                    let k = (self.last_tx + ka).min(self.last_rx + 2 * ka);
                    t = Some(t.map_or(k, |t| t.min(k)));
                }
                t
            }
        }
    }

    /// Runs timers: setup timeout (§4.3), keepalive and idle timeout (§5.1.1), termination (§6.1).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => {}
            State::AwaitContactHeader | State::AwaitSessInit => {
                if now >= self.setup_deadline
                    || self.term.as_ref().is_some_and(|t| now >= t.deadline)
                {
                    self.close(CloseReason::SetupTimeout);
                }
            }
            State::Established => {
                if let Some(t) = &self.term {
                    if now >= t.deadline {
                        let reason = t.reason;
                        self.close(CloseReason::Terminated(reason));
                        return;
                    }
                }
                if let Some(ka) = self.keepalive() {
                    // §5.1.1: nothing received for twice the keepalive interval ends the session.
                    if now >= self.last_rx + 2 * ka {
                        if self.term.is_none() {
                            self.send_term(SessTermReason::IdleTimeout, now);
                        } else {
                            self.close(CloseReason::Terminated(SessTermReason::IdleTimeout));
                        }
                        return;
                    }
                    // §5.1.1: send KEEPALIVE when nothing was sent for the interval.
                    if now >= self.last_tx + ka && self.tx.is_empty() {
                        self.push(Message::Keepalive);
                        self.last_tx = now;
                    }
                }
            }
        }
    }
}

fn concat(parts: Vec<Bytes>, len: usize) -> Bytes {
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap_or_default();
    }
    let mut b = BytesMut::with_capacity(len);
    for p in parts {
        b.extend_from_slice(&p);
    }
    b.freeze()
}

/// A node ID must be a URI (§4.6): a scheme of letters/digits/`+-.` starting with a letter,
/// a colon, and a non-empty remainder without control characters.
pub fn valid_node_id(id: &str) -> bool {
    let Some((scheme, rest)) = id.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !id.chars().any(|c| c.is_control() || c == ' ')
}
