//! `dtnd`: the DTN node daemon. `dtnd [--config FILE]` runs a node (built-in default without
//! a file), prints one `dtnd ready {...}` line with the bound addresses once every listener is
//! up, reloads its contact plan on SIGHUP, and shuts down cleanly on SIGTERM/SIGINT (exit 0).
//! A bad configuration exits with status 2 and `error: FILE:LINE:COL: reason`.
//! `dtnd --print-config` prints the default configuration; `dtnd demo` runs the built-in
//! three-node Mars-relay scenario (see `node::demo`).

use std::io::{IsTerminal as _, Write as _};
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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Run the built-in demo: ground station, orbiting relay and surface node in this process,
    /// over LTP on loopback UDP with a contact plan, light times of seconds and loss (under a
    /// minute; no files needed).
    Demo {
        /// Random loss on every link, percent.
        #[arg(long, default_value_t = 3.0)]
        loss: f64,
        /// Payload size of each bundle, bytes.
        #[arg(long, default_value_t = 1500)]
        payload: usize,
        /// Log filter (default: warnings only, so that the demo's own output is readable).
        #[arg(long, default_value = "warn")]
        log: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_config {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Demo { loss, payload, log }) = &args.command {
        return demo(*loss, *payload, log);
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
    init_logging(&config.log, "info");
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
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
    let mut hup = signal(SignalKind::hangup())?;
    let node = Node::start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "dtnd ready {}", node.addresses().to_json())?;
        out.flush()?;
    }
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: shutting down");
                break;
            }
            _ = hup.recv() => match node.reload_plan().await {
                Ok(n) => tracing::info!(contacts = n, "SIGHUP: contact plan reloaded"),
                Err(e) => tracing::error!("SIGHUP: contact plan not reloaded: {e}"),
            },
        }
    }
    node.shutdown().await
}

fn demo(loss: f64, payload: usize, log: &str) -> ExitCode {
    init_logging(log, "warn");
    let opts = node::demo::DemoOptions {
        loss: loss / 100.0,
        payload,
        ..Default::default()
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let mut out = std::io::stdout();
    match runtime.block_on(node::demo::run(&opts, &mut out)) {
        Ok(r) if r.delivered == r.sent && r.duplicates == 0 => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!(
                "error: {} of {} bundles delivered, {} duplicates",
                r.delivered, r.sent, r.duplicates
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr through `tracing`: `RUST_LOG` if set, else `filter`, else `fallback`; colours
/// only on a terminal.
fn init_logging(filter: &str, fallback: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(fallback));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The multi-threaded tokio runtime (`None`, with the reason printed, if it cannot start).
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}
