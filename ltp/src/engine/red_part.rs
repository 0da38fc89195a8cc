//! Reassembly of an import's red part (RFC 5326 §6.10: red data is delivered once the whole red
//! part has arrived): data segments are copied, as they arrive in any order, into one contiguous
//! buffer at their block offset, and that buffer is what the client gets at delivery: the red
//! part is copied once, never joined from pieces.
//!
//! LTP does not tell a receiver how large a block is until its end-of-red-part checkpoint
//! arrives, so a new import's buffer is sized from the red part delivered before it
//! (`size_hint`: a span's blocks tend to be alike) and grows by doubling when data lands beyond
//! it.
//!
//! Buffers of large red parts ([`POOLED_MIN`] octets and more) come from a [`BufferPool`] and go
//! back to it when the client drops the delivered `Bytes` (or when the import is dropped): a
//! receiver taking block after block writes into memory that is already faulted in, instead of
//! asking the allocator, and the kernel, for fresh pages for every block. Page faults on fresh
//! buffers, and the copy that joined pages into one buffer, were the receiver's largest costs.
//!
//! Red parts whose buffer is [`STREAM_MIN`] octets or more are written with non-temporal
//! stores ([`copy_streaming`]) from segments of [`STREAM_SEGMENT_MIN`] octets or more: such a
//! buffer is far larger than a core's cache, so writing it through the cache only fetches each
//! line from memory to overwrite it, and evicts what the receiver is using. 64 MiB blocks of 60000-octet segments (5 interleaved runs each, raw UDP
//! 40 324 Mbit/s) went from 30 955 to 35 135 Mbit/s at window 1, from 29 044 to 34 785 at
//! window 8, and from 25 769 to 29 421 at window 32 with 5 % loss; at 1400 octets, which are
//! not streamed, 20 108 and 19 975.
//!
//! Memory counted against the engine's reassembly limit is [`RedPart::held`]: the octets from
//! the start of the block to the furthest one received (gaps are zero-filled). The caller asks
//! [`RedPart::growth`] before writing, so a segment far beyond the data received is refused
//! before anything is allocated for it. Idle pooled buffers are bounded by the pool's own limit.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Red parts at least this large are reassembled in pooled buffers; smaller ones in plain
/// vectors (the allocator serves them well).
pub(super) const POOLED_MIN: usize = 64 * 1024;

/// Idle reassembly buffers, shared with the `Bytes` handed to clients so that a dropped red part
/// comes back. Keeps at most `max_idle` octets of capacity (the rest are freed).
#[derive(Clone, Debug)]
pub(super) struct BufferPool {
    inner: Arc<Mutex<Idle>>,
}

#[derive(Debug, Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
    max_bytes: usize,
}

impl Idle {
    fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() >= POOLED_MIN && self.bytes + buf.capacity() <= self.max_bytes {
            buf.clear();
            self.bytes += buf.capacity();
            self.buffers.push(buf);
        }
    }
}

impl BufferPool {
    /// A pool keeping at most `max_idle` octets of idle buffers.
    pub(super) fn new(max_idle: usize) -> BufferPool {
        BufferPool {
            inner: Arc::new(Mutex::new(Idle {
                max_bytes: max_idle,
                ..Idle::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // A client thread that panicked while returning a buffer leaves a consistent list.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty buffer with a capacity of at least `min` and at most twice that: an idle one if
    /// there is such, else a fresh allocation of exactly `min`.
    fn get(&self, min: usize) -> Vec<u8> {
        let mut idle = self.lock();
        let best = idle
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= min && b.capacity() / 2 <= min)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let buf = idle.buffers.swap_remove(i);
                idle.bytes -= buf.capacity();
                buf
            }
            None => Vec::with_capacity(min),
        }
    }

    /// Takes a buffer back if it is a large one and there is room.
    fn put(&self, buf: Vec<u8>) {
        if buf.capacity() >= POOLED_MIN {
            self.lock().put(buf);
        }
    }

    /// Octets of capacity held idle.
    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// A delivered red part in a pooled buffer: returns the buffer to its pool when the last
/// `Bytes` referring to it is dropped (if the engine, and so the pool, still exists).
struct Pooled {
    buf: Vec<u8>,
    pool: Weak<Mutex<Idle>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let buf = std::mem::take(&mut self.buf);
            pool.lock().unwrap_or_else(|e| e.into_inner()).put(buf);
        }
    }
}

/// Buffers of at least this capacity are written with non-temporal stores: four times the
/// L2 cache of a core of the VM this was measured on (2 MiB), where a block written through
/// the cache could not stay in it anyway.
pub(super) const STREAM_MIN: usize = 8 << 20;

/// Only data of at least this many octets is streamed. Each write leaves its partial lines at
/// either end to the cache, and at 1400-octet segments those (one line in 22, each fetched
/// from memory on its own) cost more than streaming the rest saves: 64 MiB blocks at window 8
/// (4 interleaved runs each, Mbit/s, streamed against not) went 16 562 against 19 687 at 1400
/// octets, 19 861 / 20 771 at 2000, 24 598 / 23 823 at 2800, 26 277 / 21 854 at 4000, and
/// 30 001 / 25 860 at 20000.
pub(super) const STREAM_SEGMENT_MIN: usize = 3 * 1024;

/// The red data received so far for one import.
#[derive(Debug, Default)]
pub(super) struct RedPart {
    /// The block's octets `[0, len)`: received data, and zeros where data has not arrived yet.
    buf: Vec<u8>,
    /// Non-temporal stores into `buf` not yet fenced: nothing may read or write the octets
    /// they wrote (nor free or hand out the buffer) before [`RedPart::fence`].
    unfenced: bool,
}

impl Drop for RedPart {
    fn drop(&mut self) {
        self.fence();
    }
}

impl RedPart {
    /// Octets held: from the start of the block to the furthest octet received.
    pub(super) fn held(&self) -> usize {
        self.buf.len()
    }

    /// How many octets [`RedPart::held`] grows by if data ending at `end` is written.
    pub(super) fn growth(&self, end: u64) -> u64 {
        end.saturating_sub(self.buf.len() as u64)
    }

    /// Copies `data`, the block's octets at `offset`. A first write takes a buffer of
    /// `size_hint` octets (if the data fits in it) from `pool`; a write beyond the capacity
    /// doubles it. Returns how many octets [`RedPart::held`] grew by.
    pub(super) fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        size_hint: usize,
        pool: &BufferPool,
    ) -> usize {
        let before = self.buf.len();
        let (Ok(start), Some(end)) = (
            usize::try_from(offset),
            usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data.len())),
        ) else {
            return 0; // beyond the address space: the block-size limit refuses it first
        };
        if end > self.buf.capacity() {
            self.fence(); // growing copies the buffer
            if self.buf.capacity() == 0 && size_hint >= POOLED_MIN && end <= size_hint {
                self.buf = pool.get(size_hint);
            } else {
                let target = end.max(self.buf.capacity().saturating_mul(2));
                self.buf.reserve_exact(target - self.buf.len());
            }
        }
        if start > self.buf.len() {
            self.buf.resize(start, 0); // a gap, filled when its data arrives
        }
        let overlap = self.buf.len().min(end) - start.min(self.buf.len());
        let (old, new) = data.split_at(overlap);
        if overlap > 0 {
            // A gap filled, or a duplicate: octets a streamed write may have covered.
            self.fence();
            self.buf[start..start + overlap].copy_from_slice(old);
        }
        if self.buf.capacity() >= STREAM_MIN && new.len() >= STREAM_SEGMENT_MIN {
            let len = self.buf.len();
            let spare = &mut self.buf.spare_capacity_mut()[..new.len()];
            copy_streaming(spare, new);
            // SAFETY: the octets `[len, len + new.len())` were just written.
            unsafe { self.buf.set_len(len + new.len()) };
            self.unfenced = true;
        } else {
            self.buf.extend_from_slice(new);
        }
        self.buf.len() - before
    }

    /// Makes the non-temporal stores into the buffer visible to every later access (on
    /// x86-64, `sfence`); nothing to do if there were none since the last fence.
    fn fence(&mut self) {
        if std::mem::take(&mut self.unfenced) {
            store_fence();
        }
    }

    /// The red part `[0, red_end)` as one buffer, without copying it (the caller has checked
    /// that all of it arrived). A pooled buffer goes back to `pool` when the client drops the
    /// last reference; one much larger than the red part is copied out of and returned at once.
    pub(super) fn take(&mut self, red_end: u64, pool: &BufferPool) -> Bytes {
        self.fence();
        let mut buf = std::mem::take(&mut self.buf);
        let len = usize::try_from(red_end)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        buf.truncate(len);
        if buf.capacity() < POOLED_MIN {
            return Bytes::from(buf);
        }
        if len < buf.capacity() / 2 {
            let out = Bytes::copy_from_slice(&buf);
            pool.put(buf);
            return out;
        }
        Bytes::from_owner(Pooled {
            buf,
            pool: Arc::downgrade(&pool.inner),
        })
    }

    /// Drops everything held; a pooled buffer goes back to `pool`.
    pub(super) fn clear(&mut self, pool: &BufferPool) {
        self.fence();
        pool.put(std::mem::take(&mut self.buf));
    }
}

/// Orders the non-temporal stores made so far before every later access to memory (on
/// x86-64, `sfence`; elsewhere [`copy_streaming`] makes none).
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no preconditions (SSE, part of x86-64).
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Copies `src` into `dst` (of the same length), the whole 64-octet lines of `dst` with
/// non-temporal stores, which go to memory without first reading the line into the cache; the
/// partial lines at either end go through the cache, so that a line shared with the segment
/// before or after is never written both ways. The caller must fence (`sfence`) before anything
/// else reads or writes `dst` ([`store_fence`]). Elsewhere than on x86-64, a plain copy.
fn copy_streaming(dst: &mut [std::mem::MaybeUninit<u8>], src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        const LINE: usize = 64;
        let n = src.len();
        let head = dst.as_ptr().align_offset(LINE).min(n);
        let lines = (n - head) / LINE;
        let body = lines * LINE;
        let (d, s) = (dst.as_mut_ptr().cast::<u8>(), src.as_ptr());
        // SAFETY: `dst` and `src` are distinct slices of `n` octets (a `&mut` and a `&`), and
        // every offset below stays within `n`: `head + body <= n`. The streamed stores go to
        // `d + head + 16 k`, 16-aligned since `d + head` is 64-aligned; the loads are
        // unaligned loads.
        unsafe {
            std::ptr::copy_nonoverlapping(s, d, head);
            for i in 0..lines {
                let (sl, dl) = (s.add(head + i * LINE), d.add(head + i * LINE));
                for k in 0..LINE / 16 {
                    let v = _mm_loadu_si128(sl.add(16 * k).cast::<__m128i>());
                    _mm_stream_si128(dl.add(16 * k).cast::<__m128i>(), v);
                }
            }
            std::ptr::copy_nonoverlapping(s.add(head + body), d.add(head + body), n - head - body);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 13 + 1) as u8).collect()
    }

    fn segments(len: usize, size: usize) -> Vec<(usize, usize)> {
        (0..len)
            .step_by(size)
            .map(|s| (s, (s + size).min(len)))
            .collect()
    }

    #[test]
    fn any_order_and_duplicates_reassemble_exactly() {
        let b = block(300_000);
        let mut segs = segments(b.len(), 1400);
        segs.reverse();
        segs.swap(3, 100);
        segs.push(segs[7]); // a duplicate
        segs.push((1000, 5000)); // overlapping several
        let mut r = RedPart::default();
        let pool = BufferPool::new(1 << 20);
        let mut held = 0;
        for &(s, e) in &segs {
            assert_eq!(r.growth(e as u64), (e.saturating_sub(r.held())) as u64);
            held += r.write(s as u64, &b[s..e], 0, &pool);
            assert_eq!(held, r.held());
        }
        assert_eq!(r.held(), b.len());
        let got = r.take(b.len() as u64, &pool);
        assert_eq!(&got[..], &b[..]);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_streamed_copy_equals_a_plain_one_at_every_alignment() {
        let src = block(400);
        let mut dst = vec![std::mem::MaybeUninit::new(0u8); 600];
        for at in 0..70 {
            for len in [0, 1, 15, 63, 64, 65, 127, 128, 129, 200, 330] {
                copy_streaming(&mut dst[at..at + len], &src[7..7 + len]);
                store_fence();
                // SAFETY: the octets were just written.
                let got: Vec<u8> = dst[at..at + len]
                    .iter()
                    .map(|b| unsafe { b.assume_init() })
                    .collect();
                assert_eq!(got, &src[7..7 + len], "at {at}, {len} octets");
            }
        }
    }

    /// A buffer large enough to be streamed, filled out of order, with duplicates, overlaps
    /// and segments of odd sizes, holds exactly the block (and its growth copies what was
    /// streamed before).
    #[test]
    fn a_streamed_red_part_reassembles_exactly() {
        let b = block(STREAM_MIN + 300_001);
        // Small segments (copied through the cache) then large ones (streamed), so that lines
        // at their boundaries are written both ways in turn.
        let small = 1399 * 100;
        let mut segs = segments(small, 1399);
        segs.extend(
            segments(b.len() - small, 5003)
                .into_iter()
                .map(|(s, e)| (s + small, e + small)),
        );
        segs.swap(2, 40);
        segs.swap(150, 1000);
        segs.swap(1001, 1600);
        segs.push(segs[7]);
        segs.push((5000, 9000));
        segs.push((100, 107));
        let pool = BufferPool::new(0);
        let mut r = RedPart::default();
        let mut held = 0;
        for &(s, e) in &segs {
            held += r.write(s as u64, &b[s..e], STREAM_MIN, &pool);
        }
        assert!(r.buf.capacity() >= STREAM_MIN);
        assert_eq!(held, b.len());
        let got = r.take(b.len() as u64, &pool);
        assert!(
            got[..] == b[..],
            "the streamed red part differs from the block"
        );
    }

    #[test]
    fn a_small_block_is_a_plain_vector_of_its_size() {
        let b = block(3000);
        let pool = BufferPool::new(1 << 20);
        // After small blocks (hint below the pooled size): a vector that grows as data comes.
        let mut r = RedPart::default();
        assert_eq!(r.write(0, &b[..1400], 3000, &pool), 1400);
        r.write(1400, &b[1400..2800], 3000, &pool);
        r.write(2800, &b[2800..], 3000, &pool);
        assert_eq!(r.held(), 3000);
        assert!(r.buf.capacity() < POOLED_MIN);
        assert_eq!(&r.take(3000, &pool)[..], &b[..]);
        assert_eq!(pool.idle_bytes(), 0);
        // After a large block: its size of buffer, copied out of at delivery and returned.
        let mut r = RedPart::default();
        for (s, e) in segments(b.len(), 1400) {
            r.write(s as u64, &b[s..e], 1 << 20, &pool);
        }
        assert_eq!(r.held(), 3000);
        assert_eq!(&r.take(3000, &pool)[..], &b[..]);
        assert_eq!(pool.idle_bytes(), 1 << 20);
    }

    #[test]
    fn the_hint_sizes_the_buffer_and_growth_doubles_it() {
        let b = block(300_000);
        let pool = BufferPool::new(1 << 20);
        let mut r = RedPart::default();
        r.write(0, &b[..1400], 200_000, &pool);
        assert_eq!(r.buf.capacity(), 200_000);
        for (s, e) in segments(b.len(), 1400).into_iter().skip(1) {
            r.write(s as u64, &b[s..e], 200_000, &pool);
        }
        assert_eq!(r.buf.capacity(), 400_000);
        assert_eq!(&r.take(b.len() as u64, &pool)[..], &b[..]);
    }

    #[test]
    fn delivered_buffers_return_to_the_pool_and_are_reused() {
        let b = block(10 * POOLED_MIN + 100);
        let pool = BufferPool::new(4 * b.len());
        let mut first = None;
        for round in 0..3 {
            let mut r = RedPart::default();
            for (s, e) in segments(b.len(), 1400) {
                r.write(s as u64, &b[s..e], b.len(), &pool);
            }
            let ptr = r.buf.as_ptr();
            assert_eq!(
                *first.get_or_insert(ptr),
                ptr,
                "round {round} reused the buffer"
            );
            let got = r.take(b.len() as u64, &pool);
            assert_eq!(&got[..], &b[..], "round {round}");
            assert_eq!(pool.idle_bytes(), 0, "the client holds it");
            let slice = got.slice(10..20);
            drop(got);
            assert_eq!(pool.idle_bytes(), 0, "a slice still refers to it");
            drop(slice);
            assert_eq!(pool.idle_bytes(), b.len(), "back once the client let go");
        }
        // A dropped import gives its buffer back as well; one far larger than its red part is
        // copied out of and returned at delivery.
        let mut r = RedPart::default();
        r.write(0, &b[..2000], b.len(), &pool);
        assert_eq!(pool.idle_bytes(), 0);
        r.clear(&pool);
        assert_eq!(pool.idle_bytes(), b.len());
        let mut r = RedPart::default();
        r.write(0, &b[..2000], b.len(), &pool);
        assert_eq!(&r.take(2000, &pool)[..], &b[..2000]);
        assert_eq!(pool.idle_bytes(), b.len());
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_bound_and_outlives_nothing() {
        let pool = BufferPool::new(3 * POOLED_MIN);
        let parts: Vec<Bytes> = (0..5)
            .map(|_| {
                let mut r = RedPart::default();
                r.write(0, &vec![7; POOLED_MIN], POOLED_MIN, &pool);
                r.take(POOLED_MIN as u64, &pool)
            })
            .collect();
        drop(parts);
        assert_eq!(pool.idle_bytes(), 3 * POOLED_MIN);
        // A red part that outlives its engine's pool is simply freed.
        let mut r = RedPart::default();
        r.write(0, &vec![7; POOLED_MIN], POOLED_MIN, &pool);
        let part = r.take(POOLED_MIN as u64, &pool);
        drop(pool);
        assert_eq!(part.len(), POOLED_MIN);
        drop(part);
    }

    #[test]
    fn a_gap_is_held_as_zeros_until_its_data_arrives() {
        let b = block(10_000);
        let pool = BufferPool::new(0);
        let mut r = RedPart::default();
        assert_eq!(r.growth(10_000), 10_000);
        assert_eq!(r.write(8000, &b[8000..], 0, &pool), 10_000);
        assert_eq!(r.growth(5000), 0);
        assert_eq!(r.write(0, &b[..8000], 0, &pool), 0);
        assert_eq!(&r.take(10_000, &pool)[..], &b[..]);
    }
}
