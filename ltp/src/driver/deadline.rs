//! The driver's wake-up at the engine's next deadline ([`Engine::poll_timeout`], and the
//! impairment's next delayed datagram), to the microsecond.
//!
//! tokio's timers tick in milliseconds: a sleep ends at the first tick at or after its
//! deadline, and an idle runtime wakes for that tick only. That is nothing on a space link,
//! where a retransmission timer lasts seconds or minutes, but on a fast terrestrial link, or
//! loopback, where adaptive timers (`engine/rtt.rs`) are about a millisecond, it can double what
//! a lost checkpoint costs: the session waits for its timer, then for the next tick.
//!
//! On Linux the deadline is therefore a `timerfd` (CLOCK_MONOTONIC, the clock of std's
//! `Instant` there) that the runtime's epoll wakes for when it expires; elsewhere, or if the
//! kernel refuses a timerfd, it is a tokio sleep.
//!
//! [`Engine::poll_timeout`]: crate::engine::Engine::poll_timeout

use std::time::Instant;

/// One re-armable deadline that may wake early, never late.
///
/// Arming costs a system call (`timerfd_settime`), and on a virtual machine one of the dearest:
/// about 10 µs where a `recvmmsg` costs 1 µs (`strace -c`). The engine's deadline moves with
/// every block (each checkpoint and each report starts a timer), so the timer is re-armed only
/// when the deadline moves earlier. A later deadline, or none, leaves the armed one in place:
/// it then expires early, and the driver finds nothing due and arms the timer for the deadline
/// of that moment. At most one early wake-up per armed deadline replaces one system call per
/// change of deadline.
pub(super) struct DeadlineTimer {
    /// The deadline the timer is armed for, at or before the latest one set; `None`:
    /// disarmed, or its expiry was taken.
    armed: Option<Instant>,
    #[cfg(target_os = "linux")]
    fd: Option<linux::TimerFd>,
}

impl DeadlineTimer {
    /// A disarmed timer (a timerfd on Linux if the kernel gives one; else a tokio sleep). Must
    /// be called within a tokio runtime.
    pub(super) fn new() -> DeadlineTimer {
        DeadlineTimer {
            armed: None,
            #[cfg(target_os = "linux")]
            fd: linux::TimerFd::new()
                .map_err(|e| tracing::debug!(error = %e, "no timerfd; deadlines tick in ms"))
                .ok(),
        }
    }

    /// Asks for an expiry at `deadline` (`None`: none is needed). Only a deadline earlier than
    /// the armed one, or one while disarmed, costs a system call; otherwise the armed deadline
    /// stays, and expires early (see [`DeadlineTimer`]).
    pub(super) fn set(&mut self, deadline: Option<Instant>) {
        let Some(deadline) = deadline else {
            return;
        };
        if self.armed.is_some_and(|armed| armed <= deadline) {
            return;
        }
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            let now = Instant::now();
            if let Err(e) = fd.arm(deadline.saturating_duration_since(now)) {
                // Not expected (the arguments are valid); the tokio sleep takes over.
                tracing::debug!(error = %e, "timerfd_settime failed; deadlines tick in ms");
                self.fd = None;
            }
        }
        self.armed = Some(deadline);
    }

    /// Completes once the armed deadline has passed; never while disarmed. Taking the expiry
    /// disarms the timer, so that the next [`DeadlineTimer::set`] arms it again even for the
    /// same deadline. Cancel-safe: dropping the future before it completes takes nothing.
    pub(super) async fn expired(&mut self) {
        let Some(deadline) = self.armed else {
            return std::future::pending().await;
        };
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            match fd.wait().await {
                Ok(()) => {
                    self.armed = None;
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "timerfd wait failed; deadlines tick in ms");
                    self.fd = None;
                }
            }
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
        self.armed = None;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    use tokio::io::unix::AsyncFd;

    /// A non-blocking CLOCK_MONOTONIC timerfd, registered with the runtime.
    pub(super) struct TimerFd(AsyncFd<OwnedFd>);

    impl TimerFd {
        pub(super) fn new() -> io::Result<TimerFd> {
            // SAFETY: plain system call; the descriptor it returns is owned below.
            let fd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a descriptor just created and owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: the `OwnedFd` keeps its descriptor open, and the same, for as long as
            // the `AsyncFd` owns it.
            let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
            Ok(TimerFd(fd))
        }

        /// Expires `after` from now (zero: at once). Re-arming discards an expiry not yet
        /// read.
        pub(super) fn arm(&self, after: Duration) -> io::Result<()> {
            // An all-zero value disarms: "at once" is one nanosecond.
            let value = libc::timespec {
                tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: after.subsec_nanos().max(u32::from(after.is_zero())) as libc::c_long,
            };
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: value,
            };
            // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
            let r = unsafe {
                libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut())
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        /// Waits until the timer has expired, and reads the expiry.
        pub(super) async fn wait(&self) -> io::Result<()> {
            loop {
                let mut guard = self.0.readable().await?;
                let mut expirations = [0u8; 8];
                // SAFETY: reads at most 8 octets into a buffer of 8.
                let n = unsafe {
                    libc::read(
                        guard.get_inner().as_raw_fd(),
                        expirations.as_mut_ptr().cast(),
                        8,
                    )
                };
                // A read takes every expiry, and the timer is one-shot: the descriptor stays
                // unreadable until it is armed again and expires. Forgetting the readiness now
                // spares the next wait a read that could only fail.
                if n >= 0 {
                    guard.clear_ready();
                    return Ok(());
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                guard.clear_ready();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn expires_at_its_deadline_not_before_and_not_while_disarmed() {
        let mut t = DeadlineTimer::new();
        // Disarmed: never.
        let idle = tokio::time::timeout(Duration::from_millis(20), t.expired()).await;
        assert!(idle.is_err(), "a disarmed timer expired");

        let start = Instant::now();
        t.set(Some(start + Duration::from_millis(5)));
        tokio::time::timeout(Duration::from_secs(5), t.expired())
            .await
            .expect("the timer did not expire");
        assert!(start.elapsed() >= Duration::from_millis(5));

        // The expiry was taken: disarmed until set again, even for the same deadline.
        let again = tokio::time::timeout(Duration::from_millis(20), t.expired()).await;
        assert!(again.is_err(), "one expiry was taken twice");
        t.set(Some(start + Duration::from_millis(5)));
        tokio::time::timeout(Duration::from_secs(5), t.expired())
            .await
            .expect("a deadline in the past did not expire at once");
    }

    #[tokio::test]
    async fn an_earlier_deadline_rearms_the_timer() {
        let mut t = DeadlineTimer::new();
        let start = Instant::now();
        t.set(Some(start + Duration::from_secs(3600)));
        t.set(Some(start + Duration::from_millis(5)));
        tokio::time::timeout(Duration::from_secs(5), t.expired())
            .await
            .expect("the earlier deadline did not fire");
        assert!(start.elapsed() >= Duration::from_millis(5));
    }

    /// A later deadline, or none, keeps the armed one: the timer expires early, never late,
    /// and costs no system call for the change.
    #[tokio::test]
    async fn a_later_deadline_or_none_keeps_the_armed_one() {
        for later in [Some(Duration::from_secs(3600)), None] {
            let mut t = DeadlineTimer::new();
            let start = Instant::now();
            t.set(Some(start + Duration::from_millis(5)));
            t.set(later.map(|l| start + l));
            tokio::time::timeout(Duration::from_secs(5), t.expired())
                .await
                .expect("the armed deadline did not fire");
            assert!(start.elapsed() >= Duration::from_millis(5));
            // The expiry was taken: the later deadline arms it again, and it waits.
            t.set(later.map(|l| start + l));
            let early = tokio::time::timeout(Duration::from_millis(20), t.expired()).await;
            assert!(early.is_err(), "expired before {later:?}");
        }
    }
}
