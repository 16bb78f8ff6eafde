//! Typed views of AVP payloads: the RFC 6733 §4.2 basic formats and §4.3 derived formats, plus QoSFilterRule
//! (RFC 3588 §4.3, still sent by Gx-era peers). Reading borrows from the frame; building encodes once.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use super::avp::{Avp, AvpFlags};
use super::error::ValueError;

/// RFC 6733 §4.3.1 Time: seconds since 1900-01-01 UTC as NTP writes them, in 32 bits. Values whose most
/// significant bit is clear lie in the era after the 2036-02-07 06:28:16 UTC rollover (RFC 4330 §3), so the
/// format covers 1968 to 2104, as RFC 6733 requires of every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Time(pub u32);

/// Seconds from 1900-01-01 to 1970-01-01.
const NTP_UNIX_OFFSET: i64 = 2_208_988_800;

impl Time {
    /// The Unix time (seconds since 1970, may be negative) this value denotes.
    pub fn to_unix(self) -> i64 {
        let raw = i64::from(self.0);
        if self.0 & 0x8000_0000 != 0 { raw - NTP_UNIX_OFFSET } else { raw + (1 << 32) - NTP_UNIX_OFFSET }
    }

    /// The value for a Unix time, or `None` outside 1968-01-20 .. 2104-02-26, which 32 bits cannot carry.
    pub fn from_unix(secs: i64) -> Option<Time> {
        let ntp = secs.checked_add(NTP_UNIX_OFFSET)?;
        if (1 << 31..1 << 32).contains(&ntp) {
            Some(Time(ntp as u32))
        } else if (1 << 32..(1 << 32) + (1 << 31)).contains(&ntp) {
            Some(Time((ntp - (1 << 32)) as u32))
        } else {
            None
        }
    }

    /// The value for a wall-clock instant, truncated to the second.
    pub fn from_system_time(t: SystemTime) -> Option<Time> {
        let secs = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).ok()?,
            Err(e) => -i64::try_from(e.duration().as_secs()).ok()?,
        };
        Time::from_unix(secs)
    }

    /// The wall-clock instant.
    pub fn to_system_time(self) -> SystemTime {
        let secs = self.to_unix();
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    }
}

impl fmt::Display for Time {
    /// ISO 8601 in UTC, e.g. `2026-11-27T07:10:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.to_unix();
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        write!(f, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's public-domain algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RFC 6733 §4.3.1 Address: a two-octet IANA address family, then the address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// Family 1.
    Ipv4(Ipv4Addr),
    /// Family 2.
    Ipv6(Ipv6Addr),
    /// Family 8: an E.164 number as ASCII digits.
    E164(String),
    /// Any other family, kept raw.
    Other {
        /// IANA address family number.
        family: u16,
        /// The address octets.
        data: Bytes,
    },
}

impl Address {
    fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(18);
        match self {
            Address::Ipv4(a) => {
                b.put_u16(1);
                b.put_slice(&a.octets());
            }
            Address::Ipv6(a) => {
                b.put_u16(2);
                b.put_slice(&a.octets());
            }
            Address::E164(s) => {
                b.put_u16(8);
                b.put_slice(s.as_bytes());
            }
            Address::Other { family, data } => {
                b.put_u16(*family);
                b.put_slice(data);
            }
        }
        b.freeze()
    }

    fn decode(data: &Bytes) -> Result<Address, ValueError> {
        if data.len() < 2 {
            return Err(ValueError::Length("Address needs a two-octet family"));
        }
        let family = u16::from_be_bytes([data[0], data[1]]);
        let rest = &data[2..];
        Ok(match family {
            1 => Address::Ipv4(Ipv4Addr::from(
                <[u8; 4]>::try_from(rest).map_err(|_| ValueError::Length("an IPv4 Address carries 4 octets"))?,
            )),
            2 => Address::Ipv6(Ipv6Addr::from(
                <[u8; 16]>::try_from(rest).map_err(|_| ValueError::Length("an IPv6 Address carries 16 octets"))?,
            )),
            8 => {
                if rest.is_empty() || rest.len() > 15 || !rest.iter().all(u8::is_ascii_digit) {
                    return Err(ValueError::Invalid("an E.164 Address is 1 to 15 ASCII digits".into()));
                }
                Address::E164(String::from_utf8_lossy(rest).into_owned())
            }
            0 | 65535 => {
                return Err(ValueError::Invalid(format!("address family {family} is reserved")));
            }
            _ => Address::Other { family, data: data.slice(2..) },
        })
    }
}

impl From<IpAddr> for Address {
    fn from(ip: IpAddr) -> Address {
        match ip {
            IpAddr::V4(a) => Address::Ipv4(a),
            IpAddr::V6(a) => Address::Ipv6(a),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ipv4(a) => write!(f, "{a}"),
            Address::Ipv6(a) => write!(f, "{a}"),
            Address::E164(s) => write!(f, "E.164 {s}"),
            Address::Other { family, data } => write!(f, "family {family}: {}", hex(data)),
        }
    }
}

/// The transport a DiameterURI names (RFC 6733 §4.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UriTransport {
    /// `transport=tcp`.
    Tcp,
    /// `transport=sctp`.
    Sctp,
    /// `transport=udp` (RADIUS only).
    Udp,
}

/// RFC 6733 §4.3.1 DiameterURI: `aaa://host[:port][;transport=…][;protocol=…]` or `aaas://…`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DiameterUri {
    /// `aaas` (TLS/DTLS) rather than `aaa`.
    pub secure: bool,
    /// The FQDN or address.
    pub host: String,
    /// The port; absent means the default (3868, or 5658 for aaas).
    pub port: Option<u16>,
    /// The transport; absent means TCP for aaa, TCP with TLS for aaas.
    pub transport: Option<UriTransport>,
    /// The protocol; absent means diameter.
    pub protocol: Option<String>,
}

impl DiameterUri {
    /// Parses the text of a DiameterURI.
    pub fn parse(s: &str) -> Result<DiameterUri, ValueError> {
        let bad = |why: &str| ValueError::Invalid(format!("DiameterURI {s:?}: {why}"));
        let (secure, rest) = if let Some(r) = s.strip_prefix("aaas://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("aaa://") {
            (false, r)
        } else {
            return Err(bad("must start with aaa:// or aaas://"));
        };
        let mut parts = rest.split(';');
        let authority = parts.next().unwrap_or_default();
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
            return Err(bad("invalid host"));
        }
        let port = port.map(|p| p.parse::<u16>().map_err(|_| bad("invalid port"))).transpose()?;
        let (mut transport, mut protocol) = (None, None);
        for param in parts {
            match param.split_once('=') {
                Some(("transport", t)) => {
                    transport = Some(match t {
                        "tcp" => UriTransport::Tcp,
                        "sctp" => UriTransport::Sctp,
                        "udp" => UriTransport::Udp,
                        _ => return Err(bad("transport must be tcp, sctp or udp")),
                    })
                }
                Some(("protocol", p)) if ["diameter", "radius", "tacacs+"].contains(&p) => {
                    protocol = Some(p.to_string())
                }
                _ => return Err(bad("unknown parameter")),
            }
        }
        Ok(DiameterUri { secure, host: host.to_string(), port, transport, protocol })
    }
}

/// Checks a DiameterIdentity (RFC 6733 §4.3.1: the FQDN or realm of a node): 1 to 255 octets of letters, digits,
/// '-', '.' and '_' (underscore is not in RFC 1035 but common in deployed realms).
pub fn check_identity(s: &[u8]) -> Result<&str, ValueError> {
    if s.is_empty() || s.len() > 255 {
        return Err(ValueError::Invalid("a DiameterIdentity has 1 to 255 octets".into()));
    }
    if !s.iter().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b)) {
        return Err(ValueError::Invalid("a DiameterIdentity is an FQDN: letters, digits, '-', '.'".into()));
    }
    std::str::from_utf8(s).map_err(|_| ValueError::Invalid("not ASCII".into()))
}

/// Checks the syntax of an IPFilterRule (RFC 6733 §4.3.1) or, with `qos`, a QoSFilterRule (RFC 3588 §4.3):
/// `action dir proto from src [ports] to dst [ports] [options]`.
pub fn check_filter_rule(s: &str, qos: bool) -> Result<(), ValueError> {
    let bad = |why: &str| ValueError::Invalid(format!("filter rule {s:?}: {why}"));
    let mut t = s.split_ascii_whitespace();
    let actions: &[&str] = if qos { &["tag", "meter"] } else { &["permit", "deny"] };
    if !t.next().is_some_and(|a| actions.contains(&a)) {
        return Err(bad(if qos { "action must be tag or meter" } else { "action must be permit or deny" }));
    }
    if !t.next().is_some_and(|d| d == "in" || d == "out") {
        return Err(bad("direction must be in or out"));
    }
    if !t.next().is_some_and(|p| p == "ip" || p.parse::<u8>().is_ok() || p.bytes().all(|b| b.is_ascii_alphabetic())) {
        return Err(bad("protocol must be ip or a number 0-255"));
    }
    for keyword in ["from", "to"] {
        if t.next() != Some(keyword) {
            return Err(bad(&format!("expected '{keyword}'")));
        }
        let addr = t.next().ok_or_else(|| bad("missing address"))?;
        let addr = addr.strip_prefix('!').unwrap_or(addr);
        let ip = addr.split_once('/').map_or(
            addr,
            |(ip, bits)| {
                if bits.parse::<u8>().is_ok_and(|b| b <= 128) { ip } else { "" }
            },
        );
        if !(ip == "any" || ip == "assigned" || ip.parse::<IpAddr>().is_ok()) {
            return Err(bad(&format!("invalid address {addr:?}")));
        }
        // Optional port list: digits, ',' and '-'.
        let mut peek = t.clone();
        if peek.next().is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit() || b == b',' || b == b'-')) {
            t = peek;
        }
    }
    Ok(())
}

fn fixed<const N: usize>(avp: &Avp, what: &'static str) -> Result<[u8; N], ValueError> {
    <[u8; N]>::try_from(&avp.data()[..]).map_err(|_| ValueError::Length(what))
}

/// Typed reads. Each checks the payload size (RFC 6733 §4.2) and borrows from the frame where it can.
impl Avp {
    /// OctetString: the payload.
    pub fn as_octets(&self) -> &[u8] {
        self.data()
    }

    /// UTF8String (and the text of DiameterURI, IPFilterRule…): must be valid UTF-8 (5004 otherwise).
    pub fn as_utf8(&self) -> Result<&str, ValueError> {
        std::str::from_utf8(self.data()).map_err(|e| ValueError::Invalid(format!("invalid UTF-8: {e}")))
    }

    /// DiameterIdentity.
    pub fn as_identity(&self) -> Result<&str, ValueError> {
        check_identity(self.data())
    }

    /// DiameterURI.
    pub fn as_uri(&self) -> Result<DiameterUri, ValueError> {
        DiameterUri::parse(self.as_utf8()?)
    }

    /// Unsigned32 (and Enumerated values read unsigned).
    pub fn as_u32(&self) -> Result<u32, ValueError> {
        fixed::<4>(self, "Unsigned32 is 4 octets").map(u32::from_be_bytes)
    }

    /// Unsigned64.
    pub fn as_u64(&self) -> Result<u64, ValueError> {
        fixed::<8>(self, "Unsigned64 is 8 octets").map(u64::from_be_bytes)
    }

    /// Integer32 and Enumerated.
    pub fn as_i32(&self) -> Result<i32, ValueError> {
        fixed::<4>(self, "Integer32 is 4 octets").map(i32::from_be_bytes)
    }

    /// Integer64.
    pub fn as_i64(&self) -> Result<i64, ValueError> {
        fixed::<8>(self, "Integer64 is 8 octets").map(i64::from_be_bytes)
    }

    /// Float32 (IEEE 754).
    pub fn as_f32(&self) -> Result<f32, ValueError> {
        fixed::<4>(self, "Float32 is 4 octets").map(f32::from_be_bytes)
    }

    /// Float64 (IEEE 754).
    pub fn as_f64(&self) -> Result<f64, ValueError> {
        fixed::<8>(self, "Float64 is 8 octets").map(f64::from_be_bytes)
    }

    /// Time.
    pub fn as_time(&self) -> Result<Time, ValueError> {
        fixed::<4>(self, "Time is 4 octets").map(|b| Time(u32::from_be_bytes(b)))
    }

    /// Address.
    pub fn as_address(&self) -> Result<Address, ValueError> {
        Address::decode(self.data())
    }
}

/// Typed construction. Each builds a base-protocol AVP with the M bit set; add a vendor with
/// [`Avp::with_vendor`] and clear M with [`Avp::with_mandatory`].
impl Avp {
    /// OctetString.
    pub fn octets(code: u32, v: impl Into<Bytes>) -> Avp {
        Avp::mandatory(code, v.into())
    }
    /// UTF8String, DiameterIdentity, DiameterURI, IPFilterRule, QoSFilterRule.
    pub fn utf8(code: u32, v: &str) -> Avp {
        Avp::mandatory(code, Bytes::copy_from_slice(v.as_bytes()))
    }
    /// Unsigned32.
    pub fn u32(code: u32, v: u32) -> Avp {
        Avp::mandatory(code, Bytes::copy_from_slice(&v.to_be_bytes()))
    }
    /// Unsigned64.
    pub fn u64(code: u32, v: u64) -> Avp {
        Avp::mandatory(code, Bytes::copy_from_slice(&v.to_be_bytes()))
    }
    /// Integer32 and Enumerated.
    pub fn i32(code: u32, v: i32) -> Avp {
        Avp::mandatory(code, Bytes::copy_from_slice(&v.to_be_bytes()))
    }
    /// Integer64.
    pub fn i64(code: u32, v: i64) -> Avp {
        Avp::mandatory(code, Bytes::copy_from_slice(&v.to_be_bytes()))
    }
    /// Float32.
    pub fn f32(code: u32, v: f32) -> Avp {
        Avp::mandatory(code, Bytes::copy_from_slice(&v.to_be_bytes()))
    }
    /// Float64.
    pub fn f64(code: u32, v: f64) -> Avp {
        Avp::mandatory(code, Bytes::copy_from_slice(&v.to_be_bytes()))
    }
    /// Time.
    pub fn time(code: u32, v: Time) -> Avp {
        Avp::u32(code, v.0)
    }
    /// Address.
    pub fn address(code: u32, v: &Address) -> Avp {
        Avp::mandatory(code, v.encode())
    }
    /// An AVP with exactly these flags bits for M and P, e.g. from a dictionary's flag rules.
    pub fn with_flags(self, mandatory: bool, protected: bool) -> Avp {
        let mut flags = self.flags().0 & !(AvpFlags::MANDATORY | AvpFlags::PROTECTED);
        if mandatory {
            flags |= AvpFlags::MANDATORY;
        }
        if protected {
            flags |= AvpFlags::PROTECTED;
        }
        Avp::new(self.code(), AvpFlags(flags), self.vendor_id(), self.data().clone())
    }
}

/// Lower-case hex of a byte string.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_covers_both_ntp_eras() {
        // 1970-01-01 is NTP 2208988800 (era 0, MSB set).
        assert_eq!(Time::from_unix(0), Some(Time(2_208_988_800)));
        assert_eq!(Time(2_208_988_800).to_unix(), 0);
        // The rollover instant 2036-02-07T06:28:16Z is raw 0 in era 1.
        let rollover = (1i64 << 32) - NTP_UNIX_OFFSET;
        assert_eq!(Time::from_unix(rollover), Some(Time(0)));
        assert_eq!(Time(0).to_string(), "2036-02-07T06:28:16Z");
        assert_eq!(Time(u32::MAX).to_unix(), rollover - 1);
        // Round trip across the whole representable range.
        for secs in [-61_505_152, -1, 0, 1_795_000_000, rollover - 1, rollover, rollover + 1, 4_233_000_000] {
            assert_eq!(Time::from_unix(secs).unwrap().to_unix(), secs, "{secs}");
        }
        assert_eq!(Time::from_unix(-61_505_153), None);
        assert_eq!(Time::from_unix(rollover + (1 << 31)), None);
        assert_eq!(Time::from_unix(1_795_763_400).unwrap().to_string(), "2026-11-27T07:10:00Z");
    }

    #[test]
    fn addresses_round_trip_and_reject_bad_sizes() {
        for a in [
            Address::Ipv4(Ipv4Addr::new(192, 0, 2, 1)),
            Address::Ipv6("2001:db8::1".parse().unwrap()),
            Address::E164("46701234567".into()),
            Address::Other { family: 16, data: Bytes::from_static(b"x") },
        ] {
            assert_eq!(Avp::address(257, &a).as_address().unwrap(), a);
        }
        let three = Avp::octets(257, Bytes::from_static(&[0, 1, 10, 0, 0]));
        assert!(matches!(three.as_address(), Err(ValueError::Length(_))));
        let e164 = Avp::octets(257, Bytes::from_static(&[0, 8, b'1', b'x']));
        assert!(matches!(e164.as_address(), Err(ValueError::Invalid(_))));
        assert!(matches!(Avp::octets(257, Bytes::from_static(&[0])).as_address(), Err(ValueError::Length(_))));
    }

    #[test]
    fn uris_parse_per_rfc6733() {
        let u = DiameterUri::parse("aaa://ocs.example.com:3868;transport=tcp;protocol=diameter").unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port, u.transport),
            (false, "ocs.example.com", Some(3868), Some(UriTransport::Tcp))
        );
        assert!(DiameterUri::parse("aaas://[2001:db8::1]:5658").unwrap().secure);
        for bad in ["http://x", "aaa://", "aaa://x:99999", "aaa://x;transport=quic", "aaa://a b"] {
            assert!(DiameterUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filter_rules_are_checked() {
        for good in [
            "permit out 17 from 192.0.2.10 to 198.51.100.0/24 5060",
            "permit in ip from any to assigned",
            "deny out 6 from !10.0.0.0/8 1000-2000,3000 to 2001:db8::/32",
        ] {
            check_filter_rule(good, false).unwrap();
        }
        check_filter_rule("meter in ip from any to any", true).unwrap();
        for bad in [
            "",
            "allow out ip from any to any",
            "permit up ip from any to any",
            "permit out ip any to any",
            "permit out ip from 300.1.1.1 to any",
        ] {
            assert!(check_filter_rule(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn fixed_formats_check_their_size() {
        assert_eq!(Avp::u32(1, 7).as_u32(), Ok(7));
        assert_eq!(Avp::i64(1, -7).as_i64(), Ok(-7));
        assert_eq!(Avp::f64(1, 2.5).as_f64(), Ok(2.5));
        assert!(matches!(Avp::u64(1, 7).as_u32(), Err(ValueError::Length(_))));
        assert!(Avp::octets(1, Bytes::from_static(&[0xff, 0xfe])).as_utf8().is_err());
        assert!(check_identity(b"ocs.example.com").is_ok());
        assert!(check_identity(b"bad host").is_err());
    }
}
