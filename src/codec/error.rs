//! Decode and validation errors, each mapped to the Result-Code and Failed-AVP of RFC 6733 §7.

use std::fmt;

use bytes::Bytes;

use super::ResultCode;
use super::avp::Avp;
use super::header::Header;

/// Why a message could not be accepted. Carries the header when it could be read, so that an answer can be
/// built ([`DecodeError::result_code`], [`DecodeError::failed_avp`], [`DecodeError::error_message`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The message header, when the first 20 octets could be read.
    pub header: Option<Header>,
    /// What went wrong.
    pub kind: DecodeErrorKind,
}

/// The kinds of [`DecodeError`], one per answer the peer must get.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Fewer octets than a header: nothing can be answered (5015).
    Truncated {
        /// Octets available.
        len: usize,
    },
    /// Version other than 1 (5011, RFC 6733 §7.1.5).
    UnsupportedVersion(u8),
    /// Message Length not a multiple of 4, below 20 or unequal to the frame (5015).
    InvalidMessageLength {
        /// The Message Length field.
        declared: usize,
        /// Octets in the frame.
        actual: usize,
    },
    /// Message Length above the configured limit (5015); the frame is not read.
    TooLarge {
        /// The Message Length field.
        length: usize,
        /// The configured limit.
        max: usize,
    },
    /// Header flags in an invalid combination, e.g. E on a request (3008, RFC 6733 §3).
    InvalidHeaderBits(u8),
    /// AVP length below its header or beyond its container (5014, RFC 6733 §7.1.5). `avp` is the offending
    /// header with an empty payload, as the Failed-AVP rule allows.
    InvalidAvpLength {
        /// The offending AVP (header only).
        avp: Avp,
        /// Offset of the AVP in its container.
        offset: usize,
        /// Its AVP Length field.
        length: usize,
    },
    /// A known AVP whose payload has the wrong size for its format (5014).
    InvalidAvpDataLength {
        /// The offending AVP.
        avp: Avp,
        /// What the format allows.
        reason: &'static str,
    },
    /// An AVP whose value is not valid for its format (5004).
    InvalidAvpValue {
        /// The offending AVP.
        avp: Avp,
        /// Why.
        reason: String,
    },
    /// An AVP whose flags contradict its definition (3009).
    InvalidAvpBits {
        /// The offending AVP.
        avp: Avp,
    },
    /// An unknown AVP with the M bit set (5001).
    AvpUnsupported {
        /// The offending AVP.
        avp: Avp,
    },
    /// A required AVP is absent (5005); `avp` is an example with a zero-filled payload.
    MissingAvp {
        /// Name of the missing AVP.
        name: String,
        /// An example AVP with the missing code and vendor.
        avp: Avp,
    },
    /// An AVP occurs more often than the grammar allows (5009); `avp` is the first one too many.
    TooManyOccurrences {
        /// The first instance beyond the maximum.
        avp: Avp,
    },
    /// An AVP the grammar does not allow here (5008).
    AvpNotAllowed {
        /// The offending AVP.
        avp: Avp,
    },
    /// Grouped AVPs nested beyond the configured depth (5004 on the outermost AVP).
    NestingTooDeep {
        /// The AVP at which the limit was reached (payload dropped).
        avp: Avp,
        /// The limit.
        max_depth: usize,
    },
    /// A command the dictionary does not know for this application (3001).
    CommandUnsupported,
    /// An application the receiver does not support (3007).
    ApplicationUnsupported,
}

impl DecodeError {
    pub(crate) fn new(kind: DecodeErrorKind) -> DecodeError {
        DecodeError { header: None, kind }
    }

    pub(crate) fn with_header(mut self, header: Header) -> DecodeError {
        self.header.get_or_insert(header);
        self
    }

    /// The Result-Code the answer must carry (RFC 6733 §7.1).
    pub fn result_code(&self) -> ResultCode {
        use DecodeErrorKind::*;
        match self.kind {
            Truncated { .. } | InvalidMessageLength { .. } | TooLarge { .. } => ResultCode::INVALID_MESSAGE_LENGTH,
            UnsupportedVersion(_) => ResultCode::UNSUPPORTED_VERSION,
            InvalidHeaderBits(_) => ResultCode::INVALID_HDR_BITS,
            InvalidAvpLength { .. } | InvalidAvpDataLength { .. } => ResultCode::INVALID_AVP_LENGTH,
            InvalidAvpValue { .. } | NestingTooDeep { .. } => ResultCode::INVALID_AVP_VALUE,
            InvalidAvpBits { .. } => ResultCode::INVALID_AVP_BITS,
            AvpUnsupported { .. } => ResultCode::AVP_UNSUPPORTED,
            MissingAvp { .. } => ResultCode::MISSING_AVP,
            TooManyOccurrences { .. } => ResultCode::AVP_OCCURS_TOO_MANY_TIMES,
            AvpNotAllowed { .. } => ResultCode::AVP_NOT_ALLOWED,
            CommandUnsupported => ResultCode::COMMAND_UNSUPPORTED,
            ApplicationUnsupported => ResultCode::APPLICATION_UNSUPPORTED,
        }
    }

    /// The AVP to put in Failed-AVP (RFC 6733 §7.5), wrapped in its Grouped parents when it was nested.
    pub fn failed_avp(&self) -> Option<&Avp> {
        use DecodeErrorKind::*;
        match &self.kind {
            InvalidAvpLength { avp, .. }
            | InvalidAvpDataLength { avp, .. }
            | InvalidAvpValue { avp, .. }
            | InvalidAvpBits { avp }
            | AvpUnsupported { avp }
            | MissingAvp { avp, .. }
            | TooManyOccurrences { avp }
            | AvpNotAllowed { avp }
            | NestingTooDeep { avp, .. } => Some(avp),
            _ => None,
        }
    }

    /// Whether the message can be answered at all: there must be a header, and it must be a request.
    pub fn answerable(&self) -> bool {
        self.header.is_some_and(|h| h.flags.is_request())
    }

    /// A short text for Error-Message.
    pub fn error_message(&self) -> String {
        self.to_string()
    }

    /// Wraps the Failed-AVP in the Grouped AVP it was found in (RFC 6733 §7.5: the Failed-AVP may contain the
    /// Grouped AVP, which in turn contains the single offending AVP).
    pub(crate) fn nested_in(mut self, parent: &Avp) -> DecodeError {
        use DecodeErrorKind::*;
        let wrap = |avp: &mut Avp| {
            let inner = std::mem::replace(avp, Avp::mandatory(0, Bytes::new()));
            *avp = Avp::new(parent.code(), parent.flags(), parent.vendor_id(), super::avp::encode_avps(&[inner]));
        };
        match &mut self.kind {
            InvalidAvpLength { avp, .. }
            | InvalidAvpDataLength { avp, .. }
            | InvalidAvpValue { avp, .. }
            | InvalidAvpBits { avp }
            | AvpUnsupported { avp }
            | MissingAvp { avp, .. }
            | TooManyOccurrences { avp }
            | AvpNotAllowed { avp } => wrap(avp),
            // The nesting error already names the outermost AVP with its payload dropped.
            _ => {}
        }
        self
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeErrorKind::*;
        match &self.kind {
            Truncated { len } => write!(f, "message truncated: {len} octets, a header needs 20"),
            UnsupportedVersion(v) => write!(f, "unsupported Diameter version {v}"),
            InvalidMessageLength { declared, actual } => {
                write!(
                    f,
                    "invalid message length {declared} (frame has {actual} octets; must be a multiple of 4, at least 20)"
                )
            }
            TooLarge { length, max } => write!(f, "message length {length} exceeds the limit of {max} octets"),
            InvalidHeaderBits(b) => write!(f, "invalid command flags {b:#04x}"),
            InvalidAvpLength { avp, offset, length } => {
                write!(f, "AVP {} at offset {offset} has invalid length {length}", avp.code())
            }
            InvalidAvpDataLength { avp, reason } => {
                write!(f, "AVP {} has invalid length: {reason}", avp.code())
            }
            InvalidAvpValue { avp, reason } => {
                write!(f, "AVP {} has an invalid value: {reason}", avp.code())
            }
            InvalidAvpBits { avp } => {
                write!(f, "AVP {} has flags {:?} its definition forbids", avp.code(), avp.flags())
            }
            AvpUnsupported { avp } => {
                write!(f, "unsupported AVP {} (vendor {}) with the M bit", avp.code(), avp.vendor())
            }
            MissingAvp { name, .. } => write!(f, "missing AVP {name}"),
            TooManyOccurrences { avp } => write!(f, "AVP {} occurs too many times", avp.code()),
            AvpNotAllowed { avp } => write!(f, "AVP {} is not allowed here", avp.code()),
            NestingTooDeep { avp, max_depth } => {
                write!(f, "grouped AVPs nested deeper than {max_depth} levels under AVP {}", avp.code())
            }
            CommandUnsupported => write!(f, "command not supported"),
            ApplicationUnsupported => write!(f, "application not supported"),
        }?;
        if let Some(h) = &self.header {
            write!(f, " ({}, command {}, application {})", h.short_name(), h.code.0, h.application_id.0)?;
        }
        Ok(())
    }
}

impl std::error::Error for DecodeError {}

/// Why a payload does not fit the format it was read as ([`super::value`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// The payload size does not fit the format (answer 5014).
    #[error("{0}")]
    Length(&'static str),
    /// The payload is not a valid value of the format (answer 5004).
    #[error("{0}")]
    Invalid(String),
}

impl ValueError {
    /// The [`DecodeError`] for `avp` failing this way.
    pub fn for_avp(self, avp: &Avp) -> DecodeError {
        let avp = avp.clone();
        DecodeError::new(match self {
            ValueError::Length(reason) => DecodeErrorKind::InvalidAvpDataLength { avp, reason },
            ValueError::Invalid(reason) => DecodeErrorKind::InvalidAvpValue { avp, reason },
        })
    }
}
