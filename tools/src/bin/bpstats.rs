//! `bpstats`: print the node's identity and counters (the agent's info and stats requests),
//! one line per metric name with label sets inline, or JSON with `--json`.
//!
//! Exit status: 0 printed, 1 node unreachable or refused, 2 usage.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use node::agent::cli::default_node;
use node::agent::client::AgentClient;
use node::api::{MetricKind, NodeInfo, NodeStats};

/// Print the node's counters.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Agent address: HOST:PORT, or a Unix socket path containing '/' (default DTN_NODE or 127.0.0.1:4550).
    #[arg(long)]
    node: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

fn text(info: &NodeInfo, stats: &NodeStats) -> String {
    let mut out = format!("node {} ({})\n", info.node_id, info.version);
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    out += &format!("neighbours: {}\n", list(&info.neighbours));
    out += &format!("registrations: {}\n", list(&info.registrations));
    let groups = stats.by_name();
    let width = groups.keys().map(|k| k.len()).max().unwrap_or(0);
    for (name, samples) in groups {
        let total: f64 = samples.iter().map(|m| m.value).sum();
        let labelled: Vec<String> = samples
            .iter()
            .filter(|m| !m.labels.is_empty())
            .map(|m| {
                let l: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{} {}", l.join(","), num(m.value))
            })
            .collect();
        out += &format!("{name:<width$}  {:>12}", num(total));
        if !labelled.is_empty() {
            out += &format!("  ({})", labelled.join("; "));
        }
        out.push('\n');
    }
    out
}

fn json(info: &NodeInfo, stats: &NodeStats) -> serde_json::Value {
    let metrics: Vec<serde_json::Value> = stats
        .metrics
        .iter()
        .map(|m| {
            let labels: serde_json::Map<String, serde_json::Value> = m
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            serde_json::json!({
                "name": m.name,
                "kind": match m.kind { MetricKind::Counter => "counter", MetricKind::Gauge => "gauge" },
                "help": m.help,
                "labels": labels,
                "value": m.value,
            })
        })
        .collect();
    serde_json::json!({
        "node_id": info.node_id,
        "version": info.version,
        "neighbours": info.neighbours,
        "registrations": info.registrations,
        "metrics": metrics,
    })
}

async fn run(cli: Cli) -> Result<()> {
    let addr = cli.node.unwrap_or_else(default_node);
    let mut client = AgentClient::connect(&addr).await?;
    let info = client.info().await?;
    let stats = client.stats().await?;
    if cli.json {
        println!("{}", json(&info, &stats));
    } else {
        print!("{}", text(&info, &stats));
    }
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
            eprintln!("bpstats: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpstats: {e:#}");
            ExitCode::FAILURE
        }
    }
}
