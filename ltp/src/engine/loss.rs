//! How lossy a span is, as its receiver's reports tell it: the share of red octets that
//! reports claimed missing, among those they accounted for. It decides whether the span copies
//! its checkpoints (`SpanConfig::checkpoint_copies`, `checkpoint_copies_min_loss`): a copy
//! costs a data segment, a report and a report-ack, and is worth it only where checkpoints get
//! lost.
//!
//! - **Samples.** Each report (RFC 5326 §6.13) gives two amounts: the octets it claims for the
//!   first time (delivered), and the octets of the gaps it asks to be retransmitted that were
//!   not already queued (lost). Data in flight when the checkpoint left, or overtaken by it,
//!   counts as lost too: on most links the difference is small, and a link that reorders
//!   also gains from copies.
//! - **Memory.** Both amounts are halved whenever together they pass [`HALF_LIFE_OCTETS`]: the
//!   estimate follows the link as it changes, with the recent octets weighing the most.
//! - **Before any report** the estimate is zero: a span starts out without copies, and takes
//!   them up once its first lossy report came.

/// Octets of samples after which older samples weigh half.
pub(super) const HALF_LIFE_OCTETS: u64 = 16 * 1024 * 1024;

/// A span's loss estimate (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LossEstimate {
    delivered: u64,
    lost: u64,
}

impl LossEstimate {
    /// A report claimed `delivered` octets for the first time and asked again for `lost`.
    pub(crate) fn sample(&mut self, delivered: u64, lost: u64) {
        self.delivered = self.delivered.saturating_add(delivered);
        self.lost = self.lost.saturating_add(lost);
        while self.delivered + self.lost > HALF_LIFE_OCTETS {
            self.delivered /= 2;
            self.lost /= 2;
        }
    }

    /// Whether any report has been sampled.
    pub(crate) fn sampled(&self) -> bool {
        self.delivered + self.lost > 0
    }

    /// The share of octets lost, 0 to 1 (0 before any sample).
    pub(crate) fn rate(&self) -> f64 {
        let total = self.delivered + self.lost;
        if total == 0 {
            0.0
        } else {
            self.lost as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_share_lost_and_zero_without_samples() {
        let mut l = LossEstimate::default();
        assert_eq!(l.rate(), 0.0);
        l.sample(95_000, 5_000);
        assert!((l.rate() - 0.05).abs() < 1e-9);
        l.sample(100_000, 0);
        assert!((l.rate() - 0.025).abs() < 1e-9);
    }

    #[test]
    fn old_samples_fade() {
        let mut l = LossEstimate::default();
        // 10 % lost, then a clean link: 16 MiB halves the old loss away, step by step.
        l.sample(900_000, 100_000);
        for _ in 0..64 {
            l.sample(1 << 20, 0);
        }
        assert!(l.rate() < 0.001, "{}", l.rate());
        // And a link turning lossy shows within a few MiB.
        for _ in 0..4 {
            l.sample(950_000, 50_000);
        }
        assert!(l.rate() > 0.01, "{}", l.rate());
        assert!(l.delivered + l.lost <= HALF_LIFE_OCTETS);
    }
}
