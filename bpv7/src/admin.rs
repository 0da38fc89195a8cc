//! Administrative records (RFC 9171 §6.1) and bundle status reports (§6.1.1) with their
//! reason codes (§6.1.1, registry of §9.5).

use crate::cbor::{self, Reader};
use crate::eid::Eid;
use crate::types::{CreationTimestamp, DtnTime};
use crate::{Error, Result};
use bytes::Bytes;

/// Administrative record type code of a bundle status report (§6.1).
pub const ADMIN_STATUS_REPORT: u64 = 1;

/// Status report reason codes (RFC 9171 §6.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum ReasonCode {
    /// 0: no additional information.
    NoInformation,
    /// 1: lifetime expired.
    LifetimeExpired,
    /// 2: forwarded over unidirectional link.
    ForwardedOverUnidirectionalLink,
    /// 3: transmission canceled.
    TransmissionCanceled,
    /// 4: depleted storage.
    DepletedStorage,
    /// 5: destination endpoint ID unavailable.
    DestinationUnavailable,
    /// 6: no known route to destination from here.
    NoKnownRoute,
    /// 7: no timely contact with next node on route.
    NoTimelyContact,
    /// 8: block unintelligible.
    BlockUnintelligible,
    /// 9: hop limit exceeded.
    HopLimitExceeded,
    /// 10: traffic pared (e.g. status reports).
    TrafficPared,
    /// 11: block unsupported.
    BlockUnsupported,
    /// Any other code.
    Unknown(u64),
}

impl ReasonCode {
    /// From the wire code.
    pub fn from_code(v: u64) -> Self {
        use ReasonCode::*;
        match v {
            0 => NoInformation,
            1 => LifetimeExpired,
            2 => ForwardedOverUnidirectionalLink,
            3 => TransmissionCanceled,
            4 => DepletedStorage,
            5 => DestinationUnavailable,
            6 => NoKnownRoute,
            7 => NoTimelyContact,
            8 => BlockUnintelligible,
            9 => HopLimitExceeded,
            10 => TrafficPared,
            11 => BlockUnsupported,
            o => Unknown(o),
        }
    }

    /// The wire code.
    pub fn code(self) -> u64 {
        use ReasonCode::*;
        match self {
            NoInformation => 0,
            LifetimeExpired => 1,
            ForwardedOverUnidirectionalLink => 2,
            TransmissionCanceled => 3,
            DepletedStorage => 4,
            DestinationUnavailable => 5,
            NoKnownRoute => 6,
            NoTimelyContact => 7,
            BlockUnintelligible => 8,
            HopLimitExceeded => 9,
            TrafficPared => 10,
            BlockUnsupported => 11,
            Unknown(o) => o,
        }
    }
}

/// One status assertion of a report (§6.1.1): `[asserted]` or `[asserted, time]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct StatusAssertion {
    /// Whether the status is asserted.
    pub asserted: bool,
    /// Time of the event; RFC 9171 §6.1.1 puts it only on asserted items when the status time
    /// was requested (encoded as given).
    pub time: Option<DtnTime>,
}

impl StatusAssertion {
    /// Asserted, with an optional time.
    pub fn yes(time: Option<DtnTime>) -> Self {
        StatusAssertion {
            asserted: true,
            time,
        }
    }
}

/// A bundle status report (§6.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct StatusReport {
    /// Reporting node received the bundle.
    pub received: StatusAssertion,
    /// Reporting node forwarded the bundle.
    pub forwarded: StatusAssertion,
    /// Reporting node delivered the bundle.
    pub delivered: StatusAssertion,
    /// Reporting node deleted the bundle.
    pub deleted: StatusAssertion,
    /// Reason code.
    pub reason: ReasonCode,
    /// Source of the subject bundle.
    pub source: Eid,
    /// Creation timestamp of the subject bundle.
    pub timestamp: CreationTimestamp,
    /// `(fragment offset, payload length)` when the subject bundle is a fragment.
    pub fragment: Option<(u64, u64)>,
}

impl StatusReport {
    /// A report about `id` with nothing asserted.
    pub fn about(id: &crate::BundleId, reason: ReasonCode) -> Self {
        StatusReport {
            received: StatusAssertion::default(),
            forwarded: StatusAssertion::default(),
            delivered: StatusAssertion::default(),
            deleted: StatusAssertion::default(),
            reason,
            source: id.source.clone(),
            timestamp: id.timestamp,
            fragment: id.fragment,
        }
    }

    /// The subject bundle's identity.
    pub fn subject(&self) -> crate::BundleId {
        crate::BundleId {
            source: self.source.clone(),
            timestamp: self.timestamp,
            fragment: self.fragment,
        }
    }
}

/// An administrative record (§6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum AdminRecord {
    /// Type 1: bundle status report.
    StatusReport(StatusReport),
    /// Another record type, kept as the raw CBOR of its content.
    Unknown {
        /// Record type code.
        record_type: u64,
        /// Raw CBOR of the record content.
        #[cfg_attr(feature = "serde", serde(skip))]
        content: Bytes,
    },
}

fn write_assertion(out: &mut Vec<u8>, a: &StatusAssertion) {
    cbor::write_array(out, if a.time.is_some() { 2 } else { 1 });
    out.push(if a.asserted { 0xf5 } else { 0xf4 });
    if let Some(t) = a.time {
        cbor::write_uint(out, t.0);
    }
}

fn read_assertion(r: &mut Reader<'_>) -> Result<StatusAssertion> {
    let bad = Error::MalformedAdminRecord("status assertion");
    let n = r.array().map_err(|_| bad.clone())?;
    let asserted = r.boolean().map_err(|_| bad.clone())?;
    match n {
        1 => Ok(StatusAssertion {
            asserted,
            time: None,
        }),
        // §6.1.1: the time should be present only when the status is asserted; a time on a
        // non-asserted item is tolerated (and kept, so re-encoding preserves the bytes).
        2 => Ok(StatusAssertion {
            asserted,
            time: Some(DtnTime(r.uint()?)),
        }),
        _ => Err(bad),
    }
}

impl AdminRecord {
    /// Encode canonically (§6.1: `[record type, content]`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        cbor::write_array(&mut out, 2);
        match self {
            AdminRecord::StatusReport(s) => {
                cbor::write_uint(&mut out, ADMIN_STATUS_REPORT);
                cbor::write_array(&mut out, if s.fragment.is_some() { 6 } else { 4 });
                cbor::write_array(&mut out, 4);
                for a in [&s.received, &s.forwarded, &s.delivered, &s.deleted] {
                    write_assertion(&mut out, a);
                }
                cbor::write_uint(&mut out, s.reason.code());
                s.source.encode_to(&mut out);
                cbor::write_array(&mut out, 2);
                cbor::write_uint(&mut out, s.timestamp.time.0);
                cbor::write_uint(&mut out, s.timestamp.sequence);
                if let Some((o, l)) = s.fragment {
                    cbor::write_uint(&mut out, o);
                    cbor::write_uint(&mut out, l);
                }
            }
            AdminRecord::Unknown {
                record_type,
                content,
            } => {
                cbor::write_uint(&mut out, *record_type);
                out.extend_from_slice(content);
            }
        }
        out
    }

    /// Decode an administrative record from a payload (§6.1).
    pub fn decode(payload: &Bytes) -> Result<AdminRecord> {
        let mut r = Reader::new(payload);
        if r.array()? != 2 {
            return Err(Error::MalformedAdminRecord(
                "record must be [type, content]",
            ));
        }
        let record_type = r.uint()?;
        let rec = if record_type == ADMIN_STATUS_REPORT {
            let n = r.array()?;
            if n != 4 && n != 6 {
                return Err(Error::MalformedAdminRecord(
                    "status report must have 4 or 6 elements",
                ));
            }
            if r.array()? != 4 {
                return Err(Error::MalformedAdminRecord(
                    "status information must have 4 items",
                ));
            }
            let received = read_assertion(&mut r)?;
            let forwarded = read_assertion(&mut r)?;
            let delivered = read_assertion(&mut r)?;
            let deleted = read_assertion(&mut r)?;
            let reason = ReasonCode::from_code(r.uint()?);
            let source = Eid::decode(&mut r)?;
            if r.array()? != 2 {
                return Err(Error::MalformedAdminRecord("creation timestamp"));
            }
            let timestamp = CreationTimestamp {
                time: DtnTime(r.uint()?),
                sequence: r.uint()?,
            };
            let fragment = if n == 6 {
                Some((r.uint()?, r.uint()?))
            } else {
                None
            };
            AdminRecord::StatusReport(StatusReport {
                received,
                forwarded,
                delivered,
                deleted,
                reason,
                source,
                timestamp,
                fragment,
            })
        } else {
            let s = r.pos();
            r.skip()?;
            AdminRecord::Unknown {
                record_type,
                content: payload.slice(s..r.pos()),
            }
        };
        if r.remaining() != 0 {
            return Err(Error::MalformedAdminRecord("trailing bytes"));
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_report_round_trip() {
        let mut s = StatusReport::about(
            &crate::BundleId {
                source: Eid::ipn(1, 1),
                timestamp: CreationTimestamp::new(5, 6),
                fragment: Some((10, 20)),
            },
            ReasonCode::Unknown(200),
        );
        s.deleted = StatusAssertion::yes(Some(DtnTime(99)));
        s.received = StatusAssertion::yes(None);
        let rec = AdminRecord::StatusReport(s);
        let enc = Bytes::from(rec.encode());
        assert_eq!(AdminRecord::decode(&enc).unwrap(), rec);
        let unk = AdminRecord::Unknown {
            record_type: 9,
            content: Bytes::from_static(&[0x82, 1, 2]),
        };
        assert_eq!(
            AdminRecord::decode(&Bytes::from(unk.encode())).unwrap(),
            unk
        );
    }
}
