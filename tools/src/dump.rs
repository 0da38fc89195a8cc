//! The JSON description of a bundle that `bpdump` prints, and the reverse (`bpdump encode`).
//!
//! The description follows the wire (RFC 9171 §4): `primary` holds the primary block's fields
//! (§4.3.1), `blocks` the canonical blocks in wire order (§4.3.2) with typed fields for the
//! previous node (§4.4.1), bundle age (§4.4.2) and hop count (§4.4.3) blocks, and
//! `status_report` the administrative record (§6.1.1) when the admin-record flag is set.
//! Extension block data is given as `data_hex` so that a description can be encoded again.

use anyhow::{anyhow, bail, Context, Result};
use bpv7::{
    AdminRecord, BlockFlags, BlockType, Bundle, BundleBuilder, BundleFlags, CanonicalBlock,
    CrcType, CreationTimestamp, DtnTime, Eid, FragmentInfo, HopCount, PrimaryBlock, ReasonCode,
    StatusAssertion, StatusReport,
};
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Names of the set bundle processing control flags (RFC 9171 §4.2.3).
fn bundle_flag_names(f: BundleFlags) -> Vec<&'static str> {
    [
        (BundleFlags::IS_FRAGMENT, "is_fragment"),
        (BundleFlags::ADMIN_RECORD, "admin_record"),
        (BundleFlags::MUST_NOT_FRAGMENT, "must_not_fragment"),
        (BundleFlags::APP_ACK_REQUESTED, "app_ack_requested"),
        (BundleFlags::STATUS_TIME_REQUESTED, "status_time_requested"),
        (BundleFlags::REPORT_RECEPTION, "report_reception"),
        (BundleFlags::REPORT_FORWARDING, "report_forwarding"),
        (BundleFlags::REPORT_DELIVERY, "report_delivery"),
        (BundleFlags::REPORT_DELETION, "report_deletion"),
    ]
    .into_iter()
    .filter(|(bit, _)| f.contains(*bit))
    .map(|(_, name)| name)
    .collect()
}

/// Names of the set block processing control flags (RFC 9171 §4.2.4).
fn block_flag_names(f: BlockFlags) -> Vec<&'static str> {
    [
        (BlockFlags::REPLICATE, "replicate_in_every_fragment"),
        (
            BlockFlags::REPORT_IF_UNPROCESSABLE,
            "report_if_unprocessable",
        ),
        (
            BlockFlags::DELETE_BUNDLE_IF_UNPROCESSABLE,
            "delete_bundle_if_unprocessable",
        ),
        (
            BlockFlags::DISCARD_IF_UNPROCESSABLE,
            "discard_if_unprocessable",
        ),
    ]
    .into_iter()
    .filter(|(bit, _)| f.contains(*bit))
    .map(|(_, name)| name)
    .collect()
}

fn block_type_name(t: BlockType) -> &'static str {
    match t {
        BlockType::Payload => "payload",
        BlockType::PreviousNode => "previous_node",
        BlockType::BundleAge => "bundle_age",
        BlockType::HopCount => "hop_count",
        BlockType::Bib => "bib",
        BlockType::Bcb => "bcb",
        BlockType::Unknown(_) => "unknown",
    }
}

/// Describe a decoded bundle as JSON; with `include_payload`, the payload is added as
/// `payload_hex`, so that [`bundle_from_json`] gives the same bundle back.
pub fn describe(bundle: &Bundle, include_payload: bool) -> Value {
    let p = &bundle.primary;
    let mut primary = json!({
        "version": 7,
        "flags": p.flags.bits(),
        "flags_decoded": bundle_flag_names(p.flags),
        "crc_type": p.crc_type.code(),
        "destination": p.destination.to_string(),
        "source": p.source.to_string(),
        "report_to": p.report_to.to_string(),
        "creation_time": p.creation.time.0,
        "sequence_number": p.creation.sequence,
        "lifetime": p.lifetime_ms,
    });
    if let Some(frag) = p.fragment {
        primary["fragment_offset"] = json!(frag.offset);
        primary["total_adu_length"] = json!(frag.total_adu_length);
    }
    let blocks: Vec<Value> = bundle.blocks.iter().map(describe_block).collect();
    let mut out = json!({
        "primary": primary,
        "blocks": blocks,
        "payload_len": bundle.payload().len(),
    });
    if include_payload {
        out["payload_hex"] = json!(hex::encode(bundle.payload()));
    }
    if bundle.is_admin_record() {
        out["status_report"] = match bundle.admin_record() {
            Ok(AdminRecord::StatusReport(r)) => describe_report(&r),
            Ok(AdminRecord::Unknown { record_type, .. }) => {
                json!({ "unknown_record_type": record_type })
            }
            Err(e) => json!({ "error": e.to_string() }),
        };
    }
    out
}

fn describe_block(b: &CanonicalBlock) -> Value {
    let mut v = json!({
        "type": b.block_type.code(),
        "type_name": block_type_name(b.block_type),
        "number": b.number,
        "flags": b.flags.bits(),
        "flags_decoded": block_flag_names(b.flags),
        "crc_type": b.crc_type.code(),
        "data_len": b.data.len(),
    });
    match b.block_type {
        BlockType::Payload => {}
        BlockType::PreviousNode => match b.as_previous_node() {
            Some(Ok(eid)) => v["previous_node"] = json!(eid.to_string()),
            Some(Err(e)) => v["error"] = json!(e.to_string()),
            None => {}
        },
        BlockType::BundleAge => match b.as_bundle_age() {
            Some(Ok(age)) => v["age"] = json!(age),
            Some(Err(e)) => v["error"] = json!(e.to_string()),
            None => {}
        },
        BlockType::HopCount => match b.as_hop_count() {
            Some(Ok(hc)) => {
                v["hop_limit"] = json!(hc.limit);
                v["hop_count"] = json!(hc.count);
            }
            Some(Err(e)) => v["error"] = json!(e.to_string()),
            None => {}
        },
        _ => v["data_hex"] = json!(hex::encode(&b.data)),
    }
    v
}

fn describe_assertion(a: &StatusAssertion) -> Value {
    match (a.asserted, a.time) {
        (true, Some(t)) => json!({ "asserted": true, "time": t.0 }),
        (asserted, _) => json!({ "asserted": asserted }),
    }
}

fn describe_report(r: &StatusReport) -> Value {
    let mut v = json!({
        "received": describe_assertion(&r.received),
        "forwarded": describe_assertion(&r.forwarded),
        "delivered": describe_assertion(&r.delivered),
        "deleted": describe_assertion(&r.deleted),
        "reason_code": r.reason.code(),
        "source": r.source.to_string(),
        "creation_time": r.timestamp.time.0,
        "sequence_number": r.timestamp.sequence,
    });
    if let Some((offset, len)) = r.fragment {
        v["fragment_offset"] = json!(offset);
        v["fragment_length"] = json!(len);
    }
    v
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a Value> {
    obj.get(name)
        .ok_or_else(|| anyhow!("missing field `{name}`"))
}

fn uint(obj: &Map<String, Value>, name: &str) -> Result<u64> {
    field(obj, name)?
        .as_u64()
        .ok_or_else(|| anyhow!("field `{name}` must be an unsigned integer"))
}

fn opt_uint(obj: &Map<String, Value>, name: &str) -> Result<Option<u64>> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => uint(obj, name).map(Some),
    }
}

fn eid(obj: &Map<String, Value>, name: &str) -> Result<Eid> {
    let text = field(obj, name)?
        .as_str()
        .ok_or_else(|| anyhow!("field `{name}` must be an EID string"))?;
    text.parse()
        .map_err(|e| anyhow!("field `{name}`: invalid EID {text:?}: {e}"))
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| anyhow!("{what} must be a JSON object"))
}

fn hex_field(obj: &Map<String, Value>, name: &str) -> Result<Option<Vec<u8>>> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => hex::decode(s)
            .map(Some)
            .with_context(|| format!("field `{name}` is not valid hex")),
        Some(_) => bail!("field `{name}` must be a hex string"),
    }
}

fn assertion(obj: &Map<String, Value>, name: &str) -> Result<StatusAssertion> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(StatusAssertion::default()),
        Some(v) => {
            let a = object(v, name)?;
            let asserted = a.get("asserted").and_then(Value::as_bool).unwrap_or(false);
            Ok(StatusAssertion {
                asserted,
                time: opt_uint(a, "time")?.map(DtnTime),
            })
        }
    }
}

fn report_from_json(v: &Value) -> Result<StatusReport> {
    let r = object(v, "status_report")?;
    let fragment = match (
        opt_uint(r, "fragment_offset")?,
        opt_uint(r, "fragment_length")?,
    ) {
        (Some(o), Some(l)) => Some((o, l)),
        (None, None) => None,
        _ => bail!("status_report: fragment_offset and fragment_length go together"),
    };
    Ok(StatusReport {
        received: assertion(r, "received")?,
        forwarded: assertion(r, "forwarded")?,
        delivered: assertion(r, "delivered")?,
        deleted: assertion(r, "deleted")?,
        reason: ReasonCode::from_code(opt_uint(r, "reason_code")?.unwrap_or(0)),
        source: eid(r, "source")?,
        timestamp: CreationTimestamp::new(uint(r, "creation_time")?, uint(r, "sequence_number")?),
        fragment,
    })
}

fn crc(obj: &Map<String, Value>) -> Result<CrcType> {
    let code = opt_uint(obj, "crc_type")?.unwrap_or(2);
    CrcType::from_code(code).map_err(|e| anyhow!("crc_type {code}: {e}"))
}

/// Build a bundle from a JSON description (the output of [`describe`], plus `payload_hex`).
///
/// Block numbers, flags and CRC types are taken as given. The payload comes from
/// `payload_hex`, or from `status_report` when the admin-record flag is set; extension blocks
/// from each block's typed fields, or `data_hex` for other types. The result is validated
/// against RFC 9171 §4 before it is returned.
pub fn bundle_from_json(v: &Value) -> Result<Bundle> {
    let root = object(v, "the description")?;
    let p = object(field(root, "primary")?, "primary")?;
    if let Some(version) = opt_uint(p, "version")? {
        if version != 7 {
            bail!("primary.version must be 7, not {version}");
        }
    }
    let flags = BundleFlags(opt_uint(p, "flags")?.unwrap_or(0));
    let fragment = match (
        opt_uint(p, "fragment_offset")?,
        opt_uint(p, "total_adu_length")?,
    ) {
        (Some(offset), Some(total_adu_length)) => Some(FragmentInfo {
            offset,
            total_adu_length,
        }),
        (None, None) => None,
        _ => bail!("primary: fragment_offset and total_adu_length go together"),
    };
    let source = eid(p, "source")?;
    let primary = PrimaryBlock {
        flags,
        crc_type: crc(p)?,
        destination: eid(p, "destination")?,
        report_to: if p.contains_key("report_to") {
            eid(p, "report_to")?
        } else {
            source.clone()
        },
        source,
        creation: CreationTimestamp::new(uint(p, "creation_time")?, uint(p, "sequence_number")?),
        lifetime_ms: uint(p, "lifetime")?,
        fragment,
    };

    let payload: Bytes = match (hex_field(root, "payload_hex")?, root.get("status_report")) {
        (Some(payload), _) => payload.into(),
        (None, Some(report)) if flags.contains(BundleFlags::ADMIN_RECORD) => {
            AdminRecord::StatusReport(report_from_json(report)?)
                .encode()
                .into()
        }
        (None, _) => Bytes::new(),
    };

    let empty = Vec::new();
    let described = match root.get("blocks") {
        Some(b) => b
            .as_array()
            .ok_or_else(|| anyhow!("`blocks` must be a list"))?,
        None => &empty,
    };
    let mut blocks = Vec::with_capacity(described.len() + 1);
    for (i, b) in described.iter().enumerate() {
        blocks.push(block_from_json(b, &payload).with_context(|| format!("blocks[{i}]"))?);
    }
    if !blocks.iter().any(|b| b.block_type == BlockType::Payload) {
        blocks.push(CanonicalBlock::new(
            BlockType::Payload,
            1,
            BlockFlags::empty(),
            CrcType::Crc32c,
            payload,
        ));
    }
    let bundle = Bundle { primary, blocks };
    bundle
        .validate()
        .map_err(|e| anyhow!("invalid bundle: {e}"))?;
    Ok(bundle)
}

fn block_from_json(v: &Value, payload: &Bytes) -> Result<CanonicalBlock> {
    let b = object(v, "a block")?;
    let block_type = BlockType::from_code(uint(b, "type")?);
    let number = uint(b, "number")?;
    let crc_type = crc(b)?;
    let mut block = match block_type {
        BlockType::Payload => CanonicalBlock::new(
            block_type,
            number,
            BlockFlags::empty(),
            crc_type,
            payload.clone(),
        ),
        BlockType::PreviousNode if b.contains_key("previous_node") => {
            CanonicalBlock::previous_node(number, &eid(b, "previous_node")?, crc_type)
        }
        BlockType::BundleAge if b.contains_key("age") => {
            CanonicalBlock::bundle_age(number, uint(b, "age")?, crc_type)
        }
        BlockType::HopCount if b.contains_key("hop_limit") => CanonicalBlock::hop_count(
            number,
            HopCount {
                limit: uint(b, "hop_limit")?,
                count: opt_uint(b, "hop_count")?.unwrap_or(0),
            },
            crc_type,
        ),
        _ => {
            let data = hex_field(b, "data_hex")?
                .ok_or_else(|| anyhow!("block type {} needs `data_hex`", block_type.code()))?;
            CanonicalBlock::new(
                block_type,
                number,
                BlockFlags::empty(),
                crc_type,
                data.into(),
            )
        }
    };
    block.flags = BlockFlags(opt_uint(b, "flags")?.unwrap_or(0));
    Ok(block)
}

/// The built-in example bundle of `bpdump --example`: a bundle as a relay would forward it,
/// with previous node, bundle age and hop count blocks and a short text payload.
pub fn example_bundle() -> Bundle {
    BundleBuilder::new(
        Eid::ipn(1, 1),
        Eid::ipn(3, 7),
        CreationTimestamp::new(784_111_200_000, 42),
        3_600_000,
    )
    .flags(BundleFlags::REPORT_DELIVERY)
    .report_to(Eid::ipn(1, 0))
    .previous_node(&Eid::ipn(2, 0))
    .bundle_age(1_250)
    .hop_count(16, 1)
    .payload(&b"hello from the ground station"[..])
    .build()
    .expect("the built-in example is a valid bundle")
}
