//! `dtnd`: the DTN node daemon. `dtnd [--config FILE]` runs a node (built-in default without
//! a file), prints one `dtnd ready {...}` line with the bound addresses once every listener is
//! up, and shuts down cleanly on SIGTERM/SIGINT (exit 0). A bad configuration exits with
//! status 2 and `error: FILE:LINE:COL: reason`. `dtnd --print-config` prints the default
//! configuration.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use node::config::{Config, DEFAULT_TOML};
use node::daemon::Node;
use tokio::signal::unix::{signal, SignalKind};

/// The DTN node daemon.
#[derive(Parser, Debug)]
#[command(name = "dtnd", version, about)]
struct Args {
    /// Configuration file (TOML); without it the built-in default is used.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the default configuration and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_config {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let node = Node::start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "dtnd ready {}", node.addresses().to_json())?;
        out.flush()?;
    }
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    node.shutdown().await
}
