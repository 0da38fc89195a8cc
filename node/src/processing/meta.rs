//! The engine's per-bundle metadata blob, stored beside each bundle (RFC 9171 §5: what the
//! node must know about a retained bundle — its identity (§5.1), destination, report-to,
//! processing flags (§4.2.3) and where it came from — without decoding the bundle).
//!
//! Encoding (version 1): `[1][kind u8][priority u8]`, then LEB128 varints `flags`,
//! `received_ms`, `lifetime_ms`, `creation_ms`, `sequence`, a fragment marker byte (0 or 1)
//! followed by `offset` and `length` varints when 1, then four length-prefixed (varint) EIDs in
//! their RFC 9171 CBOR form: destination, source, report-to, previous node (length 0 = none).
//! Hand-written because it is tiny, fixed and read 100,000 times at restart.

use bpv7::Eid;

use crate::api::{DtnMillis, Priority};

/// Metadata format version.
const VERSION: u8 = 1;
/// Longest EID encoding accepted in a metadata blob.
const MAX_EID_BYTES: usize = 4096;

/// What the engine does with a stored bundle (persisted; the in-memory state is rebuilt from
/// it at restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// To be forwarded (RFC 9171 §5.4).
    Forward,
    /// To be delivered to a local registration (RFC 9171 §5.7).
    Local,
    /// A fragment addressed to this node, waiting for reassembly (RFC 9171 §5.9).
    Fragment,
}

/// Metadata of one stored bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    /// What to do with it.
    pub kind: Kind,
    /// Local priority (not on the wire).
    pub priority: Priority,
    /// Bundle processing control flags (RFC 9171 §4.2.3).
    pub flags: u64,
    /// When this node received (or created) it, DTN ms: the start of its dwell time.
    pub received_ms: DtnMillis,
    /// Lifetime from the primary block (ms).
    pub lifetime_ms: u64,
    /// Creation time (DTN ms).
    pub creation_ms: u64,
    /// Creation sequence number.
    pub sequence: u64,
    /// `(offset, payload length)` for a fragment (RFC 9171 §5.1 identity).
    pub fragment: Option<(u64, u64)>,
    /// Destination EID.
    pub destination: Eid,
    /// Source node ID.
    pub source: Eid,
    /// Report-to EID.
    pub report_to: Eid,
    /// Node it was received from, if known (previous-hop exclusion).
    pub previous: Option<Eid>,
}

/// A metadata blob that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad engine metadata: {0}")]
pub(crate) struct MetaError(pub &'static str);

impl Meta {
    /// The RFC 9171 §5.1 identity of the bundle.
    pub fn bundle_id(&self) -> bpv7::BundleId {
        bpv7::BundleId {
            source: self.source.clone(),
            timestamp: bpv7::CreationTimestamp::new(self.creation_ms, self.sequence),
            fragment: self.fragment,
        }
    }

    /// Encode (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(VERSION);
        out.push(match self.kind {
            Kind::Forward => 0,
            Kind::Local => 1,
            Kind::Fragment => 2,
        });
        out.push(match self.priority {
            Priority::Bulk => 0,
            Priority::Normal => 1,
            Priority::Expedited => 2,
        });
        for v in [
            self.flags,
            self.received_ms,
            self.lifetime_ms,
            self.creation_ms,
            self.sequence,
        ] {
            put_varint(&mut out, v);
        }
        match self.fragment {
            Some((off, len)) => {
                out.push(1);
                put_varint(&mut out, off);
                put_varint(&mut out, len);
            }
            None => out.push(0),
        }
        for eid in [
            Some(&self.destination),
            Some(&self.source),
            Some(&self.report_to),
            self.previous.as_ref(),
        ] {
            match eid {
                Some(e) => {
                    let c = e.to_cbor();
                    put_varint(&mut out, c.len() as u64);
                    out.extend_from_slice(&c);
                }
                None => put_varint(&mut out, 0),
            }
        }
        out
    }

    /// Decode; every length is bounded by the input.
    pub fn decode(b: &[u8]) -> Result<Meta, MetaError> {
        let mut r = Rd { b, pos: 0 };
        if r.byte()? != VERSION {
            return Err(MetaError("unknown version"));
        }
        let kind = match r.byte()? {
            0 => Kind::Forward,
            1 => Kind::Local,
            2 => Kind::Fragment,
            _ => return Err(MetaError("unknown kind")),
        };
        let priority = match r.byte()? {
            0 => Priority::Bulk,
            1 => Priority::Normal,
            2 => Priority::Expedited,
            _ => return Err(MetaError("unknown priority")),
        };
        let flags = r.varint()?;
        let received_ms = r.varint()?;
        let lifetime_ms = r.varint()?;
        let creation_ms = r.varint()?;
        let sequence = r.varint()?;
        let fragment = match r.byte()? {
            0 => None,
            1 => Some((r.varint()?, r.varint()?)),
            _ => return Err(MetaError("bad fragment marker")),
        };
        let destination = r.eid()?.ok_or(MetaError("missing destination"))?;
        let source = r.eid()?.ok_or(MetaError("missing source"))?;
        let report_to = r.eid()?.ok_or(MetaError("missing report-to"))?;
        let previous = r.eid()?;
        if r.pos != b.len() {
            return Err(MetaError("trailing bytes"));
        }
        Ok(Meta {
            kind,
            priority,
            flags,
            received_ms,
            lifetime_ms,
            creation_ms,
            sequence,
            fragment,
            destination,
            source,
            report_to,
            previous,
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

struct Rd<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Rd<'_> {
    fn byte(&mut self) -> Result<u8, MetaError> {
        let v = *self.b.get(self.pos).ok_or(MetaError("truncated"))?;
        self.pos += 1;
        Ok(v)
    }

    fn varint(&mut self) -> Result<u64, MetaError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(MetaError("varint overflow"));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(MetaError("varint too long"))
    }

    fn eid(&mut self) -> Result<Option<Eid>, MetaError> {
        let len = self.varint()?;
        if len == 0 {
            return Ok(None);
        }
        if len > MAX_EID_BYTES as u64 || len as usize > self.b.len() - self.pos {
            return Err(MetaError("EID length out of bounds"));
        }
        let s = &self.b[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Eid::from_cbor(s)
            .map(Some)
            .map_err(|_| MetaError("bad EID"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Meta {
        Meta {
            kind: Kind::Local,
            priority: Priority::Expedited,
            flags: 0x7_4004,
            received_ms: 812_345_678_901,
            lifetime_ms: 3_600_000,
            creation_ms: 812_345_678_000,
            sequence: 300,
            fragment: Some((1000, 24)),
            destination: Eid::ipn(2, 7),
            source: Eid::dtn("node1", "app/x").unwrap(),
            report_to: Eid::Null,
            previous: Some(Eid::ipn(5, 0)),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(Meta::decode(&m.encode()).unwrap(), m);
        let mut n = sample();
        n.previous = None;
        n.fragment = None;
        n.kind = Kind::Fragment;
        assert_eq!(Meta::decode(&n.encode()).unwrap(), n);
    }

    #[test]
    fn truncation_and_trailing_bytes_are_errors() {
        let enc = sample().encode();
        for i in 0..enc.len() {
            assert!(Meta::decode(&enc[..i]).is_err(), "prefix {i}");
        }
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(Meta::decode(&long), Err(MetaError("trailing bytes")));
        let mut bad = enc;
        bad[0] = 9;
        assert_eq!(Meta::decode(&bad), Err(MetaError("unknown version")));
    }

    fn arb_eid() -> impl Strategy<Value = Eid> {
        prop_oneof![
            Just(Eid::Null),
            (any::<u64>(), any::<u64>()).prop_map(|(n, s)| Eid::ipn(n, s)),
            ("[a-z0-9]{1,12}", "[a-z0-9/]{0,12}").prop_map(|(n, d)| Eid::dtn(&n, &d).unwrap()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn prop_round_trip(
            kind in 0u8..3, prio in 0u8..3, flags in any::<u64>(), rx in any::<u64>(),
            life in any::<u64>(), cr in any::<u64>(), seq in any::<u64>(),
            frag in proptest::option::of((any::<u64>(), any::<u64>())),
            d in arb_eid(), s in arb_eid(), rt in arb_eid(), p in proptest::option::of(arb_eid()),
        ) {
            let m = Meta {
                kind: [Kind::Forward, Kind::Local, Kind::Fragment][kind as usize],
                priority: [Priority::Bulk, Priority::Normal, Priority::Expedited][prio as usize],
                flags, received_ms: rx, lifetime_ms: life, creation_ms: cr, sequence: seq,
                fragment: frag, destination: d, source: s, report_to: rt, previous: p,
            };
            prop_assert_eq!(Meta::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Meta::decode(&b);
        }
    }
}
