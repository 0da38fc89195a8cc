//! Contacts drive the links: with a contact plan, a neighbour that the plan names as the
//! receiving end of a contact from this node is up only while such a contact is active
//! (CCSDS SABR 734.3-B-1 §3.2: a contact is an interval during which the sender may transmit
//! to the receiver at a rate). Outside its contacts the neighbour is down: bundles queued for it
//! go back to routing (CGR books them on a later contact or an alternate route), and the daemon
//! is told through [`Action::Link`] so that it can suspend the convergence layer (LTP timers,
//! RFC 5326 §6.1 link-state cues), pace it at the contact's rate, set the span's light time
//! from the plan's ranges, and emulate the link as down.
//!
//! Bundles go at the contact's rate: an LTP span is paced by the LTP engine (the daemon sets
//! the span's rate); a neighbour with [`super::Neighbour::pace_at_contact_rate`] (TCPCL, UDP)
//! is paced here, each bundle handed to the adapter once the link has had time to send the
//! ones before it (with [`super::PACE_BURST_MS`] of slack).
//!
//! Neighbours the plan does not name as a receiver of ours keep their adapter-driven state
//! (static routes over always-on links still work beside a plan).

use super::{Action, BundleEngine, NeighbourId};
use crate::api::DtnMillis;

/// The state of a plan-driven link at one moment, as the daemon needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedLink {
    /// A contact from this node to the neighbour is active.
    pub up: bool,
    /// The active contact's rate, bytes/s (`None` while down).
    pub rate: Option<u64>,
    /// One-way light time to the neighbour from the plan's ranges, ms (`None`: no range now).
    pub owlt_ms: Option<u64>,
    /// Start of the next contact to the neighbour after the current moment (`None`: the plan
    /// has none, so sessions suspended now would never resume).
    pub next_contact: Option<DtnMillis>,
}

impl BundleEngine {
    /// Recompute every plan-driven link at `now`; a change updates the neighbour's state (which
    /// re-routes its queue when it goes down, pumps it when it comes up) and emits
    /// [`Action::Link`]. Called at start, at each contact or range change and after a plan
    /// reload; sets the next such change as a timer.
    pub(super) fn apply_contacts(&mut self, now: DtnMillis) {
        self.update_links(now);
        self.next_contact_change = self.next_plan_change(now);
    }

    /// The next time after `now` at which a contact of this node starts or ends, or the light
    /// time to a plan-driven neighbour changes (a range starts or ends).
    fn next_plan_change(&self, now: DtnMillis) -> Option<DtnMillis> {
        let router = self.router.as_ref()?;
        let local = router.local();
        (0..self.neighbours.len())
            .filter(|&i| self.planned[i].is_some())
            .filter_map(|i| self.neighbours[i].cfg.node_number())
            .filter_map(|node| router.plan().owlt_change_after(local, node, now))
            .chain(router.next_contact_change(now))
            .min()
    }

    fn update_links(&mut self, now: DtnMillis) {
        for i in 0..self.neighbours.len() {
            let planned = self.planned_link(i, now);
            if self.planned[i] == planned {
                continue;
            }
            let was = self.planned[i];
            self.planned[i] = planned;
            let n = NeighbourId(i);
            let s = &mut self.neighbours[i];
            s.pace_rate = planned
                .filter(|_| s.cfg.pace_at_contact_rate)
                .and_then(|l| l.rate)
                .filter(|&r| r > 0);
            if s.pace_rate.is_none() {
                s.pace_wake = None;
            }
            match planned {
                Some(link) => {
                    tracing::info!(
                        neighbour = %self.neighbours[i].cfg.name,
                        up = link.up,
                        rate = ?link.rate,
                        owlt_ms = ?link.owlt_ms,
                        "contact plan link state"
                    );
                    self.actions.push_back(Action::Link {
                        neighbour: n,
                        link: Some(link),
                    });
                    self.set_link(n, link.up, now);
                }
                None if was.is_some() => {
                    // The reloaded plan no longer names this neighbour: back to always-on.
                    self.actions.push_back(Action::Link {
                        neighbour: n,
                        link: None,
                    });
                    self.set_link(n, true, now);
                }
                None => {}
            }
        }
    }

    /// The plan's view of neighbour `i` at `now`; `None` if the plan has no contact from this
    /// node to it (or there is no plan).
    fn planned_link(&self, i: usize, now: DtnMillis) -> Option<PlannedLink> {
        let router = self.router.as_ref()?;
        let node = self.neighbours[i].cfg.node_number()?;
        let local = router.local();
        let plan = router.plan();
        if !plan.has_contacts(local, node) {
            return None;
        }
        let contact = plan.contact_at(local, node, now);
        Some(PlannedLink {
            up: contact.is_some(),
            rate: contact.map(|c| c.rate),
            owlt_ms: plan.owlt(local, node, now),
            next_contact: plan.next_contact_after(local, node, now).map(|c| c.start),
        })
    }

    /// The plan's current view of a neighbour's link (`None`: not plan-driven).
    pub fn planned_link_state(&self, neighbour: NeighbourId) -> Option<PlannedLink> {
        self.planned.get(neighbour.0).copied().flatten()
    }
}
