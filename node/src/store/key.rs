//! The byte encoding of a bundle's identity (RFC 9171 §5.1 "bundle ID"; fragment identity
//! per §5.8/§5.9): source node ID, creation timestamp (time, sequence number) and, for a
//! fragment, its offset and length.
//!
//! Layout (every field self-delimiting, so the concatenation is injective; integers are
//! unsigned LEB128 in minimal form, so equal identities give equal bytes and decoding accepts
//! only what encoding produces):
//!
//! ```text
//! eid-tag(1) eid-fields  time  sequence  frag-tag(1) [offset length]
//!   0 dtn:none                                 0 = whole bundle, 1 = fragment
//!   1 dtn://  len(node) node len(demux) demux
//!   2 ipn:    node service
//!   3 ipn:    allocator node service (RFC 9758)
//!   4 other   scheme len(ssp) ssp
//! ```

use bpv7::{BundleId, CreationTimestamp, DtnTime, Eid};

use super::{BundleKey, StoreError};

/// Longest key accepted by [`BundleKey::to_id`]; keys are produced from decoded bundles whose
/// EIDs are bounded by the bundle size limit, this only bounds a decoder fed garbage.
pub const MAX_KEY_LEN: usize = 64 * 1024;

const EID_NULL: u8 = 0;
const EID_DTN: u8 = 1;
const EID_IPN: u8 = 2;
const EID_IPN3: u8 = 3;
const EID_OTHER: u8 = 4;

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A cursor over key bytes that never panics.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn corrupt(what: &str) -> StoreError {
        StoreError::Corrupt(format!("bundle key: {what}"))
    }

    fn byte(&mut self) -> Result<u8, StoreError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| Self::corrupt("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    /// A minimal-form LEB128 u64.
    fn uvarint(&mut self) -> Result<u64, StoreError> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(Self::corrupt("integer overflows 64 bits"));
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(Self::corrupt("non-minimal integer"));
                }
                return Ok(v);
            }
        }
        Err(Self::corrupt("integer too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len = self.uvarint()?;
        let len = usize::try_from(len).map_err(|_| Self::corrupt("length"))?;
        if len > self.buf.len() {
            return Err(Self::corrupt("length beyond end"));
        }
        let (b, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(b)
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| Self::corrupt("not UTF-8"))
    }
}

impl BundleKey {
    /// The key of a bundle identity (RFC 9171 §5.1: source, creation timestamp, and fragment
    /// offset and length for a fragment).
    pub fn from_id(id: &bpv7::BundleId) -> BundleKey {
        let mut out = Vec::with_capacity(24);
        match &id.source {
            Eid::Null => out.push(EID_NULL),
            Eid::Dtn { node, demux } => {
                out.push(EID_DTN);
                put_bytes(&mut out, node.as_bytes());
                put_bytes(&mut out, demux.as_bytes());
            }
            Eid::Ipn { node, service } => {
                out.push(EID_IPN);
                put_uvarint(&mut out, *node);
                put_uvarint(&mut out, *service);
            }
            Eid::Ipn3 {
                allocator,
                node,
                service,
            } => {
                out.push(EID_IPN3);
                put_uvarint(&mut out, *allocator);
                put_uvarint(&mut out, *node);
                put_uvarint(&mut out, *service);
            }
            Eid::Unknown { scheme, ssp } => {
                out.push(EID_OTHER);
                put_uvarint(&mut out, *scheme);
                put_bytes(&mut out, ssp);
            }
        }
        put_uvarint(&mut out, id.timestamp.time.0);
        put_uvarint(&mut out, id.timestamp.sequence);
        match id.fragment {
            None => out.push(0),
            Some((offset, len)) => {
                out.push(1);
                put_uvarint(&mut out, offset);
                put_uvarint(&mut out, len);
            }
        }
        BundleKey(out.into_boxed_slice())
    }

    /// The identity this key encodes; [`StoreError::Corrupt`] for bytes that
    /// [`BundleKey::from_id`] cannot have produced.
    pub fn to_id(&self) -> Result<BundleId, StoreError> {
        if self.0.len() > MAX_KEY_LEN {
            return Err(Reader::corrupt("too long"));
        }
        let mut r = Reader { buf: &self.0 };
        let source = match r.byte()? {
            EID_NULL => Eid::Null,
            EID_DTN => Eid::Dtn {
                node: r.string()?,
                demux: r.string()?,
            },
            EID_IPN => Eid::Ipn {
                node: r.uvarint()?,
                service: r.uvarint()?,
            },
            EID_IPN3 => Eid::Ipn3 {
                allocator: r.uvarint()?,
                node: r.uvarint()?,
                service: r.uvarint()?,
            },
            EID_OTHER => Eid::Unknown {
                scheme: r.uvarint()?,
                ssp: r.bytes()?.to_vec(),
            },
            _ => return Err(Reader::corrupt("unknown EID tag")),
        };
        let time = r.uvarint()?;
        let sequence = r.uvarint()?;
        let fragment = match r.byte()? {
            0 => None,
            1 => Some((r.uvarint()?, r.uvarint()?)),
            _ => return Err(Reader::corrupt("unknown fragment tag")),
        };
        if !r.buf.is_empty() {
            return Err(Reader::corrupt("trailing bytes"));
        }
        Ok(BundleId {
            source,
            timestamp: CreationTimestamp {
                time: DtnTime(time),
                sequence,
            },
            fragment,
        })
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn eid_strategy() -> impl Strategy<Value = Eid> {
        prop_oneof![
            Just(Eid::Null),
            ("[!-.0-~]{1,12}", "[!-~]{0,12}").prop_map(|(node, demux)| Eid::Dtn { node, demux }),
            (any::<u64>(), any::<u64>()).prop_map(|(node, service)| Eid::Ipn { node, service }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(allocator, node, service)| {
                Eid::Ipn3 {
                    allocator,
                    node,
                    service,
                }
            }),
            (3u64..1000, proptest::collection::vec(any::<u8>(), 0..16))
                .prop_map(|(scheme, ssp)| Eid::Unknown { scheme, ssp }),
        ]
    }

    fn id_strategy() -> impl Strategy<Value = BundleId> {
        (
            eid_strategy(),
            prop_oneof![Just(0u64), any::<u64>()],
            prop_oneof![0u64..4, any::<u64>()],
            proptest::option::of((0u64..4, 0u64..4)),
        )
            .prop_map(|(source, t, s, fragment)| BundleId {
                source,
                timestamp: CreationTimestamp::new(t, s),
                fragment,
            })
    }

    proptest! {
        #[test]
        fn key_round_trips(id in id_strategy()) {
            let key = BundleKey::from_id(&id);
            prop_assert_eq!(key.to_id().unwrap(), id);
        }

        #[test]
        fn distinct_ids_give_distinct_keys(a in id_strategy(), b in id_strategy()) {
            let (ka, kb) = (BundleKey::from_id(&a), BundleKey::from_id(&b));
            prop_assert_eq!(a == b, ka == kb);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let key = BundleKey(bytes.clone().into_boxed_slice());
            if let Ok(id) = key.to_id() {
                // Only canonical encodings decode.
                prop_assert_eq!(&*BundleKey::from_id(&id).0, &bytes[..]);
            }
        }
    }

    #[test]
    fn fragment_and_whole_differ() {
        let whole = BundleId {
            source: Eid::Ipn {
                node: 1,
                service: 0,
            },
            timestamp: CreationTimestamp::new(5, 0),
            fragment: None,
        };
        let mut frag = whole.clone();
        frag.fragment = Some((0, 0));
        assert_ne!(BundleKey::from_id(&whole), BundleKey::from_id(&frag));
        // ipn:1.0 @5/0 is 6 bytes: compact.
        assert_eq!(BundleKey::from_id(&whole).0.len(), 6);
    }

    #[test]
    fn non_minimal_varint_rejected() {
        // ipn tag, node 0 encoded as 0x80 0x00.
        let key = BundleKey(vec![EID_IPN, 0x80, 0x00, 0, 0, 0, 0].into_boxed_slice());
        assert!(matches!(key.to_id(), Err(StoreError::Corrupt(_))));
    }
}
