//! The Diameter message header (RFC 6733 §3).

use std::fmt;

/// A Command-Code (24 bits on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandCode(pub u32);

impl CommandCode {
    /// 257 CER/CEA (RFC 6733 §5.3).
    pub const CAPABILITIES_EXCHANGE: Self = Self(257);
    /// 258 RAR/RAA (RFC 6733 §8.3).
    pub const RE_AUTH: Self = Self(258);
    /// 271 ACR/ACA (RFC 6733 §9.7).
    pub const ACCOUNTING: Self = Self(271);
    /// 272 CCR/CCA (RFC 4006 §3).
    pub const CREDIT_CONTROL: Self = Self(272);
    /// 274 ASR/ASA (RFC 6733 §8.5).
    pub const ABORT_SESSION: Self = Self(274);
    /// 275 STR/STA (RFC 6733 §8.4).
    pub const SESSION_TERMINATION: Self = Self(275);
    /// 280 DWR/DWA (RFC 6733 §5.5).
    pub const DEVICE_WATCHDOG: Self = Self(280);
    /// 282 DPR/DPA (RFC 6733 §5.4).
    pub const DISCONNECT_PEER: Self = Self(282);
}

/// An Application-Id (RFC 6733 §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(pub u32);

impl AppId {
    /// 0: Diameter common messages.
    pub const COMMON: Self = Self(0);
    /// 3: Diameter base accounting.
    pub const BASE_ACCOUNTING: Self = Self(3);
    /// 4: Diameter Credit-Control (RFC 4006), used by 3GPP Ro.
    pub const CREDIT_CONTROL: Self = Self(4);
    /// 16777238: 3GPP Gx (TS 29.212).
    pub const GX: Self = Self(16_777_238);
    /// 0xffffffff: relay (RFC 6733 §2.4).
    pub const RELAY: Self = Self(0xffff_ffff);
}

/// A Vendor-Id (IANA enterprise number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VendorId(pub u32);

impl VendorId {
    /// 10415: 3GPP.
    pub const TGPP: Self = Self(10415);
}

/// A Hop-by-Hop Identifier: matches an answer to a request on one connection (RFC 6733 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HopByHopId(pub u32);

/// An End-to-End Identifier: detects duplicate requests (RFC 6733 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndToEndId(pub u32);

/// The command flags octet (RFC 6733 §3). Reserved bits are kept as received: they MUST be ignored by the
/// receiver, and keeping them lets a relayed message be re-encoded unchanged.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CommandFlags(pub u8);

impl CommandFlags {
    /// R: the message is a request.
    pub const REQUEST: u8 = 0x80;
    /// P: the message may be proxied, relayed or redirected.
    pub const PROXIABLE: u8 = 0x40;
    /// E: the answer carries a protocol error (3xxx).
    pub const ERROR: u8 = 0x20;
    /// T: the request may be a retransmission after a failover (RFC 6733 §5.5.4).
    pub const RETRANSMIT: u8 = 0x10;

    /// The R bit.
    pub fn is_request(self) -> bool {
        self.0 & Self::REQUEST != 0
    }
    /// The P bit.
    pub fn is_proxiable(self) -> bool {
        self.0 & Self::PROXIABLE != 0
    }
    /// The E bit.
    pub fn is_error(self) -> bool {
        self.0 & Self::ERROR != 0
    }
    /// The T bit.
    pub fn is_retransmit(self) -> bool {
        self.0 & Self::RETRANSMIT != 0
    }
    /// These flags with `bit` set or cleared.
    pub fn with(self, bit: u8, on: bool) -> Self {
        if on { Self(self.0 | bit) } else { Self(self.0 & !bit) }
    }
}

impl fmt::Debug for CommandFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.0)?;
        for (bit, name) in [(Self::REQUEST, 'R'), (Self::PROXIABLE, 'P'), (Self::ERROR, 'E'), (Self::RETRANSMIT, 'T')] {
            if self.0 & bit != 0 {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

/// The 20-octet message header without its length, which the encoder computes (RFC 6733 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Command flags.
    pub flags: CommandFlags,
    /// Command-Code.
    pub code: CommandCode,
    /// Application-ID.
    pub application_id: AppId,
    /// Hop-by-Hop Identifier.
    pub hop_by_hop: HopByHopId,
    /// End-to-End Identifier.
    pub end_to_end: EndToEndId,
}

impl Header {
    /// The header of the answer to a request with this header: same command, application and identifiers,
    /// R and T cleared, P kept (RFC 6733 §6.2).
    pub fn answer(&self) -> Header {
        Header { flags: CommandFlags(self.flags.0 & CommandFlags::PROXIABLE), ..*self }
    }

    /// The conventional short name of the command and direction (`CCR`, `CEA`, …) or `cmd-<code>-R/A`.
    pub fn short_name(&self) -> String {
        match self.known_short_name() {
            Some(name) => name.to_string(),
            None => format!("cmd-{}-{}", self.code.0, if self.flags.is_request() { 'R' } else { 'A' }),
        }
    }

    /// [`Header::short_name`] of the base and credit-control commands, without allocating (the router counts every
    /// message by it).
    pub fn known_short_name(&self) -> Option<&'static str> {
        let request = self.flags.is_request();
        Some(match (self.code.0, request) {
            (257, true) => "CER",
            (257, false) => "CEA",
            (258, true) => "RAR",
            (258, false) => "RAA",
            (271, true) => "ACR",
            (271, false) => "ACA",
            (272, true) => "CCR",
            (272, false) => "CCA",
            (274, true) => "ASR",
            (274, false) => "ASA",
            (275, true) => "STR",
            (275, false) => "STA",
            (280, true) => "DWR",
            (280, false) => "DWA",
            (282, true) => "DPR",
            (282, false) => "DPA",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_of_known_and_other_commands() {
        let h = |code, flags| Header {
            flags: CommandFlags(flags),
            code: CommandCode(code),
            application_id: AppId(4),
            hop_by_hop: HopByHopId(1),
            end_to_end: EndToEndId(1),
        };
        assert_eq!(h(272, CommandFlags::REQUEST).short_name(), "CCR");
        assert_eq!(h(272, 0).known_short_name(), Some("CCA"));
        assert_eq!(h(258, CommandFlags::REQUEST | CommandFlags::PROXIABLE).short_name(), "RAR");
        assert_eq!(h(280, 0).short_name(), "DWA");
        assert_eq!(h(8388620, CommandFlags::REQUEST).known_short_name(), None);
        assert_eq!(h(8388620, CommandFlags::REQUEST).short_name(), "cmd-8388620-R");
    }
}
