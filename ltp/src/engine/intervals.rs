//! Interval sets over block offsets: reassembly of red data (RFC 5326 §6.10/§6.11, reception
//! claims §3.2.2) and the sender's record of acknowledged data (§6.13). O(log n) per insert;
//! adjacent and overlapping intervals are merged, so memory is bounded by the number of gaps.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A set of disjoint, non-adjacent half-open intervals `[start, end)`.
#[derive(Clone, Debug, Default)]
pub(crate) struct IntervalSet {
    map: BTreeMap<u64, u64>,
    covered: u64,
}

impl IntervalSet {
    /// Number of disjoint intervals (one more than the gaps between them).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Adds `[start, end)`; calls `new` with each sub-range that was not covered before, in
    /// order. Data arriving in order (at or beyond the start of the last interval) extends
    /// that interval in place, or follows it, without searching the map; data that overlaps
    /// or touches only the interval at or before `start` extends that one without allocating.
    pub(crate) fn insert(&mut self, start: u64, end: u64, mut new: impl FnMut(u64, u64)) {
        if start >= end {
            return;
        }
        // Nothing starts after `start` within reach of `end`: at most the interval at or before
        // `start` is touched. Data in order lands at or beyond the last interval, which is
        // found without searching the map.
        let in_order = self.map.last_key_value().is_none_or(|(&k, _)| k <= start);
        if in_order
            || (self.map.range((Bound::Excluded(start), Bound::Unbounded)))
                .next()
                .is_none_or(|(&n, _)| n > end)
        {
            let before = if in_order {
                self.map.values_mut().next_back()
            } else {
                self.map.range_mut(..=start).next_back().map(|(_, pe)| pe)
            };
            match before {
                Some(pe) if *pe >= start => {
                    if end > *pe {
                        new(*pe, end);
                        self.covered += end - *pe;
                        *pe = end;
                    }
                }
                _ => {
                    self.map.insert(start, end);
                    self.covered += end - start;
                    new(start, end);
                }
            }
            return;
        }
        let gaps = self.gaps(start, end);
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &pe)) = self.map.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
            }
        }
        let absorbed: Vec<u64> = self.map.range(s..=e).map(|(&k, _)| k).collect();
        for k in absorbed {
            if let Some(v) = self.map.remove(&k) {
                e = e.max(v);
            }
        }
        self.map.insert(s, e);
        for (a, b) in gaps {
            self.covered += b - a;
            new(a, b);
        }
    }

    /// The parts of `[start, end)` not in the set, in order.
    pub(crate) fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let mut cur = start;
        if let Some((_, &pe)) = self.map.range(..=start).next_back() {
            cur = cur.max(pe.min(end));
        }
        for (&a, &b) in self.map.range(start..end) {
            if a > cur {
                out.push((cur, a));
            }
            cur = cur.max(b.min(end));
            if cur >= end {
                break;
            }
        }
        if cur < end {
            out.push((cur, end));
        }
        out
    }

    /// True if all of `[start, end)` is in the set.
    pub(crate) fn covers(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        matches!(self.map.range(..=start).next_back(), Some((_, &pe)) if pe >= end)
    }

    /// The intervals of the set intersected with `[start, end)`, in order.
    pub(crate) fn clipped(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        if let Some((&ps, &pe)) = self.map.range(..=start).next_back() {
            if pe > start && ps < start {
                out.push((start, pe.min(end)));
            }
        }
        for (&a, &b) in self.map.range(start..end) {
            out.push((a, b.min(end)));
        }
        out
    }

    /// The intervals of the set, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&a, &b)| (a, b))
    }

    /// Octets covered.
    pub(crate) fn covered(&self) -> u64 {
        self.covered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(s: &mut IntervalSet, a: u64, b: u64) -> Vec<(u64, u64)> {
        let mut new = Vec::new();
        s.insert(a, b, |x, y| new.push((x, y)));
        new
    }

    #[test]
    fn insert_merges_and_reports_new_parts() {
        let mut s = IntervalSet::default();
        assert_eq!(insert(&mut s, 10, 20), vec![(10, 20)]);
        assert_eq!(insert(&mut s, 30, 40), vec![(30, 40)]);
        assert_eq!(insert(&mut s, 15, 35), vec![(20, 30)]);
        assert_eq!(s.clipped(0, 100), vec![(10, 40)]);
        assert_eq!(insert(&mut s, 10, 40), vec![]);
        assert_eq!(insert(&mut s, 40, 50), vec![(40, 50)]);
        assert_eq!(s.clipped(0, 100), vec![(10, 50)]);
        assert_eq!(s.covered(), 40);
        assert!(s.covers(10, 50));
        assert!(!s.covers(9, 50));
        assert_eq!(s.gaps(0, 60), vec![(0, 10), (50, 60)]);
        assert_eq!(s.clipped(12, 13), vec![(12, 13)]);
    }

    #[test]
    fn gaps_with_many_intervals() {
        let mut s = IntervalSet::default();
        for i in (0..100).step_by(10) {
            insert(&mut s, i, i + 5);
        }
        let g = s.gaps(3, 27);
        assert_eq!(g, vec![(5, 10), (15, 20), (25, 27)]);
        assert_eq!(s.clipped(3, 27), vec![(3, 5), (10, 15), (20, 25)]);
        assert_eq!(s.covered(), 50);
    }

    #[test]
    fn in_order_fast_path_agrees_with_the_general_path() {
        let mut s = IntervalSet::default();
        assert_eq!(insert(&mut s, 0, 10), vec![(0, 10)]);
        assert_eq!(insert(&mut s, 10, 20), vec![(10, 20)]); // touching: extended
        assert_eq!(insert(&mut s, 5, 25), vec![(20, 25)]); // overlapping the end
        assert_eq!(insert(&mut s, 3, 7), vec![]); // inside
        assert_eq!(insert(&mut s, 30, 40), vec![(30, 40)]); // beyond: a new interval
        assert_eq!(insert(&mut s, 26, 29), vec![(26, 29)]); // between, touching neither
        assert_eq!(insert(&mut s, 25, 30), vec![(25, 26), (29, 30)]); // bridging: general
        assert_eq!(s.clipped(0, 100), vec![(0, 40)]);
        assert_eq!(s.covered(), 40);
        // Against a brute-force model: random inserts, then a block's segments in order with
        // some left out (the last interval's fast path), then those filled in.
        let mut x: u64 = 12345;
        let mut rand = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 13
        };
        let random: Vec<(u64, u64)> = (0..2000)
            .map(|_| {
                let a = rand() % 190;
                (a, a + 1 + rand() % 10)
            })
            .collect();
        agrees_with_a_model(&random);
        let (mut in_order, mut left_out) = (Vec::new(), Vec::new());
        for a in (0..190).step_by(7) {
            let b = (a + 7 + rand() % 3).min(200);
            if rand() % 5 == 0 {
                left_out.push((a, b));
            } else {
                in_order.push((a, b));
            }
        }
        in_order.extend(left_out);
        agrees_with_a_model(&in_order);
    }

    fn agrees_with_a_model(inserts: &[(u64, u64)]) {
        let mut model = [false; 200];
        let mut s = IntervalSet::default();
        for &(a, b) in inserts {
            let mut expect = Vec::new();
            for i in a..b {
                if !model[i as usize] {
                    match expect.last_mut() {
                        Some((_, e)) if *e == i => *e = i + 1,
                        _ => expect.push((i, i + 1)),
                    }
                    model[i as usize] = true;
                }
            }
            assert_eq!(insert(&mut s, a, b), expect, "insert {a}..{b}");
        }
        assert_eq!(s.covered(), model.iter().filter(|&&m| m).count() as u64);
        let runs = model
            .chunk_by(|a, b| a == b)
            .fold((0, Vec::new()), |(at, mut v), run| {
                if run[0] {
                    v.push((at, at + run.len() as u64));
                }
                (at + run.len() as u64, v)
            });
        assert_eq!(s.iter().collect::<Vec<_>>(), runs.1);
    }
}
