//! Harness for the cross-crate end-to-end tests in `tests/tests/`: it finds (or builds) the
//! workspace binaries (`dtnd`, `bpsend`, `bprecv`, `bpstats`, `bpgen`), starts `dtnd` processes
//! from generated TOML configurations (the schema fixed for issue 5), waits for their ready line,
//! kills them on drop, and reads their Prometheus metrics.
//!
//! Rules the harness keeps (see `/work/shared/DESIGN.md`): every wait is bounded, nothing sleeps to
//! synchronise (polling with a deadline only), sockets are on 127.0.0.1 with ports from the
//! `test-support` crate, and every temporary directory is removed when its guard drops.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// The names of the binaries the end-to-end tests drive.
pub const BINARIES: &[&str] = &["dtnd", "bpsend", "bprecv", "bpstats", "bpgen"];

/// The profile directory of the running test executable (`…/target/<profile>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // …/target/<profile>/deps/<test>-<hash>
    let deps = exe.parent().expect("test executable has a directory");
    deps.parent()
        .expect("deps directory has a parent")
        .to_path_buf()
}

/// Builds the binaries once per test process with the same profile and target directory as the
/// running tests (`cargo test` does not rebuild another package's binaries, so without this a
/// test could run a stale `dtnd`); a no-op build takes about a second. `DTN_E2E_NO_BUILD=1`
/// skips it when every binary is present.
fn ensure_built() -> &'static Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = profile_dir();
        let missing = BINARIES.iter().any(|b| !dir.join(b).exists());
        if !missing && std::env::var_os("DTN_E2E_NO_BUILD").is_some() {
            return Ok(dir);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("debug")
            .to_string();
        let target_dir = dir.parent().map(Path::to_path_buf);
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "node", "-p", "tools", "--bins"]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        if let Some(t) = target_dir {
            cmd.env("CARGO_TARGET_DIR", t);
        }
        let out = cmd
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.success() {
            return Err(format!("cargo build -p node -p tools --bins failed: {out}"));
        }
        Ok(dir)
    })
}

/// Path of the workspace binary `name` (the workspace binaries are brought up to date once per
/// test process, on first use).
pub fn bin(name: &str) -> PathBuf {
    match ensure_built() {
        Ok(dir) => {
            let p = dir.join(name);
            assert!(
                p.exists(),
                "{} does not exist after building the workspace binaries",
                p.display()
            );
            p
        }
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Temporary directories and ports
// ---------------------------------------------------------------------------------------------

/// A unique temporary directory, removed on drop (kept with `DTN_E2E_KEEP`).
pub use test_support::TempDir;

/// Loopback ports for servers a test starts, from below the kernel's ephemeral range (see the
/// `test-support` crate for why not port 0).
pub use test_support::{free_tcp_port, free_udp_port};

// ---------------------------------------------------------------------------------------------
// Node configuration
// ---------------------------------------------------------------------------------------------

/// How a node reaches one neighbour.
#[derive(Clone, Debug)]
pub enum Link {
    /// TCPCLv4 to `127.0.0.1:port`.
    Tcpcl(u16),
    /// UDP CL to `127.0.0.1:port`.
    Udp(u16),
    /// LTP to `engine` at `127.0.0.1:port`.
    Ltp {
        /// The neighbour's LTP engine id.
        engine: u64,
        /// The neighbour's LTP UDP port.
        port: u16,
    },
}

/// One `[[neighbour]]` entry.
#[derive(Clone, Debug)]
pub struct Neighbour {
    /// Unique name.
    pub name: String,
    /// The neighbour's node ID.
    pub node: String,
    /// How to reach it.
    pub link: Link,
    /// `accept_primary_without_crc` (dtn7-rs bundles need it).
    pub accept_primary_without_crc: bool,
}

/// A `dtnd` configuration (the subset of the issue-5 schema the tests use).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `node_id`.
    pub node_id: String,
    /// `[store] path`.
    pub store: PathBuf,
    /// `[store] durability`: "sync", "group" or "memory".
    pub durability: String,
    /// `[agent] tcp` port (on 127.0.0.1).
    pub agent_port: u16,
    /// `[metrics] http` port.
    pub metrics_port: u16,
    /// `[tcpcl] listen` port (`None`: "off").
    pub tcpcl_port: Option<u16>,
    /// `[udp] listen` port.
    pub udp_port: Option<u16>,
    /// `[ltp]` engine id and port.
    pub ltp: Option<(u64, u16)>,
    /// Neighbours.
    pub neighbours: Vec<Neighbour>,
    /// `(dest, via)` static routes.
    pub routes: Vec<(String, String)>,
    /// `[limits] max_bundle_size` (`None`: default).
    pub max_bundle_size: Option<u64>,
    /// `log` filter.
    pub log: String,
    /// Raw TOML appended at the end (extra sections).
    pub extra: String,
    /// `[contact_plan]` (`None`: no plan).
    pub contact_plan: Option<ContactPlanConfig>,
    /// `emulation = "..."` per neighbour, by neighbour name (LTP and UDP neighbours).
    pub emulation: BTreeMap<String, String>,
    /// Extra keys inside a neighbour's `ltp = { ... }` table, by neighbour name (e.g.
    /// `"aggregation_size = 1, window = 4"`).
    pub ltp_options: BTreeMap<String, String>,
    /// `[limits] max_in_flight` (`None`: default).
    pub max_in_flight: Option<usize>,
    /// `[store] quota_bundles` (`None`: default).
    pub quota_bundles: Option<u64>,
}

/// A `[contact_plan]` section that reads its plan from a file.
#[derive(Clone, Debug)]
pub struct ContactPlanConfig {
    /// `file`.
    pub file: PathBuf,
    /// `reload_check` (`"1s"`; `"0s"`: only on SIGHUP).
    pub reload_check: String,
    /// `on_contact_end`: `"suspend"` or `"cancel"`.
    pub on_contact_end: String,
    /// `alternate_routes`.
    pub alternate_routes: u32,
}

impl ContactPlanConfig {
    /// The plan in `file`, checked every second, suspending LTP sessions at contact end, one
    /// alternate route (the `dtnd` defaults).
    pub fn file(file: &Path) -> ContactPlanConfig {
        ContactPlanConfig {
            file: file.to_path_buf(),
            reload_check: "1s".into(),
            on_contact_end: "suspend".into(),
            alternate_routes: 1,
        }
    }
}

impl NodeConfig {
    /// A node `node_id` with its store under `dir`, fresh free ports for agent, metrics and
    /// TCPCL, group commit, no neighbours.
    pub fn new(node_id: &str, dir: &Path) -> NodeConfig {
        let safe: String = node_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        NodeConfig {
            node_id: node_id.to_string(),
            store: dir.join(format!("store-{safe}")),
            durability: "group".into(),
            agent_port: free_tcp_port(),
            metrics_port: free_tcp_port(),
            tcpcl_port: Some(free_tcp_port()),
            udp_port: None,
            ltp: None,
            neighbours: Vec::new(),
            routes: Vec::new(),
            max_bundle_size: None,
            log: "warn".into(),
            extra: String::new(),
            contact_plan: None,
            emulation: BTreeMap::new(),
            ltp_options: BTreeMap::new(),
            max_in_flight: None,
            quota_bundles: None,
        }
    }

    /// Re-picks every port this node listens on (after a bind conflict).
    pub fn repick_ports(&mut self) {
        self.agent_port = free_tcp_port();
        self.metrics_port = free_tcp_port();
        if self.tcpcl_port.is_some() {
            self.tcpcl_port = Some(free_tcp_port());
        }
        if self.udp_port.is_some() {
            self.udp_port = Some(free_udp_port());
        }
        if let Some((e, _)) = self.ltp {
            self.ltp = Some((e, free_udp_port()));
        }
    }

    /// The agent address (`127.0.0.1:port`).
    pub fn agent_addr(&self) -> String {
        format!("127.0.0.1:{}", self.agent_port)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        let q = |s: &str| format!("{s:?}");
        let mut t = String::new();
        t += &format!("node_id = {}\nlog = {}\n\n", q(&self.node_id), q(&self.log));
        t += &format!(
            "[store]\npath = {}\ndurability = {}\n",
            q(&self.store.to_string_lossy()),
            q(&self.durability)
        );
        if let Some(n) = self.quota_bundles {
            t += &format!("quota_bundles = {n}\n");
        }
        t += "\n";
        t += &format!("[agent]\ntcp = \"127.0.0.1:{}\"\n\n", self.agent_port);
        t += &format!("[metrics]\nhttp = \"127.0.0.1:{}\"\n\n", self.metrics_port);
        match self.tcpcl_port {
            Some(p) => t += &format!("[tcpcl]\nlisten = \"127.0.0.1:{p}\"\n\n"),
            None => t += "[tcpcl]\nlisten = \"off\"\n\n",
        }
        if let Some(p) = self.udp_port {
            t += &format!("[udp]\nlisten = \"127.0.0.1:{p}\"\n\n");
        }
        if let Some((engine, port)) = self.ltp {
            t += &format!("[ltp]\nengine_id = {engine}\nlisten = \"127.0.0.1:{port}\"\n\n");
        }
        if self.max_bundle_size.is_some() || self.max_in_flight.is_some() {
            t += "[limits]\n";
            if let Some(max) = self.max_bundle_size {
                t += &format!("max_bundle_size = {max}\n");
            }
            if let Some(n) = self.max_in_flight {
                t += &format!("max_in_flight = {n}\n");
            }
            t += "\n";
        }
        if let Some(p) = &self.contact_plan {
            t += &format!(
                "[contact_plan]\nfile = {}\nreload_check = {}\non_contact_end = {}\n\
                 alternate_routes = {}\n\n",
                q(&p.file.to_string_lossy()),
                q(&p.reload_check),
                q(&p.on_contact_end),
                p.alternate_routes
            );
        }
        for n in &self.neighbours {
            t += &format!(
                "[[neighbour]]\nname = {}\nnode = {}\n",
                q(&n.name),
                q(&n.node)
            );
            match &n.link {
                Link::Tcpcl(p) => t += &format!("tcpcl = \"127.0.0.1:{p}\"\n"),
                Link::Udp(p) => t += &format!("udp = \"127.0.0.1:{p}\"\n"),
                Link::Ltp { engine, port } => {
                    let more = self
                        .ltp_options
                        .get(&n.name)
                        .map(|o| format!(", {o}"))
                        .unwrap_or_default();
                    t += &format!(
                        "ltp = {{ engine = {engine}, addr = \"127.0.0.1:{port}\"{more} }}\n"
                    )
                }
            }
            if let Some(e) = self.emulation.get(&n.name) {
                t += &format!("emulation = {}\n", q(e));
            }
            if n.accept_primary_without_crc {
                t += "accept_primary_without_crc = true\n";
            }
            t += "\n";
        }
        for (dest, via) in &self.routes {
            t += &format!("[[route]]\ndest = {}\nvia = {}\n\n", q(dest), q(via));
        }
        t += &self.extra;
        t
    }
}

// ---------------------------------------------------------------------------------------------
// dtnd processes
// ---------------------------------------------------------------------------------------------

/// The addresses in `dtnd`'s ready line.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// The node ID.
    pub node_id: String,
    /// Agent TCP address.
    pub agent: Option<String>,
    /// Metrics HTTP address.
    pub metrics: Option<String>,
    /// TCPCL listener.
    pub tcpcl: Option<String>,
    /// UDP CL socket.
    pub udp: Option<String>,
    /// LTP socket.
    pub ltp: Option<String>,
}

impl Ready {
    /// Parses `dtnd ready {json}`.
    pub fn parse(line: &str) -> Option<Ready> {
        let json = line.trim().strip_prefix("dtnd ready ")?;
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Some(Ready {
            node_id: s("node_id")?,
            agent: s("agent"),
            metrics: s("metrics"),
            tcpcl: s("tcpcl"),
            udp: s("udp"),
            ltp: s("ltp"),
        })
    }
}

/// Why a `dtnd` did not become ready.
#[derive(Debug)]
pub struct StartError {
    /// What happened.
    pub message: String,
    /// The tail of its stderr.
    pub log_tail: String,
    /// Whether the log suggests a port conflict (retry with other ports).
    pub addr_in_use: bool,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- dtnd log tail ---\n{}",
            self.message, self.log_tail
        )
    }
}

/// How long a `dtnd` may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `dtnd` process: SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct Dtnd {
    /// Short name used in messages.
    pub name: String,
    /// The configuration it runs with.
    pub config: NodeConfig,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    ready: Ready,
    starts: u32,
}

impl Dtnd {
    /// Writes `config` to `dir/<name>.toml` and starts `dtnd --config` on it, waiting for the
    /// ready line. Port conflicts are retried (up to 3 times) with fresh ports for this node:
    /// use [`Dtnd::start_exact`] when other nodes refer to its ports.
    pub fn start(name: &str, dir: &Path, mut config: NodeConfig) -> Dtnd {
        for attempt in 0..4 {
            match Dtnd::start_exact(name, dir, config.clone()) {
                Ok(d) => return d,
                Err(e) if e.addr_in_use && attempt < 3 => config.repick_ports(),
                Err(e) => panic!("dtnd {name} did not start: {e}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Starts `dtnd` with exactly this configuration.
    pub fn start_exact(name: &str, dir: &Path, config: NodeConfig) -> Result<Dtnd, StartError> {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config.to_toml()).expect("write config");
        let mut d = Dtnd {
            name: name.to_string(),
            config,
            log_path: dir.join(format!("{name}.log")),
            config_path,
            child: None,
            ready: Ready::default(),
            starts: 0,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log");
        let mut child = Command::new(bin("dtnd"))
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn dtnd");
        self.starts += 1;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // The reader thread ends when dtnd closes stdout (exit or kill).
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(r) = Ready::parse(&line) {
                    let _ = tx.send(r);
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => {
                    self.ready = r;
                    self.child = Some(child);
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout)
                | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let tail = self.log_tail();
                        let lower = tail.to_lowercase();
                        return Err(StartError {
                            message: format!("dtnd {} exited before ready: {status}", self.name),
                            addr_in_use: lower.contains("in use") || lower.contains("addrinuse"),
                            log_tail: tail,
                        });
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(StartError {
                            message: format!(
                                "dtnd {} printed no ready line within {READY_TIMEOUT:?}",
                                self.name
                            ),
                            log_tail: self.log_tail(),
                            addr_in_use: false,
                        });
                    }
                }
            }
        }
    }

    /// The last ~40 lines of this node's stderr log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The parsed ready line of the current run.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// The agent address to pass to the tools' `--node`.
    pub fn agent(&self) -> String {
        self.ready
            .agent
            .clone()
            .unwrap_or_else(|| self.config.agent_addr())
    }

    /// The TCPCL listener address.
    pub fn tcpcl(&self) -> SocketAddr {
        self.ready
            .tcpcl
            .as_deref()
            .and_then(|s| s.parse().ok())
            .or_else(|| {
                self.config
                    .tcpcl_port
                    .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            })
            .expect("node has a TCPCL listener")
    }

    /// The UDP CL address.
    pub fn udp(&self) -> SocketAddr {
        self.ready
            .udp
            .as_deref()
            .and_then(|s| s.parse().ok())
            .or_else(|| {
                self.config
                    .udp_port
                    .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            })
            .expect("node has a UDP listener")
    }

    /// How many times this node was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The process id of the current run (`None` after [`Dtnd::kill`]).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends signal `sig` (a `kill -s` name such as `"HUP"`) to the running process.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("dtnd is running");
        let st = Command::new("kill")
            .args(["-s", sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -s {sig} {pid}: {st}");
    }

    /// Everything this node wrote to stderr so far (all its runs).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL (std's `Child::kill` sends SIGKILL on Unix) and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again with the same configuration and store (after [`Dtnd::kill`]).
    /// A port still held by the dead process's sockets is retried for a bounded time.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if e.addr_in_use && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("dtnd {} did not restart: {e}", self.name),
            }
        }
    }

    /// GET /metrics (Prometheus text).
    pub fn metrics_text(&self) -> String {
        let addr = self
            .ready
            .metrics
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", self.config.metrics_port));
        http_get(&addr, "/metrics").unwrap_or_else(|e| panic!("GET {addr}/metrics: {e}"))
    }

    /// The parsed metrics of this node.
    pub fn metrics(&self) -> Metrics {
        Metrics::parse(&self.metrics_text())
    }
}

impl Drop for Dtnd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 GET on loopback, bounded by a 10 s timeout; returns the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(16 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!(
            "unexpected response: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}

/// Prometheus samples: `(name, labels, value)`.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Every sample.
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// Parses the Prometheus text format (0.0.4).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let value: f64 = match value.parse() {
                Ok(v) => v,
                Err(_) => continue,
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_string(), labels, value));
        }
        Metrics { samples }
    }

    /// Sum of every sample named `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Sum of the samples named `name` whose labels include `key=value`.
    pub fn sum_where(&self, name: &str, key: &str, value: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && l.get(key).map(String::as_str) == Some(value))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Sum of every sample whose name contains `part`.
    pub fn sum_containing(&self, part: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n.contains(part))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Names of all series, for failure messages.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.samples.iter().map(|(n, _, _)| n.clone()).collect();
        v.dedup();
        v
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    // Bounded: each iteration consumes at least one label or stops.
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        val.push(match e {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').trim().to_string(), val);
        rest = &after[end.min(after.len())..];
    }
    out
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_every(Duration::from_millis(50), timeout, || what.to_string(), f)
}

/// Polls `f` every `every` until it returns `Some`, or panics after `timeout` with `what()`
/// (computed only then, so it may gather logs).
pub fn poll_every<T>(
    every: Duration,
    timeout: Duration,
    what: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {}",
            what()
        );
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------------------------
// Topologies
// ---------------------------------------------------------------------------------------------

/// The convergence layer of a line topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineCl {
    /// TCPCLv4 between neighbours.
    Tcpcl,
    /// LTP between neighbours.
    Ltp,
}

/// Configurations of three nodes in a line A–B–C (`ipn:1.0`, `ipn:2.0`, `ipn:3.0`) with static
/// routes both ways. Bundles for `ipn:3.*` go A→B→C, for `ipn:1.*` C→B→A.
pub fn line_configs(dir: &Path, cl: LineCl, durability: &str) -> [NodeConfig; 3] {
    let mut nodes = [
        NodeConfig::new("ipn:1.0", dir),
        NodeConfig::new("ipn:2.0", dir),
        NodeConfig::new("ipn:3.0", dir),
    ];
    for (i, n) in nodes.iter_mut().enumerate() {
        n.durability = durability.to_string();
        if cl == LineCl::Ltp {
            n.tcpcl_port = None;
            n.ltp = Some((i as u64 + 1, free_udp_port()));
        }
    }
    let link = |n: &NodeConfig| match cl {
        LineCl::Tcpcl => Link::Tcpcl(n.tcpcl_port.expect("tcpcl port")),
        LineCl::Ltp => {
            let (engine, port) = n.ltp.expect("ltp");
            Link::Ltp { engine, port }
        }
    };
    let names = ["a", "b", "c"];
    let neighbour = |i: usize, n: &NodeConfig| Neighbour {
        name: names[i].to_string(),
        node: n.node_id.clone(),
        link: link(n),
        accept_primary_without_crc: false,
    };
    let (a, b, c) = (nodes[0].clone(), nodes[1].clone(), nodes[2].clone());
    nodes[0].neighbours = vec![neighbour(1, &b)];
    nodes[0].routes = vec![
        ("ipn:3.*".into(), "b".into()),
        ("ipn:2.*".into(), "b".into()),
    ];
    nodes[1].neighbours = vec![neighbour(0, &a), neighbour(2, &c)];
    nodes[1].routes = vec![
        ("ipn:3.*".into(), "c".into()),
        ("ipn:1.*".into(), "a".into()),
    ];
    nodes[2].neighbours = vec![neighbour(1, &b)];
    nodes[2].routes = vec![
        ("ipn:1.*".into(), "b".into()),
        ("ipn:2.*".into(), "b".into()),
    ];
    // Over LTP the spans have no rate, so dtnd's own flow control applies (4 MiB in flight,
    // `node::links::flow_control`): the 10 MiB bundles do not overrun the next node's 8 MiB
    // receive buffer.
    nodes
}

/// Starts a line topology, C first (so its neighbours can connect at once), retrying the whole
/// line with fresh ports when a port was taken meanwhile.
pub fn start_line(dir: &Path, cl: LineCl, durability: &str) -> [Dtnd; 3] {
    let mut last = String::new();
    for _ in 0..3 {
        let [a, b, c] = line_configs(dir, cl, durability);
        let started = (|| {
            let c = Dtnd::start_exact("c", dir, c)?;
            let b = Dtnd::start_exact("b", dir, b)?;
            let a = Dtnd::start_exact("a", dir, a)?;
            Ok::<_, StartError>([a, b, c])
        })();
        match started {
            Ok(nodes) => return nodes,
            Err(e) if e.addr_in_use => last = e.to_string(),
            Err(e) => panic!("line did not start: {e}"),
        }
    }
    panic!("line did not start (port conflicts): {last}")
}

/// Configurations of `ipn:N.0` nodes (`numbers`) joined by LTP `edges` (each both ways, on
/// loopback): node N has LTP engine N, a memory store, no TCPCL listener, and neighbour `nM` for
/// each edge to M.
/// No static routes: with a contact plan ([`NodeConfig::contact_plan`]) CGR does the routing.
pub fn ltp_mesh_configs(dir: &Path, numbers: &[u64], edges: &[(u64, u64)]) -> Vec<NodeConfig> {
    let mut nodes: Vec<NodeConfig> = numbers
        .iter()
        .map(|&n| {
            let mut c = NodeConfig::new(&format!("ipn:{n}.0"), dir);
            c.durability = "memory".into();
            c.tcpcl_port = None;
            c.ltp = Some((n, free_udp_port()));
            c
        })
        .collect();
    let index = |n: u64| {
        numbers
            .iter()
            .position(|&x| x == n)
            .unwrap_or_else(|| panic!("edge names node {n}, which is not in {numbers:?}"))
    };
    for &(a, b) in edges {
        for (from, to) in [(a, b), (b, a)] {
            let (engine, port) = nodes[index(to)].ltp.expect("ltp");
            let node = nodes[index(to)].node_id.clone();
            nodes[index(from)].neighbours.push(Neighbour {
                name: format!("n{to}"),
                node,
                link: Link::Ltp { engine, port },
                accept_primary_without_crc: false,
            });
        }
    }
    nodes
}

/// Starts every configuration (the last first), named `n<number>` after its node number;
/// `make` builds the configurations and is called again with fresh ports when a port was taken
/// meanwhile (at most 3 attempts). Returns the nodes in the order `make` gave them.
pub fn start_nodes(dir: &Path, make: impl Fn() -> Vec<NodeConfig>) -> Vec<Dtnd> {
    let mut last = String::new();
    for _ in 0..3 {
        let configs = make();
        let mut started = Vec::with_capacity(configs.len());
        let mut failed = None;
        for c in configs.into_iter().rev() {
            let name = c
                .node_id
                .trim_start_matches("ipn:")
                .trim_end_matches(".0")
                .to_string();
            match Dtnd::start_exact(&format!("n{name}"), dir, c) {
                Ok(d) => started.push(d),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => {
                started.reverse();
                return started;
            }
            Some(e) if e.addr_in_use => last = e.to_string(),
            Some(e) => panic!("nodes did not start: {e}"),
        }
    }
    panic!("nodes did not start (port conflicts): {last}")
}

// ---------------------------------------------------------------------------------------------
// Contact plans
// ---------------------------------------------------------------------------------------------

/// The current DTN time: milliseconds since 2000-01-01T00:00:00Z (RFC 9171 §4.2.6).
pub fn dtn_now_ms() -> u64 {
    node::daemon::dtn_now()
}

/// An ION contact plan (`ionrc(5)` lines) whose relative times `+N` count from an absolute
/// reference written as its first line (`@ yyyy/mm/dd-hh:mm:ss`, UTC), so that several `dtnd`
/// processes started at different moments agree on every contact's instant.
#[derive(Clone, Debug)]
pub struct IonPlan {
    /// The reference, DTN ms (a whole second).
    pub reference: u64,
    lines: Vec<String>,
}

impl IonPlan {
    /// A plan whose reference is now rounded up to a whole second, plus `margin` (ION absolute
    /// times have second resolution).
    pub fn starting_in(margin: Duration) -> IonPlan {
        let at = dtn_now_ms() + margin.as_millis() as u64;
        IonPlan::at(at.div_ceil(1000) * 1000)
    }

    /// A plan with the reference `reference` (DTN ms, truncated to the second).
    pub fn at(reference: u64) -> IonPlan {
        IonPlan {
            reference: reference / 1000 * 1000,
            lines: Vec::new(),
        }
    }

    /// The same reference, no lines.
    pub fn empty_copy(&self) -> IonPlan {
        IonPlan::at(self.reference)
    }

    /// `a contact +start +stop from to rate` (seconds after the reference, bytes/s).
    pub fn contact(&mut self, start: u64, stop: u64, from: u64, to: u64, rate: u64) -> &mut Self {
        self.lines
            .push(format!("a contact +{start} +{stop} {from} {to} {rate}"));
        self
    }

    /// Contacts both ways between `a` and `b`.
    pub fn contacts_both(&mut self, start: u64, stop: u64, a: u64, b: u64, rate: u64) -> &mut Self {
        self.contact(start, stop, a, b, rate)
            .contact(start, stop, b, a, rate)
    }

    /// `a range +start +stop a b owlt` (seconds; also holds for `b`→`a`).
    pub fn range(&mut self, start: u64, stop: u64, a: u64, b: u64, owlt: u64) -> &mut Self {
        self.lines
            .push(format!("a range +{start} +{stop} {a} {b} {owlt}"));
        self
    }

    /// A raw line (e.g. a deliberately bad one).
    pub fn line(&mut self, line: &str) -> &mut Self {
        self.lines.push(line.to_string());
        self
    }

    /// The plan text: the `@` reference line, then the lines in order.
    pub fn text(&self) -> String {
        let mut t = format!(
            "# written by the conformance harness\n@ {}\n",
            node::routing::contact_plan::format_utc_time(self.reference)
        );
        for l in &self.lines {
            t += l;
            t += "\n";
        }
        t
    }

    /// The instant (as DTN ms) `secs` after the reference.
    pub fn time(&self, secs: u64) -> u64 {
        self.reference + secs * 1000
    }

    /// Whole seconds from the reference to now, rounded up (an offset that is not in the past).
    pub fn now_offset(&self) -> u64 {
        dtn_now_ms().saturating_sub(self.reference).div_ceil(1000)
    }

    /// Writes the plan to `path` atomically (a temporary file renamed over it), so that a node
    /// checking the file never reads half a plan.
    pub fn write(&self, path: &Path) {
        write_atomically(path, &self.text());
    }
}

/// Replaces `path` with `text` through a temporary file and a rename.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// Sleeps until DTN time `t` (ms); returns at once if it passed.
pub fn sleep_until_dtn(t: u64) {
    let now = dtn_now_ms();
    if t > now {
        std::thread::sleep(Duration::from_millis(t - now));
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------------

/// SplitMix64: a tiny seeded generator, so the tests need no extra dependency and every
/// sequence is reproducible from its printed seed.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// The seed of a randomised test: `DTN_E2E_SEED` if set, else derived from the clock. Printed
/// so that a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("DTN_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {s} (replay with DTN_E2E_SEED={s})");
    s
}

/// Payload sizes for `n` bundles: mostly small (10 B – 4 KiB), some medium (4 KiB – 256 KiB)
/// and `large` of 1–10 MiB, the first large one exactly 10 MiB. Shuffled with `rng`.
pub fn mixed_sizes(rng: &mut SplitMix, n: usize, large: usize) -> Vec<usize> {
    let medium = n / 20;
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        let s = if i < large {
            if i == 0 {
                10 << 20
            } else {
                rng.range(1 << 20, 10 << 20) as usize
            }
        } else if i < large + medium {
            rng.range(4 << 10, 256 << 10) as usize
        } else {
            // Log-uniform-ish between 10 B and 4 KiB.
            let exp = rng.range(3, 12);
            rng.range(10, (1u64 << exp).max(10)) as usize
        };
        sizes.push(s);
    }
    for i in (1..sizes.len()).rev() {
        let j = rng.range(0, i as u64) as usize;
        sizes.swap(i, j);
    }
    sizes
}

/// The payload of bundle `idx` of `len` bytes (at least 8): the index (4 bytes, big-endian),
/// the length (4 bytes), then bytes derived from both, so content identifies the bundle.
pub fn payload(idx: u32, len: usize) -> Vec<u8> {
    assert!(len >= 8, "payloads carry an 8-byte header");
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&idx.to_be_bytes());
    v.extend_from_slice(&(len as u32).to_be_bytes());
    let mut rng = SplitMix(u64::from(idx) << 32 | len as u64);
    while v.len() < len {
        let w = rng.next_u64().to_le_bytes();
        let take = (len - v.len()).min(8);
        v.extend_from_slice(&w[..take]);
    }
    v
}

/// Checks a received payload against [`payload`]; returns its index.
pub fn check_payload(data: &[u8]) -> Result<u32, String> {
    if data.len() < 8 {
        return Err(format!("payload of {} bytes has no header", data.len()));
    }
    let idx = u32::from_be_bytes(data[..4].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
    if len != data.len() {
        return Err(format!(
            "bundle {idx}: {} bytes received, {len} sent",
            data.len()
        ));
    }
    if payload(idx, len) != data {
        return Err(format!("bundle {idx}: content differs"));
    }
    Ok(idx)
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// Output of a finished tool run.
#[derive(Debug)]
pub struct ToolOutput {
    /// Exit status (`None`: killed at the timeout).
    pub status: Option<ExitStatus>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: String,
}

impl ToolOutput {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// A tool process whose output is collected by reader threads.
pub struct Tool {
    child: Child,
    out: mpsc::Receiver<Vec<u8>>,
    err: mpsc::Receiver<Vec<u8>>,
}

impl Tool {
    /// Spawns `bin(name)` with `args`, stdin from `input` (written by a thread).
    pub fn spawn(name: &str, args: &[&str], input: Option<Vec<u8>>) -> Tool {
        let mut child = Command::new(bin(name))
            .args(args)
            .env_remove("DTN_NODE")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        if let Some(data) = input {
            let mut stdin = child.stdin.take().expect("piped stdin");
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
        }
        let drain = |mut r: Box<dyn Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                let _ = tx.send(buf);
            });
            rx
        };
        let out = drain(Box::new(child.stdout.take().expect("stdout")));
        let err = drain(Box::new(child.stderr.take().expect("stderr")));
        Tool { child, out, err }
    }

    /// Waits (bounded) for the exit; kills the process at the timeout.
    pub fn wait(mut self, timeout: Duration) -> ToolOutput {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let stdout = self
            .out
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        let stderr = self
            .err
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        ToolOutput {
            status,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bpsend --node agent DEST -` with `data` on stdin; returns the printed bundle id.
pub fn bpsend(agent: &str, dest: &str, data: &[u8]) -> Result<String, String> {
    let out = Tool::spawn("bpsend", &["--node", agent, dest, "-"], Some(data.to_vec()))
        .wait(Duration::from_secs(60));
    if out.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "bpsend exit {:?}: {}",
            out.status,
            out.stderr.trim()
        ))
    }
}

/// Sends every `(index, size)` payload with `bpsend` from `workers` threads, retrying a
/// refused/failed send (e.g. the node restarting) until `timeout`. Returns the number of
/// retries.
pub fn bpsend_all(
    agent: &str,
    dest: &str,
    sizes: &[usize],
    workers: usize,
    timeout: Duration,
    progress: Option<&std::sync::atomic::AtomicUsize>,
) -> usize {
    let deadline = Instant::now() + timeout;
    let retries = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for w in 0..workers {
            let retries = &retries;
            s.spawn(move || {
                for (i, &len) in sizes.iter().enumerate().skip(w).step_by(workers) {
                    let data = payload(i as u32, len);
                    loop {
                        match bpsend(agent, dest, &data) {
                            Ok(_) => {
                                if let Some(p) = progress {
                                    p.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                break;
                            }
                            Err(e) => {
                                assert!(
                                    Instant::now() < deadline,
                                    "bpsend of bundle {i} kept failing: {e}"
                                );
                                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                }
            });
        }
    });
    retries.into_inner()
}

/// Starts `bprecv --node agent --count n --timeout T --json EID`.
pub fn bprecv_json(agent: &str, eid: &str, count: usize, timeout: Duration) -> Tool {
    let t = format!("{}ms", timeout.as_millis());
    Tool::spawn(
        "bprecv",
        &[
            "--node",
            agent,
            "--count",
            &count.to_string(),
            "--timeout",
            &t,
            "--json",
            eid,
        ],
        None,
    )
}

/// One bundle printed by `bprecv --json`.
#[derive(Clone, Debug)]
pub struct Received {
    /// The whole JSON object.
    pub json: serde_json::Value,
    /// The decoded payload.
    pub payload: Vec<u8>,
}

/// Parses `bprecv --json` output: one JSON object per line, with the payload in a field
/// named `payload_hex`, `payload_base64` or `payload` (hex or base64, per `payload_encoding`).
pub fn parse_bprecv_json(stdout: &[u8]) -> Result<Vec<Received>, String> {
    let text = std::str::from_utf8(stdout).map_err(|e| format!("bprecv output: {e}"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let json: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("bprecv line {}: {e}: {:.200}", n + 1, line))?;
        let payload = decode_json_payload(&json)
            .ok_or_else(|| format!("bprecv line {}: no payload field: {:.300}", n + 1, line))?;
        out.push(Received { json, payload });
    }
    Ok(out)
}

fn decode_json_payload(v: &serde_json::Value) -> Option<Vec<u8>> {
    if let Some(h) = v.get("payload_hex").and_then(|x| x.as_str()) {
        return hex::decode(h).ok();
    }
    if let Some(b) = v.get("payload_base64").and_then(|x| x.as_str()) {
        return base64_decode(b);
    }
    let p = v.get("payload").and_then(|x| x.as_str())?;
    let enc = v
        .get("payload_encoding")
        .or_else(|| v.get("encoding"))
        .and_then(|x| x.as_str())
        .unwrap_or("");
    if enc.contains("hex") {
        hex::decode(p).ok()
    } else if enc.contains("base64") {
        base64_decode(p)
    } else {
        hex::decode(p).ok().or_else(|| base64_decode(p))
    }
}

/// Standard base64 (RFC 4648 §4, padding optional) decoder.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// Checks that `received` holds every index `0..n` exactly once, byte-identical; returns a
/// description of every problem.
pub fn check_exactly_once(received: &[Received], sizes: &[usize]) -> Result<(), String> {
    let mut seen = vec![0u32; sizes.len()];
    let mut problems = Vec::new();
    for r in received {
        match check_payload(&r.payload) {
            Ok(idx) if (idx as usize) < sizes.len() => {
                if sizes[idx as usize] != r.payload.len() {
                    problems.push(format!(
                        "bundle {idx}: size {} != {}",
                        r.payload.len(),
                        sizes[idx as usize]
                    ));
                }
                seen[idx as usize] += 1;
            }
            Ok(idx) => problems.push(format!("unknown bundle index {idx}")),
            Err(e) => problems.push(e),
        }
    }
    let missing: Vec<usize> = (0..sizes.len()).filter(|&i| seen[i] == 0).collect();
    let dup: Vec<usize> = (0..sizes.len()).filter(|&i| seen[i] > 1).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} missing (first: {:?})",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    if !dup.is_empty() {
        problems.push(format!(
            "{} delivered more than once (first: {:?})",
            dup.len(),
            &dup[..dup.len().min(10)]
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Counters of refused or discarded input: `dtn_cla_bad_input_total`,
/// `dtn_bundles_discarded_total` and `dtn_bundles_refused_total`, summed over labels.
pub fn bad_input_count(m: &Metrics) -> f64 {
    m.sum("dtn_cla_bad_input_total")
        + m.sum("dtn_bundles_discarded_total")
        + m.sum("dtn_bundles_refused_total")
}

/// Asserts that nothing more is delivered to `eid` at `agent` within `quiet` (run after every
/// expected bundle arrived: a duplicate would show up here).
pub fn assert_nothing_more(agent: &str, eid: &str, quiet: Duration) {
    let out = bprecv_json(agent, eid, 1, quiet).wait(quiet + Duration::from_secs(30));
    let extra = parse_bprecv_json(&out.stdout).unwrap_or_default();
    assert!(
        extra.is_empty() && !out.success(),
        "a further bundle was delivered to {eid} after all expected ones (duplicate): {:?}",
        extra
            .iter()
            .map(|r| check_payload(&r.payload))
            .collect::<Vec<_>>()
    );
}

/// The issue-5 end-to-end scenario: a line A–B–C over `cl`, `n` bundles of mixed sizes
/// (`large` of them 1–10 MiB) sent with `bpsend` at A to `ipn:3.5`, received with `bprecv`
/// at C; every bundle must arrive byte-identical exactly once.
pub fn line_transfer(test: &str, cl: LineCl, n: usize, large: usize) {
    let dir = TempDir::new(test);
    let nodes = start_line(dir.path(), cl, "group");
    let mut rng = SplitMix(seed(test));
    let sizes = mixed_sizes(&mut rng, n, large);
    let total: usize = sizes.iter().sum();
    let started = Instant::now();
    let recv = bprecv_json(&nodes[2].agent(), "ipn:3.5", n, Duration::from_secs(300));
    let retries = bpsend_all(
        &nodes[0].agent(),
        "ipn:3.5",
        &sizes,
        4,
        Duration::from_secs(240),
        None,
    );
    let sent_in = started.elapsed();
    let out = recv.wait(Duration::from_secs(320));
    let received = parse_bprecv_json(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{test}: {n} bundles, {total} bytes: sent in {sent_in:?} ({retries} bpsend retries), \
         {} received in {:?}",
        received.len(),
        started.elapsed()
    );
    if let Err(e) = check_exactly_once(&received, &sizes) {
        panic!(
            "{test}: {e}\nbprecv: {:?} {}\n--- a ---\n{}\n--- b ---\n{}\n--- c ---\n{}",
            out.status,
            out.stderr,
            nodes[0].log_tail(),
            nodes[1].log_tail(),
            nodes[2].log_tail()
        );
    }
    assert!(out.success(), "bprecv failed: {}", out.stderr);
    assert_nothing_more(&nodes[2].agent(), "ipn:3.5", Duration::from_secs(2));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_identify_themselves() {
        let p = payload(7, 10);
        assert_eq!(check_payload(&p), Ok(7));
        let mut q = payload(7, 1000);
        q[500] ^= 1;
        assert!(check_payload(&q).is_err());
        assert!(check_payload(&p[..9]).is_err());
    }

    #[test]
    fn mixed_sizes_have_the_promised_shape() {
        let mut rng = SplitMix(1);
        let s = mixed_sizes(&mut rng, 1000, 5);
        assert_eq!(s.len(), 1000);
        assert!(s.iter().all(|&x| (10..=10 << 20).contains(&x)));
        assert_eq!(s.iter().filter(|&&x| x >= 1 << 20).count(), 5);
        assert!(s.contains(&(10 << 20)));
        assert!(s.iter().filter(|&&x| x <= 4096).count() >= 900);
    }

    #[test]
    fn base64_and_labels() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert!(base64_decode("a$==").is_none());
        let m = Metrics::parse(
            "# HELP x y\n# TYPE x counter\nx{reason=\"a\\\"b\",cla=\"tcpcl\"} 3\nx 2\ny 1.5\n",
        );
        assert_eq!(m.sum("x"), 5.0);
        assert_eq!(m.sum_where("x", "cla", "tcpcl"), 3.0);
        assert_eq!(m.sum_where("x", "reason", "a\"b"), 3.0);
        assert_eq!(m.sum("y"), 1.5);
    }

    #[test]
    fn ready_line_parses() {
        let r = Ready::parse(
            "dtnd ready {\"node_id\":\"ipn:1.0\",\"agent\":\"127.0.0.1:4550\",\"unix\":null,\
             \"metrics\":\"127.0.0.1:9550\",\"tcpcl\":\"127.0.0.1:4556\",\"udp\":null,\"ltp\":null}",
        )
        .unwrap();
        assert_eq!(r.node_id, "ipn:1.0");
        assert_eq!(r.tcpcl.as_deref(), Some("127.0.0.1:4556"));
        assert!(r.udp.is_none());
        assert!(Ready::parse("something else").is_none());
    }

    #[test]
    fn config_toml_is_well_formed() {
        let dir = TempDir::new("cfg");
        let [a, b, _] = line_configs(dir.path(), LineCl::Ltp, "memory");
        let t = b.to_toml();
        assert!(t.contains("[ltp]\nengine_id = 2"), "{t}");
        assert!(t.contains("ltp = { engine = 1"), "{t}");
        assert!(a.to_toml().contains("dest = \"ipn:3.*\"\nvia = \"b\""));
    }
}
