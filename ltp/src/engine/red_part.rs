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

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

/// Largest page, in octets.
pub(super) const PAGE: u64 = 64 * 1024;

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
    /// sizes the last page exactly. Returns how many octets were newly allocated.
    pub(super) fn write(&mut self, offset: u64, data: &[u8], red_end: Option<u64>) -> usize {
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
                    // Grow by doubling within the page (few copies for blocks arriving in
                    // order), to the page size at most, and to exactly the end of the red part
                    // when it is known to end in this page.
                    let limit = match red_end {
                        Some(end) if end > start && end - start < PAGE => (end - start) as usize,
                        _ => PAGE as usize,
                    };
                    let target = (cap * 2).clamp(need, limit.max(need));
                    page.reserve_exact(target - page.len());
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
    /// arrived); the pages are freed.
    pub(super) fn take(&mut self, red_end: u64) -> Bytes {
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
            if out.len() == len {
                break;
            }
        }
        out.freeze()
    }

    /// Drops everything held.
    pub(super) fn clear(&mut self) {
        self.pages.clear();
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
        for (i, &(s, e)) in segs.iter().enumerate() {
            let end = (i == 0).then_some(b.len() as u64);
            r.write(s as u64, &b[s..e], end);
        }
        assert!(r.allocated() <= b.len() + PAGE as usize);
        let got = r.take(b.len() as u64);
        assert_eq!(&got[..], &b[..]);
        assert_eq!(r.allocated(), 0);
    }

    #[test]
    fn a_small_block_is_sized_exactly_and_not_copied_twice() {
        let b = block(3000);
        let mut r = RedPart::default();
        r.write(0, &b[..1400], None);
        r.write(1400, &b[1400..2800], None);
        r.write(2800, &b[2800..], Some(3000));
        assert!(r.allocated() <= 2 * 3000, "{}", r.allocated());
        assert_eq!(&r.take(3000)[..], &b[..]);
        // Known end from the first (only) segment: exactly its size.
        let mut r = RedPart::default();
        assert_eq!(r.write(0, &b[..100], Some(100)), 100);
    }

    #[test]
    fn in_order_large_block_stays_within_a_page_of_its_size() {
        let b = block(1 << 20);
        let mut r = RedPart::default();
        for s in (0..b.len()).step_by(1400) {
            let e = (s + 1400).min(b.len());
            let end = (e == b.len()).then_some(b.len() as u64);
            r.write(s as u64, &b[s..e], end);
        }
        assert!(
            r.allocated() <= b.len() + PAGE as usize,
            "{}",
            r.allocated()
        );
        assert_eq!(&r.take(b.len() as u64)[..], &b[..]);
    }
}
