//! A stand-in for the node core behind an agent server, for testing agent clients and tools
//! without a daemon: it answers every [`AgentCommand`] from memory, records what it was asked,
//! and lets a test push deliveries to registrations. It implements the agent side of RFC 9171
//! §5.2/§5.7 only as far as tests need (no store, no forwarding).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Notify};

use crate::api::{
    AgentCommand, AgentError, BundleIdent, Delivery, DeliveryToken, NodeHandle, NodeInfo,
    NodeStats, RegistrationId, SendAccepted, SendRequest,
};

/// What the fake node has seen, for assertions.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Every accepted send, in order.
    pub sent: Vec<SendRequest>,
    /// Live registrations: id → (endpoint, delivery channel).
    pub registrations: HashMap<RegistrationId, (String, mpsc::Sender<Delivery>)>,
    /// Every unregistered registration id, in order.
    pub unregistered: Vec<RegistrationId>,
    /// Every acknowledgement.
    pub acks: Vec<(RegistrationId, DeliveryToken)>,
    /// When set, sends are refused with this error.
    pub refuse_sends: Option<AgentError>,
    /// Stats returned by `stats`.
    pub stats: NodeStats,
    /// Echo service number: a send to `ipn:N.<echo>` is answered by a delivery of the same
    /// payload to the sender's registered source endpoint (like the daemon's echo service).
    pub echo_service: Option<u64>,
    next_reg: RegistrationId,
    next_token: DeliveryToken,
    next_seq: u64,
}

/// A fake node core: a task answering agent commands.
#[derive(Clone, Debug)]
pub struct FakeNode {
    /// The node ID it reports (`ipn:1.0`).
    pub node_id: String,
    /// Shared state.
    pub state: Arc<Mutex<FakeState>>,
    /// Notified after every command handled.
    pub changed: Arc<Notify>,
}

impl FakeNode {
    /// Start the fake node task; returns it and the handle to give an agent server.
    pub fn start(node_id: &str) -> (FakeNode, NodeHandle) {
        let (tx, mut rx) = mpsc::channel::<AgentCommand>(64);
        let node = FakeNode {
            node_id: node_id.to_string(),
            state: Arc::new(Mutex::new(FakeState {
                next_reg: 1,
                next_token: 1,
                ..Default::default()
            })),
            changed: Arc::new(Notify::new()),
        };
        let me = node.clone();
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                me.handle(cmd);
                me.changed.notify_waiters();
            }
        });
        (node, NodeHandle::new(tx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, cmd: AgentCommand) {
        let mut st = self.lock();
        match cmd {
            AgentCommand::Register {
                endpoint,
                deliveries,
                reply,
            } => {
                if st.registrations.values().any(|(e, _)| *e == endpoint) {
                    let _ = reply.send(Err(AgentError::AlreadyRegistered(endpoint)));
                } else if endpoint.is_empty() {
                    let _ = reply.send(Err(AgentError::Invalid("empty endpoint".into())));
                } else {
                    let id = st.next_reg;
                    st.next_reg += 1;
                    st.registrations.insert(id, (endpoint, deliveries));
                    let _ = reply.send(Ok(id));
                }
            }
            AgentCommand::Unregister {
                registration,
                reply,
            } => {
                if st.registrations.remove(&registration).is_some() {
                    st.unregistered.push(registration);
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(AgentError::UnknownRegistration(registration)));
                }
            }
            AgentCommand::Send { request, reply } => {
                if let Some(e) = st.refuse_sends.clone() {
                    let _ = reply.send(Err(e));
                    return;
                }
                st.next_seq += 1;
                let source = request
                    .source
                    .clone()
                    .unwrap_or_else(|| self.node_id.clone());
                let id = BundleIdent {
                    source: source.clone(),
                    creation_ms: 1_000_000,
                    sequence: st.next_seq,
                    fragment: None,
                };
                if let Some(echo) = st.echo_service {
                    let node_part = self.node_id.trim_end_matches(".0");
                    if request.destination == format!("{node_part}.{echo}") {
                        let d = Delivery {
                            token: st.next_token,
                            id: BundleIdent {
                                source: request.destination.clone(),
                                ..id.clone()
                            },
                            destination: source.clone(),
                            report_to: request.destination.clone(),
                            lifetime_ms: request.lifetime_ms,
                            payload: request.payload.clone(),
                        };
                        st.next_token += 1;
                        if let Some((_, tx)) = st.registrations.values().find(|(e, _)| *e == source)
                        {
                            let _ = tx.try_send(d);
                        }
                    }
                }
                st.sent.push(request);
                let _ = reply.send(Ok(SendAccepted { id }));
            }
            AgentCommand::Ack {
                registration,
                token,
                reply,
            } => {
                st.acks.push((registration, token));
                let _ = reply.send(Ok(()));
            }
            AgentCommand::Info { reply } => {
                let mut registrations: Vec<String> =
                    st.registrations.values().map(|(e, _)| e.clone()).collect();
                registrations.sort();
                let _ = reply.send(NodeInfo {
                    node_id: self.node_id.clone(),
                    version: "fake 0".into(),
                    neighbours: vec!["n2".into()],
                    registrations,
                });
            }
            AgentCommand::Stats { reply } => {
                let _ = reply.send(st.stats.clone());
            }
        }
    }

    /// Push a delivery with `payload` to the registration of `endpoint`, without waiting;
    /// returns its token, or `None` when there is no such registration or its channel is full.
    pub fn push(&self, endpoint: &str, source: &str, payload: Bytes) -> Option<DeliveryToken> {
        let mut st = self.lock();
        let token = st.next_token;
        st.next_token += 1;
        st.next_seq += 1;
        let seq = st.next_seq;
        let (_, tx) = st.registrations.values().find(|(e, _)| e == endpoint)?;
        let d = Delivery {
            token,
            id: BundleIdent {
                source: source.to_string(),
                creation_ms: 2_000_000,
                sequence: seq,
                fragment: None,
            },
            destination: endpoint.to_string(),
            report_to: source.to_string(),
            lifetime_ms: 60_000,
            payload,
        };
        tx.try_send(d).ok().map(|_| token)
    }

    /// Wait (bounded by `timeout`) until `cond` holds on the state.
    pub async fn wait_for(
        &self,
        timeout: std::time::Duration,
        mut cond: impl FnMut(&FakeState) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if cond(&self.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond(&self.lock());
            }
        }
    }

    /// Run `f` on the state.
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.lock())
    }
}

/// A shutdown signal pair for servers under test.
pub fn shutdown_pair() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}
