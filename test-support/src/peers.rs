//! The independent implementations that interoperability tests start on loopback, installed
//! by `bash .ci/run` (once, into `~/.cache/dtn-stack/<name>`) and found here.

use std::path::PathBuf;

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
