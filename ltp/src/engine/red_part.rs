//! Reassembly of an import's red part (RFC 5326 §6.10: red data is delivered once the whole red
//! part has arrived): data segments are copied, as they arrive in any order, into pages of at
//! most [`PAGE`] octets, and the pages are joined into one buffer at delivery.
//!
//! Copying at arrival, rather than keeping each segment as a slice of the received datagram,
//! lets the driver reuse its receive buffers at once: a slice would keep the whole receive
//! chunk it came from alive until the last session with data in that chunk delivered, which
//! with interleaved sessions held several times the data in flight. Memory held here is the
//! data received rounded up to a page per region, and is what the engine's reassembly limit
//! counts.
//!
//! Full pages come from a [`PagePool`] and go back to it when the red part is delivered or
//! dropped: a receiver taking block after block reuses the same memory instead of asking the
//! allocator for (and the kernel to fault in) fresh pages for every block.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

/// Largest page, in octets.
pub(super) const PAGE: u64 = 64 * 1024;

/// Full pages ([`PAGE`] octets of capacity) given back by delivered or dropped red parts, kept
/// for the next ones: at most `max` of them (the rest are freed).
#[derive(Debug)]
pub(super) struct PagePool {
    free: Vec<Vec<u8>>,
    max: usize,
}

impl PagePool {
    /// A pool keeping at most `max` idle pages.
    pub(super) fn new(max: usize) -> PagePool {
        PagePool {
            free: Vec::new(),
            max,
        }
    }

    /// An empty page with a capacity of exactly [`PAGE`] octets.
    fn get(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(PAGE as usize))
    }

    /// Takes a page back if it is a full one and the pool has room.
    fn put(&mut self, mut page: Vec<u8>) {
        if page.capacity() == PAGE as usize && self.free.len() < self.max {
            page.clear();
            self.free.push(page);
        }
    }

    /// Idle pages held.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.free.len()
    }
}

/// The red data received so far for one import.
#[derive(Debug, Default)]
pub(super) struct RedPart {
    /// Page index → the page's octets from its start (`index * PAGE`) up to the highest
    /// octet written in it (gaps within are zero until their data arrives).
    pages: BTreeMap<u64, Vec<u8>>,
    /// Capacity of all pages, in octets.
    allocated: usize,
}

impl RedPart {
    /// Octets allocated for the pages.
    pub(super) fn allocated(&self) -> usize {
        self.allocated
    }

    /// Copies `data`, the block's octets at `offset`, into the pages; `red_end` (if known)
    /// sizes the last page exactly. Returns how many octets were newly allocated (full pages
    /// come from `pool`).
    pub(super) fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        red_end: Option<u64>,
        pool: &mut PagePool,
    ) -> usize {
        let before = self.allocated;
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = pos / PAGE;
            let start = index * PAGE;
            let within = (pos - start) as usize;
            let n = rest.len().min(PAGE as usize - within);
            let need = within + n;
            let page = self.pages.entry(index).or_default();
            if page.len() < need {
                let cap = page.capacity();
                if cap < need {
                    // The first page grows by doubling (few copies for blocks arriving in
                    // order, and a small block takes little more than its size); a block
                    // that reaches a second page is a large one, whose pages are full ones
                    // from the pool. A page is sized exactly when the red part is known to
                    // end in it.
                    let limit = match red_end {
                        Some(end) if end > start && end - start < PAGE => (end - start) as usize,
                        _ => PAGE as usize,
                    };
                    let target = if index == 0 {
                        (cap * 2).clamp(need, limit.max(need))
                    } else {
                        limit.max(need)
                    };
                    if target >= PAGE as usize {
                        let mut full = pool.get();
                        full.extend_from_slice(page);
                        pool.put(std::mem::replace(page, full));
                    } else {
                        page.reserve_exact(target - page.len());
                    }
                    self.allocated += page.capacity() - cap;
                }
                page.resize(need, 0);
            }
            page[within..need].copy_from_slice(&rest[..n]);
            pos += n as u64;
            rest = &rest[n..];
        }
        self.allocated - before
    }

    /// The red part `[0, red_end)` as one buffer (the caller has checked that all of it
    /// arrived); the pages go back to `pool`.
    pub(super) fn take(&mut self, red_end: u64, pool: &mut PagePool) -> Bytes {
        let pages = std::mem::take(&mut self.pages);
        self.allocated = 0;
        let len = usize::try_from(red_end).unwrap_or(usize::MAX);
        if pages.len() == 1 {
            if let Some((0, mut page)) = pages.into_iter().next() {
                if page.len() >= len {
                    page.truncate(len);
                    page.shrink_to_fit();
                    return Bytes::from(page);
                }
            }
            return Bytes::new(); // unreachable when [0, red_end) arrived
        }
        let mut out = BytesMut::with_capacity(len);
        for page in pages.into_values() {
            let take = page.len().min(len - out.len());
            out.extend_from_slice(&page[..take]);
            pool.put(page);
        }
        out.freeze()
    }

    /// Drops everything held; the pages go back to `pool`.
    pub(super) fn clear(&mut self, pool: &mut PagePool) {
        for page in std::mem::take(&mut self.pages).into_values() {
            pool.put(page);
        }
        self.allocated = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 13 + 1) as u8).collect()
    }

    #[test]
    fn any_order_reassembles_exactly() {
        let b = block(300_000);
        let mut segs: Vec<(usize, usize)> = (0..b.len())
            .step_by(1400)
            .map(|s| (s, (s + 1400).min(b.len())))
            .collect();
        segs.reverse();
        segs.swap(3, 100);
        let mut r = RedPart::default();
        let mut pool = PagePool::new(4);
        for (i, &(s, e)) in segs.iter().enumerate() {
            let end = (i == 0).then_some(b.len() as u64);
            r.write(s as u64, &b[s..e], end, &mut pool);
        }
        assert!(r.allocated() <= b.len() + PAGE as usize);
        let got = r.take(b.len() as u64, &mut pool);
        assert_eq!(&got[..], &b[..]);
        assert_eq!(r.allocated(), 0);
    }

    #[test]
    fn a_small_block_is_sized_exactly_and_not_copied_twice() {
        let b = block(3000);
        let mut r = RedPart::default();
        let mut pool = PagePool::new(4);
        r.write(0, &b[..1400], None, &mut pool);
        r.write(1400, &b[1400..2800], None, &mut pool);
        r.write(2800, &b[2800..], Some(3000), &mut pool);
        assert!(r.allocated() <= 2 * 3000, "{}", r.allocated());
        assert_eq!(&r.take(3000, &mut pool)[..], &b[..]);
        // Known end from the first (only) segment: exactly its size.
        let mut r = RedPart::default();
        assert_eq!(r.write(0, &b[..100], Some(100), &mut pool), 100);
    }

    #[test]
    fn in_order_large_block_stays_within_a_page_of_its_size() {
        let b = block(1 << 20);
        let mut r = RedPart::default();
        let mut pool = PagePool::new(64);
        for s in (0..b.len()).step_by(1400) {
            let e = (s + 1400).min(b.len());
            let end = (e == b.len()).then_some(b.len() as u64);
            r.write(s as u64, &b[s..e], end, &mut pool);
        }
        assert!(
            r.allocated() <= b.len() + PAGE as usize,
            "{}",
            r.allocated()
        );
        assert_eq!(&r.take(b.len() as u64, &mut pool)[..], &b[..]);
    }

    #[test]
    fn pages_are_reused_block_after_block_within_the_pool_bound() {
        let b = block(10 * PAGE as usize + 100);
        let mut pool = PagePool::new(4);
        for round in 0..3 {
            let mut r = RedPart::default();
            for s in (0..b.len()).step_by(1400) {
                let e = (s + 1400).min(b.len());
                let end = (e == b.len()).then_some(b.len() as u64);
                r.write(s as u64, &b[s..e], end, &mut pool);
            }
            assert_eq!(
                &r.take(b.len() as u64, &mut pool)[..],
                &b[..],
                "round {round}"
            );
            // Ten full pages came back (page 0 grew into one too); four are kept.
            assert_eq!(pool.idle(), 4);
        }
        // A dropped red part gives its pages back as well.
        let mut r = RedPart::default();
        r.write(3 * PAGE, &b[..2000], None, &mut pool);
        assert_eq!(pool.idle(), 3);
        r.clear(&mut pool);
        assert_eq!(pool.idle(), 4);
        assert_eq!(r.allocated(), 0);
    }
}
