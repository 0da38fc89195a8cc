//! Write tickets and group commit: a bundle is acknowledged only once it is on disk (RFC 9171
//! §5 custody storage; DESIGN "nothing acknowledged is lost").
//!
//! Every write takes a [`Ticket`] (a sequence number taken AFTER the write is applied). A
//! flush that reads the sequence counter before it starts covers every ticket up to that value;
//! it then publishes that value on a `tokio::sync::watch` channel, which wakes the
//! [`Store::persisted`](super::Store::persisted) futures (the channel needs no runtime to send).
//! The group-commit flusher is a std thread: the store works without a tokio runtime.
//!
//! **Classic group commit.** The flusher starts a flush as soon as there are unflushed writes
//! that someone waits for and it is idle; writes made while a flush runs share the next one.
//! Under load the batches grow by themselves (a flush takes longer, more writes arrive
//! meanwhile), and an idle store adds no delay at all. *Lazy* writes, which nothing waits for
//! (removals after a bundle left, delivered-id records), do not start a flush: they go with the
//! next one, at the latest `max_delay` after they were made; awaiting a lazy write's ticket
//! ([`Store::persisted`](super::Store::persisted)) makes it urgent.
//!
//! **Held inserts (bundles in transit).** An insert may be *held* (see
//! [`Store::insert_held`](super::Store::insert_held)): it stays in the write-back buffer for up
//! to `max_delay` instead of being flushed with the next batch. Its ticket is a [`HoldCell`],
//! resolved either when the bundle leaves the store before the hold ends (forwarded and
//! confirmed by the next hop, delivered and acknowledged, or deleted: nothing of it ever
//! reaches the disk and nothing needs to), or when a flush that includes it is durable. A relay
//! that forwards a bundle within `max_delay` thus acknowledges it once the next hop has custody
//! of it, without writing it at all; a bundle that stays longer is written like any other.
//!
//! **Callbacks instead of futures.** [`Store::on_persisted`](super::Store::on_persisted) runs a
//! callback when a ticket is durable, without a task or a future per write: a held insert's
//! callback sits in its [`HoldCell`] (run by whoever releases the cell, or handed on when a
//! flush covers it), a sequence number's in [`Tickets`]' list, run by the flush that makes it
//! durable (or fails). A relay acknowledges each bundle in transit this way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{StoreError, Ticket, TicketInner};

/// What has reached the disk.
#[derive(Clone, Debug, Default)]
pub(super) struct Durable {
    /// Every ticket up to this one is durable.
    pub seq: u64,
    /// A flush failed: durability of later writes is unknown (sticky).
    pub failed: Option<Arc<str>>,
}

/// Sequence numbers and the durable watermark, shared by the store and its flusher.
pub(super) struct Tickets {
    written: AtomicU64,
    /// The last ticket of a write someone waits for (a flush starts at once while it is not
    /// durable).
    urgent: AtomicU64,
    tx: watch::Sender<Durable>,
    rx: watch::Receiver<Durable>,
    /// Callbacks waiting for a sequence number to be durable ([`Tickets::after`]); the lock
    /// also orders their registration against [`Tickets::flushed`].
    callbacks: Mutex<Vec<(u64, Done)>>,
}

/// A callback run once a write is durable (or failed to be).
pub(super) type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

impl Tickets {
    pub(super) fn new() -> Tickets {
        let (tx, rx) = watch::channel(Durable::default());
        Tickets {
            written: AtomicU64::new(0),
            urgent: AtomicU64::new(0),
            tx,
            rx,
            callbacks: Mutex::new(Vec::new()),
        }
    }

    /// Runs `done` once `seq` is durable: at once if it is, else from the flush that makes it
    /// so (on the flushing thread). The caller makes `seq` urgent if someone waits for it.
    pub(super) fn after(&self, seq: u64, done: Done) {
        let mut cbs = self.callbacks.lock().unwrap_or_else(|e| e.into_inner());
        let ready = {
            let d = self.rx.borrow();
            if d.seq >= seq {
                Some(Ok(()))
            } else {
                d.failed.as_deref().map(|f| Err(flush_failed(f)))
            }
        };
        match ready {
            Some(r) => {
                drop(cbs);
                done(r);
            }
            None => cbs.push((seq, done)),
        }
    }

    /// A ticket for a write that has just been applied; `lazy`: nothing waits for it yet.
    pub(super) fn wrote(&self, lazy: bool) -> Ticket {
        let t = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        if !lazy {
            self.urgent.fetch_max(t, Ordering::SeqCst);
        }
        Ticket::seq(t)
    }

    /// Someone waits for `seq`: returns whether it was lazy until now.
    pub(super) fn make_urgent(&self, seq: u64) -> bool {
        self.urgent.fetch_max(seq, Ordering::SeqCst) < seq
    }

    /// The last ticket someone waits for.
    fn urgent(&self) -> u64 {
        self.urgent.load(Ordering::SeqCst)
    }

    /// The last ticket handed out (read before a flush starts).
    pub(super) fn last(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// The sequence number a flush publishes, read when it takes the buffer: the last ticket,
    /// or with `fresh` (it takes held inserts, which have no ticket) a new one, which no flush
    /// before it can have published.
    pub(super) fn seq_for_flush(&self, fresh: bool) -> u64 {
        if fresh {
            self.written.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.last()
        }
    }

    /// Publish the outcome of a flush that began after `seq` was read, and run the callbacks
    /// it settles.
    pub(super) fn flushed(&self, seq: u64, result: Result<(), StoreError>) {
        let mut cbs = self.callbacks.lock().unwrap_or_else(|e| e.into_inner());
        self.tx.send_modify(|d| match result {
            Ok(()) => d.seq = d.seq.max(seq),
            Err(e) => {
                tracing::error!(error = %e, "store flush failed");
                d.failed.get_or_insert_with(|| e.to_string().into());
            }
        });
        if cbs.is_empty() {
            return;
        }
        let (durable, failed) = {
            let d = self.rx.borrow();
            (d.seq, d.failed.clone())
        };
        let ready: Vec<(u64, Done)> = if failed.is_some() {
            std::mem::take(&mut *cbs)
        } else {
            let (ready, wait) = std::mem::take(&mut *cbs)
                .into_iter()
                .partition(|(s, _)| *s <= durable);
            *cbs = wait;
            ready
        };
        drop(cbs);
        for (s, done) in ready {
            done(match &failed {
                Some(f) if s > durable => Err(flush_failed(f)),
                _ => Ok(()),
            });
        }
    }

    /// A future resolving when `ticket` is durable (or a flush failed); `group` is false when
    /// every write is durable once made (`Memory`, `Sync`).
    pub(super) fn wait(
        &self,
        ticket: Ticket,
        group: bool,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let rx = self.rx.clone();
        let mut leaves = Vec::new();
        ticket.leaves(&mut leaves);
        async move {
            for leaf in leaves {
                let seq = match leaf {
                    Leaf::Seq(s) => s,
                    Leaf::Held(cell) => match cell.resolved().await {
                        Some(s) => s,
                        None => continue,
                    },
                };
                if group {
                    wait_seq(rx.clone(), seq).await?;
                }
            }
            Ok(())
        }
    }
}

impl Tickets {
    /// Runs `done` once every one of `leaves` is durable (taken from the end), or with the
    /// first error; `group` as in [`Tickets::wait`].
    pub(super) fn when_all(self: &Arc<Self>, mut leaves: Vec<Leaf>, group: bool, done: Done) {
        let Some(leaf) = leaves.pop() else {
            return done(Ok(()));
        };
        let next: Done = if leaves.is_empty() {
            done
        } else {
            let t = self.clone();
            Box::new(move |r| match r {
                Ok(()) => t.when_all(leaves, group, done),
                Err(e) => done(Err(e)),
            })
        };
        match leaf {
            Leaf::Seq(s) if group => self.after(s, next),
            Leaf::Seq(_) => next(Ok(())),
            Leaf::Held(cell) => {
                let t = self.clone();
                cell.on_settle(Box::new(move |s| match s {
                    Some(s) if group => t.after(s, next),
                    _ => next(Ok(())),
                }));
            }
        }
    }
}

/// One ticket of a (possibly combined) ticket.
pub(super) enum Leaf {
    Seq(u64),
    Held(Arc<HoldCell>),
}

impl Ticket {
    /// Its largest sequence number (0 if none).
    pub(super) fn max_seq(&self) -> u64 {
        match &self.0 {
            TicketInner::Seq(s) => *s,
            TicketInner::Held(_) => 0,
            TicketInner::Both(b) => b.0.max_seq().max(b.1.max_seq()),
        }
    }

    /// Its single tickets, in order.
    pub(super) fn leaves(self, out: &mut Vec<Leaf>) {
        match self.0 {
            TicketInner::Seq(s) => out.push(Leaf::Seq(s)),
            TicketInner::Held(c) => out.push(Leaf::Held(c)),
            TicketInner::Both(b) => {
                let (a, b) = *b;
                a.leaves(out);
                b.leaves(out);
            }
        }
    }
}

fn flush_failed(why: &str) -> StoreError {
    StoreError::Db(format!("flush failed: {why}"))
}

async fn wait_seq(mut rx: watch::Receiver<Durable>, seq: u64) -> Result<(), StoreError> {
    let d = rx
        .wait_for(|d| d.seq >= seq || d.failed.is_some())
        .await
        .map_err(|_| StoreError::Db("store closed before the write was flushed".into()))?;
    if d.seq >= seq {
        Ok(())
    } else {
        Err(flush_failed(d.failed.as_deref().unwrap_or("unknown")))
    }
}

/// Where a held insert stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldState {
    /// In the write-back buffer, left out of flushes until then.
    Held { until: Instant },
    /// Taken into the flush that covers this sequence number.
    Covered(u64),
    /// Left the store before it was flushed: nothing to wait for.
    Released,
}

/// Run when a held insert's hold is over: `Some(seq)` covered by the flush publishing `seq`,
/// `None` released (nothing to wait for).
pub(super) type OnSettle = Box<dyn FnOnce(Option<u64>) + Send>;

struct CellState {
    state: HoldState,
    /// The callback of [`HoldCell::on_settle`], while held.
    on_settle: Option<OnSettle>,
    /// A future waits in [`HoldCell::resolved`] (else settling needs no wake-up).
    awaited: bool,
}

/// The ticket of a held insert (see the module docs).
pub(crate) struct HoldCell {
    state: Mutex<CellState>,
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for HoldCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldCell")
            .field("state", &self.get())
            .finish_non_exhaustive()
    }
}

impl HoldCell {
    pub(super) fn new(until: Instant) -> Arc<HoldCell> {
        Arc::new(HoldCell {
            state: Mutex::new(CellState {
                state: HoldState::Held { until },
                on_settle: None,
                awaited: false,
            }),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CellState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self) -> HoldState {
        self.lock().state
    }

    fn settle(&self, to: HoldState) {
        let (f, awaited) = {
            let mut s = self.lock();
            if !matches!(s.state, HoldState::Held { .. }) {
                return;
            }
            s.state = to;
            (s.on_settle.take(), s.awaited)
        };
        if awaited {
            self.changed.notify_waiters();
        }
        if let Some(f) = f {
            f(settled(to));
        }
    }

    /// Runs `f` once the hold is over (at once if it is): with the sequence number to wait
    /// for, or `None` if released. One callback per cell (a second replaces the first).
    pub(super) fn on_settle(&self, f: OnSettle) {
        let state = {
            let mut s = self.lock();
            if let HoldState::Held { .. } = s.state {
                s.on_settle = Some(f);
                return;
            }
            s.state
        };
        f(settled(state));
    }

    /// Still held (neither taken into a flush nor released).
    pub(super) fn is_held(&self) -> bool {
        matches!(self.get(), HoldState::Held { .. })
    }

    /// When the hold ends, while it is held.
    pub(super) fn until(&self) -> Option<Instant> {
        match self.get() {
            HoldState::Held { until } => Some(until),
            _ => None,
        }
    }

    /// Taken into the flush that publishes `seq`.
    pub(super) fn cover(&self, seq: u64) {
        self.settle(HoldState::Covered(seq));
    }

    /// Left the store unflushed.
    pub(super) fn release(&self) {
        self.settle(HoldState::Released);
    }

    /// Resolves once the hold is over: `Some(seq)` to wait for, `None` if released.
    async fn resolved(&self) -> Option<u64> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let state = {
                let mut s = self.lock();
                s.awaited = true;
                s.state
            };
            match state {
                HoldState::Held { .. } => notified.await,
                HoldState::Covered(s) => return Some(s),
                HoldState::Released => return None,
            }
        }
    }
}

/// What a settled hold leaves to wait for.
fn settled(state: HoldState) -> Option<u64> {
    match state {
        HoldState::Covered(s) => Some(s),
        _ => None,
    }
}

/// What the flusher asks of the backend.
pub(super) trait Flusher: Send + 'static {
    /// Flush buffered writes and the holds that are due at `now` (all holds if `now` is
    /// `None`); returns the last ticket made durable (read when the flush began).
    fn flush(&self, now: Option<Instant>) -> Result<u64, StoreError>;
    /// When the earliest hold still in the buffer ends.
    fn next_hold(&self) -> Option<Instant>;
}

#[derive(Default)]
struct Signal {
    stop: bool,
    /// The thread waits (for writes or a hold's end): a writer must wake it; otherwise it is
    /// flushing and will look for writes again before it waits.
    idle: bool,
    /// While idle: when it wakes by itself for a hold's end (`None`: not before a write).
    wake_at: Option<Instant>,
    /// Tests: flush only when asked (`Store::flush`) or stopped.
    paused: bool,
}

/// The group-commit thread: flushes as soon as there are unflushed writes that someone waits
/// for (classic group commit: what arrives during a flush goes into the next), `max_delay`
/// after the first unflushed lazy write, when a held insert's hold ends, and a last time, with
/// every hold, when stopped.
pub(super) struct GroupCommit {
    shared: Arc<(Mutex<Signal>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Start the thread.
    pub(super) fn start(
        max_delay: Duration,
        tickets: Arc<Tickets>,
        flusher: impl Flusher,
    ) -> Result<GroupCommit, StoreError> {
        let shared = Arc::new((Mutex::new(Signal::default()), Condvar::new()));
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || run(max_delay, &s, &tickets, flusher))
            .map_err(|e| StoreError::Db(format!("starting the group-commit thread: {e}")))?;
        Ok(GroupCommit {
            shared,
            handle: Some(handle),
        })
    }

    /// Tell the thread a write is waiting (wakes it only when it waits).
    pub(super) fn notify(&self) {
        let mut g = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.idle {
            g.idle = false;
            self.shared.1.notify_one();
        }
    }

    /// Tell the thread a hold ends, or a lazy write must be flushed, by `until` (wakes it only
    /// if it would sleep past that).
    pub(super) fn notify_by(&self, until: Instant) {
        let mut g = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.idle && g.wake_at.is_none_or(|w| until < w) {
            g.idle = false;
            self.shared.1.notify_one();
        }
    }

    /// Tests: stop flushing on its own (writes stay buffered until `Store::flush`).
    #[cfg(test)]
    pub(super) fn pause(&self) {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .paused = true;
    }
}

fn run(
    max_delay: Duration,
    shared: &(Mutex<Signal>, Condvar),
    tickets: &Tickets,
    flusher: impl Flusher,
) {
    let (lock, cv) = shared;
    let mut flushed = 0u64;
    // When the oldest unflushed lazy write must be flushed.
    let mut lazy_due: Option<Instant> = None;
    loop {
        let stop = {
            let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if g.stop || (!g.paused && tickets.urgent() > flushed) {
                    break;
                }
                let now = Instant::now();
                let mut wake = None;
                if !g.paused && tickets.last() > flushed {
                    wake = Some(*lazy_due.get_or_insert(now + max_delay));
                }
                if let Some(h) = flusher.next_hold().filter(|_| !g.paused) {
                    wake = Some(wake.map_or(h, |w: Instant| w.min(h)));
                }
                g.idle = true;
                match wake {
                    Some(t) if t <= now => break,
                    Some(t) => {
                        g.wake_at = Some(t);
                        g = cv
                            .wait_timeout(g, (t - now).min(Duration::from_secs(1)))
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    None => {
                        g.wake_at = None;
                        g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
            g.idle = false;
            g.wake_at = None;
            g.stop
        };
        lazy_due = None;
        let now = (!stop).then(Instant::now);
        match flusher.flush(now) {
            Ok(seq) => {
                tickets.flushed(seq, Ok(()));
                flushed = flushed.max(seq);
            }
            Err(e) => {
                // Sticky: every waiter fails from now on; do not spin on the failure.
                tickets.flushed(0, Err(e));
                flushed = tickets.last();
            }
        }
        if stop {
            return;
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        {
            let mut g = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
            g.stop = true;
            self.shared.1.notify_one();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
