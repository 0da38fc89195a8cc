//! The agent server: accepts application clients on a TCP or Unix socket and turns their
//! frames ([`super::proto`]) into [`AgentCommand`]s for the node core (RFC 9171 §5.2
//! transmission on behalf of an application, §5.7 local delivery to a registration).
//!
//! Per client: one task reads frames and sends commands to the node in the order they arrived
//! (at most [`MAX_REQUESTS_IN_FLIGHT`] unanswered at a time); one task writes, responses before
//! pushed deliveries; one forwarding task per registration moves deliveries from the node's
//! bounded channel (`delivery_buffer`) to the writer, so a client that does not read stalls only
//! its own registrations. A frame over `max_frame` (checked from its length prefix, before
//! allocating) or one that does not decode is answered with an error frame (request id 0) and
//! closes that client only. When a client goes away, its registrations are unregistered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::proto::{
    EncodedFrame, FrameReader, Message, ProtoError, ProtocolErrorKind, Request, RequestId,
    Response, WireError, DEFAULT_MAX_FRAME,
};
use crate::api::{AgentCommand, AgentError, Delivery, NodeHandle, RegistrationId};

/// Requests of one client sent to the node and not yet answered; the server stops reading that
/// client's frames at this count (back-pressure).
pub const MAX_REQUESTS_IN_FLIGHT: usize = 64;

/// How long a client being closed is given to read our error frame, and how long cleanup may
/// wait for the node (unregistering).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Frames queued to a client's writer: responses, and pushed deliveries.
const RESPONSE_QUEUE: usize = MAX_REQUESTS_IN_FLIGHT;
const PUSH_QUEUE: usize = 4;

/// Limits of the agent server.
#[derive(Clone, Debug)]
pub struct AgentServerConfig {
    /// Largest frame body accepted from a client, in bytes (a bundle limit plus headroom).
    pub max_frame: usize,
    /// Clients served at once; one more is answered with a `busy` error and closed.
    pub max_clients: usize,
    /// Deliveries buffered per registration between the node and the client's socket.
    pub delivery_buffer: usize,
}

impl Default for AgentServerConfig {
    fn default() -> Self {
        AgentServerConfig {
            max_frame: DEFAULT_MAX_FRAME,
            max_clients: 256,
            delivery_buffer: 64,
        }
    }
}

/// Serve agent clients on a TCP listener until `shutdown` becomes true (or its sender is
/// dropped); then stop accepting, close every client and return.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    node: NodeHandle,
    config: AgentServerConfig,
    shutdown: watch::Receiver<bool>,
) {
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(%local, "agent server listening (tcp)");
    serve(
        || async {
            let (s, peer) = listener.accept().await?;
            let _ = s.set_nodelay(true);
            let (r, w) = s.into_split();
            Ok((r, w, peer.to_string()))
        },
        node,
        config,
        shutdown,
    )
    .await
}

/// Serve agent clients on a Unix-domain socket listener until `shutdown` becomes true.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    node: NodeHandle,
    config: AgentServerConfig,
    shutdown: watch::Receiver<bool>,
) {
    let local = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "unix".into());
    info!(%local, "agent server listening (unix)");
    let mut n = 0u64;
    serve(
        || {
            n += 1;
            let name = format!("unix:{local}#{n}");
            let l = &listener;
            async move {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok((r, w, name))
            }
        },
        node,
        config,
        shutdown,
    )
    .await
}

async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender counts as shutdown.
    let _ = shutdown.wait_for(|v| *v).await;
}

async fn serve<F, Fut, R, W>(
    mut accept: F,
    node: NodeHandle,
    config: AgentServerConfig,
    mut shutdown: watch::Receiver<bool>,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(R, W, String)>>,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(config.max_clients));
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = wait_shutdown(&mut shutdown) => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            accepted = accept() => match accepted {
                Ok((r, w, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        debug!(%peer, "agent client connected");
                        let conn = Connection::new(peer, node.clone(), config.clone(), shutdown.clone());
                        clients.spawn(conn.run(r, w, permit));
                    }
                    Err(_) => {
                        warn!(%peer, max = config.max_clients, "agent client refused: too many clients");
                        clients.spawn(refuse_busy(w, config.max_clients));
                    }
                },
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!(error = %e, "agent server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    debug!("agent server stopping");
    let bound = tokio::time::sleep(CLOSE_GRACE * 2);
    tokio::pin!(bound);
    while !clients.is_empty() {
        tokio::select! {
            _ = clients.join_next() => {}
            _ = &mut bound => { clients.abort_all(); break; }
        }
    }
}

async fn refuse_busy<W: AsyncWrite + Unpin>(mut w: W, max: usize) {
    let frame = error_frame(
        0,
        WireError::Protocol {
            kind: ProtocolErrorKind::Busy,
            message: format!("the node serves at most {max} agent clients"),
        },
    );
    if let Some(f) = frame {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            f.write_to(&mut w).await?;
            w.shutdown().await
        })
        .await;
    }
}

fn error_frame(id: RequestId, err: WireError) -> Option<EncodedFrame> {
    Message::Response {
        id,
        response: Response::Error(err),
    }
    .encode()
    .ok()
}

/// What an in-flight request turns into once the node answers.
enum Completion {
    Respond(RequestId, Response),
    Registered(RequestId, RegistrationId, mpsc::Receiver<Delivery>),
    Unregistered(RequestId, RegistrationId),
}

/// Why the connection loop ended.
enum Close {
    Eof,
    Error(WireError),
    Shutdown,
    WriterGone,
    /// The writer task has ended (and its handle has been polled to completion).
    WriterEnded,
}

struct Connection {
    peer: String,
    node: NodeHandle,
    config: AgentServerConfig,
    shutdown: watch::Receiver<bool>,
    /// Registrations of this client and their forwarding tasks.
    registrations: HashMap<RegistrationId, JoinHandle<()>>,
    inflight: JoinSet<Option<Completion>>,
}

impl Connection {
    fn new(
        peer: String,
        node: NodeHandle,
        config: AgentServerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Connection {
            peer,
            node,
            config,
            shutdown,
            registrations: HashMap::new(),
            inflight: JoinSet::new(),
        }
    }

    async fn run<R, W>(mut self, r: R, w: W, _permit: OwnedSemaphorePermit)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut reader = FrameReader::new(r, self.config.max_frame);
        let (resp_tx, resp_rx) = mpsc::channel::<EncodedFrame>(RESPONSE_QUEUE);
        let (push_tx, push_rx) = mpsc::channel::<EncodedFrame>(PUSH_QUEUE);
        let mut writer = tokio::spawn(write_loop(w, resp_rx, push_rx, self.peer.clone()));

        let close = self
            .serve_frames(&mut reader, &resp_tx, &push_tx, &mut writer)
            .await;

        let mut drain = false;
        match &close {
            Close::Eof => debug!(peer = %self.peer, "agent client disconnected"),
            Close::WriterGone | Close::WriterEnded => {
                debug!(peer = %self.peer, "agent client connection lost")
            }
            Close::Shutdown => {
                if let Some(f) = error_frame(0, WireError::Agent(AgentError::ShuttingDown)) {
                    let _ = resp_tx.try_send(f);
                }
            }
            Close::Error(err) => {
                warn!(peer = %self.peer, error = %err, "agent client closed: protocol error");
                if let Some(f) = error_frame(0, err.clone()) {
                    let _ = resp_tx.try_send(f);
                }
                drain = true;
            }
        }
        // Stop pushing, let the writer flush what is queued (the error frame), then close.
        for (_, fwd) in self.registrations.iter() {
            fwd.abort();
        }
        drop(resp_tx);
        drop(push_tx);
        if matches!(close, Close::WriterEnded) {
        } else if drain {
            // Read and discard what the client is still sending, so that it reads our error
            // frame instead of a connection reset.
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                let _ = (&mut writer).await;
                reader.drain(self.config.max_frame).await;
            })
            .await;
        } else {
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
        }
        writer.abort();
        drop(reader);
        self.cleanup().await;
    }

    async fn serve_frames<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        resp_tx: &mpsc::Sender<EncodedFrame>,
        push_tx: &mpsc::Sender<EncodedFrame>,
        writer: &mut JoinHandle<()>,
    ) -> Close {
        let mut shutdown = self.shutdown.clone();
        loop {
            let room = self.inflight.len() < MAX_REQUESTS_IN_FLIGHT;
            tokio::select! {
                biased;
                _ = wait_shutdown(&mut shutdown) => return Close::Shutdown,
                _ = &mut *writer => return Close::WriterEnded,
                Some(done) = self.inflight.join_next(), if !self.inflight.is_empty() => {
                    if let Ok(Some(c)) = done {
                        if !self.complete(c, resp_tx, push_tx).await {
                            return Close::WriterGone;
                        }
                    }
                }
                frame = reader.read_frame(), if room => {
                    let frame = match frame {
                        Ok(Some(f)) => f,
                        Ok(None) => return Close::Eof,
                        Err(ProtoError::Io(e)) => {
                            debug!(peer = %self.peer, error = %e, "agent client read failed");
                            return Close::Eof;
                        }
                        Err(e) => return Close::Error(protocol_error(&e)),
                    };
                    let msg = match Message::decode(&frame) {
                        Ok(m) => m,
                        Err(e) => return Close::Error(protocol_error(&e)),
                    };
                    let Message::Request { id, request } = msg else {
                        return Close::Error(WireError::Protocol {
                            kind: ProtocolErrorKind::UnexpectedMessage,
                            message: "only requests may be sent to the node".into(),
                        });
                    };
                    let immediate = tokio::select! {
                        biased;
                        _ = wait_shutdown(&mut shutdown) => return Close::Shutdown,
                        r = self.dispatch(id, request) => r,
                    };
                    if let Some(resp) = immediate {
                        if !send_response(resp_tx, id, resp).await {
                            return Close::WriterGone;
                        }
                    }
                }
            }
        }
    }

    /// Send a request's command to the node (in arrival order) and leave the wait for its
    /// answer to an in-flight task. Returns a response to send at once, if any.
    async fn dispatch(&mut self, id: RequestId, request: Request) -> Option<Response> {
        let refused = |e: AgentError| Some(Response::Error(WireError::Agent(e)));
        match request {
            Request::Register { endpoint } => {
                let (dtx, drx) = mpsc::channel(self.config.delivery_buffer.max(1));
                let (reply, rx) = oneshot::channel();
                let cmd = AgentCommand::Register {
                    endpoint,
                    deliveries: dtx,
                    reply,
                };
                if let Err(e) = self.node.command(cmd).await {
                    return refused(e);
                }
                let node = self.node.clone();
                self.inflight.spawn(async move {
                    Some(match node.reply(rx).await {
                        Ok(Ok(reg)) => Completion::Registered(id, reg, drx),
                        Ok(Err(e)) => Completion::Respond(id, error_response(e)),
                        Err(_) => Completion::Respond(id, error_response(AgentError::ShuttingDown)),
                    })
                });
                None
            }
            Request::Unregister { registration } => {
                if !self.registrations.contains_key(&registration) {
                    return refused(AgentError::UnknownRegistration(registration));
                }
                let (reply, rx) = oneshot::channel();
                let cmd = AgentCommand::Unregister {
                    registration,
                    reply,
                };
                if let Err(e) = self.node.command(cmd).await {
                    return refused(e);
                }
                let node = self.node.clone();
                self.inflight.spawn(async move {
                    Some(match node.reply(rx).await {
                        Ok(Ok(())) => Completion::Unregistered(id, registration),
                        Ok(Err(e)) => Completion::Respond(id, error_response(e)),
                        Err(_) => Completion::Respond(id, error_response(AgentError::ShuttingDown)),
                    })
                });
                None
            }
            Request::Send(request) => {
                let (reply, rx) = oneshot::channel();
                if let Err(e) = self
                    .node
                    .command(AgentCommand::Send { request, reply })
                    .await
                {
                    return refused(e);
                }
                let node = self.node.clone();
                self.inflight.spawn(async move {
                    Some(Completion::Respond(
                        id,
                        match node.reply(rx).await {
                            Ok(Ok(accepted)) => Response::Sent(accepted),
                            Ok(Err(e)) => error_response(e),
                            Err(_) => error_response(AgentError::ShuttingDown),
                        },
                    ))
                });
                None
            }
            Request::Ack {
                registration,
                token,
            } => {
                // A registration of another client is "unknown" to this one.
                if !self.registrations.contains_key(&registration) {
                    return refused(AgentError::UnknownRegistration(registration));
                }
                let (reply, rx) = oneshot::channel();
                if let Err(e) = self
                    .node
                    .command(AgentCommand::Ack {
                        registration,
                        token,
                        reply,
                    })
                    .await
                {
                    return refused(e);
                }
                let node = self.node.clone();
                self.inflight.spawn(async move {
                    Some(Completion::Respond(
                        id,
                        match node.reply(rx).await {
                            Ok(Ok(())) => Response::Ok,
                            Ok(Err(e)) => error_response(e),
                            Err(_) => error_response(AgentError::ShuttingDown),
                        },
                    ))
                });
                None
            }
            Request::Info => {
                let (reply, rx) = oneshot::channel();
                if let Err(e) = self.node.command(AgentCommand::Info { reply }).await {
                    return refused(e);
                }
                let node = self.node.clone();
                self.inflight.spawn(async move {
                    Some(Completion::Respond(
                        id,
                        match node.reply(rx).await {
                            Ok(info) => Response::Info(info),
                            Err(_) => error_response(AgentError::ShuttingDown),
                        },
                    ))
                });
                None
            }
            Request::Stats => {
                let (reply, rx) = oneshot::channel();
                if let Err(e) = self.node.command(AgentCommand::Stats { reply }).await {
                    return refused(e);
                }
                let node = self.node.clone();
                self.inflight.spawn(async move {
                    Some(Completion::Respond(
                        id,
                        match node.reply(rx).await {
                            Ok(stats) => Response::Stats(stats),
                            Err(_) => error_response(AgentError::ShuttingDown),
                        },
                    ))
                });
                None
            }
        }
    }

    /// Handle a node answer; false when the writer is gone.
    async fn complete(
        &mut self,
        c: Completion,
        resp_tx: &mpsc::Sender<EncodedFrame>,
        push_tx: &mpsc::Sender<EncodedFrame>,
    ) -> bool {
        match c {
            Completion::Respond(id, resp) => send_response(resp_tx, id, resp).await,
            Completion::Registered(id, reg, drx) => {
                // The response is queued before the forwarder starts, and the writer sends
                // responses first: the client sees `registered` before any delivery for it.
                let ok = send_response(resp_tx, id, Response::Registered(reg)).await;
                let fwd = tokio::spawn(forward_deliveries(reg, drx, push_tx.clone()));
                if let Some(old) = self.registrations.insert(reg, fwd) {
                    old.abort();
                }
                ok
            }
            Completion::Unregistered(id, reg) => {
                if let Some(fwd) = self.registrations.remove(&reg) {
                    fwd.abort();
                }
                send_response(resp_tx, id, Response::Ok).await
            }
        }
    }

    /// After the client is gone: learn the outcome of registrations still in flight, then
    /// unregister every registration of this client (its bundles stay in the node's store).
    async fn cleanup(mut self) {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(done) = self.inflight.join_next().await {
                if let Ok(Some(Completion::Registered(_, reg, _))) = done {
                    self.registrations.insert(reg, tokio::spawn(async {}));
                }
                if let Ok(Some(Completion::Unregistered(_, reg))) = done {
                    self.registrations.remove(&reg);
                }
            }
        })
        .await;
        self.inflight.abort_all();
        for (reg, fwd) in self.registrations.drain() {
            fwd.abort();
            let node = self.node.clone();
            let r = tokio::time::timeout(
                CLOSE_GRACE,
                node.request(|reply| AgentCommand::Unregister {
                    registration: reg,
                    reply,
                }),
            )
            .await;
            debug!(peer = %self.peer, registration = reg, result = ?r, "unregistered on disconnect");
        }
    }
}

fn error_response(e: AgentError) -> Response {
    Response::Error(WireError::Agent(e))
}

fn protocol_error(e: &ProtoError) -> WireError {
    let kind = match e {
        ProtoError::FrameTooLarge { .. } => ProtocolErrorKind::FrameTooLarge,
        ProtoError::UnsupportedVersion(_) => ProtocolErrorKind::UnsupportedVersion,
        ProtoError::Unexpected(_) => ProtocolErrorKind::UnexpectedMessage,
        _ => ProtocolErrorKind::BadFrame,
    };
    WireError::Protocol {
        kind,
        message: e.to_string(),
    }
}

async fn send_response(tx: &mpsc::Sender<EncodedFrame>, id: RequestId, response: Response) -> bool {
    match (Message::Response { id, response }).encode() {
        Ok(f) => tx.send(f).await.is_ok(),
        Err(e) => {
            warn!(error = %e, "cannot encode an agent response");
            true
        }
    }
}

/// Move deliveries of one registration from the node's channel to the client's writer.
async fn forward_deliveries(
    registration: RegistrationId,
    mut rx: mpsc::Receiver<Delivery>,
    push_tx: mpsc::Sender<EncodedFrame>,
) {
    while let Some(delivery) = rx.recv().await {
        match (Message::Delivery {
            registration,
            delivery,
        })
        .encode()
        {
            Ok(f) => {
                if push_tx.send(f).await.is_err() {
                    break;
                }
            }
            Err(e) => warn!(registration, error = %e, "cannot encode a delivery"),
        }
    }
}

/// Write queued frames, responses first; flush when nothing more is queued.
async fn write_loop<W: AsyncWrite + Unpin>(
    w: W,
    mut resp_rx: mpsc::Receiver<EncodedFrame>,
    mut push_rx: mpsc::Receiver<EncodedFrame>,
    peer: String,
) {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    let mut resp_open = true;
    let mut push_open = true;
    while resp_open || push_open {
        let frame = tokio::select! {
            biased;
            f = resp_rx.recv(), if resp_open => match f { Some(f) => f, None => { resp_open = false; continue } },
            f = push_rx.recv(), if push_open => match f { Some(f) => f, None => { push_open = false; continue } },
        };
        if let Err(e) = frame.write_to(&mut w).await {
            debug!(%peer, error = %e, "agent client write failed");
            return;
        }
        if resp_rx.is_empty() && push_rx.is_empty() {
            if let Err(e) = w.flush().await {
                debug!(%peer, error = %e, "agent client write failed");
                return;
            }
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}
