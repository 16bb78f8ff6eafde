//! AVPs (RFC 6733 §4.1): header, payload, padding; encoding and bounded iteration over a container.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, DecodeErrorKind};
use super::header::VendorId;
use super::{AVP_HEADER_LEN, AVP_VENDOR_HEADER_LEN, MAX_LENGTH};

/// The AVP flags octet (RFC 6733 §4.1). Reserved bits are kept as received so that an AVP is re-encoded byte
/// for byte; the V bit always agrees with [`Avp::vendor_id`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AvpFlags(pub u8);

impl AvpFlags {
    /// V: a Vendor-ID field is present.
    pub const VENDOR: u8 = 0x80;
    /// M: the receiver must support the AVP or reject the message (RFC 6733 §4.1).
    pub const MANDATORY: u8 = 0x40;
    /// P: reserved for end-to-end security (RFC 6733 §4.1; deprecated).
    pub const PROTECTED: u8 = 0x20;

    /// The V bit.
    pub fn is_vendor(self) -> bool {
        self.0 & Self::VENDOR != 0
    }
    /// The M bit.
    pub fn is_mandatory(self) -> bool {
        self.0 & Self::MANDATORY != 0
    }
    /// The P bit.
    pub fn is_protected(self) -> bool {
        self.0 & Self::PROTECTED != 0
    }
}

impl fmt::Debug for AvpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.0)?;
        for (bit, name) in [(Self::VENDOR, 'V'), (Self::MANDATORY, 'M'), (Self::PROTECTED, 'P')] {
            if self.0 & bit != 0 {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

/// One AVP: code, flags, optional Vendor-ID and the raw payload (without padding).
///
/// The payload borrows from the frame it was decoded from. Typed views are in [`super::value`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Avp {
    code: u32,
    flags: AvpFlags,
    vendor_id: Option<VendorId>,
    data: Bytes,
}

impl Avp {
    /// An AVP from its parts. The V bit of `flags` is set or cleared to match `vendor_id`.
    pub fn new(code: u32, flags: AvpFlags, vendor_id: Option<VendorId>, data: Bytes) -> Avp {
        let flags = match vendor_id {
            Some(_) => AvpFlags(flags.0 | AvpFlags::VENDOR),
            None => AvpFlags(flags.0 & !AvpFlags::VENDOR),
        };
        Avp { code, flags, vendor_id, data }
    }

    /// A base-protocol AVP with the M bit set, the usual case.
    pub fn mandatory(code: u32, data: impl Into<Bytes>) -> Avp {
        Avp::new(code, AvpFlags(AvpFlags::MANDATORY), None, data.into())
    }

    /// This AVP with a Vendor-ID (sets the V bit).
    pub fn with_vendor(self, vendor: VendorId) -> Avp {
        Avp::new(self.code, self.flags, Some(vendor), self.data)
    }

    /// This AVP with the M bit set or cleared.
    pub fn with_mandatory(mut self, on: bool) -> Avp {
        self.flags = if on {
            AvpFlags(self.flags.0 | AvpFlags::MANDATORY)
        } else {
            AvpFlags(self.flags.0 & !AvpFlags::MANDATORY)
        };
        self
    }

    /// AVP Code.
    pub fn code(&self) -> u32 {
        self.code
    }

    /// AVP Flags.
    pub fn flags(&self) -> AvpFlags {
        self.flags
    }

    /// Vendor-ID, present when the V bit is set.
    pub fn vendor_id(&self) -> Option<VendorId> {
        self.vendor_id
    }

    /// The vendor as a number, 0 for none (the key dictionaries use).
    pub fn vendor(&self) -> u32 {
        self.vendor_id.map_or(0, |v| v.0)
    }

    /// The payload, without padding.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Whether this AVP has this code and vendor (0 for none).
    pub fn is(&self, code: u32, vendor: u32) -> bool {
        self.code == code && self.vendor() == vendor
    }

    /// Octets of the AVP header.
    pub fn header_len(&self) -> usize {
        if self.vendor_id.is_some() { AVP_VENDOR_HEADER_LEN } else { AVP_HEADER_LEN }
    }

    /// The AVP Length field: header and payload, without padding.
    pub fn length(&self) -> usize {
        self.header_len() + self.data.len()
    }

    /// Octets this AVP takes on the wire, padding included.
    pub fn padded_len(&self) -> usize {
        pad4(self.length())
    }

    /// Appends the AVP with its padding.
    ///
    /// # Panics
    ///
    /// If the AVP is longer than the 24-bit length field allows (16 MiB), which no decoded AVP can be; the
    /// message encoder checks the total first and returns an error instead.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        let len = self.length();
        assert!(len <= MAX_LENGTH, "AVP {} is {len} octets, above the 24-bit limit", self.code);
        buf.reserve(pad4(len));
        buf.put_u32(self.code);
        buf.put_u32(u32::from(self.flags.0) << 24 | len as u32);
        if let Some(v) = self.vendor_id {
            buf.put_u32(v.0);
        }
        buf.put_slice(&self.data);
        buf.put_bytes(0, pad4(len) - len);
    }

    /// A Grouped AVP (RFC 6733 §4.4) whose payload is `children`, each padded.
    pub fn grouped(code: u32, children: &[Avp]) -> Avp {
        Avp::mandatory(code, encode_avps(children))
    }

    /// Iterates over the AVPs inside this AVP's payload, as for a Grouped AVP. The iterator is lazy and bounded:
    /// it yields an error and stops at the first malformed child.
    pub fn grouped_iter(&self) -> AvpIter {
        AvpIter::new(self.data.clone(), Container::Grouped)
    }

    /// Like [`Avp::grouped_iter`], with the small fault type (the validator's hot path).
    pub(crate) fn grouped_raw(&self) -> impl Iterator<Item = Result<Avp, AvpFault>> + '_ {
        let mut pos = 0;
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || pos >= self.data.len() {
                return None;
            }
            Some(match parse_avp(&self.data, pos, Container::Grouped) {
                Ok((avp, next)) => {
                    pos = next;
                    Ok(avp)
                }
                Err(f) => {
                    failed = true;
                    Err(f)
                }
            })
        })
    }

    /// The children of this AVP decoded as a Grouped AVP (one level, no recursion).
    pub fn grouped_avps(&self) -> Result<Vec<Avp>, DecodeError> {
        self.grouped_iter().collect()
    }
}

impl fmt::Debug for Avp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Avp");
        d.field("code", &self.code).field("flags", &self.flags);
        if let Some(v) = self.vendor_id {
            d.field("vendor", &v.0);
        }
        d.field("data", &HexBytes(&self.data)).finish()
    }
}

struct HexBytes<'a>(&'a [u8]);

impl fmt::Debug for HexBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().take(64) {
            write!(f, "{b:02x}")?;
        }
        if self.0.len() > 64 {
            write!(f, "…(+{})", self.0.len() - 64)?;
        }
        Ok(())
    }
}

/// Encodes AVPs one after the other, each padded.
pub(crate) fn encode_avps(avps: &[Avp]) -> Bytes {
    let mut buf = BytesMut::with_capacity(avps.iter().map(Avp::padded_len).sum());
    for avp in avps {
        avp.encode_into(&mut buf);
    }
    buf.freeze()
}

/// Rounds up to a multiple of four (AVP padding, RFC 6733 §4.1).
pub(crate) fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Where AVPs are read from: padding rules differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Container {
    /// The message body: its length is a multiple of four, so every AVP's padding is present.
    Message,
    /// A Grouped payload: some peers omit the last child's padding, which is accepted.
    Grouped,
}

/// A bounded iterator over consecutive AVPs in a buffer. Yields at most one error, then ends.
#[derive(Clone, Debug)]
pub struct AvpIter {
    buf: Bytes,
    pos: usize,
    container: Container,
    failed: bool,
}

impl AvpIter {
    pub(crate) fn new(buf: Bytes, container: Container) -> AvpIter {
        AvpIter { buf, pos: 0, container, failed: false }
    }

    fn next_avp(&mut self) -> Result<Avp, DecodeError> {
        let (avp, next) = parse_avp(&self.buf, self.pos, self.container).map_err(AvpFault::into_error)?;
        self.pos = next;
        Ok(avp)
    }
}

/// A malformed AVP header, kept small so that the hot path moves little; turned into a [`DecodeError`] only on
/// failure.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AvpFault {
    code: u32,
    flags: AvpFlags,
    vendor_id: Option<VendorId>,
    offset: usize,
    length: usize,
}

impl AvpFault {
    pub(crate) fn into_error(self) -> DecodeError {
        invalid_length(self.code, self.flags, self.vendor_id, self.offset, self.length)
    }
}

/// Parses the AVP at `pos` of `buf`: returns it and the position after its padding.
#[inline]
pub(crate) fn parse_avp(buf: &Bytes, pos: usize, container: Container) -> Result<(Avp, usize), AvpFault> {
    let rest = &buf[pos..];
    let fault = |code, flags, vendor_id, length| AvpFault { code, flags, vendor_id, offset: pos, length };
    let Some(head) = rest.first_chunk::<AVP_HEADER_LEN>() else {
        // RFC 6733 §7.1.5: pad an incomplete header with zeros up to the minimum header length.
        let mut hdr = [0u8; AVP_HEADER_LEN];
        hdr[..rest.len()].copy_from_slice(rest);
        let code = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        return Err(fault(code, AvpFlags(hdr[4] & !AvpFlags::VENDOR), None, rest.len()));
    };
    let code = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = AvpFlags(head[4]);
    let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let (header_len, vendor_id) = if flags.is_vendor() {
        let Some(v) = rest.get(8..12) else {
            return Err(fault(code, flags, Some(VendorId(0)), length));
        };
        (AVP_VENDOR_HEADER_LEN, Some(VendorId(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))))
    } else {
        (AVP_HEADER_LEN, None)
    };
    if length < header_len || length > rest.len() {
        return Err(fault(code, flags, vendor_id, length));
    }
    let padded = pad4(length);
    let next = if padded <= rest.len() {
        pos + padded
    } else if container == Container::Grouped {
        buf.len()
    } else {
        return Err(fault(code, flags, vendor_id, length));
    };
    let data = buf.slice(pos + header_len..pos + length);
    Ok((Avp { code, flags, vendor_id, data }, next))
}

fn invalid_length(
    code: u32,
    flags: AvpFlags,
    vendor_id: Option<VendorId>,
    offset: usize,
    length: usize,
) -> DecodeError {
    DecodeError::new(DecodeErrorKind::InvalidAvpLength {
        avp: Avp::new(code, flags, vendor_id, Bytes::new()),
        offset,
        length,
    })
}

impl Iterator for AvpIter {
    type Item = Result<Avp, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let item = self.next_avp();
        self.failed = item.is_err();
        Some(item)
    }
}
