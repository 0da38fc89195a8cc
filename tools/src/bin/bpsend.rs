//! `bpsend`: send a file or standard input as one bundle through the local node's agent
//! (RFC 9171 §5.2 bundle transmission). Prints the new bundle's id (`source/time/sequence`).
//!
//! Exit status: 0 sent (stored by the node), 1 refused or node unreachable, 2 usage.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use node::agent::cli::{default_node, parse_duration};
use node::agent::client::AgentClient;
use node::api::{Priority, SendRequest, StatusRequests};

/// Send one bundle through the node's agent.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Agent address: HOST:PORT, or a Unix socket path containing '/' (default DTN_NODE or 127.0.0.1:4550).
    #[arg(long)]
    node: Option<String>,
    /// Source EID (default: the node's choice).
    #[arg(long)]
    source: Option<String>,
    /// Bundle lifetime, e.g. 30s, 5m, 1h, 2d, 1500ms.
    #[arg(long, default_value = "1d", value_parser = parse_duration)]
    lifetime: std::time::Duration,
    /// Local priority: bulk, normal or expedited.
    #[arg(long, default_value = "normal", value_parser = parse_priority)]
    priority: Priority,
    /// Report-to EID for status reports (default: the source).
    #[arg(long)]
    report_to: Option<String>,
    /// Status reports to request: received,forwarded,delivered,deleted.
    #[arg(long, value_parser = parse_requests)]
    request: Option<StatusRequests>,
    /// Set the "must not be fragmented" flag.
    #[arg(long)]
    no_fragment: bool,
    /// Destination EID.
    dest: String,
    /// File to send; standard input when absent or "-".
    file: Option<PathBuf>,
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    match s {
        "bulk" => Ok(Priority::Bulk),
        "normal" => Ok(Priority::Normal),
        "expedited" => Ok(Priority::Expedited),
        _ => Err(format!("unknown priority {s:?} (bulk, normal, expedited)")),
    }
}

fn parse_requests(s: &str) -> Result<StatusRequests, String> {
    let mut r = StatusRequests::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "received" => r.received = true,
            "forwarded" => r.forwarded = true,
            "delivered" => r.delivered = true,
            "deleted" => r.deleted = true,
            _ => {
                return Err(format!(
                    "unknown status report {part:?} (received, forwarded, delivered, deleted)"
                ))
            }
        }
    }
    Ok(r)
}

const PROGRESS_FROM: u64 = 1 << 20;

async fn run(cli: Cli) -> Result<()> {
    let payload = match cli.file.as_ref().filter(|p| p.as_os_str() != "-") {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read standard input")?;
            buf
        }
    };
    let addr = cli.node.unwrap_or_else(default_node);
    let mut client = AgentClient::connect(&addr).await?;
    let req = SendRequest {
        source: cli.source,
        destination: cli.dest,
        payload: Bytes::from(payload),
        lifetime_ms: u64::try_from(cli.lifetime.as_millis()).unwrap_or(u64::MAX),
        priority: cli.priority,
        report_to: cli.report_to,
        requests: cli.request.unwrap_or_default(),
        no_fragment: cli.no_fragment,
    };
    let show = req.payload.len() as u64 >= PROGRESS_FROM && std::io::stderr().is_terminal();
    let accepted = client
        .send_with_progress(req, |done, total| {
            if show {
                let pct = done * 100 / total.max(1);
                let mut e = std::io::stderr();
                let _ = write!(e, "\rsending {} / {} bytes ({pct}%)", done, total);
                if done == total {
                    let _ = write!(e, " — waiting for the node to store it\r\n");
                }
                let _ = e.flush();
            }
        })
        .await?;
    if accepted.id.source.is_empty() {
        bail!("the node answered without a bundle id");
    }
    println!("{}", accepted.id);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bpsend: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpsend: {e:#}");
            ExitCode::FAILURE
        }
    }
}
