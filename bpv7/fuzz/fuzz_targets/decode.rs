//! Fuzz target: decoding arbitrary bytes never panics, and whatever decodes re-encodes
//! canonically to the same bytes, decodes again to the same bundle, and forwards cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = bytes::Bytes::copy_from_slice(data);
    let opts = bpv7::DecodeOptions::rfc9173_examples();
    if let Ok(p) = bpv7::ParsedBundle::decode_with(bytes.clone(), &opts) {
        let enc = p.bundle.encode_with(&opts).expect("decoded bundle encodes");
        assert_eq!(enc, data, "decode accepts only canonical encodings");
        let _ = p.bundle.admin_record();
        let _ = p.forward(&bpv7::ForwardParams::default());
        let _ = bpv7::fragment(&p.bundle, 128);
    }
    let _ = bpv7::Eid::from_cbor(data);
    let _ = bpv7::AdminRecord::decode(&bytes);
});
