//! `dtnd` configuration: the TOML schema (node ID, store, agent, metrics, convergence layers,
//! neighbours, static routes, status-report policy, limits, services), its defaults, and the
//! checks that reject a bad file at start with `FILE:LINE:COL: reason`.
//!
//! The node ID and neighbour IDs are RFC 9171 §4.2.5.1 node IDs (`ipn:N.0` or `dtn://name/`);
//! neighbour links are RFC 9174 TCPCLv4, UDP, or LTP (RFC 5326) spans. Parsing happens in two
//! steps: serde reads the file into raw structures that keep the byte span of every value that a
//! semantic check may reject (`toml::Spanned`), unknown keys are errors (`deny_unknown_fields`);
//! then [`Config::from_toml`] checks the meaning (EIDs, addresses, duplicate names, routes via
//! unknown neighbours, one link per neighbour, `[ltp]` present for LTP neighbours) and reports
//! the line and column of the offending value. [`Config::default`] is the built-in default.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use convergence::emulation::LinkProfile;
use serde::Deserialize;
use toml::Spanned;

/// The default configuration as TOML (printed by `dtnd --print-config`).
pub const DEFAULT_TOML: &str = r#"# dtnd configuration (every key shown with its default)
node_id = "ipn:1.0"                # or "dtn://node1/"
log = "info"                       # tracing filter; RUST_LOG overrides

[store]
path = "dtnd-store"                # relative to the working directory
durability = "group"               # "sync" | "group" | "memory"
group_commit = "5ms"               # longest a bundle in transit is held out of the flushes
quota_bytes = 1073741824
quota_bundles = 1000000

[agent]
tcp = "127.0.0.1:4550"             # "off" disables
# unix = "/tmp/dtnd.sock"

[metrics]
http = "127.0.0.1:9550"            # "off" disables

[tcpcl]
listen = "127.0.0.1:4556"          # "off" disables the listener

# [udp]
# listen = "127.0.0.1:4557"

# [ltp]
# engine_id = 1
# listen = "127.0.0.1:1113"
# max_reassembly_memory = 1073741824   # octets held for reassembly, all imports (then SYS_CNCLD)
# max_import_sessions = 1024           # concurrent imports per peer engine
# accept_unknown_peers = false         # take blocks from engines no neighbour names
# max_unknown_peers = 1024             # ... from at most this many of them

# [[neighbour]]
# name = "n2"
# node = "ipn:2.0"
# tcpcl = "127.0.0.1:4566"         # exactly one of tcpcl / udp / ltp
# udp = "127.0.0.1:4567"
# ltp = { engine = 2, addr = "127.0.0.1:1114", green = false, segment_size = 1400, window = 8, aggregation_size = 65536, aggregation_time = "50ms" }
#                                  # owlt = "1s", rate = 125000 override the contact plan's
#                                  # light time and contact rate (default: from the plan; 0 / no
#                                  # pacing without one); max_bytes_in_flight = 4194304
#                                  # caps red data unacknowledged (flow control; by default
#                                  # 4 MiB, ~half the peer's 8 MiB receive buffer, while the
#                                  # span has no rate, and none while it is paced; 0: none);
#                                  # max_retransmission_factor = 16 cancels a block that
#                                  # retransmits more than 16 times its red data (0: no limit);
#                                  # checkpoint_every = 0 adds a checkpoint every N red
#                                  # segments; asynchronous_reports = true (RFC 5326 §3.2.2:
#                                  # false for a peer that does not take them);
#                                  # checkpoint_copies = 1 (each checkpoint ending a
#                                  # transmission goes twice while the peer's reports claim
#                                  # checkpoint_copies_min_loss = 0.01 of the data missing;
#                                  # 0: never; min loss 0: on any link);
#                                  # max_checkpoint_retransmissions = 10 (then RLEXC) and
#                                  # max_report_retransmissions = 10 per segment
# max_bundle_size = 0              # 0 = no limit
# accept_primary_without_crc = false
# emulation = "delay=100ms,loss=2%"   # ltp/udp: any impairment; tcpcl: delay and rate only

# [[route]]
# dest = "ipn:3.*"
# via = "n2"

# [contact_plan]                   # Contact Graph Routing; links follow their contacts
# file = "contacts.txt"            # ION `a contact`/`a range` lines, or HDTN JSON (.json)
# text = "a contact +0 +3600 1 2 125000"   # or the plan inline (instead of file)
# reload_check = "1s"              # re-read the file when it changes ("0s": only on SIGHUP)
# on_contact_end = "suspend"       # LTP sessions in flight: "suspend" timers | "cancel" + re-route
# alternate_routes = 1             # Yen's k routes cached per destination
# hdtn_unix_time = false           # HDTN JSON times are Unix seconds instead of relative

[status_reports]
enabled = true
max_per_second = 100

[limits]
max_bundle_size = 67108864
max_reassembly_bytes = 268435456
delivery_window = 64
max_in_flight = 256                # transfers per neighbour (keep it >= the upstream window)
hop_limit = 64                     # put in bundles created here (1-255)
retry_delay = "1s"                 # after a failed transfer

[services]
echo = 7                           # 0 disables
"#;

/// A configuration error: where and why. Displays as `FILE:LINE:COL: reason`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or breaks a rule.
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        /// The file (`<config>` for a configuration built in code).
        file: String,
        /// 1-based line of the offending key or value (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        col: usize,
        /// Why.
        message: String,
    },
}

/// How the store reaches the disk (`[store] durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurabilityMode {
    /// Every bundle synced before it is acknowledged.
    Sync,
    /// Group commit (the default): a flush starts as soon as the last one ended; bundles in
    /// transit are held out of the flushes for up to `group_commit`.
    Group,
    /// Memory only (tests).
    Memory,
}

/// `[store]`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreSection {
    /// Directory of the sled database.
    pub path: PathBuf,
    /// Durability mode.
    pub durability: DurabilityMode,
    /// Longest time a bundle in transit (to forward or deliver) is held out of the group
    /// commit's flushes: one forwarded and confirmed, or delivered and acknowledged, within it
    /// is never written (see `store`).
    pub group_commit: Duration,
    /// Byte quota.
    pub quota_bytes: u64,
    /// Bundle quota.
    pub quota_bundles: u64,
}

/// `[agent]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSection {
    /// Loopback TCP address of the agent protocol (`None`: off).
    pub tcp: Option<SocketAddr>,
    /// Unix socket path (`None`: none).
    pub unix: Option<PathBuf>,
}

/// `[status_reports]` (RFC 9171 §6.1).
#[derive(Clone, Debug, PartialEq)]
pub struct StatusReportsSection {
    /// Generate status reports.
    pub enabled: bool,
    /// Most reports per second.
    pub max_per_second: u32,
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitsSection {
    /// Largest bundle accepted from applications and neighbours.
    pub max_bundle_size: u64,
    /// Most bytes held for fragment reassembly.
    pub max_reassembly_bytes: u64,
    /// Unacknowledged deliveries per registration.
    pub delivery_window: usize,
    /// Transfers in flight per neighbour. A relay's bundles in transit are acknowledged
    /// upstream once the next hop confirmed them (see `store` held inserts): a limit below the
    /// upstream window makes them queue here until their hold ends and they are written.
    pub max_in_flight: usize,
    /// Hop limit put in the hop-count block of bundles created here (RFC 9171 §4.4.3, 1–255).
    pub hop_limit: u64,
    /// Wait before a bundle whose transfer failed is routed again (the neighbour is paused as
    /// long).
    pub retry_delay: Duration,
}

/// `[ltp]`: this node's LTP engine.
#[derive(Clone, Debug, PartialEq)]
pub struct LtpSection {
    /// Our engine ID (RFC 5326 §3).
    pub engine_id: u64,
    /// UDP address of the engine.
    pub listen: SocketAddr,
    /// Octets held for reassembly over all import sessions, their bookkeeping included
    /// (`ltp::EngineConfig::max_reassembly_memory`): a block that would cross it is cancelled
    /// by the receiver (RFC 5326 §3.2.4, `SystemCancelled`).
    pub max_reassembly_memory: usize,
    /// Concurrent import sessions per peer engine (`ltp::EngineConfig::
    /// max_import_sessions_per_peer`); a further one is cancelled.
    pub max_import_sessions: usize,
    /// Take blocks from LTP engines that are not a neighbour's (`ltp::EngineConfig::
    /// accept_unknown_peers`), answering them at the address their segments came from.
    /// Their bundles are received as from an unknown neighbour; bundles are sent only to
    /// configured neighbours.
    pub accept_unknown_peers: bool,
    /// With `accept_unknown_peers`, how many unknown engines are served; segments from
    /// further ones are dropped and counted (`ltp::EngineConfig::max_unknown_peers`).
    pub max_unknown_peers: usize,
}

impl LtpSection {
    /// Engine `engine_id` on `listen`, with the engine's default limits.
    pub fn new(engine_id: u64, listen: SocketAddr) -> LtpSection {
        let d = ltp::EngineConfig::default();
        LtpSection {
            engine_id,
            listen,
            max_reassembly_memory: d.max_reassembly_memory,
            max_import_sessions: d.max_import_sessions_per_peer,
            accept_unknown_peers: d.accept_unknown_peers,
            max_unknown_peers: d.max_unknown_peers,
        }
    }
}

/// An LTP span to a neighbour (`ltp = { ... }` in a `[[neighbour]]`).
#[derive(Clone, Debug, PartialEq)]
pub struct LtpLink {
    /// The neighbour's engine ID.
    pub engine: u64,
    /// Its UDP address.
    pub addr: SocketAddr,
    /// One-way light time (both directions); `None`: from the contact plan's ranges (or 0
    /// without a plan).
    pub owlt: Option<Duration>,
    /// Rate limit in bytes per second (`Some(0)`: none); `None`: the active contact's rate
    /// from the contact plan (or none without a plan).
    pub rate: Option<u64>,
    /// Send green (unacknowledged) instead of red.
    pub green: bool,
    /// Largest segment.
    pub segment_size: usize,
    /// Parallel export sessions.
    pub window: usize,
    /// Block aggregation size.
    pub aggregation_size: usize,
    /// Block aggregation time.
    pub aggregation_time: Duration,
    /// Flow control (`ltp::SpanConfig::max_bytes_in_flight`): at most this many red octets
    /// sent and not yet acknowledged, over the span's sessions. `None`: chosen by dtnd
    /// ([`crate::links::flow_control`]: 4 MiB while the span is not paced, none while it is);
    /// `Some(0)`: none, only the window limits them. Without a rate (a LAN, loopback) a large
    /// bundle would otherwise overrun the peer's UDP receive buffer: about half of that buffer,
    /// and no less than the span's bandwidth-delay product.
    pub max_bytes_in_flight: Option<u64>,
    /// The span's protocol settings beyond these (the engine's defaults unless configured).
    pub tuning: LtpTuning,
}

/// An LTP neighbour's protocol settings that dtnd passes to the engine's span as they are
/// (keys of the same names in its `ltp = { ... }`).
#[derive(Clone, Debug, PartialEq)]
pub struct LtpTuning {
    /// Most red data one block may retransmit, as a multiple of its red part
    /// (`ltp::SpanConfig::max_retransmission_factor`; beyond it the block is cancelled with
    /// RXMTCYCEXC, RFC 5326 §3.2.4); 0: no limit.
    pub max_retransmission_factor: u32,
    /// A discretionary checkpoint every this many red segments of a block
    /// (`ltp::SpanConfig::checkpoint_every`; 0: only the one ending the red part, plus flow
    /// control's own).
    pub checkpoint_every: u32,
    /// Report a red part completed by a segment that is not a checkpoint at once
    /// (`ltp::SpanConfig::asynchronous_reports`, RFC 5326 §3.2.2); off for a peer that does
    /// not take asynchronous reports.
    pub asynchronous_reports: bool,
    /// Copies of each checkpoint that ends a transmission (`ltp::SpanConfig::checkpoint_copies`):
    /// on a lossy link, a lost one otherwise idles its block for a retransmission timer.
    pub checkpoint_copies: u32,
    /// Checkpoints are copied only while the peer's reports claim at least this share of the
    /// red data missing (`ltp::SpanConfig::checkpoint_copies_min_loss`, 0 to 1).
    pub checkpoint_copies_min_loss: f64,
    /// Retransmissions of one checkpoint before the block is cancelled (RLEXC, RFC 5326
    /// §6.7; `ltp::SpanConfig::max_checkpoint_retransmissions`).
    pub max_checkpoint_retransmissions: u32,
    /// Retransmissions of one report before the receiver gives up on the session (§6.8;
    /// `ltp::SpanConfig::max_report_retransmissions`).
    pub max_report_retransmissions: u32,
}

impl Default for LtpTuning {
    fn default() -> Self {
        let span = ltp::SpanConfig::default();
        LtpTuning {
            max_retransmission_factor: span.max_retransmission_factor,
            checkpoint_every: span.checkpoint_every,
            asynchronous_reports: span.asynchronous_reports,
            checkpoint_copies: span.checkpoint_copies,
            checkpoint_copies_min_loss: span.checkpoint_copies_min_loss,
            max_checkpoint_retransmissions: span.max_checkpoint_retransmissions,
            max_report_retransmissions: span.max_report_retransmissions,
        }
    }
}

/// How a neighbour is reached (exactly one per neighbour).
#[derive(Clone, Debug, PartialEq)]
pub enum Link {
    /// TCPCLv4 to the neighbour's listener.
    Tcpcl(SocketAddr),
    /// One bundle per UDP datagram.
    Udp(SocketAddr),
    /// An LTP span.
    Ltp(LtpLink),
}

/// A `[[neighbour]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct NeighbourConfig {
    /// Unique name.
    pub name: String,
    /// Its node ID.
    pub node: String,
    /// How it is reached.
    pub link: Link,
    /// Largest bundle sent to it (0: no limit).
    pub max_bundle_size: u64,
    /// Accept primary blocks without CRC from it (dtn7-rs 0.21).
    pub accept_primary_without_crc: bool,
    /// Link emulation of the outgoing direction.
    pub emulation: Option<LinkProfile>,
}

/// Where the contact plan is read from.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanSource {
    /// A file (ION lines, or HDTN JSON if it ends in `.json` or starts with `{`).
    File(PathBuf),
    /// Plan text given in the configuration (`text = "..."`).
    Inline(String),
}

/// What happens to LTP sessions in flight when their contact ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactEndPolicy {
    /// Their timers are suspended until the next contact (RFC 5326 §6.1 link-state cues).
    Suspend,
    /// They are cancelled and their bundles routed again.
    Cancel,
}

/// `[contact_plan]`: Contact Graph Routing and contact-driven links.
#[derive(Clone, Debug, PartialEq)]
pub struct ContactPlanSection {
    /// Where the plan is.
    pub source: PlanSource,
    /// How often the file's modification time is checked for a reload (`None`: only SIGHUP).
    pub reload_check: Option<Duration>,
    /// LTP sessions in flight at a contact's end.
    pub on_contact_end: ContactEndPolicy,
    /// Routes computed per destination (Yen's k), at least 1.
    pub alternate_routes: usize,
    /// HDTN JSON times are Unix seconds (HDTN's `usingUnixTimestamp`) instead of seconds after
    /// the node's start.
    pub hdtn_unix_time: bool,
}

/// A `[[route]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteConfig {
    /// Destination pattern.
    pub dest: String,
    /// Name of the neighbour it goes via.
    pub via: String,
}

/// The whole `dtnd` configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// This node's ID.
    pub node_id: String,
    /// Tracing filter.
    pub log: String,
    /// `[store]`.
    pub store: StoreSection,
    /// `[agent]`.
    pub agent: AgentSection,
    /// `[metrics] http` (`None`: off).
    pub metrics: Option<SocketAddr>,
    /// `[tcpcl] listen` (`None`: no listener).
    pub tcpcl_listen: Option<SocketAddr>,
    /// `[udp] listen` (`None`: no UDP CL).
    pub udp_listen: Option<SocketAddr>,
    /// `[ltp]`.
    pub ltp: Option<LtpSection>,
    /// `[[neighbour]]`s.
    pub neighbours: Vec<NeighbourConfig>,
    /// `[[route]]`s, in order of preference.
    pub routes: Vec<RouteConfig>,
    /// `[contact_plan]` (`None`: no CGR; static routes only).
    pub contact_plan: Option<ContactPlanSection>,
    /// `[status_reports]`.
    pub status_reports: StatusReportsSection,
    /// `[limits]`.
    pub limits: LimitsSection,
    /// `[services] echo` (`None`: disabled).
    pub echo_service: Option<u64>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: "ipn:1.0".into(),
            log: "info".into(),
            store: StoreSection {
                path: PathBuf::from("dtnd-store"),
                durability: DurabilityMode::Group,
                group_commit: Duration::from_millis(5),
                quota_bytes: 1 << 30,
                quota_bundles: 1_000_000,
            },
            agent: AgentSection {
                tcp: Some(loopback(4550)),
                unix: None,
            },
            metrics: Some(loopback(9550)),
            tcpcl_listen: Some(loopback(4556)),
            udp_listen: None,
            ltp: None,
            neighbours: Vec::new(),
            routes: Vec::new(),
            contact_plan: None,
            status_reports: StatusReportsSection {
                enabled: true,
                max_per_second: 100,
            },
            limits: LimitsSection {
                max_bundle_size: 64 << 20,
                max_reassembly_bytes: 256 << 20,
                delivery_window: 64,
                max_in_flight: 256,
                hop_limit: 64,
                retry_delay: Duration::from_secs(1),
            },
            echo_service: Some(7),
        }
    }
}

// ---- raw (serde) layer -------------------------------------------------------------------

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_id: Option<S<String>>,
    log: Option<String>,
    store: Option<RawStore>,
    agent: Option<RawAgent>,
    metrics: Option<RawMetrics>,
    tcpcl: Option<RawTcpcl>,
    udp: Option<RawUdp>,
    ltp: Option<S<RawLtp>>,
    #[serde(default)]
    neighbour: Vec<S<RawNeighbour>>,
    #[serde(default)]
    route: Vec<RawRoute>,
    contact_plan: Option<S<RawContactPlan>>,
    status_reports: Option<RawStatusReports>,
    limits: Option<RawLimits>,
    services: Option<RawServices>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Millis(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<String>,
    durability: Option<S<String>>,
    group_commit: Option<S<RawDuration>>,
    quota_bytes: Option<u64>,
    quota_bundles: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    tcp: Option<S<String>>,
    unix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    http: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcpcl {
    listen: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUdp {
    listen: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLtp {
    engine_id: u64,
    listen: Option<S<String>>,
    max_reassembly_memory: Option<S<usize>>,
    max_import_sessions: Option<S<usize>>,
    accept_unknown_peers: Option<bool>,
    max_unknown_peers: Option<S<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLtpLink {
    engine: u64,
    addr: S<String>,
    owlt: Option<S<RawDuration>>,
    rate: Option<u64>,
    green: Option<bool>,
    segment_size: Option<usize>,
    window: Option<usize>,
    aggregation_size: Option<usize>,
    aggregation_time: Option<S<RawDuration>>,
    max_bytes_in_flight: Option<u64>,
    max_retransmission_factor: Option<u32>,
    checkpoint_every: Option<u32>,
    asynchronous_reports: Option<bool>,
    checkpoint_copies: Option<u32>,
    checkpoint_copies_min_loss: Option<S<f64>>,
    max_checkpoint_retransmissions: Option<u32>,
    max_report_retransmissions: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNeighbour {
    name: S<String>,
    node: S<String>,
    tcpcl: Option<S<String>>,
    udp: Option<S<String>>,
    ltp: Option<S<RawLtpLink>>,
    max_bundle_size: Option<u64>,
    accept_primary_without_crc: Option<bool>,
    emulation: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    dest: S<String>,
    via: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContactPlan {
    file: Option<String>,
    text: Option<String>,
    reload_check: Option<S<RawDuration>>,
    on_contact_end: Option<S<String>>,
    alternate_routes: Option<S<usize>>,
    hdtn_unix_time: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatusReports {
    enabled: Option<bool>,
    max_per_second: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_bundle_size: Option<u64>,
    max_reassembly_bytes: Option<u64>,
    delivery_window: Option<S<usize>>,
    max_in_flight: Option<S<usize>>,
    hop_limit: Option<S<u64>>,
    retry_delay: Option<S<RawDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServices {
    echo: Option<u64>,
}

/// An error located by byte span, converted to line and column once the source is known.
struct SpanError {
    span: Option<Range<usize>>,
    message: String,
}

fn err<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, SpanError> {
    Err(SpanError {
        span: Some(span),
        message: message.into(),
    })
}

/// 1-based line and column of byte offset `pos` in `src` (column counted in characters).
pub fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(src.len());
    let before = src.get(..pos).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// Parses a duration: `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"` or `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} has no unit (ms, s, m, h, d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} does not start with a number"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "duration {s:?}: unknown unit {unit:?} (ms, s, m, h, d)"
            ))
        }
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

fn duration(d: &S<RawDuration>) -> Result<Duration, SpanError> {
    match d.get_ref() {
        RawDuration::Millis(ms) => Ok(Duration::from_millis(*ms)),
        RawDuration::Text(t) => parse_duration(t).or_else(|e| err(d.span(), e)),
    }
}

fn socket(v: &S<String>) -> Result<SocketAddr, SpanError> {
    v.get_ref().trim().parse().or_else(|_| {
        err(
            v.span(),
            format!(
                "{:?} is not an IP address and port (e.g. \"127.0.0.1:4556\")",
                v.get_ref()
            ),
        )
    })
}

/// A listener address: absent or `""` keeps `default`, `"off"` disables.
fn listener(
    v: Option<&S<String>>,
    default: Option<SocketAddr>,
) -> Result<Option<SocketAddr>, SpanError> {
    match v {
        None => Ok(default),
        Some(s) if s.get_ref().trim().is_empty() => Ok(default),
        Some(s) if s.get_ref().trim().eq_ignore_ascii_case("off") => Ok(None),
        Some(s) => socket(s).map(Some),
    }
}

/// RFC 9171 §4.2.5.1: a node ID is `ipn:N.0` or a `dtn://name/` URI without demux.
fn node_id(v: &S<String>) -> Result<String, SpanError> {
    check_node_id(v.get_ref()).or_else(|e| err(v.span(), e))?;
    Ok(v.get_ref().clone())
}

fn check_node_id(s: &str) -> Result<(), String> {
    let eid: bpv7::Eid = s
        .parse()
        .map_err(|e| format!("{s:?} is not a valid EID: {e}"))?;
    if eid.is_null() {
        return Err("dtn:none cannot be a node ID".into());
    }
    if eid.node_id() != eid {
        return Err(format!(
            "{s:?} is not a node ID (use \"ipn:N.0\" or \"dtn://name/\")"
        ));
    }
    Ok(())
}

/// Checks a route destination pattern: `*`, `ipn:N.*`, `ipn:N.S`, `dtn://name/*`, an EID.
fn check_pattern(p: &str) -> Result<(), String> {
    if p == "*" {
        return Ok(());
    }
    if let Some(node) = p.strip_prefix("ipn:").and_then(|r| r.strip_suffix(".*")) {
        return node
            .parse::<u64>()
            .map(|_| ())
            .map_err(|_| format!("route pattern {p:?}: node number expected before \".*\""));
    }
    if let Some(rest) = p.strip_prefix("dtn://").and_then(|r| r.strip_suffix("/*")) {
        if !rest.is_empty() && !rest.contains('/') {
            return Ok(());
        }
        return Err(format!(
            "route pattern {p:?}: node name expected in dtn://NAME/*"
        ));
    }
    p.parse::<bpv7::Eid>()
        .map(|_| ())
        .map_err(|e| format!("route pattern {p:?} is not \"*\", a wildcard or an EID: {e}"))
}

fn emulation(v: &S<String>) -> Result<LinkProfile, SpanError> {
    v.get_ref()
        .parse::<LinkProfile>()
        .or_else(|e| err(v.span(), format!("emulation {:?}: {e}", v.get_ref())))
}

impl RawConfig {
    fn build(self) -> Result<Config, SpanError> {
        let mut c = Config::default();
        if let Some(id) = &self.node_id {
            c.node_id = node_id(id)?;
        }
        if let Some(log) = self.log {
            c.log = log;
        }
        if let Some(s) = self.store {
            if let Some(p) = s.path {
                c.store.path = PathBuf::from(p);
            }
            if let Some(d) = &s.durability {
                c.store.durability = match d.get_ref().as_str() {
                    "sync" => DurabilityMode::Sync,
                    "group" => DurabilityMode::Group,
                    "memory" => DurabilityMode::Memory,
                    other => {
                        return err(
                            d.span(),
                            format!(
                                "durability {other:?}: expected \"sync\", \"group\" or \"memory\""
                            ),
                        )
                    }
                };
            }
            if let Some(g) = &s.group_commit {
                c.store.group_commit = duration(g)?;
                if c.store.group_commit.is_zero() {
                    return err(g.span(), "group_commit must be positive");
                }
            }
            if let Some(q) = s.quota_bytes {
                c.store.quota_bytes = q;
            }
            if let Some(q) = s.quota_bundles {
                c.store.quota_bundles = q;
            }
        }
        if let Some(a) = self.agent {
            c.agent.tcp = listener(a.tcp.as_ref(), c.agent.tcp)?;
            c.agent.unix = a.unix.filter(|u| !u.is_empty()).map(PathBuf::from);
        }
        if let Some(m) = self.metrics {
            c.metrics = listener(m.http.as_ref(), c.metrics)?;
        }
        if let Some(t) = self.tcpcl {
            c.tcpcl_listen = listener(t.listen.as_ref(), c.tcpcl_listen)?;
        }
        if let Some(u) = &self.udp {
            c.udp_listen = listener(Some(&u.listen), None)?;
        }
        if let Some(l) = &self.ltp {
            let r = l.get_ref();
            let listen = match &r.listen {
                Some(a) => socket(a)?,
                None => loopback(1113),
            };
            let mut ltp = LtpSection::new(r.engine_id, listen);
            // A zero would refuse every block (or every unknown engine): a mistake, not a
            // setting.
            for (value, name, field) in [
                (
                    &r.max_reassembly_memory,
                    "max_reassembly_memory",
                    &mut ltp.max_reassembly_memory,
                ),
                (
                    &r.max_import_sessions,
                    "max_import_sessions",
                    &mut ltp.max_import_sessions,
                ),
                (
                    &r.max_unknown_peers,
                    "max_unknown_peers",
                    &mut ltp.max_unknown_peers,
                ),
            ] {
                if let Some(v) = value {
                    if *v.get_ref() == 0 {
                        return err(v.span(), format!("[ltp] {name} must be positive"));
                    }
                    *field = *v.get_ref();
                }
            }
            if let Some(accept) = r.accept_unknown_peers {
                ltp.accept_unknown_peers = accept;
            }
            c.ltp = Some(ltp);
        }
        for n in &self.neighbour {
            let span = n.span();
            let n = n.get_ref();
            if c.neighbours.iter().any(|o| &o.name == n.name.get_ref()) {
                return err(
                    n.name.span(),
                    format!("duplicate neighbour name {:?}", n.name.get_ref()),
                );
            }
            if n.name.get_ref().is_empty() {
                return err(n.name.span(), "neighbour name must not be empty");
            }
            let node = node_id(&n.node)?;
            let count =
                n.tcpcl.is_some() as usize + n.udp.is_some() as usize + n.ltp.is_some() as usize;
            if count != 1 {
                return err(
                    span,
                    format!(
                        "neighbour {:?} needs exactly one of tcpcl, udp, ltp (has {count})",
                        n.name.get_ref()
                    ),
                );
            }
            let link = if let Some(a) = &n.tcpcl {
                Link::Tcpcl(socket(a)?)
            } else if let Some(a) = &n.udp {
                if c.udp_listen.is_none() {
                    return err(a.span(), "udp neighbour needs a [udp] section with listen");
                }
                Link::Udp(socket(a)?)
            } else if let Some(l) = &n.ltp {
                let Some(ltp) = &c.ltp else {
                    return err(l.span(), "ltp neighbour needs an [ltp] section (engine_id)");
                };
                let r = l.get_ref();
                if r.engine == ltp.engine_id {
                    return err(l.span(), "neighbour's LTP engine equals our own engine_id");
                }
                let owlt = r.owlt.as_ref().map(duration).transpose()?;
                let agg = r.aggregation_time.as_ref().map(duration).transpose()?;
                if let Some(l) = &r.checkpoint_copies_min_loss {
                    let v = *l.get_ref();
                    if !(0.0..=1.0).contains(&v) {
                        return err(
                            l.span(),
                            format!(
                                "checkpoint_copies_min_loss must be a share from 0 to 1, not {v}"
                            ),
                        );
                    }
                }
                let link = LtpLink {
                    engine: r.engine,
                    addr: socket(&r.addr)?,
                    owlt,
                    rate: r.rate,
                    green: r.green.unwrap_or(false),
                    segment_size: r.segment_size.unwrap_or(1400),
                    window: r.window.unwrap_or(8),
                    aggregation_size: r.aggregation_size.unwrap_or(65536),
                    aggregation_time: agg.unwrap_or(Duration::from_millis(50)),
                    max_bytes_in_flight: r.max_bytes_in_flight,
                    tuning: {
                        let d = LtpTuning::default();
                        LtpTuning {
                            max_retransmission_factor: r
                                .max_retransmission_factor
                                .unwrap_or(d.max_retransmission_factor),
                            checkpoint_every: r.checkpoint_every.unwrap_or(d.checkpoint_every),
                            asynchronous_reports: r
                                .asynchronous_reports
                                .unwrap_or(d.asynchronous_reports),
                            checkpoint_copies: r.checkpoint_copies.unwrap_or(d.checkpoint_copies),
                            checkpoint_copies_min_loss: r
                                .checkpoint_copies_min_loss
                                .as_ref()
                                .map_or(d.checkpoint_copies_min_loss, |l| *l.get_ref()),
                            max_checkpoint_retransmissions: r
                                .max_checkpoint_retransmissions
                                .unwrap_or(d.max_checkpoint_retransmissions),
                            max_report_retransmissions: r
                                .max_report_retransmissions
                                .unwrap_or(d.max_report_retransmissions),
                        }
                    },
                };
                if link.segment_size < 64 || link.window == 0 {
                    return err(
                        l.span(),
                        "ltp segment_size must be at least 64 and window positive",
                    );
                }
                if c.neighbours
                    .iter()
                    .any(|o| matches!(&o.link, Link::Ltp(x) if x.engine == link.engine))
                {
                    return err(
                        l.span(),
                        format!("LTP engine {} used by two neighbours", link.engine),
                    );
                }
                Link::Ltp(link)
            } else {
                return err(span, "neighbour without a link");
            };
            let emu = match &n.emulation {
                Some(e) => {
                    let p = emulation(e)?;
                    // TCPCL runs over TCP: only the byte stream's delay and rate can apply.
                    if matches!(link, Link::Tcpcl(_)) && !p.is_stream_only() {
                        return err(
                            e.span(),
                            "a tcpcl neighbour's emulation takes delay, rate and queue only (TCP carries it: no loss, jitter, duplication or outages)",
                        );
                    }
                    Some(p)
                }
                None => None,
            };
            c.neighbours.push(NeighbourConfig {
                name: n.name.get_ref().clone(),
                node,
                link,
                max_bundle_size: n.max_bundle_size.unwrap_or(0),
                accept_primary_without_crc: n.accept_primary_without_crc.unwrap_or(false),
                emulation: emu,
            });
        }
        if let Some(p) = &self.contact_plan {
            let span = p.span();
            let p = p.get_ref();
            let source = match (&p.file, &p.text) {
                (Some(f), None) if !f.is_empty() => PlanSource::File(PathBuf::from(f)),
                (None, Some(t)) => PlanSource::Inline(t.clone()),
                _ => return err(span, "[contact_plan] needs exactly one of file, text"),
            };
            let reload_check = match &p.reload_check {
                Some(d) => Some(duration(d)?).filter(|d| !d.is_zero()),
                None => Some(Duration::from_secs(1)),
            };
            let on_contact_end = match &p.on_contact_end {
                None => ContactEndPolicy::Suspend,
                Some(v) => match v.get_ref().as_str() {
                    "suspend" => ContactEndPolicy::Suspend,
                    "cancel" => ContactEndPolicy::Cancel,
                    other => {
                        return err(
                            v.span(),
                            format!("on_contact_end {other:?}: expected \"suspend\" or \"cancel\""),
                        )
                    }
                },
            };
            let alternate_routes = match &p.alternate_routes {
                None => 1,
                Some(k) if (1..=16).contains(k.get_ref()) => *k.get_ref(),
                Some(k) => return err(k.span(), "alternate_routes must be between 1 and 16"),
            };
            if !c.node_id.starts_with("ipn:") {
                return err(
                    span,
                    "contact plans route between ipn nodes: node_id must be ipn",
                );
            }
            c.contact_plan = Some(ContactPlanSection {
                source,
                reload_check,
                on_contact_end,
                alternate_routes,
                hdtn_unix_time: p.hdtn_unix_time.unwrap_or(false),
            });
        }
        for r in &self.route {
            check_pattern(r.dest.get_ref()).or_else(|e| err(r.dest.span(), e))?;
            if !c.neighbours.iter().any(|n| &n.name == r.via.get_ref()) {
                return err(
                    r.via.span(),
                    format!("route via unknown neighbour {:?}", r.via.get_ref()),
                );
            }
            c.routes.push(RouteConfig {
                dest: r.dest.get_ref().clone(),
                via: r.via.get_ref().clone(),
            });
        }
        if let Some(s) = self.status_reports {
            if let Some(e) = s.enabled {
                c.status_reports.enabled = e;
            }
            if let Some(m) = s.max_per_second {
                c.status_reports.max_per_second = m;
            }
        }
        if let Some(l) = self.limits {
            if let Some(v) = l.max_bundle_size {
                c.limits.max_bundle_size = v;
            }
            if let Some(v) = l.max_reassembly_bytes {
                c.limits.max_reassembly_bytes = v;
            }
            if let Some(v) = &l.delivery_window {
                if *v.get_ref() == 0 {
                    return err(v.span(), "delivery_window must be positive");
                }
                c.limits.delivery_window = *v.get_ref();
            }
            if let Some(v) = &l.max_in_flight {
                if *v.get_ref() == 0 {
                    return err(v.span(), "max_in_flight must be positive");
                }
                c.limits.max_in_flight = *v.get_ref();
            }
            if let Some(v) = &l.hop_limit {
                if !(1..=255).contains(v.get_ref()) {
                    return err(
                        v.span(),
                        "hop_limit must be between 1 and 255 (RFC 9171 §4.4.3)",
                    );
                }
                c.limits.hop_limit = *v.get_ref();
            }
            if let Some(v) = &l.retry_delay {
                c.limits.retry_delay = duration(v)?;
                if c.limits.retry_delay.is_zero() {
                    return err(v.span(), "retry_delay must be positive");
                }
            }
        }
        if let Some(s) = self.services {
            c.echo_service = s.echo.filter(|e| *e != 0);
        }
        Ok(c)
    }
}

impl Config {
    /// Parses TOML text; `file` names it in errors.
    pub fn from_toml(src: &str, file: &str) -> Result<Config, ConfigError> {
        let located = |span: Option<Range<usize>>, message: String| {
            let (line, col) = span.map_or((0, 0), |s| line_col(src, s.start));
            ConfigError::Invalid {
                file: file.to_string(),
                line,
                col,
                message,
            }
        };
        let raw: RawConfig =
            toml::from_str(src).map_err(|e| located(e.span(), e.message().trim().to_string()))?;
        raw.build().map_err(|e| located(e.span, e.message))
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        Config::from_toml(&src, &file)
    }

    /// Checks a configuration built in code (the same rules as a file, without positions).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: "<config>".into(),
            line: 0,
            col: 0,
            message,
        };
        check_node_id(&self.node_id).map_err(invalid)?;
        for (i, n) in self.neighbours.iter().enumerate() {
            if self.neighbours[..i].iter().any(|o| o.name == n.name) {
                return Err(invalid(format!("duplicate neighbour name {:?}", n.name)));
            }
            check_node_id(&n.node).map_err(invalid)?;
            match &n.link {
                Link::Ltp(_) if self.ltp.is_none() => {
                    return Err(invalid(format!(
                        "ltp neighbour {:?} needs an [ltp] section",
                        n.name
                    )))
                }
                Link::Udp(_) if self.udp_listen.is_none() => {
                    return Err(invalid(format!(
                        "udp neighbour {:?} needs a [udp] section",
                        n.name
                    )))
                }
                _ => {}
            }
        }
        for r in &self.routes {
            check_pattern(&r.dest).map_err(invalid)?;
            if !self.neighbours.iter().any(|n| n.name == r.via) {
                return Err(invalid(format!("route via unknown neighbour {:?}", r.via)));
            }
        }
        if !(1..=255).contains(&self.limits.hop_limit) {
            return Err(invalid("hop_limit must be between 1 and 255".into()));
        }
        if self.limits.delivery_window == 0 || self.limits.max_in_flight == 0 {
            return Err(invalid(
                "delivery_window and max_in_flight must be positive".into(),
            ));
        }
        Ok(())
    }

    /// A configuration for tests: memory store, every listener on `127.0.0.1:0`, no metrics
    /// or agent TCP unless set later.
    pub fn for_test(node_id: &str) -> Config {
        let any = Some(loopback(0));
        Config {
            node_id: node_id.into(),
            store: StoreSection {
                durability: DurabilityMode::Memory,
                ..Config::default().store
            },
            agent: AgentSection {
                tcp: any,
                unix: None,
            },
            metrics: any,
            tcpcl_listen: any,
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::from_toml(src, "test.toml")
    }

    /// The error's (line, message) for `src`.
    fn error(src: &str) -> (usize, String) {
        match parse(src) {
            Err(ConfigError::Invalid { line, message, .. }) => (line, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_the_default_and_default_toml_matches() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse(DEFAULT_TOML).unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"
node_id = "dtn://node1/"
log = "debug"
[store]
path = "/var/lib/dtnd"
durability = "sync"
group_commit = "10ms"
quota_bytes = 1000
quota_bundles = 10
[agent]
tcp = "off"
unix = "/tmp/dtnd.sock"
[metrics]
http = "127.0.0.1:0"
[tcpcl]
listen = ""
[udp]
listen = "127.0.0.1:4557"
[ltp]
engine_id = 1
listen = "127.0.0.1:1113"
max_reassembly_memory = 1000000
max_import_sessions = 16
accept_unknown_peers = true
max_unknown_peers = 4
[[neighbour]]
name = "n2"
node = "ipn:2.0"
tcpcl = "127.0.0.1:4566"
[[neighbour]]
name = "n3"
node = "ipn:3.0"
ltp = { engine = 3, addr = "127.0.0.1:1114", owlt = "1s", rate = 1000, green = true, segment_size = 1000, window = 4, aggregation_size = 1000, aggregation_time = 20, max_bytes_in_flight = 65536, max_retransmission_factor = 4, checkpoint_every = 32, asynchronous_reports = false, checkpoint_copies = 1, checkpoint_copies_min_loss = 0.05, max_checkpoint_retransmissions = 3, max_report_retransmissions = 5 }
emulation = "delay=100ms,loss=2%"
[[neighbour]]
name = "n4"
node = "dtn://n4/"
udp = "127.0.0.1:4568"
max_bundle_size = 60000
accept_primary_without_crc = true
[[route]]
dest = "ipn:3.*"
via = "n2"
[[route]]
dest = "*"
via = "n4"
[status_reports]
enabled = false
max_per_second = 5
[limits]
max_bundle_size = 100
max_reassembly_bytes = 200
delivery_window = 3
max_in_flight = 4
hop_limit = 9
retry_delay = "250ms"
[services]
echo = 0
"#,
        )
        .unwrap();
        assert_eq!(c.node_id, "dtn://node1/");
        assert_eq!(c.store.durability, DurabilityMode::Sync);
        assert_eq!(c.store.group_commit, Duration::from_millis(10));
        assert_eq!(c.agent.tcp, None);
        assert_eq!(c.agent.unix, Some(PathBuf::from("/tmp/dtnd.sock")));
        assert_eq!(c.tcpcl_listen, Config::default().tcpcl_listen);
        assert_eq!(c.neighbours.len(), 3);
        match &c.neighbours[1].link {
            Link::Ltp(l) => {
                assert_eq!(
                    (l.engine, l.owlt, l.green),
                    (3, Some(Duration::from_secs(1)), true)
                );
                assert_eq!(l.aggregation_time, Duration::from_millis(20));
                assert_eq!(l.max_bytes_in_flight, Some(65536));
                assert_eq!(
                    l.tuning,
                    LtpTuning {
                        max_retransmission_factor: 4,
                        checkpoint_every: 32,
                        asynchronous_reports: false,
                        checkpoint_copies: 1,
                        checkpoint_copies_min_loss: 0.05,
                        max_checkpoint_retransmissions: 3,
                        max_report_retransmissions: 5,
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        let ltp = c.ltp.as_ref().unwrap();
        assert_eq!(
            (ltp.max_reassembly_memory, ltp.max_import_sessions),
            (1_000_000, 16)
        );
        assert_eq!((ltp.accept_unknown_peers, ltp.max_unknown_peers), (true, 4));
        assert!(c.neighbours[1].emulation.is_some());
        assert!(c.neighbours[2].accept_primary_without_crc);
        assert_eq!(c.routes[1].via, "n4");
        assert!(!c.status_reports.enabled);
        assert_eq!(c.limits.delivery_window, 3);
        assert_eq!(c.limits.hop_limit, 9);
        assert_eq!(c.limits.retry_delay, Duration::from_millis(250));
        assert_eq!(c.echo_service, None);
        c.validate().unwrap();
    }

    #[test]
    fn contact_plan_section() {
        let c = parse(
            "[contact_plan]\nfile = \"plan.txt\"\non_contact_end = \"cancel\"\nalternate_routes = 3\nreload_check = \"0s\"\n",
        )
        .unwrap();
        let p = c.contact_plan.unwrap();
        assert_eq!(p.source, PlanSource::File("plan.txt".into()));
        assert_eq!(p.on_contact_end, ContactEndPolicy::Cancel);
        assert_eq!(p.alternate_routes, 3);
        assert_eq!(p.reload_check, None);
        let c = parse("[contact_plan]\ntext = \"a contact +0 +10 1 2 100\"\n").unwrap();
        let p = c.contact_plan.unwrap();
        assert_eq!(p.reload_check, Some(Duration::from_secs(1)));
        assert_eq!(p.on_contact_end, ContactEndPolicy::Suspend);
        assert!(matches!(p.source, PlanSource::Inline(_)));

        let (line, msg) = error("\n[contact_plan]\nfile = \"a\"\ntext = \"b\"\n");
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("exactly one of file, text"), "{msg}");
        let (line, msg) = error("[contact_plan]\nfile = \"a\"\non_contact_end = \"drop\"\n");
        assert_eq!(line, 3, "{msg}");
        let (line, _) = error("[contact_plan]\nfile = \"a\"\nalternate_routes = 0\n");
        assert_eq!(line, 3);
        let (_, msg) = error("node_id = \"dtn://a/\"\n[contact_plan]\nfile = \"a\"\n");
        assert!(msg.contains("ipn"), "{msg}");
    }

    #[test]
    fn toml_syntax_error_has_line_and_column() {
        let (line, msg) = error("node_id = \"ipn:1.0\"\n[store\n");
        assert_eq!(line, 2, "{msg}");
        let e = parse("a = \n").unwrap_err().to_string();
        assert!(e.starts_with("test.toml:1:"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let (line, msg) = error("node_id = \"ipn:1.0\"\n\n[store]\npaht = \"x\"\n");
        assert_eq!(line, 4);
        assert!(msg.contains("paht"), "{msg}");
        let (line, _) = error(
            "[[neighbour]]\nname = \"a\"\nnode = \"ipn:2.0\"\ntcpcl = \"127.0.0.1:1\"\nbogus = 1\n",
        );
        assert_eq!(line, 5);
        let (line, _) = error("[nosuchsection]\nx = 1\n");
        assert_eq!(line, 1);
    }

    #[test]
    fn bad_node_ids() {
        let (line, msg) = error("\n\nnode_id = \"ipn:x\"\n");
        assert_eq!(line, 3);
        assert!(msg.contains("not a valid EID"), "{msg}");
        let (_, msg) = error("node_id = \"ipn:1.5\"\n");
        assert!(msg.contains("not a node ID"), "{msg}");
        let (_, msg) = error("node_id = \"dtn:none\"\n");
        assert!(msg.contains("dtn:none"), "{msg}");
        let (line, _) =
            error("[[neighbour]]\nname = \"a\"\nnode = \"bogus\"\ntcpcl = \"127.0.0.1:1\"\n");
        assert_eq!(line, 3);
    }

    const N2: &str =
        "[[neighbour]]\nname = \"n2\"\nnode = \"ipn:2.0\"\ntcpcl = \"127.0.0.1:4566\"\n";

    #[test]
    fn duplicate_neighbour_names() {
        let src = format!("{N2}{N2}");
        let (line, msg) = error(&src);
        assert_eq!(line, 6);
        assert!(msg.contains("duplicate neighbour name \"n2\""), "{msg}");
    }

    #[test]
    fn route_via_unknown_neighbour_and_bad_patterns() {
        let src = format!("{N2}[[route]]\ndest = \"*\"\nvia = \"n9\"\n");
        let (line, msg) = error(&src);
        assert_eq!(line, 7);
        assert!(msg.contains("unknown neighbour \"n9\""), "{msg}");
        let src = format!("{N2}[[route]]\ndest = \"ipn:x.*\"\nvia = \"n2\"\n");
        let (line, _) = error(&src);
        assert_eq!(line, 6);
        for ok in ["*", "ipn:3.*", "ipn:3.7", "dtn://n3/*", "dtn://n3/app"] {
            check_pattern(ok).unwrap();
        }
        assert!(check_pattern("dtn:///*").is_err());
    }

    #[test]
    fn exactly_one_link_per_neighbour() {
        let (line, msg) = error("[[neighbour]]\nname = \"n2\"\nnode = \"ipn:2.0\"\n");
        assert_eq!(line, 1);
        assert!(msg.contains("exactly one"), "{msg}");
        let (_, msg) = error(
            "[udp]\nlisten = \"127.0.0.1:0\"\n[[neighbour]]\nname = \"n2\"\nnode = \"ipn:2.0\"\ntcpcl = \"127.0.0.1:1\"\nudp = \"127.0.0.1:2\"\n",
        );
        assert!(msg.contains("has 2"), "{msg}");
    }

    #[test]
    fn ltp_and_udp_neighbours_need_their_sections() {
        let (line, msg) = error(
            "[[neighbour]]\nname = \"n2\"\nnode = \"ipn:2.0\"\nltp = { engine = 2, addr = \"127.0.0.1:1114\" }\n",
        );
        assert_eq!(line, 4);
        assert!(msg.contains("[ltp]"), "{msg}");
        let (line, msg) =
            error("[[neighbour]]\nname = \"n2\"\nnode = \"ipn:2.0\"\nudp = \"127.0.0.1:1\"\n");
        assert_eq!(line, 4);
        assert!(msg.contains("[udp]"), "{msg}");
        let (line, _) = error("[ltp]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(line, 1, "engine_id is required");
    }

    #[test]
    fn ltp_limits_must_be_positive() {
        for key in [
            "max_reassembly_memory",
            "max_import_sessions",
            "max_unknown_peers",
        ] {
            let (line, msg) = error(&format!("[ltp]\nengine_id = 1\n{key} = 0\n"));
            assert_eq!(line, 3, "{key}");
            assert!(msg.contains(key) && msg.contains("positive"), "{msg}");
        }
        let c = parse("[ltp]\nengine_id = 1\n").unwrap();
        assert_eq!(
            c.ltp,
            Some(LtpSection::new(1, "127.0.0.1:1113".parse().unwrap()))
        );
    }

    #[test]
    fn checkpoint_copies_min_loss_is_a_share() {
        let neighbour = |v: &str| {
            format!(
                "node_id = \"ipn:1.0\"\n[ltp]\nengine_id = 1\n[[neighbour]]\nname = \"b\"\n\
                 node = \"ipn:2.0\"\nltp = {{ engine = 2, addr = \"127.0.0.1:1114\", checkpoint_copies_min_loss = {v} }}\n"
            )
        };
        for bad in ["1.5", "-0.1"] {
            let (line, msg) = error(&neighbour(bad));
            assert_eq!(line, 7, "{bad}: {msg}");
            assert!(msg.contains("checkpoint_copies_min_loss"), "{msg}");
        }
        parse(&neighbour("0")).unwrap();
    }

    #[test]
    fn bad_values() {
        let (line, msg) = error("[agent]\ntcp = \"localhost\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("not an IP address"), "{msg}");
        let (line, msg) = error("[store]\ndurability = \"fast\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("durability"), "{msg}");
        let (line, msg) = error("[store]\ngroup_commit = \"5 parsecs\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("duration"), "{msg}");
        let (line, _) = error("[limits]\ndelivery_window = 0\n");
        assert_eq!(line, 2);
        let (line, msg) = error("[limits]\nhop_limit = 256\n");
        assert_eq!(line, 2, "{msg}");
        let (line, _) = error("[store]\nquota_bytes = \"lots\"\n");
        assert_eq!(line, 2);
        let src = "[udp]\nlisten = \"127.0.0.1:0\"\n[[neighbour]]\nname = \"n2\"\nnode = \"ipn:2.0\"\nudp = \"127.0.0.1:1\"\nemulation = \"nonsense=1\"\n";
        let (line, _) = error(src);
        assert_eq!(line, 7);
        // A TCPCL neighbour takes the byte stream's delay and rate, not datagram impairments.
        let c = parse(&format!("{N2}emulation = \"delay=1ms,rate=1000\"\n")).unwrap();
        assert!(c.neighbours[0].emulation.is_some());
        let (line, msg) = error(&format!("{N2}emulation = \"delay=1ms,loss=1%\"\n"));
        assert_eq!(line, 5);
        assert!(msg.contains("delay, rate and queue only"), "{msg}");
    }

    #[test]
    fn off_disables_listeners() {
        let c = parse("[metrics]\nhttp = \"off\"\n[tcpcl]\nlisten = \"off\"\n").unwrap();
        assert_eq!((c.metrics, c.tcpcl_listen), (None, None));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "5", "ms", "5x", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn line_col_counts_characters() {
        let src = "ab\ncdé\nf";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 3), (2, 1));
        assert_eq!(line_col(src, src.len()), (3, 2));
        assert_eq!(line_col(src, 999), (3, 2));
    }

    #[test]
    fn validate_checks_code_built_configs() {
        let mut c = Config::for_test("ipn:5.0");
        c.validate().unwrap();
        c.routes.push(RouteConfig {
            dest: "*".into(),
            via: "nobody".into(),
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("unknown neighbour"), "{e}");
        let mut c = Config::for_test("ipn:5.0");
        c.node_id = "nope".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn load_reports_missing_file() {
        let e = Config::load(Path::new("/nonexistent/dtnd.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(e.to_string().starts_with("/nonexistent/dtnd.toml: "));
    }
}
