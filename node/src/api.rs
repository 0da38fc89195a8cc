//! The boundary between applications and the node core.
//!
//! The agent server ([`crate::agent`]) turns frames from application clients into
//! [`AgentCommand`]s and sends them to the daemon ([`crate::daemon`]) through a [`NodeHandle`];
//! the daemon answers on the `oneshot` in each command and pushes [`Delivery`]s to registered
//! clients. These types carry no wire encoding: the agent protocol's CBOR frames live in
//! [`crate::agent::proto`]. Times are DTN time in milliseconds since 2000-01-01T00:00:00Z
//! (RFC 9171 §4.2.6).

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Milliseconds since 2000-01-01T00:00:00Z (RFC 9171 §4.2.6: DTN time, in milliseconds).
pub type DtnMillis = u64;

/// Identifies one registration of one agent client (assigned by the daemon).
pub type RegistrationId = u64;

/// Identifies one delivery pushed to a registration, for its acknowledgement.
pub type DeliveryToken = u64;

/// Bundle priority requested by an application: the order in which this node's queues send
/// bundles (RFC 9171 has no priority field; it is local to this node and is not encoded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Sent after everything else.
    Bulk,
    /// The default.
    #[default]
    Normal,
    /// Sent first; bypasses convergence-layer aggregation waits (LTP urgent).
    Expedited,
}

/// Which bundle status reports an application asks for (RFC 9171 §4.2.3 flags, §6.1.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StatusRequests {
    /// Request reporting of bundle reception.
    pub received: bool,
    /// Request reporting of bundle forwarding.
    pub forwarded: bool,
    /// Request reporting of bundle delivery.
    pub delivered: bool,
    /// Request reporting of bundle deletion.
    pub deleted: bool,
}

/// The RFC 9171 §5.1 identity of a bundle (source, creation timestamp, fragment offset and
/// total application data unit length), in a form that needs no `bpv7` types.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BundleIdent {
    /// Source node ID, in text form (`ipn:1.1`, `dtn://node/app`).
    pub source: String,
    /// Creation time (DTN milliseconds; 0 for a source without a clock).
    pub creation_ms: DtnMillis,
    /// Creation sequence number.
    pub sequence: u64,
    /// `(fragment offset, total ADU length)` when the bundle is a fragment.
    pub fragment: Option<(u64, u64)>,
}

impl From<&bpv7::BundleId> for BundleIdent {
    fn from(id: &bpv7::BundleId) -> Self {
        BundleIdent {
            source: id.source.to_string(),
            creation_ms: id.timestamp.time.0,
            sequence: id.timestamp.sequence,
            fragment: id.fragment,
        }
    }
}

impl std::fmt::Display for BundleIdent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.source, self.creation_ms, self.sequence)?;
        if let Some((off, total)) = self.fragment {
            write!(f, "/{off}/{total}")?;
        }
        Ok(())
    }
}

/// An application's request to send one bundle (RFC 9171 §5.2 bundle transmission).
#[derive(Clone, Debug)]
pub struct SendRequest {
    /// Source EID; `None` means the node's own administrative endpoint's node with the
    /// application's registered endpoint, or the node ID when unregistered.
    pub source: Option<String>,
    /// Destination EID in text form.
    pub destination: String,
    /// The application data unit.
    pub payload: Bytes,
    /// Bundle lifetime in milliseconds (RFC 9171 §4.3.1).
    pub lifetime_ms: u64,
    /// Local priority.
    pub priority: Priority,
    /// Report-to EID; `None` means the source.
    pub report_to: Option<String>,
    /// Status reports requested.
    pub requests: StatusRequests,
    /// Set the "bundle must not be fragmented" flag (RFC 9171 §4.2.3).
    pub no_fragment: bool,
}

/// What the node answers to an accepted send: the bundle is in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendAccepted {
    /// The identity of the new bundle.
    pub id: BundleIdent,
}

/// A bundle delivered to a registered application (RFC 9171 §5.7 local bundle delivery). It
/// stays in the node's store until the application acknowledges `token`.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Echo this in the acknowledgement.
    pub token: DeliveryToken,
    /// The bundle's identity (a reassembled bundle is delivered whole, `fragment: None`).
    pub id: BundleIdent,
    /// The destination EID it was addressed to.
    pub destination: String,
    /// The report-to EID.
    pub report_to: String,
    /// Bundle lifetime in milliseconds.
    pub lifetime_ms: u64,
    /// The application data unit.
    pub payload: Bytes,
}

/// Why the node refused an application's request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// A request field is invalid (e.g. an EID that does not parse).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store is at its quota (back-pressure): try again later.
    #[error("store full: {0}")]
    StoreFull(String),
    /// The payload exceeds the node's bundle size limit.
    #[error("bundle too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// Bundle size in bytes.
        size: u64,
        /// The node's limit.
        limit: u64,
    },
    /// The endpoint is already registered by another client.
    #[error("endpoint {0} is already registered")]
    AlreadyRegistered(String),
    /// The registration does not exist (or belongs to another client).
    #[error("unknown registration {0}")]
    UnknownRegistration(RegistrationId),
    /// A storage error.
    #[error("storage error: {0}")]
    Storage(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
}

/// Node identity and configuration summary (the agent's "info" request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node ID (`ipn:1.0`, `dtn://node1/`).
    pub node_id: String,
    /// Software name and version.
    pub version: String,
    /// Names of the configured neighbours.
    pub neighbours: Vec<String>,
    /// Endpoints currently registered.
    pub registrations: Vec<String>,
}

/// One metric sample: a Prometheus-style name, labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// Metric name, `dtn_` prefixed (`dtn_bundles_received_total`).
    pub name: String,
    /// One-line help text.
    pub help: String,
    /// `counter` or `gauge`.
    pub kind: MetricKind,
    /// Label pairs (`[("reason", "lifetime_expired")]`).
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Metric {
    /// A sample of metric `name` (with its `help` line and `kind`) for `labels`.
    pub fn new(
        name: &str,
        help: &str,
        kind: MetricKind,
        labels: &[(&str, &str)],
        value: f64,
    ) -> Metric {
        Metric {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }
}

/// Prometheus metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonically increasing.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A snapshot of every metric of the node (agent "stats", Prometheus `/metrics`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeStats {
    /// All samples.
    pub metrics: Vec<Metric>,
}

impl NodeStats {
    /// The sum of every sample named `name` (all label sets), or `None` if there is none.
    pub fn total(&self, name: &str) -> Option<f64> {
        let mut it = self.metrics.iter().filter(|m| m.name == name).peekable();
        it.peek()?;
        Some(it.map(|m| m.value).sum())
    }

    /// Samples grouped by name, for display.
    pub fn by_name(&self) -> BTreeMap<&str, Vec<&Metric>> {
        let mut map: BTreeMap<&str, Vec<&Metric>> = BTreeMap::new();
        for m in &self.metrics {
            map.entry(m.name.as_str()).or_default().push(m);
        }
        map
    }
}

/// A request from the agent server to the node core. Each carries the `oneshot` on which the
/// daemon answers.
#[derive(Debug)]
pub enum AgentCommand {
    /// Register `endpoint`; deliveries are pushed on `deliveries` (bounded: the node sends at
    /// most its configured window of unacknowledged deliveries per registration).
    Register {
        /// The endpoint EID in text form.
        endpoint: String,
        /// Where the node pushes deliveries for this registration.
        deliveries: mpsc::Sender<Delivery>,
        /// The new registration's id.
        reply: oneshot::Sender<Result<RegistrationId, AgentError>>,
    },
    /// End a registration. Unacknowledged deliveries stay in the store for a later
    /// registration of the same endpoint (until they expire).
    Unregister {
        /// The registration.
        registration: RegistrationId,
        /// Done.
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    /// Send a bundle; answered once the bundle is persisted per the store's durability mode.
    Send {
        /// What to send.
        request: SendRequest,
        /// The accepted bundle's identity, or why it was refused.
        reply: oneshot::Sender<Result<SendAccepted, AgentError>>,
    },
    /// The application has safely kept a delivery: the bundle leaves the store. Answered once
    /// the delivered-id record is persisted (from then on the bundle is never delivered again,
    /// also after a crash); an unknown token is answered at once.
    Ack {
        /// The registration the delivery was pushed to.
        registration: RegistrationId,
        /// The delivery's token.
        token: DeliveryToken,
        /// Done, or why the record could not be written.
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    /// Node information.
    Info {
        /// The answer.
        reply: oneshot::Sender<NodeInfo>,
    },
    /// All metrics.
    Stats {
        /// The answer.
        reply: oneshot::Sender<NodeStats>,
    },
}

/// The agent server's handle on the node core: a bounded command channel.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    tx: mpsc::Sender<AgentCommand>,
}

impl NodeHandle {
    /// A handle sending on `tx` (the daemon keeps the receiver).
    pub fn new(tx: mpsc::Sender<AgentCommand>) -> Self {
        NodeHandle { tx }
    }

    /// Send a command; `Err(ShuttingDown)` once the node has stopped.
    pub async fn command(&self, cmd: AgentCommand) -> Result<(), AgentError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| AgentError::ShuttingDown)
    }

    /// Send a command built around a fresh `oneshot` and wait for its answer.
    pub async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> AgentCommand,
    ) -> Result<T, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.command(make(reply)).await?;
        self.reply(rx).await
    }

    /// The node's answer to a command just sent, or `Err(ShuttingDown)` once the node's core
    /// has stopped without one. The core's end is watched, not only the reply's sender: a
    /// command whose send began as the core stopped can enter tokio's queue after the core
    /// has drained it, and its reply sender then lives as long as any handle does (the LTP
    /// driver's handle hung a node's shutdown that way; see `ltp::driver::LtpHandle`).
    pub async fn reply<T>(&self, rx: oneshot::Receiver<T>) -> Result<T, AgentError> {
        answer_or_closed(rx, &self.tx)
            .await
            .ok_or(AgentError::ShuttingDown)
    }
}

/// The answer on `rx` to a command sent on `queue`, or `None` once the answer's sender is
/// dropped or the queue's receiver has closed (see [`NodeHandle::reply`] for why both).
pub(crate) async fn answer_or_closed<T, C>(
    rx: oneshot::Receiver<T>,
    queue: &mpsc::Sender<C>,
) -> Option<T> {
    tokio::select! {
        biased;
        r = rx => r.ok(),
        () = queue.closed() => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_total_sums_label_sets() {
        let m = |labels: Vec<(String, String)>, value| Metric {
            name: "dtn_bundles_deleted_total".into(),
            help: String::new(),
            kind: MetricKind::Counter,
            labels,
            value,
        };
        let stats = NodeStats {
            metrics: vec![
                m(vec![("reason".into(), "a".into())], 2.0),
                m(vec![("reason".into(), "b".into())], 3.0),
            ],
        };
        assert_eq!(stats.total("dtn_bundles_deleted_total"), Some(5.0));
        assert_eq!(stats.total("nope"), None);
        assert_eq!(stats.by_name().len(), 1);
    }

    #[tokio::test]
    async fn request_after_shutdown_is_an_error() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let h = NodeHandle::new(tx);
        let r = h.request(|reply| AgentCommand::Info { reply }).await;
        assert_eq!(r.unwrap_err(), AgentError::ShuttingDown);
    }

    /// A command left in the queue when the core stops (neither answered nor dropped, as
    /// when its send races the core's last drain) does not leave its caller waiting.
    #[tokio::test]
    async fn a_request_the_stopped_core_never_answers_ends() {
        let (tx, mut rx) = mpsc::channel(1);
        let h = NodeHandle::new(tx);
        let asking =
            tokio::spawn(async move { h.request(|reply| AgentCommand::Info { reply }).await });
        // The command is queued; the core stops without taking it (the queue still holds it,
        // and with it the reply's sender).
        for _ in 0..1000 {
            if !rx.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(rx.len(), 1, "the command was not queued");
        rx.close();
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), asking)
            .await
            .expect("the request still waits")
            .unwrap();
        assert_eq!(r.unwrap_err(), AgentError::ShuttingDown);
        drop(rx);
    }
}
