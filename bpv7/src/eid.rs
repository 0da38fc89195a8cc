//! Endpoint identifiers: RFC 9171 §4.2.5.1 (`dtn` and `ipn` URI schemes and their CBOR form)
//! and RFC 9758 (the three-element `ipn` form with an allocator identifier).
//!
//! Divergence note (RFC 9758): RFC 9758 reinterprets a two-element `ipn` EID whose node number is
//! ≥ 2^32 as a fully-qualified node number (allocator in the high 32 bits). This crate follows
//! RFC 9171: the two elements are plain u64 node and service numbers, and the two- and
//! three-element encodings are kept distinct, so forwarding never rewrites the primary block.

use crate::cbor::{self, Reader, MT_ARRAY, MT_TEXT, MT_UINT};
use crate::{Error, Result};
use core::fmt;
use core::str::FromStr;

/// URI scheme code of `dtn` (RFC 9171 §4.2.5.1).
pub const SCHEME_DTN: u64 = 1;
/// URI scheme code of `ipn` (RFC 9171 §4.2.5.1).
pub const SCHEME_IPN: u64 = 2;
/// Upper bound on the size of an EID's text or CBOR encoding accepted by this crate.
pub const MAX_EID_LEN: usize = 1024;

/// An endpoint ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Eid {
    /// `dtn:none`, the null endpoint (CBOR `[1, 0]`).
    Null,
    /// `dtn://node/demux` (CBOR `[1, "//node/demux"]`). `demux` may be empty.
    Dtn {
        /// Node name (no `/`, non-empty, printable ASCII).
        node: String,
        /// Demultiplexing token (may contain `/`, may be empty).
        demux: String,
    },
    /// `ipn:node.service`, two-element form (CBOR `[2, [node, service]]`).
    Ipn {
        /// Node number.
        node: u64,
        /// Service number.
        service: u64,
    },
    /// `ipn:allocator.node.service`, RFC 9758 three-element form (CBOR `[2, [a, n, s]]`).
    Ipn3 {
        /// Allocator identifier.
        allocator: u64,
        /// Node number.
        node: u64,
        /// Service number.
        service: u64,
    },
    /// An EID of an unknown scheme, kept as its scheme code and the raw CBOR of its SSP.
    Unknown {
        /// URI scheme code.
        scheme: u64,
        /// The exact CBOR encoding of the scheme-specific part.
        ssp: Vec<u8>,
    },
}

fn valid_node_name(s: &str) -> bool {
    // RFC 9171 §4.2.5.1.1: node-name = 1*VCHAR, and it cannot contain the "/" delimiter.
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'/')
}

fn valid_demux(s: &str) -> bool {
    // RFC 9171 §4.2.5.1.1: demux = *VCHAR.
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

impl Eid {
    /// `dtn://node/demux`, validating the node name and demux (RFC 9171 §4.2.5.1.1).
    pub fn dtn(node: &str, demux: &str) -> Result<Eid> {
        if !valid_node_name(node) {
            return Err(Error::InvalidEid(
                "dtn node name must be 1*VCHAR without '/'",
            ));
        }
        if !valid_demux(demux) {
            return Err(Error::InvalidEid("dtn demux must be VCHARs"));
        }
        Ok(Eid::Dtn {
            node: node.into(),
            demux: demux.into(),
        })
    }

    /// Two-element `ipn:node.service`.
    pub fn ipn(node: u64, service: u64) -> Eid {
        Eid::Ipn { node, service }
    }

    /// True for `dtn:none`.
    pub fn is_null(&self) -> bool {
        matches!(self, Eid::Null)
    }

    /// The node ID of this endpoint (RFC 9171 §4.2.5.2): `dtn://node/` or `ipn:N.0`.
    pub fn node_id(&self) -> Eid {
        match self {
            Eid::Dtn { node, .. } => Eid::Dtn {
                node: node.clone(),
                demux: String::new(),
            },
            Eid::Ipn { node, .. } => Eid::Ipn {
                node: *node,
                service: 0,
            },
            Eid::Ipn3 {
                allocator, node, ..
            } => Eid::Ipn3 {
                allocator: *allocator,
                node: *node,
                service: 0,
            },
            other => other.clone(),
        }
    }

    /// Append the CBOR form (RFC 9171 §4.2.5.1).
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        match self {
            Eid::Null => out.extend_from_slice(&[0x82, 0x01, 0x00]),
            Eid::Dtn { node, demux } => {
                cbor::write_array(out, 2);
                cbor::write_uint(out, SCHEME_DTN);
                let len = 2 + node.len() + 1 + demux.len();
                cbor::write_head(out, MT_TEXT, len as u64);
                out.extend_from_slice(b"//");
                out.extend_from_slice(node.as_bytes());
                out.push(b'/');
                out.extend_from_slice(demux.as_bytes());
            }
            Eid::Ipn { node, service } => {
                cbor::write_array(out, 2);
                cbor::write_uint(out, SCHEME_IPN);
                cbor::write_array(out, 2);
                cbor::write_uint(out, *node);
                cbor::write_uint(out, *service);
            }
            Eid::Ipn3 {
                allocator,
                node,
                service,
            } => {
                cbor::write_array(out, 2);
                cbor::write_uint(out, SCHEME_IPN);
                cbor::write_array(out, 3);
                cbor::write_uint(out, *allocator);
                cbor::write_uint(out, *node);
                cbor::write_uint(out, *service);
            }
            Eid::Unknown { scheme, ssp } => {
                cbor::write_array(out, 2);
                cbor::write_uint(out, *scheme);
                out.extend_from_slice(ssp);
            }
        }
    }

    /// The CBOR form as a new vector.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_to(&mut v);
        v
    }

    /// Decode one EID from CBOR bytes, requiring that nothing follows.
    pub fn from_cbor(bytes: &[u8]) -> Result<Eid> {
        let mut r = Reader::new(bytes);
        let e = Eid::decode(&mut r)?;
        if r.remaining() != 0 {
            return Err(Error::InvalidEid("trailing bytes after EID"));
        }
        Ok(e)
    }

    /// Decode an EID at the reader's position (RFC 9171 §4.2.5.1).
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Eid> {
        let n = r.array()?;
        if n != 2 {
            return Err(Error::InvalidEid("EID must be a 2-element array"));
        }
        let scheme = r.uint()?;
        match scheme {
            SCHEME_DTN => {
                let at = r.pos();
                match r.peek()? >> 5 {
                    MT_UINT => {
                        if r.uint()? != 0 {
                            return Err(Error::InvalidEid("dtn SSP integer must be 0 (dtn:none)"));
                        }
                        Ok(Eid::Null)
                    }
                    MT_TEXT => {
                        let s = r.text()?;
                        if s.len() > MAX_EID_LEN {
                            return Err(Error::InvalidEid("dtn EID too long"));
                        }
                        parse_dtn_ssp(s).ok_or(Error::InvalidEid("malformed dtn SSP"))
                    }
                    _ => Err(Error::UnexpectedType {
                        offset: at,
                        expected: "dtn SSP",
                    }),
                }
            }
            SCHEME_IPN => {
                let at = r.pos();
                if r.peek()? >> 5 != MT_ARRAY {
                    return Err(Error::UnexpectedType {
                        offset: at,
                        expected: "ipn SSP array",
                    });
                }
                match r.array()? {
                    2 => Ok(Eid::Ipn {
                        node: r.uint()?,
                        service: r.uint()?,
                    }),
                    3 => Ok(Eid::Ipn3 {
                        allocator: r.uint()?,
                        node: r.uint()?,
                        service: r.uint()?,
                    }),
                    _ => Err(Error::InvalidEid("ipn SSP must have 2 or 3 elements")),
                }
            }
            0 => Err(Error::InvalidEid("URI scheme code 0 is reserved")),
            _ => {
                let start = r.pos();
                r.skip()?;
                let ssp = &r.buf()[start..r.pos()];
                if ssp.len() > MAX_EID_LEN {
                    return Err(Error::InvalidEid("EID too long"));
                }
                Ok(Eid::Unknown {
                    scheme,
                    ssp: ssp.to_vec(),
                })
            }
        }
    }
}

fn parse_dtn_ssp(s: &str) -> Option<Eid> {
    if s == "none" {
        // RFC 9171 §4.2.5.1.1: dtn:none is encoded as the integer 0, never as text; accepting
        // the text form would make re-encoding change the bytes.
        return None;
    }
    let rest = s.strip_prefix("//")?;
    let slash = rest.find('/')?;
    let (node, demux) = (&rest[..slash], &rest[slash + 1..]);
    if !valid_node_name(node) || !valid_demux(demux) {
        return None;
    }
    Some(Eid::Dtn {
        node: node.into(),
        demux: demux.into(),
    })
}

impl fmt::Display for Eid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Eid::Null => f.write_str("dtn:none"),
            Eid::Dtn { node, demux } => write!(f, "dtn://{node}/{demux}"),
            Eid::Ipn { node, service } => write!(f, "ipn:{node}.{service}"),
            Eid::Ipn3 {
                allocator,
                node,
                service,
            } => write!(f, "ipn:{allocator}.{node}.{service}"),
            Eid::Unknown { scheme, ssp } => {
                write!(f, "unknown-{scheme}:")?;
                for b in ssp {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

fn parse_u64(s: &str) -> Result<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(Error::InvalidEid("ipn number must be a decimal integer"));
    }
    s.parse()
        .map_err(|_| Error::InvalidEid("ipn number out of range"))
}

impl FromStr for Eid {
    type Err = Error;
    /// Parse `dtn:none`, `dtn://node/demux`, `ipn:N.S`, `ipn:A.N.S`, or `unknown-K:HEX`.
    fn from_str(s: &str) -> Result<Eid> {
        if s.len() > MAX_EID_LEN {
            return Err(Error::InvalidEid("EID too long"));
        }
        if let Some(ssp) = s.strip_prefix("dtn:") {
            if ssp == "none" {
                return Ok(Eid::Null);
            }
            return parse_dtn_ssp(ssp).ok_or(Error::InvalidEid("malformed dtn EID"));
        }
        if let Some(ssp) = s.strip_prefix("ipn:") {
            let parts: Vec<&str> = ssp.split('.').collect();
            return match parts.as_slice() {
                [n, s] => Ok(Eid::Ipn {
                    node: parse_u64(n)?,
                    service: parse_u64(s)?,
                }),
                [a, n, s] => Ok(Eid::Ipn3 {
                    allocator: parse_u64(a)?,
                    node: parse_u64(n)?,
                    service: parse_u64(s)?,
                }),
                _ => Err(Error::InvalidEid("ipn EID must be ipn:N.S or ipn:A.N.S")),
            };
        }
        if let Some(rest) = s.strip_prefix("unknown-") {
            let (k, hex) = rest
                .split_once(':')
                .ok_or(Error::InvalidEid("malformed EID"))?;
            let scheme = parse_u64(k)?;
            if scheme <= SCHEME_IPN || hex.len() % 2 != 0 {
                return Err(Error::InvalidEid("malformed unknown-scheme EID"));
            }
            let mut ssp = Vec::with_capacity(hex.len() / 2);
            for i in (0..hex.len()).step_by(2) {
                let b = u8::from_str_radix(hex.get(i..i + 2).unwrap_or("x"), 16)
                    .map_err(|_| Error::InvalidEid("malformed hex"))?;
                ssp.push(b);
            }
            let mut r = Reader::new(&ssp);
            r.skip()?;
            if r.remaining() != 0 {
                return Err(Error::InvalidEid("SSP must be one CBOR item"));
            }
            return Ok(Eid::Unknown { scheme, ssp });
        }
        Err(Error::InvalidEid("unknown URI scheme"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        for s in [
            "dtn:none",
            "dtn://node/demux",
            "dtn://relay/",
            "dtn://n/a/b",
            "ipn:1.2",
            "ipn:977000.1.2",
            "ipn:18446744073709551615.0",
        ] {
            let e: Eid = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
            assert_eq!(Eid::from_cbor(&e.to_cbor()).unwrap(), e);
        }
        for bad in [
            "dtn:",
            "dtn://",
            "dtn:///x",
            "ipn:1",
            "ipn:1.2.3.4",
            "ipn:01.2",
            "ipn:a.b",
            "http://x",
            "dtn://a b/c",
        ] {
            assert!(bad.parse::<Eid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cbor_forms() {
        assert_eq!(Eid::Null.to_cbor(), [0x82, 1, 0]);
        assert_eq!(Eid::ipn(2, 1).to_cbor(), [0x82, 2, 0x82, 2, 1]);
        let e3 = Eid::Ipn3 {
            allocator: 977000,
            node: 1,
            service: 2,
        };
        assert_eq!(
            e3.to_cbor(),
            hex::decode("8202831a000ee86801 02".replace(' ', "")).unwrap()
        );
        assert!(Eid::from_cbor(&[0x82, 2, 0x81, 1]).is_err());
        let unk = Eid::from_cbor(&[0x82, 9, 0x63, b'a', b'b', b'c']).unwrap();
        assert_eq!(
            unk,
            Eid::Unknown {
                scheme: 9,
                ssp: vec![0x63, b'a', b'b', b'c']
            }
        );
        assert_eq!(unk.to_string().parse::<Eid>().unwrap(), unk);
    }
}
