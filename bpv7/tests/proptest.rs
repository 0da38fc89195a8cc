//! Property tests: encode/decode round trips over generated bundles, decoding arbitrary and
//! mutated bytes never panics, fragment-then-reassemble returns the original.

use bpv7::*;
use bytes::Bytes;
use proptest::prelude::*;

fn arb_eid() -> impl Strategy<Value = Eid> {
    prop_oneof![
        Just(Eid::Null),
        ("[a-z0-9.-]{1,12}", "[a-z0-9/_.-]{0,12}").prop_map(|(n, d)| Eid::dtn(&n, &d).unwrap()),
        (any::<u64>(), any::<u64>()).prop_map(|(node, service)| Eid::Ipn { node, service }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(allocator, node, service)| {
            Eid::Ipn3 {
                allocator,
                node,
                service,
            }
        }),
        (3u64..1000, any::<u32>()).prop_map(|(scheme, v)| {
            // An unknown scheme with a CBOR uint SSP.
            let mut ssp = vec![0x1a];
            ssp.extend_from_slice(&v.to_be_bytes());
            if v < 24 {
                ssp = vec![v as u8];
            } else if v <= 0xff {
                ssp = vec![0x18, v as u8];
            } else if v <= 0xffff {
                ssp = vec![0x19, (v >> 8) as u8, v as u8];
            }
            Eid::Unknown { scheme, ssp }
        }),
    ]
}

fn arb_crc() -> impl Strategy<Value = CrcType> {
    prop_oneof![
        Just(CrcType::None),
        Just(CrcType::Crc16),
        Just(CrcType::Crc32c)
    ]
}

#[derive(Debug, Clone)]
enum Ext {
    Prev(Eid),
    Age(u64),
    Hop(u64, u64),
    Other(u64, Vec<u8>),
}

fn arb_ext() -> impl Strategy<Value = (Ext, u64, CrcType)> {
    let ext = prop_oneof![
        arb_eid().prop_map(Ext::Prev),
        any::<u64>().prop_map(Ext::Age),
        (1u64..=255, any::<u64>()).prop_map(|(l, c)| Ext::Hop(l, c)),
        (
            13u64..100_000,
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(t, d)| Ext::Other(t, d)),
    ];
    (ext, any::<u64>(), arb_crc())
}

prop_compose! {
    fn arb_bundle(max_payload: usize)(
        source in arb_eid(), dest in arb_eid(), report in arb_eid(),
        flags in any::<u64>(), crc in arb_crc(), time in prop_oneof![Just(0u64), any::<u64>()],
        seq in any::<u64>(), lifetime in any::<u64>(),
        frag in proptest::option::of((any::<u64>(), any::<u64>())),
        exts in proptest::collection::vec(arb_ext(), 0..5),
        pflags in any::<u64>(), pcrc in arb_crc(),
        payload in proptest::collection::vec(any::<u8>(), 0..=max_payload),
        numbers in proptest::collection::vec(2u64..u64::MAX, 5),
    ) -> Bundle {
        let mut flags = BundleFlags(flags);
        let is_admin = flags.contains(BundleFlags::ADMIN_RECORD);
        if is_admin || source.is_null() {
            flags.set(BundleFlags::ALL_REPORTS, false);
        }
        let mut fragment = frag.map(|(o, extra)| {
            let total = (o % (1 << 40)).saturating_add(payload.len() as u64).saturating_add(1 + extra % 1000);
            FragmentInfo { offset: o % (1 << 40), total_adu_length: total }
        });
        if source.is_null() {
            flags.set(BundleFlags::MUST_NOT_FRAGMENT, true);
            fragment = None;
        }
        flags.set(BundleFlags::IS_FRAGMENT, fragment.is_some());
        let anonymous_or_admin = is_admin || source.is_null();
        let mut blocks = Vec::new();
        let (mut has_prev, mut has_age, mut has_hop) = (false, false, false);
        let mut used = std::collections::HashSet::new();
        for (i, (e, bf, bcrc)) in exts.into_iter().enumerate() {
            let mut number = numbers[i];
            while !used.insert(number) { number += 1; }
            let mut bflags = BlockFlags(bf);
            if anonymous_or_admin { bflags.set(BlockFlags::REPORT_IF_UNPROCESSABLE, false); }
            let (t, data): (BlockType, Vec<u8>) = match e {
                Ext::Prev(eid) if !has_prev => { has_prev = true; (BlockType::PreviousNode, eid.to_cbor()) }
                Ext::Age(a) if !has_age => { has_age = true; (BlockType::BundleAge, CanonicalBlock::bundle_age(0, a, CrcType::None).data.to_vec()) }
                Ext::Hop(l, c) if !has_hop => { has_hop = true; (BlockType::HopCount, CanonicalBlock::hop_count(0, HopCount { limit: l, count: c }, CrcType::None).data.to_vec()) }
                Ext::Other(t, d) => (BlockType::from_code(t), d),
                _ => continue,
            };
            blocks.push(CanonicalBlock::new(t, number, bflags, bcrc, Bytes::from(data)));
        }
        if time == 0 && !has_age {
            blocks.push(CanonicalBlock::bundle_age(u64::MAX / 2 + 1, 7, CrcType::Crc16));
        }
        let mut pf = BlockFlags(pflags);
        if anonymous_or_admin { pf.set(BlockFlags::REPORT_IF_UNPROCESSABLE, false); }
        blocks.push(CanonicalBlock::new(BlockType::Payload, 1, pf, pcrc, Bytes::from(payload)));
        let crc_type = if crc.is_none() { CrcType::Crc16 } else { crc };
        Bundle {
            primary: PrimaryBlock {
                flags, crc_type, destination: dest, source, report_to: report,
                creation: CreationTimestamp::new(time, seq), lifetime_ms: lifetime, fragment,
            },
            blocks,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip(b in arb_bundle(2048)) {
        b.validate().unwrap();
        let enc = Bytes::from(b.encode().unwrap());
        let p = ParsedBundle::decode(enc.clone()).unwrap();
        prop_assert_eq!(&p.bundle, &b);
        prop_assert_eq!(p.bundle.encode().unwrap(), enc.to_vec());
        // identity forward is byte-identical; a real forward decodes again
        if b.hop_count().is_none() {
            prop_assert_eq!(p.forward(&ForwardParams::default()).unwrap().concat(), enc.clone());
        }
        let params = ForwardParams { previous_node: Some(Eid::ipn(9, 0)), dwell_ms: 5, insert_hop_limit: Some(10), ..Default::default() };
        match p.forward(&params) {
            Ok(out) => {
                let f = Bundle::decode(out.concat()).unwrap();
                prop_assert_eq!(f.previous_node(), Some(Eid::ipn(9, 0)));
                prop_assert_eq!(f.payload(), b.payload());
                prop_assert_eq!(&f.primary, &b.primary);
            }
            Err(e) => prop_assert_eq!(e, Error::HopLimitExceeded),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ParsedBundle::decode(Bytes::from(data.clone()));
        let _ = Eid::from_cbor(&data);
        let _ = AdminRecord::decode(&Bytes::from(data));
    }

    #[test]
    fn mutated_bytes_never_panic(b in arb_bundle(64), muts in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6)) {
        let mut enc = b.encode().unwrap();
        for (i, v, kind) in muts {
            if enc.is_empty() { break; }
            let i = i % enc.len();
            match kind {
                0 => enc[i] = v,
                1 => { enc.remove(i); }
                _ => enc.insert(i, v),
            }
        }
        let opts = DecodeOptions::rfc9173_examples();
        if let Ok(p) = ParsedBundle::decode_with(Bytes::from(enc.clone()), &opts) {
            // Anything accepted is canonical: re-encoding gives the same bytes.
            prop_assert_eq!(p.bundle.encode_with(&opts).unwrap(), enc);
        }
    }

    #[test]
    fn fragment_then_reassemble(b in arb_bundle(3000), max in 60usize..1500, order in any::<u64>(), dups in 0usize..4) {
        let mut b = b;
        if b.primary.flags.contains(BundleFlags::MUST_NOT_FRAGMENT) {
            // Refused unless it already fits (§5.8).
            match fragment(&b, max) {
                Ok(f) => prop_assert!(f.len() == 1 && f[0] == b),
                Err(e) => prop_assert_eq!(e, Error::MustNotFragment),
            }
            if b.primary.source.is_null() {
                return Ok(());
            }
            b.primary.flags.set(BundleFlags::MUST_NOT_FRAGMENT, false);
        }
        let frags = match fragment(&b, max) {
            Ok(f) => f,
            Err(Error::FragmentSizeTooSmall(_)) => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
        };
        let mut list: Vec<Bundle> = frags.clone();
        for i in 0..dups { list.push(frags[i % frags.len()].clone()); }
        // deterministic shuffle from `order`
        let mut s = order | 1;
        for i in (1..list.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            list.swap(i, (s % (i as u64 + 1)) as usize);
        }
        for f in &list {
            if frags.len() > 1 { prop_assert!(f.encoded_len() <= max); }
        }
        if let Some(orig) = b.primary.fragment {
            // Fragmenting a fragment: offsets stay relative to the original ADU and the pieces
            // tile the fragment's payload.
            let mut at = orig.offset;
            let mut joined = Vec::new();
            for f in &frags {
                let fi = f.primary.fragment.unwrap();
                prop_assert_eq!(fi.offset, at);
                prop_assert_eq!(fi.total_adu_length, orig.total_adu_length);
                at += f.payload().len() as u64;
                joined.extend_from_slice(f.payload());
            }
            prop_assert_eq!(&joined[..], &b.payload()[..]);
            return Ok(());
        }
        let mut r = Reassembler::new(ReassemblerConfig::default());
        let mut done = None;
        for f in list {
            let f = Bundle::decode(Bytes::from(f.encode().unwrap())).unwrap();
            if let Some(x) = r.insert(f).unwrap() {
                if done.is_none() {
                    done = Some(x);
                }
            }
        }
        prop_assert_eq!(done.expect("reassembled"), b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4))]

    #[test]
    fn round_trip_large_payloads(b in arb_bundle(0), size in prop_oneof![Just(65_535usize), Just(65_536), Just(1 << 20)]) {
        let mut b = b;
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        if let Some(f) = b.primary.fragment.as_mut() {
            f.total_adu_length = f.offset + size as u64 + 1;
        }
        b.blocks.last_mut().unwrap().data = Bytes::from(payload);
        let enc = Bytes::from(b.encode().unwrap());
        let p = ParsedBundle::decode(enc.clone()).unwrap();
        prop_assert_eq!(&p.bundle, &b);
        prop_assert_eq!(p.bundle.encode().unwrap(), enc.to_vec());
    }
}

fn arb_assertion() -> impl Strategy<Value = StatusAssertion> {
    (any::<bool>(), proptest::option::of(any::<u64>())).prop_map(|(asserted, t)| StatusAssertion {
        asserted,
        time: t.map(DtnTime),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn eid_round_trip(e in arb_eid()) {
        prop_assert_eq!(Eid::from_cbor(&e.to_cbor()).unwrap(), e.clone());
        prop_assert_eq!(e.to_string().parse::<Eid>().unwrap(), e);
    }

    #[test]
    fn status_report_round_trip(
        src in arb_eid(), a in arb_assertion(), b in arb_assertion(), c in arb_assertion(), d in arb_assertion(),
        reason in any::<u64>(), t in any::<u64>(), seq in any::<u64>(), frag in proptest::option::of((any::<u64>(), any::<u64>())),
        record_type in 2u64..1000, raw in any::<u64>(),
    ) {
        let rec = AdminRecord::StatusReport(StatusReport {
            received: a, forwarded: b, delivered: c, deleted: d,
            reason: ReasonCode::from_code(reason), source: src,
            timestamp: CreationTimestamp::new(t, seq), fragment: frag,
        });
        let enc = Bytes::from(rec.encode());
        prop_assert_eq!(AdminRecord::decode(&enc).unwrap(), rec);
        let mut content = Vec::new();
        content.push(0x1b);
        content.extend_from_slice(&raw.to_be_bytes());
        if raw > u32::MAX as u64 {
            let unk = AdminRecord::Unknown { record_type, content: Bytes::from(content) };
            prop_assert_eq!(AdminRecord::decode(&Bytes::from(unk.encode())).unwrap(), unk);
        }
        prop_assert_eq!(ReasonCode::from_code(reason).code(), reason);
    }
}
