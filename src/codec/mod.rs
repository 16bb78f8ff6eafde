//! Diameter wire codec (RFC 6733 §3, §4): bytes to [`Message`] and back.
//!
//! Sans-IO and dictionary-free. Decoding a message parses the header and the top-level AVP headers only; each
//! [`Avp`] keeps its payload as a slice of the frame's [`Bytes`](bytes::Bytes) (no copy). Grouped payloads are parsed on demand
//! ([`Avp::grouped`]), so no input can drive the decoder into deep recursion, and unknown AVPs, commands and
//! applications decode like any other and are re-encoded byte for byte. Typed views of payloads are in
//! [`value`]; validation against a dictionary (M-bit, formats, grammars) is in [`crate::dict`].
//!
//! Every length is checked against its container before it is used, allocation grows with the input and never
//! with a length field, and every failure is a [`DecodeError`] that maps to the Result-Code RFC 6733 §7.1 asks for,
//! with the ids needed to answer it.
//!
//! ```
//! use charging_ra::codec::{AppId, Avp, CommandCode, Message, code};
//!
//! let ccr = Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)
//!     .with(Avp::utf8(code::SESSION_ID, "as1.ims.example.net;1;1"))
//!     .with(Avp::u32(code::CC_REQUEST_NUMBER, 0));
//! let bytes = ccr.encode().unwrap();
//! let back = Message::decode(bytes.clone()).unwrap();
//! assert_eq!(back.session_id(), Some("as1.ims.example.net;1;1"));
//! assert_eq!(back.encode().unwrap(), bytes, "re-encoded byte for byte");
//!
//! // An AVP whose length runs past the message: DIAMETER_INVALID_AVP_LENGTH (RFC 6733 §7.1.5).
//! let mut bad = bytes.to_vec();
//! bad[20 + 7] = 200;
//! let err = Message::decode(bad.into()).unwrap_err();
//! assert_eq!(err.result_code().0, 5014);
//! ```

mod avp;
mod error;
mod header;
mod message;
pub mod value;

pub(crate) use avp::AvpFault;
pub use avp::{Avp, AvpFlags, AvpIter};
pub use error::{DecodeError, DecodeErrorKind, ValueError};
pub use header::{AppId, CommandCode, CommandFlags, EndToEndId, Header, HopByHopId, VendorId};
pub use message::{DecodeLimits, Message, MessageTooLong, peek_frame_length};

use std::fmt;

/// RFC 6733 §3: the only Diameter version.
pub const VERSION: u8 = 1;
/// Octets in the Diameter header (RFC 6733 §3).
pub const HEADER_LEN: usize = 20;
/// Octets in an AVP header without a Vendor-ID (RFC 6733 §4.1).
pub const AVP_HEADER_LEN: usize = 8;
/// Octets in an AVP header with a Vendor-ID.
pub const AVP_VENDOR_HEADER_LEN: usize = 12;
/// The largest value of the 24-bit message and AVP length fields.
pub const MAX_LENGTH: usize = (1 << 24) - 1;

/// A Diameter Result-Code (RFC 6733 §7.1), or an Experimental-Result-Code read the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResultCode(pub u32);

impl ResultCode {
    /// 2001: the request was successfully completed.
    pub const SUCCESS: Self = Self(2001);
    /// 2002: limited success (RFC 6733 §7.1.2).
    pub const LIMITED_SUCCESS: Self = Self(2002);
    /// 3001: the command code is not supported by the receiver.
    pub const COMMAND_UNSUPPORTED: Self = Self(3001);
    /// 3002: the message could not be delivered (no route, no peer).
    pub const UNABLE_TO_DELIVER: Self = Self(3002);
    /// 3003: the Destination-Realm is not served.
    pub const REALM_NOT_SERVED: Self = Self(3003);
    /// 3004: the receiver is too busy; try another peer.
    pub const TOO_BUSY: Self = Self(3004);
    /// 3005: the request loops (our identity is in Route-Record).
    pub const LOOP_DETECTED: Self = Self(3005);
    /// 3006: a redirect agent says where to send the request.
    pub const REDIRECT_INDICATION: Self = Self(3006);
    /// 3007: the application is not supported.
    pub const APPLICATION_UNSUPPORTED: Self = Self(3007);
    /// 3008: the header flags are an invalid combination for the command.
    pub const INVALID_HDR_BITS: Self = Self(3008);
    /// 3009: AVP flag bits are unrecognized or inconsistent with the AVP's definition.
    pub const INVALID_AVP_BITS: Self = Self(3009);
    /// 3010: a CER came from an unknown peer.
    pub const UNKNOWN_PEER: Self = Self(3010);
    /// 4001: authentication rejected.
    pub const AUTHENTICATION_REJECTED: Self = Self(4001);
    /// 4010: end user service denied (RFC 4006 §9.1).
    pub const END_USER_SERVICE_DENIED: Self = Self(4010);
    /// 4011: credit control not applicable (RFC 4006 §9.1).
    pub const CREDIT_CONTROL_NOT_APPLICABLE: Self = Self(4011);
    /// 4012: credit limit reached (RFC 4006 §9.1).
    pub const CREDIT_LIMIT_REACHED: Self = Self(4012);
    /// 5001: an AVP with the M bit set is not supported (Failed-AVP names it).
    pub const AVP_UNSUPPORTED: Self = Self(5001);
    /// 5002: the Session-Id is unknown.
    pub const UNKNOWN_SESSION_ID: Self = Self(5002);
    /// 5003: authorization rejected.
    pub const AUTHORIZATION_REJECTED: Self = Self(5003);
    /// 5004: an AVP has an invalid value (Failed-AVP names it).
    pub const INVALID_AVP_VALUE: Self = Self(5004);
    /// 5005: a required AVP is missing (Failed-AVP carries an example).
    pub const MISSING_AVP: Self = Self(5005);
    /// 5006: resources exceeded.
    pub const RESOURCES_EXCEEDED: Self = Self(5006);
    /// 5007: AVPs that contradict each other.
    pub const CONTRADICTING_AVPS: Self = Self(5007);
    /// 5008: an AVP that must not be present is present.
    pub const AVP_NOT_ALLOWED: Self = Self(5008);
    /// 5009: an AVP occurs more often than the grammar allows.
    pub const AVP_OCCURS_TOO_MANY_TIMES: Self = Self(5009);
    /// 5010: no common application in CER/CEA.
    pub const NO_COMMON_APPLICATION: Self = Self(5010);
    /// 5011: unsupported Diameter version.
    pub const UNSUPPORTED_VERSION: Self = Self(5011);
    /// 5012: unable to comply.
    pub const UNABLE_TO_COMPLY: Self = Self(5012);
    /// 5013: a reserved bit in the header is set (RFC 3588; RFC 6733 uses 3008).
    pub const INVALID_BIT_IN_HEADER: Self = Self(5013);
    /// 5014: an AVP has an invalid length.
    pub const INVALID_AVP_LENGTH: Self = Self(5014);
    /// 5015: the message length is invalid.
    pub const INVALID_MESSAGE_LENGTH: Self = Self(5015);
    /// 5016: an AVP's bits are invalid (RFC 3588; RFC 6733 uses 3009).
    pub const INVALID_AVP_BIT_COMBO: Self = Self(5016);
    /// 5017: no common security mechanism.
    pub const NO_COMMON_SECURITY: Self = Self(5017);
    /// 5030: the user is unknown to the credit-control server (RFC 4006 §9.1).
    pub const USER_UNKNOWN: Self = Self(5030);
    /// 5031: rating failed (RFC 4006 §9.1).
    pub const RATING_FAILED: Self = Self(5031);

    /// The class of the code: 1 informational … 5 permanent failure (RFC 6733 §7.1).
    pub fn class(self) -> u32 {
        self.0 / 1000
    }

    /// 2xxx.
    pub fn is_success(self) -> bool {
        self.class() == 2
    }

    /// 3xxx: protocol errors, answered with the E bit set (RFC 6733 §7.1.3).
    pub fn is_protocol_error(self) -> bool {
        self.class() == 3
    }

    /// 4xxx: transient failures.
    pub fn is_transient(self) -> bool {
        self.class() == 4
    }

    /// 5xxx: permanent failures.
    pub fn is_permanent(self) -> bool {
        self.class() == 5
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Well-known AVP codes of RFC 6733 and RFC 4006 used by the stack itself. Everything else is looked up by
/// name in the [`crate::dict::Dictionary`].
pub mod code {
    #![allow(missing_docs)]
    pub const USER_NAME: u32 = 1;
    pub const CLASS: u32 = 25;
    pub const SESSION_TIMEOUT: u32 = 27;
    pub const PROXY_STATE: u32 = 33;
    pub const ACCOUNTING_SESSION_ID: u32 = 44;
    pub const ACCT_MULTI_SESSION_ID: u32 = 50;
    pub const EVENT_TIMESTAMP: u32 = 55;
    pub const ACCT_INTERIM_INTERVAL: u32 = 85;
    pub const HOST_IP_ADDRESS: u32 = 257;
    pub const AUTH_APPLICATION_ID: u32 = 258;
    pub const ACCT_APPLICATION_ID: u32 = 259;
    pub const VENDOR_SPECIFIC_APPLICATION_ID: u32 = 260;
    pub const REDIRECT_HOST_USAGE: u32 = 261;
    pub const REDIRECT_MAX_CACHE_TIME: u32 = 262;
    pub const SESSION_ID: u32 = 263;
    pub const ORIGIN_HOST: u32 = 264;
    pub const SUPPORTED_VENDOR_ID: u32 = 265;
    pub const VENDOR_ID: u32 = 266;
    pub const FIRMWARE_REVISION: u32 = 267;
    pub const RESULT_CODE: u32 = 268;
    pub const PRODUCT_NAME: u32 = 269;
    pub const SESSION_BINDING: u32 = 270;
    pub const SESSION_SERVER_FAILOVER: u32 = 271;
    pub const MULTI_ROUND_TIME_OUT: u32 = 272;
    pub const DISCONNECT_CAUSE: u32 = 273;
    pub const AUTH_REQUEST_TYPE: u32 = 274;
    pub const AUTH_GRACE_PERIOD: u32 = 276;
    pub const AUTH_SESSION_STATE: u32 = 277;
    pub const ORIGIN_STATE_ID: u32 = 278;
    pub const FAILED_AVP: u32 = 279;
    pub const PROXY_HOST: u32 = 280;
    pub const ERROR_MESSAGE: u32 = 281;
    pub const ROUTE_RECORD: u32 = 282;
    pub const DESTINATION_REALM: u32 = 283;
    pub const PROXY_INFO: u32 = 284;
    pub const RE_AUTH_REQUEST_TYPE: u32 = 285;
    pub const ACCOUNTING_SUB_SESSION_ID: u32 = 287;
    pub const AUTHORIZATION_LIFETIME: u32 = 291;
    pub const REDIRECT_HOST: u32 = 292;
    pub const DESTINATION_HOST: u32 = 293;
    pub const ERROR_REPORTING_HOST: u32 = 294;
    pub const TERMINATION_CAUSE: u32 = 295;
    pub const ORIGIN_REALM: u32 = 296;
    pub const EXPERIMENTAL_RESULT: u32 = 297;
    pub const EXPERIMENTAL_RESULT_CODE: u32 = 298;
    pub const INBAND_SECURITY_ID: u32 = 299;
    pub const ACCOUNTING_RECORD_TYPE: u32 = 480;
    pub const ACCOUNTING_REALTIME_REQUIRED: u32 = 483;
    pub const ACCOUNTING_RECORD_NUMBER: u32 = 485;
    // RFC 4006 §8
    pub const CC_REQUEST_NUMBER: u32 = 415;
    pub const CC_REQUEST_TYPE: u32 = 416;
    pub const CC_SESSION_FAILOVER: u32 = 418;
    pub const CC_TIME: u32 = 420;
    pub const CC_TOTAL_OCTETS: u32 = 421;
    pub const CC_INPUT_OCTETS: u32 = 412;
    pub const CC_OUTPUT_OCTETS: u32 = 414;
    pub const CC_SERVICE_SPECIFIC_UNITS: u32 = 417;
    pub const CREDIT_CONTROL_FAILURE_HANDLING: u32 = 427;
    pub const DIRECT_DEBITING_FAILURE_HANDLING: u32 = 428;
    pub const FINAL_UNIT_INDICATION: u32 = 430;
    pub const GRANTED_SERVICE_UNIT: u32 = 431;
    pub const RATING_GROUP: u32 = 432;
    pub const REQUESTED_ACTION: u32 = 436;
    pub const REQUESTED_SERVICE_UNIT: u32 = 437;
    pub const SERVICE_IDENTIFIER: u32 = 439;
    pub const SUBSCRIPTION_ID: u32 = 443;
    pub const SUBSCRIPTION_ID_DATA: u32 = 444;
    pub const USED_SERVICE_UNIT: u32 = 446;
    pub const VALIDITY_TIME: u32 = 448;
    pub const FINAL_UNIT_ACTION: u32 = 449;
    pub const SUBSCRIPTION_ID_TYPE: u32 = 450;
    pub const MULTIPLE_SERVICES_INDICATOR: u32 = 455;
    pub const MULTIPLE_SERVICES_CREDIT_CONTROL: u32 = 456;
    pub const SERVICE_CONTEXT_ID: u32 = 461;
}
