//! Minimal deterministic CBOR (RFC 8949) reader and writer for the bundle format.
//!
//! RFC 9171 §4.1 requires bundles to be CBOR with the deterministic (shortest-form) encoding of
//! RFC 8949 §4.2.1, except that the outer bundle array is indefinite-length. The bundle codec needs
//! (a) the exact byte span of each block, because CRCs (§4.2.1) are verified over the *received*
//! bytes and forwarding copies unchanged blocks as slices; (b) a check that every head is in
//! shortest form; (c) zero-copy byte strings; and (d) hard bounds on nesting depth and on lengths,
//! checked against the bytes actually present before anything is allocated. minicbor exposes
//! positions but not the canonical-form check on heads, so this small reader over `&[u8]` is
//! written by hand (DESIGN.md allows this where the protocol needs the control).

use crate::Error;

/// Maximum nesting depth accepted when skipping or validating nested CBOR items.
pub const MAX_DEPTH: usize = 16;

/// CBOR major types.
pub(crate) const MT_UINT: u8 = 0;
pub(crate) const MT_NINT: u8 = 1;
pub(crate) const MT_BYTES: u8 = 2;
pub(crate) const MT_TEXT: u8 = 3;
pub(crate) const MT_ARRAY: u8 = 4;
pub(crate) const MT_MAP: u8 = 5;
pub(crate) const MT_TAG: u8 = 6;
pub(crate) const MT_SIMPLE: u8 = 7;

/// A decoded CBOR head: major type and argument (`None` for indefinite length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub major: u8,
    /// Argument value; `None` means indefinite length (additional info 31).
    pub arg: Option<u64>,
    /// Additional-information bits (low 5 bits of the initial byte).
    pub info: u8,
}

/// A cursor over a byte slice that decodes deterministic CBOR.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Current byte offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The whole underlying buffer.
    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// Peek the next byte.
    pub fn peek(&self) -> Result<u8, Error> {
        self.buf.get(self.pos).copied().ok_or(Error::Truncated)
    }

    /// Read one head, enforcing the shortest-form rule (RFC 8949 §4.2.1, RFC 9171 §4.1).
    pub fn head(&mut self) -> Result<Head, Error> {
        let ib = self.peek()?;
        let major = ib >> 5;
        let info = ib & 0x1f;
        let (arg, len) = match info {
            0..=23 => (Some(info as u64), 1),
            24..=27 => {
                let n = 1usize << (info - 24);
                let bytes = self
                    .buf
                    .get(self.pos + 1..self.pos + 1 + n)
                    .ok_or(Error::Truncated)?;
                let mut v = 0u64;
                for b in bytes {
                    v = (v << 8) | *b as u64;
                }
                // §4.1: deterministic encoding — the argument must use the shortest form.
                let min_ok = match info {
                    24 => v >= 24,
                    25 => v > 0xff,
                    26 => v > 0xffff,
                    _ => v > 0xffff_ffff,
                };
                if !min_ok && major != MT_SIMPLE {
                    return Err(Error::NonCanonicalEncoding { offset: self.pos });
                }
                (Some(v), 1 + n)
            }
            31 => {
                if !matches!(major, MT_BYTES | MT_TEXT | MT_ARRAY | MT_MAP | MT_SIMPLE) {
                    return Err(Error::MalformedCbor { offset: self.pos });
                }
                (None, 1)
            }
            _ => return Err(Error::MalformedCbor { offset: self.pos }),
        };
        self.pos += len;
        Ok(Head { major, arg, info })
    }

    /// Read an unsigned integer.
    pub fn uint(&mut self) -> Result<u64, Error> {
        // Fast path: an unsigned integer below 24 is its own one-byte head.
        if let Some(&ib) = self.buf.get(self.pos) {
            if ib < 24 {
                self.pos += 1;
                return Ok(u64::from(ib));
            }
        }
        let at = self.pos;
        let h = self.head()?;
        match (h.major, h.arg) {
            (MT_UINT, Some(v)) => Ok(v),
            _ => Err(Error::UnexpectedType {
                offset: at,
                expected: "unsigned integer",
            }),
        }
    }

    /// Read a definite-length array head and return its element count, checked against the
    /// bytes left (each element needs at least one byte).
    pub fn array(&mut self) -> Result<u64, Error> {
        let at = self.pos;
        let h = self.head()?;
        match (h.major, h.arg) {
            (MT_ARRAY, Some(n)) => {
                if n > self.remaining() as u64 {
                    return Err(Error::LengthExceedsInput { offset: at });
                }
                Ok(n)
            }
            (MT_ARRAY, None) => Err(Error::IndefiniteLength { offset: at }),
            _ => Err(Error::UnexpectedType {
                offset: at,
                expected: "array",
            }),
        }
    }

    /// Read a definite-length byte string and return its content's byte range in the buffer.
    pub fn bytes_span(&mut self) -> Result<core::ops::Range<usize>, Error> {
        self.string_span(MT_BYTES, "byte string")
    }

    /// Read a definite-length text string and return it (UTF-8 checked).
    pub fn text(&mut self) -> Result<&'a str, Error> {
        let at = self.pos;
        let r = self.string_span(MT_TEXT, "text string")?;
        core::str::from_utf8(&self.buf[r]).map_err(|_| Error::MalformedCbor { offset: at })
    }

    fn string_span(
        &mut self,
        major: u8,
        expected: &'static str,
    ) -> Result<core::ops::Range<usize>, Error> {
        let at = self.pos;
        let h = self.head()?;
        if h.major != major {
            return Err(Error::UnexpectedType {
                offset: at,
                expected,
            });
        }
        let n = h.arg.ok_or(Error::IndefiniteLength { offset: at })?;
        if n > self.remaining() as u64 {
            return Err(Error::LengthExceedsInput { offset: at });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(start..self.pos)
    }

    /// Read a boolean (simple values 20/21).
    pub fn boolean(&mut self) -> Result<bool, Error> {
        let at = self.pos;
        match self.peek()? {
            0xf4 => {
                self.pos += 1;
                Ok(false)
            }
            0xf5 => {
                self.pos += 1;
                Ok(true)
            }
            _ => Err(Error::UnexpectedType {
                offset: at,
                expected: "boolean",
            }),
        }
    }

    /// Skip one complete, well-formed, deterministic item (any type), with bounded depth.
    pub fn skip(&mut self) -> Result<(), Error> {
        self.skip_depth(0)
    }

    fn skip_depth(&mut self, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(Error::NestingTooDeep { offset: self.pos });
        }
        let at = self.pos;
        let h = self.head()?;
        match (h.major, h.arg) {
            (MT_UINT | MT_NINT, Some(_)) => Ok(()),
            (MT_BYTES | MT_TEXT, Some(n)) => {
                if n > self.remaining() as u64 {
                    return Err(Error::LengthExceedsInput { offset: at });
                }
                if h.major == MT_TEXT
                    && core::str::from_utf8(&self.buf[self.pos..self.pos + n as usize]).is_err()
                {
                    return Err(Error::MalformedCbor { offset: at });
                }
                self.pos += n as usize;
                Ok(())
            }
            (MT_ARRAY, Some(n)) => {
                if n > self.remaining() as u64 {
                    return Err(Error::LengthExceedsInput { offset: at });
                }
                for _ in 0..n {
                    self.skip_depth(depth + 1)?;
                }
                Ok(())
            }
            (MT_MAP, Some(n)) => {
                if n > (self.remaining() / 2) as u64 {
                    return Err(Error::LengthExceedsInput { offset: at });
                }
                for _ in 0..n * 2 {
                    self.skip_depth(depth + 1)?;
                }
                Ok(())
            }
            (MT_TAG, Some(_)) => self.skip_depth(depth + 1),
            (MT_SIMPLE, Some(_)) => {
                // Simple values and floats: heads already consumed the argument bytes.
                // Simple values 24..=31 in one-byte form are not well-formed (RFC 8949 §3.3).
                if h.info == 24 && h.arg.unwrap_or(0) < 32 {
                    return Err(Error::MalformedCbor { offset: at });
                }
                Ok(())
            }
            // Indefinite-length items are not deterministic encoding (RFC 8949 §4.2.1).
            (_, None) => Err(Error::IndefiniteLength { offset: at }),
            _ => Err(Error::MalformedCbor { offset: at }),
        }
    }
}

/// Append a CBOR head in shortest form.
pub(crate) fn write_head(out: &mut Vec<u8>, major: u8, v: u64) {
    let m = major << 5;
    if v < 24 {
        out.push(m | v as u8);
    } else if v <= 0xff {
        out.push(m | 24);
        out.push(v as u8);
    } else if v <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Append an unsigned integer.
pub(crate) fn write_uint(out: &mut Vec<u8>, v: u64) {
    write_head(out, MT_UINT, v)
}

/// Append a byte string.
pub(crate) fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_head(out, MT_BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

/// Append an array head.
pub(crate) fn write_array(out: &mut Vec<u8>, n: u64) {
    write_head(out, MT_ARRAY, n)
}

/// Encoded size of a head with argument `v`.
pub(crate) fn head_len(v: u64) -> usize {
    if v < 24 {
        1
    } else if v <= 0xff {
        2
    } else if v <= 0xffff {
        3
    } else if v <= 0xffff_ffff {
        5
    } else {
        9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_shortest() {
        for v in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_uint(&mut out, v);
            assert_eq!(out.len(), head_len(v));
            let mut r = Reader::new(&out);
            assert_eq!(r.uint().unwrap(), v);
            assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn non_shortest_rejected() {
        let mut r = Reader::new(&[0x18, 0x07]);
        assert!(matches!(r.uint(), Err(Error::NonCanonicalEncoding { .. })));
    }

    #[test]
    fn oversize_lengths_rejected_before_allocation() {
        let mut r = Reader::new(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(r.array(), Err(Error::LengthExceedsInput { .. })));
        let mut r = Reader::new(&[0x5a, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            r.bytes_span(),
            Err(Error::LengthExceedsInput { .. })
        ));
    }

    #[test]
    fn deep_nesting_bounded() {
        let v = vec![0x81u8; 100];
        let mut r = Reader::new(&v);
        assert!(matches!(r.skip(), Err(Error::NestingTooDeep { .. })));
    }
}
