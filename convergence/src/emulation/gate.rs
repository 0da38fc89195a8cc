//! [`LinkGate`]: a shareable up/down switch for an emulated link, flipped by whoever knows the
//! link's contacts (a contact plan: up when a contact starts, down when it ends), so that a
//! link is emulated as down outside its contacts.
//!
//! A gate complements the profile's own outage [`Schedule`](super::Schedule): the schedule is
//! fixed when the emulator is built, the gate follows the caller at run time. An emulator with a
//! gate drops every datagram submitted while the gate is down, exactly as during a scheduled
//! outage ([`DropReason::LinkDown`](super::DropReason::LinkDown), counted in
//! [`EmulatorStats::dropped_down`](super::EmulatorStats::dropped_down)); datagrams already
//! propagating are still delivered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cheap, cloneable up/down switch shared by the caller and the emulators it gates (clones
/// share one state).
#[derive(Clone)]
pub struct LinkGate(Arc<AtomicBool>);

impl LinkGate {
    /// A gate that starts up (`true`) or down (`false`).
    pub fn new(up: bool) -> Self {
        LinkGate(Arc::new(AtomicBool::new(up)))
    }

    /// Opens (`true`) or closes (`false`) the gate for every clone, from the next datagram on.
    pub fn set(&self, up: bool) {
        self.0.store(up, Ordering::Release);
    }

    /// Whether the gate is up now.
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Default for LinkGate {
    /// An open gate.
    fn default() -> Self {
        LinkGate::new(true)
    }
}

impl std::fmt::Debug for LinkGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkGate")
            .field("up", &self.is_up())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_state() {
        let g = LinkGate::new(false);
        let h = g.clone();
        assert!(!h.is_up());
        g.set(true);
        assert!(h.is_up());
        h.set(false);
        assert!(!g.is_up());
        assert!(LinkGate::default().is_up());
        assert_eq!(format!("{g:?}"), "LinkGate { up: false }");
    }
}
