//! Contact-driven link control: applies the contact plan's view of each neighbour's link (the
//! engine's [`crate::processing::Action::Link`]) to the convergence layer, off the core task.
//!
//! For an LTP neighbour a contact start is an RFC 5326 §6.1 link-state cue "up" (timers resume,
//! queued segments go), a contact end a cue "down" (timers suspended, nothing sent), or, with
//! `on_contact_end = "cancel"`, a cancel of the span's sessions whose bundles the engine routes
//! again; after the plan's last contact to the neighbour they are cancelled in any case (a
//! suspended session would otherwise hold its bundles until they expire). The span's timers use
//! the plan's one-way light time and its pacing the contact's rate, unless the configuration
//! gives them explicitly. A neighbour with link emulation also has its emulated link down
//! outside its contacts (a [`LinkGate`]), so what a laptop emulates is the space link the plan
//! describes.
//!
//! The core publishes the whole vector of link states through a `watch` channel: a burst of
//! contact changes coalesces into the latest state per neighbour, with no queue to bound.

use std::sync::Arc;
use std::time::Duration;

use convergence::emulation::LinkGate;
use convergence::ltp_adapter::LtpAdapter;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::ContactEndPolicy;
use crate::processing::PlannedLink;

/// How one neighbour's link is controlled.
#[derive(Debug)]
pub struct LinkTarget {
    /// Neighbour name (logs).
    pub name: String,
    /// Its LTP span, if it is an LTP neighbour.
    pub ltp: Option<LtpSpanControl>,
    /// The gate of its emulated link, if it is emulated.
    pub gate: Option<LinkGate>,
}

/// An LTP span whose settings follow the plan.
#[derive(Debug, Clone)]
pub struct LtpSpanControl {
    /// The peer engine.
    pub engine: u64,
    /// The span's configured settings (the base the plan's values are put into).
    pub base: ltp::SpanConfig,
    /// One-way light time given in the configuration (overrides the plan's ranges).
    pub owlt: Option<Duration>,
    /// Rate given in the configuration, bytes/s (`Some(0)`: no pacing; overrides the plan).
    pub rate: Option<u64>,
}

impl LtpSpanControl {
    /// The span settings for the plan's view `link`.
    pub fn span_for(&self, link: Option<&PlannedLink>) -> ltp::SpanConfig {
        let mut span = self.base.clone();
        let owlt = self
            .owlt
            .or_else(|| link.and_then(|l| l.owlt_ms).map(Duration::from_millis));
        if let Some(owlt) = owlt {
            span.owlt_outbound = owlt;
            span.owlt_inbound = owlt;
        }
        span.rate_limit = match self.rate {
            Some(0) => None,
            Some(r) => Some(r),
            None => link.and_then(|l| l.rate).filter(|&r| r > 0),
        };
        span
    }
}

/// The per-neighbour link states published by the core (index: neighbour).
pub type LinkStates = Vec<Option<PlannedLink>>;

/// Spawns the task that applies link states published on `states` to `targets` (same index
/// as the states) until the sender is dropped.
pub fn spawn(
    targets: Vec<LinkTarget>,
    ltp: Option<Arc<LtpAdapter>>,
    policy: ContactEndPolicy,
    mut states: watch::Receiver<LinkStates>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut applied: LinkStates = vec![None; targets.len()];
        // The first state is applied too (the engine's view at start).
        states.mark_changed();
        while states.changed().await.is_ok() {
            let now: LinkStates = states.borrow_and_update().clone();
            for (i, (target, state)) in targets.iter().zip(&now).enumerate() {
                if applied[i] != *state {
                    apply(target, state.as_ref(), ltp.as_deref(), policy).await;
                    applied[i] = *state;
                }
            }
        }
        debug!("link control stopped");
    })
}

async fn apply(
    target: &LinkTarget,
    link: Option<&PlannedLink>,
    ltp: Option<&LtpAdapter>,
    policy: ContactEndPolicy,
) {
    // Not plan-driven (any more): always up.
    let up = link.is_none_or(|l| l.up);
    if let Some(gate) = &target.gate {
        gate.set(up);
    }
    let (Some(span), Some(adapter)) = (&target.ltp, ltp) else {
        return;
    };
    let handle = adapter.ltp();
    if up {
        // New timing first, so that the resumed timers and the pacing use the contact's values.
        if let Err(e) = handle
            .configure_span(span.engine, span.span_for(link))
            .await
        {
            warn!(neighbour = %target.name, "LTP span settings not applied: {e}");
        }
        if let Err(e) = handle.set_link(span.engine, true).await {
            warn!(neighbour = %target.name, "LTP link-state cue not applied: {e}");
        }
    } else {
        if let Err(e) = handle.set_link(span.engine, false).await {
            warn!(neighbour = %target.name, "LTP link-state cue not applied: {e}");
        }
        // Suspended sessions resume at the next contact; with none left in the plan they would
        // strand their bundles, so they are cancelled and the bundles routed again.
        let last_contact = link.is_some_and(|l| l.next_contact.is_none());
        if policy == ContactEndPolicy::Cancel || last_contact {
            let n = adapter.cancel_span(span.engine).await;
            info!(neighbour = %target.name, "contact ended: LTP sessions cancelled ({n:?})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_follows_the_plan_unless_configured() {
        let c = LtpSpanControl {
            engine: 2,
            base: ltp::SpanConfig::default(),
            owlt: None,
            rate: None,
        };
        let link = PlannedLink {
            up: true,
            rate: Some(5000),
            owlt_ms: Some(1500),
            next_contact: None,
        };
        let s = c.span_for(Some(&link));
        assert_eq!(s.owlt_outbound, Duration::from_millis(1500));
        assert_eq!(s.owlt_inbound, Duration::from_millis(1500));
        assert_eq!(s.rate_limit, Some(5000));
        // No plan view: the base settings.
        let s = c.span_for(None);
        assert_eq!(s.owlt_outbound, ltp::SpanConfig::default().owlt_outbound);
        assert_eq!(s.rate_limit, None);

        let fixed = LtpSpanControl {
            owlt: Some(Duration::from_secs(3)),
            rate: Some(0),
            ..c.clone()
        };
        let s = fixed.span_for(Some(&link));
        assert_eq!(s.owlt_outbound, Duration::from_secs(3));
        assert_eq!(s.rate_limit, None);
        let paced = LtpSpanControl {
            rate: Some(100),
            ..c
        };
        assert_eq!(paced.span_for(Some(&link)).rate_limit, Some(100));
    }
}
