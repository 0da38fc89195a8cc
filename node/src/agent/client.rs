//! An async client of the agent protocol ([`super::proto`]), used by the command-line tools
//! and tests: send bundles (RFC 9171 §5.2), register endpoints and receive their deliveries
//! (§5.7), acknowledge them, and read node information and metrics.
//!
//! Requests are made one at a time (`&mut self`); each gets a fresh request id. Deliveries the
//! node pushes while the client waits for a response are buffered and returned by
//! [`AgentClient::next_delivery`] in arrival order (the node sends at most its delivery window
//! of unacknowledged deliveries per registration, which bounds this buffer).

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};

use super::proto::{
    EncodedFrame, FrameReader, Message, ProtoError, ProtocolErrorKind, Request, RequestId,
    Response, WireError, DEFAULT_MAX_FRAME, FRAME_HEADROOM,
};
use crate::api::{
    AgentError, Delivery, DeliveryToken, NodeInfo, NodeStats, RegistrationId, SendAccepted,
    SendRequest,
};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the address: the node is not running.
    #[error("cannot reach the node at {addr}: {reason} — is dtnd running?")]
    NotRunning {
        /// The address tried.
        addr: String,
        /// "connection refused", "no such socket".
        reason: String,
    },
    /// Connecting failed for another reason.
    #[error("cannot connect to the node at {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The node refused the request.
    #[error("refused by the node: {0}")]
    Refused(AgentError),
    /// The node's agent server refused the connection or a frame, and closed the connection.
    #[error("the node closed the connection: {message}")]
    Rejected {
        /// What went wrong.
        kind: ProtocolErrorKind,
        /// The server's sentence.
        message: String,
    },
    /// The node sent something this client cannot understand.
    #[error("agent protocol error: {0}")]
    Protocol(ProtoError),
    /// The node closed the connection.
    #[error("the node closed the connection")]
    Closed,
    /// An I/O error on the connection.
    #[error("i/o error talking to the node: {0}")]
    Io(#[from] io::Error),
}

impl From<ProtoError> for ClientError {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::Io(e) => ClientError::Io(e),
            e => ClientError::Protocol(e),
        }
    }
}

impl ClientError {
    fn from_wire(e: WireError) -> Self {
        match e {
            WireError::Agent(a) => ClientError::Refused(a),
            WireError::Protocol { kind, message } => ClientError::Rejected { kind, message },
        }
    }
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A connection to a node's agent server.
pub struct AgentClient {
    addr: String,
    reader: FrameReader<BoxRead>,
    writer: BufWriter<BoxWrite>,
    next_id: RequestId,
    pushes: VecDeque<(RegistrationId, Delivery)>,
    /// Request ids of acks sent with [`AgentClient::send_ack`] whose answer has not arrived.
    unanswered_acks: std::collections::HashSet<RequestId>,
    max_frame: usize,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("addr", &self.addr)
            .field("buffered_deliveries", &self.pushes.len())
            .finish()
    }
}

impl AgentClient {
    /// Connect to `addr`: `HOST:PORT` for TCP, or a path containing `/` for a Unix socket.
    /// Frames up to [`DEFAULT_MAX_FRAME`] bytes are accepted and sent.
    pub async fn connect(addr: &str) -> Result<AgentClient, ClientError> {
        Self::connect_with_max_frame(addr, DEFAULT_MAX_FRAME).await
    }

    /// Connect with another frame limit (for a node configured with larger bundles).
    pub async fn connect_with_max_frame(
        addr: &str,
        max_frame: usize,
    ) -> Result<AgentClient, ClientError> {
        let connect_err = |e: io::Error| match e.kind() {
            io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                addr: addr.to_string(),
                reason: "connection refused".into(),
            },
            io::ErrorKind::NotFound => ClientError::NotRunning {
                addr: addr.to_string(),
                reason: "no such socket".into(),
            },
            _ => ClientError::Connect {
                addr: addr.to_string(),
                source: e,
            },
        };
        let (r, w): (BoxRead, BoxWrite) = if addr.contains('/') {
            let s = tokio::net::UnixStream::connect(addr)
                .await
                .map_err(connect_err)?;
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        } else {
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(connect_err)?;
            let _ = s.set_nodelay(true);
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        };
        Ok(AgentClient {
            addr: addr.to_string(),
            reader: FrameReader::new(r, max_frame),
            writer: BufWriter::with_capacity(64 * 1024, w),
            next_id: 1,
            pushes: VecDeque::new(),
            unanswered_acks: std::collections::HashSet::new(),
            max_frame,
        })
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send one bundle; returns once the node has stored it.
    pub async fn send(&mut self, req: SendRequest) -> Result<SendAccepted, ClientError> {
        self.send_with_progress(req, |_, _| {}).await
    }

    /// Send one bundle, calling `progress(bytes_written, total)` as the frame is written.
    pub async fn send_with_progress(
        &mut self,
        req: SendRequest,
        progress: impl FnMut(u64, u64),
    ) -> Result<SendAccepted, ClientError> {
        match self.request(Request::Send(req), progress).await? {
            Response::Sent(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// Register `endpoint`; its deliveries are pushed on this connection.
    pub async fn register(&mut self, endpoint: &str) -> Result<RegistrationId, ClientError> {
        let req = Request::Register {
            endpoint: endpoint.to_string(),
        };
        match self.request(req, |_, _| {}).await? {
            Response::Registered(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// End a registration (its undelivered bundles stay in the node until they expire or the
    /// endpoint is registered again). Buffered deliveries of it are dropped.
    pub async fn unregister(&mut self, reg: RegistrationId) -> Result<(), ClientError> {
        match self
            .request(Request::Unregister { registration: reg }, |_, _| {})
            .await?
        {
            Response::Ok => {
                self.pushes.retain(|(r, _)| *r != reg);
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The next delivery pushed by the node, for any registration of this client.
    /// Cancel-safe: dropping the future loses no delivery.
    pub async fn next_delivery(&mut self) -> Result<Delivery, ClientError> {
        Ok(self.next_push().await?.1)
    }

    /// The next delivery with the registration it came on.
    /// Cancel-safe: dropping the future loses no delivery.
    pub async fn next_push(&mut self) -> Result<(RegistrationId, Delivery), ClientError> {
        if let Some(p) = self.pushes.pop_front() {
            return Ok(p);
        }
        loop {
            if let Some(p) = self.read_unsolicited().await? {
                return Ok(p);
            }
        }
    }

    /// Acknowledge a delivery like [`AgentClient::ack`] without waiting for the answer, so
    /// that an application taking many deliveries does not wait for the node's disk once per
    /// bundle. The answers are read with later calls; [`AgentClient::settle_acks`] waits for
    /// those still outstanding (an error answer is returned by the call that reads it).
    pub async fn send_ack(
        &mut self,
        reg: RegistrationId,
        token: DeliveryToken,
    ) -> Result<(), ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = Message::Request {
            id,
            request: Request::Ack {
                registration: reg,
                token,
            },
        }
        .encode()?;
        self.write_frame(&frame, &mut |_, _| {}).await?;
        self.unanswered_acks.insert(id);
        Ok(())
    }

    /// Waits until every ack sent with [`AgentClient::send_ack`] is answered: from then on the
    /// node never delivers those bundles again (its delivered-id records are on disk).
    pub async fn settle_acks(&mut self) -> Result<(), ClientError> {
        while !self.unanswered_acks.is_empty() {
            if let Some(p) = self.read_unsolicited().await? {
                self.pushes.push_back(p);
            }
        }
        Ok(())
    }

    /// Acknowledge a delivery: the node may now remove the bundle from its store.
    pub async fn ack(
        &mut self,
        reg: RegistrationId,
        token: DeliveryToken,
    ) -> Result<(), ClientError> {
        let req = Request::Ack {
            registration: reg,
            token,
        };
        match self.request(req, |_, _| {}).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Node information.
    pub async fn info(&mut self) -> Result<NodeInfo, ClientError> {
        match self.request(Request::Info, |_, _| {}).await? {
            Response::Info(i) => Ok(i),
            other => Err(unexpected(&other)),
        }
    }

    /// All metrics of the node.
    pub async fn stats(&mut self) -> Result<NodeStats, ClientError> {
        match self.request(Request::Stats, |_, _| {}).await? {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Close the connection (the node unregisters this client's registrations).
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.writer.shutdown().await?;
        Ok(())
    }

    /// Reads one message that answers no request being waited for: a delivery (returned), the
    /// answer to an ack sent with [`AgentClient::send_ack`] (checked), or an error.
    /// Cancel-safe like [`Self::read_message`].
    async fn read_unsolicited(
        &mut self,
    ) -> Result<Option<(RegistrationId, Delivery)>, ClientError> {
        match self.read_message().await? {
            Message::Delivery {
                registration,
                delivery,
            } => Ok(Some((registration, delivery))),
            Message::Response { id, response } if self.unanswered_acks.remove(&id) => {
                ack_answer(response).map(|()| None)
            }
            Message::Response {
                id: 0,
                response: Response::Error(e),
            } => Err(ClientError::from_wire(e)),
            other => Err(ClientError::Protocol(ProtoError::Unexpected(format!(
                "{other:?}"
            )))),
        }
    }

    async fn read_message(&mut self) -> Result<Message, ClientError> {
        match self.reader.read_frame().await? {
            Some(frame) => Ok(Message::decode(&frame)?),
            None => Err(ClientError::Closed),
        }
    }

    /// Write a request and wait for its response, buffering pushed deliveries meanwhile.
    /// Not cancel-safe (a frame may be left half written).
    async fn request(
        &mut self,
        request: Request,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = Message::Request { id, request }.encode()?;
        if frame.body_len() > self.max_frame {
            // The node would refuse the frame and close the connection: refuse it here.
            return Err(ClientError::Refused(AgentError::TooLarge {
                size: frame.payload.len() as u64,
                limit: self.max_frame.saturating_sub(FRAME_HEADROOM) as u64,
            }));
        }
        if let Err(e) = self.write_frame(&frame, &mut progress).await {
            // The node may have refused the frame and closed: report its reason if it sent one.
            let reason = tokio::time::timeout(Duration::from_secs(1), self.read_message()).await;
            if let Ok(Ok(Message::Response {
                response: Response::Error(w),
                ..
            })) = reason
            {
                return Err(ClientError::from_wire(w));
            }
            return Err(e.into());
        }
        loop {
            match self.read_message().await? {
                Message::Delivery {
                    registration,
                    delivery,
                } => self.pushes.push_back((registration, delivery)),
                Message::Response { id: rid, response } if self.unanswered_acks.remove(&rid) => {
                    ack_answer(response)?
                }
                Message::Response { id: rid, response } if rid == id || rid == 0 => {
                    return match response {
                        Response::Error(e) => Err(ClientError::from_wire(e)),
                        r => Ok(r),
                    };
                }
                other => {
                    return Err(ClientError::Protocol(ProtoError::Unexpected(format!(
                        "{other:?}"
                    ))))
                }
            }
        }
    }

    async fn write_frame(
        &mut self,
        frame: &EncodedFrame,
        progress: &mut impl FnMut(u64, u64),
    ) -> io::Result<()> {
        let total = frame.wire_len() as u64;
        self.writer.write_all(&frame.head).await?;
        let mut done = frame.head.len() as u64;
        for chunk in frame.payload.chunks(1024 * 1024) {
            self.writer.write_all(chunk).await?;
            done += chunk.len() as u64;
            progress(done, total);
        }
        self.writer.flush().await?;
        progress(total, total);
        Ok(())
    }
}

fn unexpected(r: &Response) -> ClientError {
    ClientError::Protocol(ProtoError::Unexpected(format!(
        "response does not match the request: {r:?}"
    )))
}

/// The answer to an ack sent with [`AgentClient::send_ack`].
fn ack_answer(response: Response) -> Result<(), ClientError> {
    match response {
        Response::Ok => Ok(()),
        Response::Error(e) => Err(ClientError::from_wire(e)),
        other => Err(unexpected(&other)),
    }
}
