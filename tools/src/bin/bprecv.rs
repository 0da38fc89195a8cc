//! `bprecv`: register an endpoint with the local node and print or save the bundles delivered
//! to it (RFC 9171 §5.7 local delivery), acknowledging each one only after it is written.
//!
//! Output: raw payloads on stdout; with `--json` one JSON line per bundle (`source`,
//! `creation_ms`, `sequence`, optional `fragment_offset`/`total_adu_length`, `destination`,
//! `report_to`, `lifetime_ms`, `length`, and `payload_hex` — or `file` with `--output`); with
//! `--output DIR` each payload goes to `DIR/<source>-<creation_ms>-<sequence>.bin` (written to a
//! temporary file, fsynced, renamed) and its path is printed.
//!
//! Exit status: 0 after `--count` bundles, 1 error, 2 usage, 3 timeout (with the count
//! received on stderr).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use node::agent::cli::{default_node, parse_duration};
use node::agent::client::AgentClient;
use node::api::Delivery;

/// Receive bundles for an endpoint.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Agent address: HOST:PORT, or a Unix socket path containing '/' (default DTN_NODE or 127.0.0.1:4550).
    #[arg(long)]
    node: Option<String>,
    /// Exit after this many bundles (default: run until the timeout or interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Give up after this long in total (e.g. 30s, 5m); exit status 3.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Save each payload as a file in this directory instead of printing it.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print one JSON line per bundle.
    #[arg(long)]
    json: bool,
    /// Endpoint EID to register.
    eid: String,
}

fn file_name(d: &Delivery) -> String {
    let source: String =
        d.id.source
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
    format!("{source}-{}-{}.bin", d.id.creation_ms, d.id.sequence)
}

/// Write atomically: temporary file, fsync, rename, fsync the directory.
fn save(dir: &Path, d: &Delivery) -> Result<PathBuf> {
    let name = file_name(d);
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(&d.payload)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot rename to {}", path.display()))?;
    if let Ok(dirf) = std::fs::File::open(dir) {
        let _ = dirf.sync_all();
    }
    Ok(path)
}

fn json_line(d: &Delivery, file: Option<&Path>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "source": d.id.source,
        "creation_ms": d.id.creation_ms,
        "sequence": d.id.sequence,
        "destination": d.destination,
        "report_to": d.report_to,
        "lifetime_ms": d.lifetime_ms,
        "length": d.payload.len(),
    });
    if let Some((off, total)) = d.id.fragment {
        v["fragment_offset"] = off.into();
        v["total_adu_length"] = total.into();
    }
    match file {
        Some(p) => v["file"] = p.display().to_string().into(),
        None => v["payload_hex"] = hex::encode(&d.payload).into(),
    }
    v
}

enum Outcome {
    Done,
    TimedOut(u64),
}

async fn run(cli: Cli) -> Result<Outcome> {
    if let Some(dir) = &cli.output {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let addr = cli.node.unwrap_or_else(default_node);
    let mut client = AgentClient::connect(&addr).await?;
    let reg = client
        .register(&cli.eid)
        .await
        .with_context(|| format!("cannot register {}", cli.eid))?;
    let deadline = cli.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut received = 0u64;
    let stdout = std::io::stdout();
    while cli.count.is_none_or(|n| received < n) {
        let next = match deadline {
            Some(dl) => match tokio::time::timeout_at(dl, client.next_push()).await {
                Ok(r) => r,
                Err(_) => {
                    client.settle_acks().await?;
                    return Ok(Outcome::TimedOut(received));
                }
            },
            None => client.next_push().await,
        };
        let (r, d) = next?;
        let mut out = stdout.lock();
        match &cli.output {
            Some(dir) => {
                let path = save(dir, &d)?;
                if cli.json {
                    writeln!(out, "{}", json_line(&d, Some(&path)))?;
                } else {
                    writeln!(out, "{}", path.display())?;
                }
            }
            None if cli.json => writeln!(out, "{}", json_line(&d, None))?,
            None => out.write_all(&d.payload)?,
        }
        out.flush().context("cannot write standard output")?;
        drop(out);
        // Acknowledge only now that the payload is safely written; the node's answers are
        // read meanwhile and awaited before exit (then nothing acknowledged comes again).
        client.send_ack(r, d.token).await?;
        received += 1;
    }
    client.settle_acks().await?;
    let _ = client.unregister(reg).await;
    Ok(Outcome::Done)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let count = cli.count;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bprecv: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::TimedOut(n)) => {
            match count {
                Some(c) => eprintln!("bprecv: timeout: received {n} of {c} bundles"),
                None => eprintln!("bprecv: timeout: received {n} bundles"),
            }
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("bprecv: {e:#}");
            ExitCode::FAILURE
        }
    }
}
