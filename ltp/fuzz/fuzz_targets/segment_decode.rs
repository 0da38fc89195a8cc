//! Fuzz target: arbitrary datagrams through the LTP segment decoder (RFC 5326 §3) and SDNV
//! decoder (RFC 6256). Decoding must never panic, decoding a datagram taken (as the engine
//! does) must give what decoding it borrowed gives, and whatever decodes must re-encode to a
//! segment that decodes to the same value.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ltp::segment::{DecodeLimits, Segment};

fuzz_target!(|data: &[u8]| {
    let _ = ltp::sdnv::decode_u64(data);
    let datagram = Bytes::copy_from_slice(data);
    let limits = DecodeLimits {
        max_claims: 64,
        ..DecodeLimits::default()
    };
    let decoded = Segment::decode_with_limits(&datagram, &limits);
    assert_eq!(Segment::decode_owned(datagram, &limits), decoded);
    if let Ok(seg) = decoded {
        let again = seg.to_bytes();
        assert_eq!(again.len(), seg.encoded_len());
        let back = Segment::decode(&again).expect("re-encoded segment must decode");
        assert_eq!(back, seg);
    }
});
