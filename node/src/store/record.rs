//! On-disk record layouts of the store (the custody storage of RFC 9171 §5: a retained
//! bundle's expiry per §4.2.2 lifetime, its size, and the engine's metadata).
//!
//! All integers are big-endian so that index keys sort by time:
//!
//! ```text
//! meta value    : version(1)=1  expiry_ms(8)  size(8)  meta_len(4)  meta
//! expiry key    : expiry_ms(8)  bundle-key          (value empty)
//! delivered val : keep_until(8)
//! delivered idx : keep_until(8) bundle-key          (value empty)
//! ```

use bytes::Bytes;

use super::{BundleKey, MetaRecord, StoreError};
use crate::api::DtnMillis;

const META_VERSION: u8 = 1;
const META_HEADER: usize = 1 + 8 + 8 + 4;

/// Encode a meta value.
pub fn encode_meta(expiry_ms: DtnMillis, size: u64, meta: &[u8]) -> Result<Vec<u8>, StoreError> {
    let len = u32::try_from(meta.len())
        .map_err(|_| StoreError::Db(format!("metadata blob of {} bytes too large", meta.len())))?;
    let mut out = Vec::with_capacity(META_HEADER + meta.len());
    out.push(META_VERSION);
    out.extend_from_slice(&expiry_ms.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(meta);
    Ok(out)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Decode a meta value; lengths are checked, a bad record is [`StoreError::Corrupt`].
pub fn decode_meta(key: &BundleKey, v: &[u8]) -> Result<MetaRecord, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("meta record {:02x?}: {why}", &*key.0));
    if v.len() < META_HEADER {
        return Err(corrupt("shorter than its header"));
    }
    if v[0] != META_VERSION {
        return Err(corrupt("unknown version"));
    }
    let expiry_ms = be_u64(&v[1..9]);
    let size = be_u64(&v[9..17]);
    let mut l = [0u8; 4];
    l.copy_from_slice(&v[17..21]);
    let len = u32::from_be_bytes(l) as usize;
    if v.len() - META_HEADER != len {
        return Err(corrupt("metadata length does not match the record"));
    }
    Ok(MetaRecord {
        key: key.clone(),
        expiry_ms,
        size,
        meta: Bytes::copy_from_slice(&v[META_HEADER..]),
    })
}

/// Read just the expiry time and size of a meta value (no metadata copy).
pub fn meta_expiry_size(key: &BundleKey, v: &[u8]) -> Result<(DtnMillis, u64), StoreError> {
    if v.len() < META_HEADER || v[0] != META_VERSION {
        return Err(StoreError::Corrupt(format!(
            "meta record {:02x?}: bad header",
            &*key.0
        )));
    }
    Ok((be_u64(&v[1..9]), be_u64(&v[9..17])))
}

/// `time ‖ key`, the key of a time-ordered index entry.
pub fn time_key(prefix: &[u8], time: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 8 + key.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&time.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Split a time-ordered index key (after its prefix) into time and bundle key.
pub fn split_time_key(k: &[u8]) -> Result<(u64, BundleKey), StoreError> {
    if k.len() < 8 {
        return Err(StoreError::Corrupt(
            "index entry shorter than 8 bytes".into(),
        ));
    }
    Ok((be_u64(&k[..8]), BundleKey(k[8..].into())))
}

/// Decode a delivered-record value.
pub fn decode_u64(what: &str, v: &[u8]) -> Result<u64, StoreError> {
    if v.len() != 8 {
        return Err(StoreError::Corrupt(format!(
            "{what}: {} bytes, expected 8",
            v.len()
        )));
    }
    Ok(be_u64(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn meta_round_trips(e in any::<u64>(), s in any::<u64>(), m in proptest::collection::vec(any::<u8>(), 0..64)) {
            let k = BundleKey(vec![1, 2].into());
            let v = encode_meta(e, s, &m).unwrap();
            let r = decode_meta(&k, &v).unwrap();
            prop_assert_eq!((r.expiry_ms, r.size, &r.meta[..]), (e, s, &m[..]));
            prop_assert_eq!(meta_expiry_size(&k, &v).unwrap(), (e, s));
        }

        #[test]
        fn meta_arbitrary_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..64)) {
            let k = BundleKey(vec![1].into());
            let _ = decode_meta(&k, &v);
            let _ = meta_expiry_size(&k, &v);
            let _ = split_time_key(&v);
            let _ = decode_u64("x", &v);
        }
    }

    #[test]
    fn bad_lengths_are_corrupt() {
        let k = BundleKey(vec![1].into());
        let mut v = encode_meta(1, 2, b"abc").unwrap();
        v.pop();
        assert!(matches!(decode_meta(&k, &v), Err(StoreError::Corrupt(_))));
        v.extend_from_slice(b"cd");
        assert!(matches!(decode_meta(&k, &v), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            decode_meta(&k, &v[..5]),
            Err(StoreError::Corrupt(_))
        ));
        let mut bad_version = encode_meta(1, 2, b"").unwrap();
        bad_version[0] = 9;
        assert!(matches!(
            decode_meta(&k, &bad_version),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn time_keys_sort_by_time() {
        let a = time_key(b"E", 2, &[9, 9]);
        let b = time_key(b"E", 256, &[0]);
        assert!(a < b);
        assert_eq!(
            split_time_key(&b[1..]).unwrap(),
            (256, BundleKey(vec![0].into()))
        );
    }
}
