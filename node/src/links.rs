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

use crate::config::{ContactEndPolicy, LtpLink};
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
    /// Flow control given in the configuration (`None`: [`flow_control`] chooses; `Some(0)`:
    /// none).
    pub max_bytes_in_flight: Option<u64>,
}

/// Flow control dtnd gives an LTP span whose configuration names none: half of the 8 MiB UDP
/// receive buffer a dtnd asks for its LTP socket.
pub const AUTO_MAX_BYTES_IN_FLIGHT: u64 = 4 << 20;

/// The span's limit on red octets in flight (`ltp::SpanConfig::max_bytes_in_flight`) for the
/// configured limit `configured` (`Some(0)`: none) and the rate the span is paced at.
///
/// Unconfigured, an unpaced span gets [`AUTO_MAX_BYTES_IN_FLIGHT`]: without a rate the engine
/// sends as fast as the host can, and a large bundle on a fast link (a LAN, loopback) overran
/// the peer's receive buffer and was sent again and again. A paced span gets none: its rate
/// already keeps it to the link, and a limit below the bandwidth-delay product of a long link
/// (tens of MB for the Moon at 100 Mbit/s) would idle it.
pub fn flow_control(configured: Option<u64>, rate: Option<u64>) -> Option<u64> {
    match configured {
        Some(0) => None,
        Some(limit) => Some(limit),
        None => rate.is_none().then_some(AUTO_MAX_BYTES_IN_FLIGHT),
    }
}

impl LtpSpanControl {
    /// The span control an LTP neighbour's configuration gives: its segment size and window
    /// in the base, and its light time, rate and flow control, which [`Self::span_for`] puts
    /// in (the configuration's, else the plan's or the default).
    pub fn for_link(l: &LtpLink) -> LtpSpanControl {
        LtpSpanControl {
            engine: l.engine,
            base: ltp::SpanConfig {
                max_segment_size: l.segment_size,
                max_export_sessions: l.window,
                max_retransmission_factor: l.tuning.max_retransmission_factor,
                checkpoint_every: l.tuning.checkpoint_every,
                asynchronous_reports: l.tuning.asynchronous_reports,
                checkpoint_copies: l.tuning.checkpoint_copies,
                checkpoint_copies_min_loss: l.tuning.checkpoint_copies_min_loss,
                max_checkpoint_retransmissions: l.tuning.max_checkpoint_retransmissions,
                max_report_retransmissions: l.tuning.max_report_retransmissions,
                ..ltp::SpanConfig::default()
            },
            owlt: l.owlt,
            rate: l.rate,
            max_bytes_in_flight: l.max_bytes_in_flight,
        }
    }

    /// The span settings for the plan's view `link` (`None`: no view, the configuration's
    /// settings alone).
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
        span.max_bytes_in_flight = flow_control(self.max_bytes_in_flight, span.rate_limit);
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

    /// A span to peer engine 2 with nothing configured beyond the defaults.
    fn unconfigured() -> LtpSpanControl {
        LtpSpanControl {
            engine: 2,
            base: ltp::SpanConfig::default(),
            owlt: None,
            rate: None,
            max_bytes_in_flight: None,
        }
    }

    #[test]
    fn span_follows_the_plan_unless_configured() {
        let c = unconfigured();
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

    #[test]
    fn flow_control_is_automatic_only_while_unconfigured_and_unpaced() {
        let c = unconfigured();
        let contact = |rate| PlannedLink {
            up: true,
            rate,
            owlt_ms: Some(10),
            next_contact: None,
        };
        // Unpaced (no plan, or a contact without a rate): 4 MiB.
        let auto = Some(AUTO_MAX_BYTES_IN_FLIGHT);
        assert_eq!(c.span_for(None).max_bytes_in_flight, auto);
        assert_eq!(c.span_for(Some(&contact(None))).max_bytes_in_flight, auto);
        // Paced by the plan: none, and back to 4 MiB when the rate goes.
        assert_eq!(
            c.span_for(Some(&contact(Some(125_000))))
                .max_bytes_in_flight,
            None
        );
        // Configured: as configured, whatever the pacing; 0 turns it off.
        let set = LtpSpanControl {
            max_bytes_in_flight: Some(65_536),
            ..c.clone()
        };
        assert_eq!(
            set.span_for(Some(&contact(Some(125_000))))
                .max_bytes_in_flight,
            Some(65_536)
        );
        assert_eq!(set.span_for(None).max_bytes_in_flight, Some(65_536));
        let off = LtpSpanControl {
            max_bytes_in_flight: Some(0),
            ..c
        };
        assert_eq!(off.span_for(None).max_bytes_in_flight, None);
    }

    #[test]
    fn a_neighbours_tuning_reaches_its_span_whatever_the_plan_says() {
        use crate::config::{LtpLink, LtpTuning};
        let tuning = LtpTuning {
            max_retransmission_factor: 3,
            checkpoint_every: 12,
            asynchronous_reports: false,
            checkpoint_copies: 2,
            checkpoint_copies_min_loss: 0.25,
            max_checkpoint_retransmissions: 2,
            max_report_retransmissions: 7,
        };
        let link = LtpLink {
            engine: 2,
            addr: "127.0.0.1:1114".parse().unwrap(),
            owlt: None,
            rate: None,
            green: false,
            segment_size: 1000,
            window: 4,
            aggregation_size: 65536,
            aggregation_time: Duration::from_millis(50),
            max_bytes_in_flight: None,
            tuning,
        };
        let contact = PlannedLink {
            up: true,
            rate: Some(5000),
            owlt_ms: Some(1500),
            next_contact: None,
        };
        let c = LtpSpanControl::for_link(&link);
        for s in [c.span_for(None), c.span_for(Some(&contact))] {
            assert_eq!((s.max_segment_size, s.max_export_sessions), (1000, 4));
            assert_eq!(
                (
                    s.max_retransmission_factor,
                    s.checkpoint_every,
                    s.asynchronous_reports,
                    s.checkpoint_copies,
                    s.max_checkpoint_retransmissions,
                    s.max_report_retransmissions,
                ),
                (3, 12, false, 2, 2, 7)
            );
            assert_eq!(s.checkpoint_copies_min_loss, 0.25);
        }
    }
}
