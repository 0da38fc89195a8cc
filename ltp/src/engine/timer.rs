//! Session timers (RFC 5326 §6.1 and §8: timers start when the segment is transmitted, and are
//! suspended while the link to the peer is down, keeping their remaining time, and resumed when
//! it comes up). O(log n) start/stop; suspension walks the timers once per link change.

use std::collections::BTreeSet;

use super::Map;
use std::time::{Duration, Instant};

use crate::segment::{EngineId, SessionId};

/// Identifies one running timer.
pub(crate) type TimerId = u64;

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// §6.7 checkpoint retransmission (export session number, checkpoint serial).
    Checkpoint { number: u64, serial: u64 },
    /// §6.8 report retransmission (import session, report serial).
    Report { session: SessionId, serial: u64 },
    /// §6.15 cancel-from-sender retransmission (export session number).
    ExportCancel { number: u64 },
    /// §6.17 cancel-from-receiver retransmission (import session).
    ImportCancel { session: SessionId },
    /// Import session inactivity.
    Inactivity { session: SessionId },
}

#[derive(Clone, Copy, Debug)]
enum State {
    Running(Instant),
    Suspended(Duration),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    peer: EngineId,
    kind: TimerKind,
    state: State,
}

/// All timers of an engine.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    next_id: TimerId,
    queue: BTreeSet<(Instant, TimerId)>,
    entries: Map<TimerId, Entry>,
}

impl Timers {
    /// Starts a timer for `peer`; it starts suspended if the link is down.
    pub(crate) fn start(
        &mut self,
        peer: EngineId,
        kind: TimerKind,
        now: Instant,
        dur: Duration,
        link_up: bool,
    ) -> TimerId {
        self.next_id += 1;
        let id = self.next_id;
        let state = if link_up {
            let at = now + dur;
            self.queue.insert((at, id));
            State::Running(at)
        } else {
            State::Suspended(dur)
        };
        self.entries.insert(id, Entry { peer, kind, state });
        id
    }

    /// Stops a timer (no-op if it already fired or was stopped).
    pub(crate) fn stop(&mut self, id: TimerId) {
        if let Some(e) = self.entries.remove(&id) {
            if let State::Running(at) = e.state {
                self.queue.remove(&(at, id));
            }
        }
    }

    /// Earliest running deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.queue.first().map(|&(at, _)| at)
    }

    /// Removes and returns one timer due at `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(EngineId, TimerKind)> {
        let &(at, id) = self.queue.first()?;
        if at > now {
            return None;
        }
        self.queue.remove(&(at, id));
        self.entries.remove(&id).map(|e| (e.peer, e.kind))
    }

    /// §8 link-state cue "link down": keep each running timer's remaining time.
    pub(crate) fn suspend_peer(&mut self, peer: EngineId, now: Instant) {
        for (&id, e) in self.entries.iter_mut() {
            if e.peer != peer {
                continue;
            }
            if let State::Running(at) = e.state {
                self.queue.remove(&(at, id));
                e.state = State::Suspended(at.saturating_duration_since(now));
            }
        }
    }

    /// §8 link-state cue "link up": resume suspended timers with their remaining time.
    pub(crate) fn resume_peer(&mut self, peer: EngineId, now: Instant) {
        for (&id, e) in self.entries.iter_mut() {
            if e.peer != peer {
                continue;
            }
            if let State::Suspended(rem) = e.state {
                let at = now + rem;
                self.queue.insert((at, id));
                e.state = State::Running(at);
            }
        }
    }

    /// Number of timers (running or suspended).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspended_timer_keeps_remaining_time() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let kind = TimerKind::ExportCancel { number: 1 };
        t.start(7, kind, t0, Duration::from_secs(10), true);
        t.suspend_peer(7, t0 + Duration::from_secs(4));
        assert_eq!(t.next_deadline(), None);
        t.resume_peer(7, t0 + Duration::from_secs(100));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(106)));
        assert!(t.pop_expired(t0 + Duration::from_secs(105)).is_none());
        assert_eq!(
            t.pop_expired(t0 + Duration::from_secs(106)),
            Some((7, kind))
        );
        assert_eq!(t.len(), 0);
    }
}
