//! `bpdump`: print a bundle as JSON, like `tshark -V` for RFC 9171 bundles, and build a bundle
//! from such a JSON description (`bpdump encode`).
//!
//! ```text
//! bpdump [--hex] [--payload] [FILE] decode FILE (stdin when absent) and print JSON
//! bpdump --example                  describe a built-in example bundle
//! bpdump encode [--hex] [FILE]     read JSON (stdin when absent), write the bundle to stdout
//! ```
//! An invalid bundle exits with status 1 and a one-line reason on stderr.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tools::dump;

/// Decode a BPv7 bundle (RFC 9171) and print it as JSON, or encode one from JSON.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The input is hex text (white space ignored) rather than binary.
    #[arg(long)]
    hex: bool,
    /// Include the payload as `payload_hex` (what `bpdump encode` needs to rebuild the bundle).
    #[arg(long)]
    payload: bool,
    /// Describe a built-in example bundle instead of reading one.
    #[arg(long, conflicts_with = "file")]
    example: bool,
    /// Bundle file to read; standard input when absent.
    file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Read a JSON description (with `payload_hex`) and write the encoded bundle to stdout.
    Encode {
        /// Write hex text instead of binary.
        #[arg(long)]
        hex: bool,
        /// JSON file to read; standard input when absent.
        file: Option<PathBuf>,
    },
}

fn read_input(file: Option<&PathBuf>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    match file {
        Some(path) => {
            buf = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read standard input")?;
        }
    }
    Ok(buf)
}

fn decode_hex(text: &[u8]) -> Result<Vec<u8>> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    hex::decode(compact).map_err(|e| anyhow!("input is not valid hex: {e}"))
}

fn run(cli: Cli) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Some(Command::Encode { hex, file }) => {
            let text = read_input(file.as_ref())?;
            let json: serde_json::Value =
                serde_json::from_slice(&text).context("input is not valid JSON")?;
            let bundle = dump::bundle_from_json(&json)?;
            let bytes = bundle.encode().map_err(|e| anyhow!("cannot encode: {e}"))?;
            if hex {
                writeln!(out, "{}", hex::encode(bytes))?;
            } else {
                out.write_all(&bytes)?;
            }
        }
        None => {
            let bundle = if cli.example {
                dump::example_bundle()
            } else {
                let mut raw = read_input(cli.file.as_ref())?;
                if cli.hex {
                    raw = decode_hex(&raw)?;
                }
                bpv7::Bundle::decode(Bytes::from(raw))
                    .map_err(|e| anyhow!("invalid bundle: {e}"))?
            };
            serde_json::to_writer_pretty(&mut out, &dump::describe(&bundle, cli.payload))?;
            writeln!(out)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpdump: {e:#}");
            ExitCode::FAILURE
        }
    }
}
