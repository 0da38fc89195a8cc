//! Self-Delimiting Numeric Values (RFC 6256 §2), as used by every integer field of LTP
//! (RFC 5326 §3).
//!
//! An SDNV is a big-endian base-128 number: every octet carries 7 value bits, and the high bit is
//! set on every octet except the last. The decoder rejects values that do not fit in 64 bits and
//! encodings that run off the end of the buffer; it accepts leading `0x80` padding octets
//! (RFC 6256 §2.1 does not forbid them, and common decoders accept them), which the encoder never
//! produces.

use bytes::{BufMut, BytesMut};

/// The longest canonical SDNV encoding of a `u64` (10 octets: 64 bits / 7 rounded up).
pub const MAX_U64_LEN: usize = 10;

/// Why an SDNV could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdnvError {
    /// The buffer ended before an octet with the high bit clear (RFC 6256 §2.1).
    #[error("SDNV not terminated before the end of the buffer")]
    Unterminated,
    /// The encoded value does not fit in the requested integer width.
    #[error("SDNV value exceeds {bits} bits")]
    Overflow {
        /// Width of the target integer.
        bits: u32,
    },
}

/// Decodes one SDNV from the front of `buf` into a `u64`; returns the value and octets consumed.
///
/// RFC 6256 §2.1: a value wider than 64 bits is rejected (`Overflow`), as is a buffer that ends
/// inside the SDNV (`Unterminated`). Leading `0x80` octets (value zero bits) are accepted.
pub fn decode_u64(buf: &[u8]) -> Result<(u64, usize), SdnvError> {
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().enumerate() {
        // RFC 6256 §2.1 overflow rule: shifting in 7 more bits must not lose any set bit.
        if value >> 57 != 0 {
            return Err(SdnvError::Overflow { bits: 64 });
        }
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(SdnvError::Unterminated)
}

/// Decodes one SDNV into a `u32` (for fields that protocols bound to 32 bits, e.g. CCSDS
/// 734.1-B-1 serial numbers); a value wider than 32 bits is `Overflow { bits: 32 }`.
pub fn decode_u32(buf: &[u8]) -> Result<(u32, usize), SdnvError> {
    let (v, n) = decode_u64(buf).map_err(|e| match e {
        SdnvError::Overflow { .. } => SdnvError::Overflow { bits: 32 },
        other => other,
    })?;
    let v = u32::try_from(v).map_err(|_| SdnvError::Overflow { bits: 32 })?;
    Ok((v, n))
}

/// Number of octets in the canonical (shortest) SDNV encoding of `v`.
pub fn encoded_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    if bits == 0 {
        1
    } else {
        bits.div_ceil(7)
    }
}

/// Writes the canonical SDNV encoding of `v` at the start of `out` and returns its length
/// ([`encoded_len`]); for encoders that gather a header in a stack buffer and append it at
/// once. Panics if `out` is shorter than that.
pub fn write_u64(v: u64, out: &mut [u8]) -> usize {
    let n = encoded_len(v);
    let out = &mut out[..n];
    // From the last octet (high bit clear) back to the first.
    let mut rest = v;
    let mut more = 0;
    for b in out.iter_mut().rev() {
        *b = (rest & 0x7f) as u8 | more;
        rest >>= 7;
        more = 0x80;
    }
    n
}

/// Appends the canonical (shortest) SDNV encoding of `v` to `out` (RFC 6256 §2.1).
pub fn encode_u64(v: u64, out: &mut BytesMut) {
    let mut tmp = [0u8; MAX_U64_LEN];
    let n = write_u64(v, &mut tmp);
    out.put_slice(&tmp[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_u64(v, &mut b);
        b.to_vec()
    }

    #[test]
    fn rfc_examples() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(0x7f), [0x7f]);
        assert_eq!(enc(0x80), [0x81, 0x00]);
        assert_eq!(enc(0xabc), [0x95, 0x3c]);
        assert_eq!(enc(0x1234), [0xa4, 0x34]);
        assert_eq!(enc(0x4234), [0x81, 0x84, 0x34]);
        assert_eq!(enc(u64::MAX).len(), 10);
        assert_eq!(decode_u64(&[0x95, 0x3c, 0xff]), Ok((0xabc, 2)));
    }

    #[test]
    fn rejects_overflow_and_unterminated() {
        let mut over = vec![0x82];
        over.extend_from_slice(&[0xff; 8]);
        over.push(0x7f);
        assert_eq!(decode_u64(&over), Err(SdnvError::Overflow { bits: 64 }));
        let padded_over = [&[0x80; 5][..], &over].concat();
        assert_eq!(
            decode_u64(&padded_over),
            Err(SdnvError::Overflow { bits: 64 })
        );
        assert_eq!(decode_u64(&[0xff, 0xff]), Err(SdnvError::Unterminated));
        assert_eq!(decode_u64(&[]), Err(SdnvError::Unterminated));
        assert_eq!(
            decode_u32(&[0x90, 0xff, 0xff, 0xff, 0x7f]),
            Err(SdnvError::Overflow { bits: 32 })
        );
        assert_eq!(
            decode_u32(&[0x8f, 0xff, 0xff, 0xff, 0x7f]),
            Ok((u32::MAX, 5))
        );
    }

    #[test]
    fn leading_padding_accepted() {
        assert_eq!(decode_u64(&[0x80, 0x01]), Ok((1, 2)));
        let mut padded = vec![0x80; 20];
        padded.extend_from_slice(&enc(u64::MAX));
        assert_eq!(decode_u64(&padded), Ok((u64::MAX, 30)));
    }

    proptest! {
        #[test]
        fn round_trip(v in any::<u64>()) {
            let e = enc(v);
            prop_assert_eq!(e.len(), encoded_len(v));
            // write_u64 writes exactly its encoded length and nothing beyond.
            let mut w = [0xaau8; MAX_U64_LEN + 1];
            let n = write_u64(v, &mut w);
            prop_assert_eq!(n, encoded_len(v));
            prop_assert!(w[n..].iter().all(|&b| b == 0xaa));
            prop_assert_eq!(decode_u64(&e), Ok((v, e.len())));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok((_, n)) = decode_u64(&b) {
                prop_assert!(n >= 1 && n <= b.len());
            }
        }
    }
}
