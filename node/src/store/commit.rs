//! Write tickets and group commit: a bundle is acknowledged only once it is on disk (RFC 9171
//! §5 custody storage; DESIGN "nothing acknowledged is lost").
//!
//! Every write takes a [`Ticket`] (a sequence number taken AFTER the write is applied). A
//! flush that reads the sequence counter before it starts covers every ticket up to that value;
//! it then publishes that value on a `tokio::sync::watch` channel, which wakes the
//! [`Store::persisted`](super::Store::persisted) futures (the channel needs no runtime to send).
//! The group-commit flusher is a std thread: the store works without a tokio runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{StoreError, Ticket};

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
    tx: watch::Sender<Durable>,
    rx: watch::Receiver<Durable>,
}

impl Tickets {
    pub(super) fn new() -> Tickets {
        let (tx, rx) = watch::channel(Durable::default());
        Tickets {
            written: AtomicU64::new(0),
            tx,
            rx,
        }
    }

    /// A ticket for a write that has just been applied.
    pub(super) fn wrote(&self) -> Ticket {
        Ticket(self.written.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// The last ticket handed out (read before a flush starts).
    pub(super) fn last(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Publish the outcome of a flush that began after `seq` was read.
    pub(super) fn flushed(&self, seq: u64, result: Result<(), StoreError>) {
        self.tx.send_modify(|d| match result {
            Ok(()) => d.seq = d.seq.max(seq),
            Err(e) => {
                tracing::error!(error = %e, "store flush failed");
                d.failed.get_or_insert_with(|| e.to_string().into());
            }
        });
    }

    /// A future resolving when `ticket` is durable (or a flush failed).
    pub(super) fn wait(
        &self,
        ticket: Ticket,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            let d = rx
                .wait_for(|d| d.seq >= ticket.0 || d.failed.is_some())
                .await
                .map_err(|_| StoreError::Db("store closed before the write was flushed".into()))?;
            if d.seq >= ticket.0 {
                Ok(())
            } else {
                Err(StoreError::Db(format!(
                    "flush failed: {}",
                    d.failed.as_deref().unwrap_or("unknown")
                )))
            }
        }
    }
}

#[derive(Default)]
struct Signal {
    stop: bool,
    /// The thread waits for writes (a writer must wake it); otherwise it is flushing or
    /// waiting out the commit window and will see the write anyway.
    idle: bool,
}

/// The group-commit thread: flushes when there are unflushed writes, at most once per
/// `max_delay`, and a last time when stopped.
pub(super) struct GroupCommit {
    shared: Arc<(Mutex<Signal>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Start the thread; `flush` is called with no lock held and returns the last ticket it
    /// made durable (read when its flush began).
    pub(super) fn start(
        max_delay: Duration,
        tickets: Arc<Tickets>,
        flush: impl Fn() -> Result<u64, StoreError> + Send + 'static,
    ) -> Result<GroupCommit, StoreError> {
        let shared = Arc::new((Mutex::new(Signal::default()), Condvar::new()));
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || run(max_delay, &s, &tickets, flush))
            .map_err(|e| StoreError::Db(format!("starting the group-commit thread: {e}")))?;
        Ok(GroupCommit {
            shared,
            handle: Some(handle),
        })
    }

    /// Tell the thread a write is waiting (wakes it only when it waits for writes).
    pub(super) fn notify(&self) {
        let mut g = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.idle {
            g.idle = false;
            self.shared.1.notify_one();
        }
    }
}

fn run(
    max_delay: Duration,
    shared: &(Mutex<Signal>, Condvar),
    tickets: &Tickets,
    flush: impl Fn() -> Result<u64, StoreError>,
) {
    let (lock, cv) = shared;
    let mut flushed = 0u64;
    let mut last_start: Option<Instant> = None;
    loop {
        let stop = {
            let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !g.stop && tickets.last() == flushed {
                g.idle = true;
                g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            g.idle = false;
            // At most one flush per max_delay: the writes of the interval share it. A stop
            // request ends the wait (the final flush follows).
            if let Some(t) = last_start {
                let next = t + max_delay;
                loop {
                    let now = Instant::now();
                    if g.stop || now >= next {
                        break;
                    }
                    g = cv
                        .wait_timeout(g, next - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            g.stop
        };
        last_start = Some(Instant::now());
        match flush() {
            Ok(seq) => {
                tickets.flushed(seq, Ok(()));
                flushed = seq;
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
