//! Fragmentation (RFC 9171 §5.8) and reassembly (§5.9) of bundles.
//!
//! Fragments share the original primary block fields (with the fragment flag set and offsets
//! relative to the original ADU, also when a fragment is fragmented again). The first fragment
//! carries every extension block; later fragments carry only the blocks flagged "replicate in
//! every fragment" (§4.2.4 bit 0), plus the bundle age block when the creation time is zero
//! (§4.4.2 requires it in every such bundle). The payload slices are zero-copy slices of the original.

use crate::bundle::{Bundle, CanonicalBlock};
use crate::cbor;
use crate::eid::Eid;
use crate::types::*;
use crate::{Error, Result};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};

/// Split `bundle` into fragments whose encoded size is at most `max_size` bytes (§5.8).
/// Returns the bundle unchanged (one element) if it already fits.
pub fn fragment(bundle: &Bundle, max_size: usize) -> Result<Vec<Bundle>> {
    bundle.validate_with(&crate::DecodeOptions::rfc9173_examples())?;
    if bundle.encoded_len() <= max_size {
        return Ok(vec![bundle.clone()]);
    }
    // §4.2.3 bit 2: must not fragment.
    if bundle
        .primary
        .flags
        .contains(BundleFlags::MUST_NOT_FRAGMENT)
    {
        return Err(Error::MustNotFragment);
    }
    let payload = bundle.payload().clone();
    if payload.is_empty() {
        // Nothing to split: the blocks alone exceed the limit.
        return Err(Error::FragmentSizeTooSmall(max_size));
    }
    let pblock = bundle.payload_block().clone();
    let (base, total) = match bundle.primary.fragment {
        Some(f) => (f.offset, f.total_adu_length),
        None => (0, payload.len() as u64),
    };
    // §4.4.2: with a zero creation time every fragment needs the bundle age block.
    let zero_time = bundle.primary.creation.time.0 == 0;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < payload.len() {
        let first = pos == 0;
        let mut primary = bundle.primary.clone();
        primary.flags.set(BundleFlags::IS_FRAGMENT, true);
        primary.fragment = Some(FragmentInfo {
            offset: base + pos as u64,
            total_adu_length: total,
        });
        let mut blocks: Vec<CanonicalBlock> = bundle
            .blocks
            .iter()
            .filter(|b| {
                b.block_type != BlockType::Payload
                    && (first
                        || b.flags.contains(BlockFlags::REPLICATE)
                        || (b.block_type == BlockType::BundleAge && zero_time))
            })
            .cloned()
            .collect();
        let mut pb = pblock.clone();
        pb.data = Bytes::new();
        blocks.push(pb);
        let mut frag = Bundle { primary, blocks };
        // Size with an empty payload, minus the 1-byte empty length head.
        let fixed = frag.encoded_len() - 1;
        let budget = max_size.saturating_sub(fixed);
        let mut take = 0usize;
        for hl in [1usize, 2, 3, 5, 9] {
            if let Some(c) = budget.checked_sub(hl) {
                if cbor::head_len(c as u64) <= hl {
                    take = take.max(c);
                }
            }
        }
        let take = take.min(payload.len() - pos);
        if take == 0 {
            return Err(Error::FragmentSizeTooSmall(max_size));
        }
        if let Some(last) = frag.blocks.last_mut() {
            last.data = payload.slice(pos..pos + take);
        }
        pos += take;
        out.push(frag);
    }
    Ok(out)
}

/// Memory bounds of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblerConfig {
    /// Maximum payload bytes held across all partial bundles.
    pub max_bytes: usize,
    /// Maximum number of partial bundles held at once.
    pub max_bundles: usize,
}

impl Default for ReassemblerConfig {
    fn default() -> Self {
        ReassemblerConfig {
            max_bytes: 64 << 20,
            max_bundles: 1024,
        }
    }
}

#[derive(Debug)]
struct Partial {
    total: u64,
    /// Non-overlapping received pieces keyed by ADU offset.
    pieces: BTreeMap<u64, Bytes>,
    covered: u64,
    /// The fragment at offset 0 (its primary block and extension blocks are kept).
    first: Option<Bundle>,
    /// Any fragment, for the primary block when the first has not arrived.
    template: Bundle,
}

/// Reassembles fragments in any order, tolerating duplicates and overlaps (§5.9), within a
/// configured memory bound. At the bound a new fragment is refused with
/// [`Error::ReassemblyLimit`] and nothing already held is changed; the caller decides.
#[derive(Debug)]
pub struct Reassembler {
    cfg: ReassemblerConfig,
    partials: HashMap<(Eid, CreationTimestamp), Partial>,
    held: usize,
}

impl Reassembler {
    /// A reassembler with the given limits.
    pub fn new(cfg: ReassemblerConfig) -> Self {
        Reassembler {
            cfg,
            partials: HashMap::new(),
            held: 0,
        }
    }

    /// Payload bytes currently held.
    pub fn bytes_held(&self) -> usize {
        self.held
    }

    /// Number of partial bundles held.
    pub fn partial_count(&self) -> usize {
        self.partials.len()
    }

    /// Drop the partial bundle with this identity (fragment part ignored), e.g. on expiry.
    /// Returns true if something was dropped.
    pub fn evict(&mut self, id: &BundleId) -> bool {
        let key = (id.source.clone(), id.timestamp);
        match self.partials.remove(&key) {
            Some(p) => {
                self.held -= p.pieces.values().map(|b| b.len()).sum::<usize>();
                true
            }
            None => false,
        }
    }

    /// Add a fragment. Returns the reassembled bundle once every byte of the ADU is present.
    /// A bundle that is not a fragment is returned as is. A fragment arriving after its bundle
    /// was completed starts a new partial entry; the caller removes it with [`Self::evict`]
    /// when the bundle's lifetime ends.
    pub fn insert(&mut self, frag: Bundle) -> Result<Option<Bundle>> {
        let info = match frag.primary.fragment {
            Some(f) => f,
            None => return Ok(Some(frag)),
        };
        let data = frag.payload().clone();
        let start = info.offset;
        let end = start
            .checked_add(data.len() as u64)
            .ok_or(Error::FragmentBeyondTotal)?;
        if end > info.total_adu_length {
            return Err(Error::FragmentBeyondTotal);
        }
        if info.total_adu_length > self.cfg.max_bytes as u64 {
            return Err(Error::ReassemblyLimit(
                "bundle larger than the reassembly memory bound",
            ));
        }
        let key = (frag.primary.source.clone(), frag.primary.creation);
        if !self.partials.contains_key(&key) && self.partials.len() >= self.cfg.max_bundles {
            return Err(Error::ReassemblyLimit("too many partial bundles"));
        }
        // Compute the new (not yet covered) sub-ranges before changing anything.
        let new_pieces = {
            let existing = self.partials.get(&key);
            if let Some(p) = existing {
                if p.total != info.total_adu_length {
                    return Err(Error::InconsistentFragment("total ADU length differs"));
                }
            }
            let mut out = Vec::new();
            let mut cur = start;
            if let Some(p) = existing {
                // Pieces that may overlap [start, end).
                let before = p
                    .pieces
                    .range(..=start)
                    .next_back()
                    .map(|(o, b)| (*o, *o + b.len() as u64));
                if let Some((_, e)) = before {
                    cur = cur.max(e);
                }
                for (o, b) in p.pieces.range(start..end) {
                    if *o > cur {
                        out.push((cur, *o));
                    }
                    cur = cur.max(*o + b.len() as u64);
                }
            }
            if cur < end {
                out.push((cur, end));
            }
            out
        };
        let add: u64 = new_pieces.iter().map(|(a, b)| b - a).sum();
        if self.held as u64 + add > self.cfg.max_bytes as u64 {
            return Err(Error::ReassemblyLimit("reassembly byte limit reached"));
        }
        let p = self.partials.entry(key.clone()).or_insert_with(|| Partial {
            total: info.total_adu_length,
            pieces: BTreeMap::new(),
            covered: 0,
            first: None,
            template: frag.clone(),
        });
        for (a, b) in new_pieces {
            let s = (a - start) as usize;
            let e = (b - start) as usize;
            p.pieces.insert(a, data.slice(s..e));
        }
        p.covered += add;
        self.held += add as usize;
        if start == 0 && p.first.is_none() {
            p.first = Some(frag);
        }
        if p.covered < p.total || p.first.is_none() {
            return Ok(None);
        }
        let p = self.partials.remove(&key).expect("present");
        self.held -= p.covered as usize;
        let mut adu = Vec::with_capacity(p.total as usize);
        for b in p.pieces.values() {
            adu.extend_from_slice(b);
        }
        let _ = &p.template;
        let first = p.first.expect("checked");
        let mut primary = first.primary.clone();
        primary.fragment = None;
        primary.flags.set(BundleFlags::IS_FRAGMENT, false);
        let mut blocks = first.blocks.clone();
        if let Some(pb) = blocks
            .iter_mut()
            .find(|b| b.block_type == BlockType::Payload)
        {
            pb.data = adu.into();
        }
        Ok(Some(Bundle { primary, blocks }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BundleBuilder;

    fn sample(len: usize) -> Bundle {
        BundleBuilder::new(
            Eid::ipn(1, 1),
            Eid::ipn(2, 1),
            CreationTimestamp::new(1000, 1),
            60_000,
        )
        .hop_count(30, 0)
        .block(
            BlockType::Unknown(193),
            BlockFlags::REPLICATE,
            CrcType::Crc16,
            vec![1u8, 2, 3],
        )
        .payload((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
        .build()
        .unwrap()
    }

    #[test]
    fn fragment_and_reassemble() {
        let b = sample(1000);
        let frags = fragment(&b, 200).unwrap();
        assert!(frags.len() > 5);
        let mut r = Reassembler::new(ReassemblerConfig::default());
        let mut done = None;
        for f in frags.iter().rev() {
            assert!(f.encoded_len() <= 200);
            let enc = f.encode().unwrap();
            let dec = Bundle::decode(enc.into()).unwrap();
            assert_eq!(&dec, f);
            if let Some(x) = r.insert(dec).unwrap() {
                done = Some(x);
            }
        }
        assert_eq!(done.unwrap(), b);
        assert_eq!(r.bytes_held(), 0);
    }

    #[test]
    fn must_not_fragment_refused() {
        let mut b = sample(1000);
        b.primary.flags |= BundleFlags::MUST_NOT_FRAGMENT;
        assert_eq!(fragment(&b, 200), Err(Error::MustNotFragment));
    }

    #[test]
    fn limits() {
        let frags = fragment(&sample(1000), 300).unwrap();
        let mut r = Reassembler::new(ReassemblerConfig {
            max_bytes: 500,
            max_bundles: 1,
        });
        assert!(matches!(
            r.insert(frags[0].clone()),
            Err(Error::ReassemblyLimit(_))
        ));
        let mut r = Reassembler::new(ReassemblerConfig {
            max_bytes: 1000,
            max_bundles: 1,
        });
        assert_eq!(r.insert(frags[0].clone()).unwrap(), None);
        let other = fragment(&sample(1001), 300).unwrap();
        let mut o = other[0].clone();
        o.primary.creation.sequence = 9;
        assert!(matches!(r.insert(o), Err(Error::ReassemblyLimit(_))));
        assert!(r.evict(&frags[0].id()));
        assert_eq!(r.bytes_held(), 0);
    }

    #[test]
    fn refragment_and_overlaps() {
        let b = sample(3000);
        let coarse = fragment(&b, 1200).unwrap();
        let fine = fragment(&coarse[1], 300).unwrap();
        assert!(fine.len() > 2);
        let f0 = fine[0].primary.fragment.unwrap();
        assert_eq!(f0.offset, coarse[1].primary.fragment.unwrap().offset);
        assert_eq!(f0.total_adu_length, 3000);
        // Overlapping pieces from two different splits, plus duplicates, in mixed order.
        let other = fragment(&b, 700).unwrap();
        let mut r = Reassembler::new(ReassemblerConfig::default());
        let mut inputs: Vec<Bundle> = fine.clone();
        inputs.extend(other.iter().skip(1).cloned());
        inputs.push(fine[0].clone());
        for f in inputs {
            assert_eq!(r.insert(f).unwrap(), None);
        }
        assert!(r.bytes_held() <= 3000);
        let done = r.insert(coarse[0].clone()).unwrap().expect("complete");
        assert_eq!(done, b);
        assert_eq!(r.partial_count(), 0);
    }

    #[test]
    fn too_small_limits() {
        let b = sample(0);
        assert_eq!(fragment(&b, 10), Err(Error::FragmentSizeTooSmall(10)));
        let b = sample(100);
        assert_eq!(fragment(&b, 40), Err(Error::FragmentSizeTooSmall(40)));
    }
}
