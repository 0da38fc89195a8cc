//! The independent implementations that interoperability tests start on loopback, installed
//! by `bash .ci/run` (once, into `~/.cache/dtn-stack/<name>`) and found here.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// An independent implementation a test runs against.
#[derive(Clone, Copy, Debug)]
pub struct InteropPeer {
    /// The binary's file name.
    pub binary: &'static str,
    /// The variable naming the directory that holds it.
    pub dir_var: &'static str,
    /// Its directory under `$HOME/.cache/dtn-stack/` when the variable is not set.
    pub cache: &'static str,
    /// What installs it, for the message when it is missing.
    pub installed_by: &'static str,
}

/// dtn7-rs's `dtnd` 0.21 (TCPCLv4).
pub const DTN7: InteropPeer = InteropPeer {
    binary: "dtnd",
    dir_var: "DTN7_BIN_DIR",
    cache: "dtn7/bin",
    installed_by: "dtn7-rs 0.21",
};

/// licklider 0.1.1's `licklider` (LTP).
pub const LICKLIDER: InteropPeer = InteropPeer {
    binary: "licklider",
    dir_var: "LICKLIDER_BIN_DIR",
    cache: "licklider/bin",
    installed_by: "licklider-cli 0.1.1",
};

/// The path of `peer`'s binary. When it is missing: `None` if `DTN_SKIP_INTEROP=1` says to
/// skip (the caller returns, having printed why), else a panic that says how to install it.
pub fn interop_peer(peer: InteropPeer) -> Option<PathBuf> {
    let dir = std::env::var_os(peer.dir_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/dtn-stack")
                .join(peer.cache)
        });
    let bin = dir.join(peer.binary);
    if bin.exists() {
        return Some(bin);
    }
    if std::env::var("DTN_SKIP_INTEROP").as_deref() == Ok("1") {
        eprintln!("skipping: {} not installed", bin.display());
        return None;
    }
    panic!(
        "{} not found: run `bash .ci/run` (it installs {}) or set DTN_SKIP_INTEROP=1",
        bin.display(),
        peer.installed_by
    );
}

/// A running interop peer process, killed and reaped when dropped (also when the test fails).
/// Its standard output and standard error are read as they come, copied to the test's (with
/// its name before each line), and kept for [`PeerProcess::wait_for_line`]: a peer may log its
/// ready line, or how a transfer ended, on either.
pub struct PeerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    tag: String,
}

impl PeerProcess {
    /// Starts `bin` with `args` and `envs`.
    pub fn spawn(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> PeerProcess {
        let mut child = Command::new(bin)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let tag = bin
            .file_name()
            .map_or_else(|| "peer".into(), |n| n.to_string_lossy().into_owned());
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        forward_lines(stdout, tag.clone(), false, tx.clone());
        forward_lines(stderr, tag.clone(), true, tx);
        PeerProcess { child, lines, tag }
    }

    /// Waits at most `wait` for a line of its output (either stream) containing `text`.
    pub fn wait_for_line(&mut self, text: &str, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(e) => panic!("no {} output line with {text:?} ({e})", self.tag),
            }
        }
    }

    /// Waits at most `wait` for it to exit, and returns how.
    pub fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not exit within {wait:?}", self.tag);
    }
}

/// Copies each line of `stream` to the test's standard output (or error, for `to_stderr`),
/// after `tag`, and sends it on `tx`, until the stream ends.
fn forward_lines(
    stream: impl std::io::Read + Send + 'static,
    tag: String,
    to_stderr: bool,
    tx: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if to_stderr {
                eprintln!("{tag}: {line}");
            } else {
                println!("{tag}: {line}");
            }
            let _ = tx.send(line);
        }
    });
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
