//! Capabilities exchange (RFC 6733 §5.3): what we advertise in CER/CEA, what we learn from the peer's, and the
//! application intersection that decides whether the connection is worth keeping.

use std::net::IpAddr;

use crate::codec::value::Address;
use crate::codec::{AppId, Avp, Message, VendorId, code};

/// An application as CER/CEA advertise it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Application {
    /// Auth-Application-Id.
    Auth(AppId),
    /// Acct-Application-Id.
    Acct(AppId),
    /// Vendor-Specific-Application-Id with an Auth-Application-Id (e.g. Gx: 10415, 16777238).
    VendorAuth(VendorId, AppId),
    /// Vendor-Specific-Application-Id with an Acct-Application-Id.
    VendorAcct(VendorId, AppId),
}

impl Application {
    /// The Application-Id.
    pub fn id(self) -> AppId {
        match self {
            Application::Auth(a)
            | Application::Acct(a)
            | Application::VendorAuth(_, a)
            | Application::VendorAcct(_, a) => a,
        }
    }

    fn to_avp(self) -> Avp {
        match self {
            Application::Auth(a) => Avp::u32(code::AUTH_APPLICATION_ID, a.0),
            Application::Acct(a) => Avp::u32(code::ACCT_APPLICATION_ID, a.0),
            Application::VendorAuth(v, a) => Avp::grouped(
                code::VENDOR_SPECIFIC_APPLICATION_ID,
                &[Avp::u32(code::VENDOR_ID, v.0), Avp::u32(code::AUTH_APPLICATION_ID, a.0)],
            ),
            Application::VendorAcct(v, a) => Avp::grouped(
                code::VENDOR_SPECIFIC_APPLICATION_ID,
                &[Avp::u32(code::VENDOR_ID, v.0), Avp::u32(code::ACCT_APPLICATION_ID, a.0)],
            ),
        }
    }
}

/// What a node says about itself in CER/CEA and DWR/DPR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalIdentity {
    /// Origin-Host: this node's Diameter identity.
    pub origin_host: String,
    /// Origin-Realm.
    pub origin_realm: String,
    /// Host-IP-Address values (at least one).
    pub host_ip_addresses: Vec<IpAddr>,
    /// Vendor-Id (0 for none registered).
    pub vendor_id: u32,
    /// Product-Name.
    pub product_name: String,
    /// Firmware-Revision.
    pub firmware_revision: Option<u32>,
    /// Origin-State-Id: a new value every time the node restarts (RFC 6733 §8.16).
    pub origin_state_id: u32,
    /// The applications this node supports.
    pub applications: Vec<Application>,
    /// Supported-Vendor-Id values.
    pub supported_vendors: Vec<VendorId>,
}

impl LocalIdentity {
    /// A client of Ro and Gx: Auth-Application-Id 4 and Vendor-Specific-Application-Id (10415, 16777238).
    pub fn charging_client(origin_host: &str, origin_realm: &str, origin_state_id: u32) -> LocalIdentity {
        LocalIdentity {
            origin_host: origin_host.to_string(),
            origin_realm: origin_realm.to_string(),
            host_ip_addresses: vec![IpAddr::from([127, 0, 0, 1])],
            vendor_id: 0,
            product_name: "charging-ra".to_string(),
            firmware_revision: Some(1),
            origin_state_id,
            applications: vec![
                Application::Auth(AppId::CREDIT_CONTROL),
                Application::VendorAuth(VendorId::TGPP, AppId::GX),
            ],
            supported_vendors: vec![VendorId::TGPP],
        }
    }

    /// Origin-Host and Origin-Realm AVPs.
    pub fn origin_avps(&self) -> [Avp; 2] {
        [Avp::utf8(code::ORIGIN_HOST, &self.origin_host), Avp::utf8(code::ORIGIN_REALM, &self.origin_realm)]
    }

    /// The AVPs of CER and CEA after Result-Code (RFC 6733 §5.3.1, §5.3.2).
    pub fn capability_avps(&self) -> Vec<Avp> {
        let mut avps = self.origin_avps().to_vec();
        for ip in &self.host_ip_addresses {
            avps.push(Avp::address(code::HOST_IP_ADDRESS, &Address::from(*ip)));
        }
        avps.push(Avp::u32(code::VENDOR_ID, self.vendor_id));
        avps.push(Avp::utf8(code::PRODUCT_NAME, &self.product_name).with_mandatory(false));
        avps.push(Avp::u32(code::ORIGIN_STATE_ID, self.origin_state_id));
        for v in &self.supported_vendors {
            avps.push(Avp::u32(code::SUPPORTED_VENDOR_ID, v.0));
        }
        avps.extend(self.applications.iter().map(|a| a.to_avp()));
        if let Some(fw) = self.firmware_revision {
            avps.push(Avp::u32(code::FIRMWARE_REVISION, fw).with_mandatory(false));
        }
        avps
    }
}

/// What a peer said about itself in its CER or CEA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCapabilities {
    /// Its Origin-Host.
    pub origin_host: String,
    /// Its Origin-Realm.
    pub origin_realm: String,
    /// Its Origin-State-Id, when sent.
    pub origin_state_id: Option<u32>,
    /// Its Product-Name.
    pub product_name: String,
    /// The applications it advertised.
    pub applications: Vec<Application>,
}

impl PeerCapabilities {
    /// Reads a CER or CEA (already validated against the dictionary).
    pub fn from_message(m: &Message) -> Option<PeerCapabilities> {
        let text = |c| m.find(c, 0).and_then(|a| a.as_utf8().ok()).map(str::to_string);
        let mut applications = Vec::new();
        for avp in &m.avps {
            match avp.code() {
                code::AUTH_APPLICATION_ID if avp.vendor() == 0 => {
                    applications.extend(avp.as_u32().ok().map(|a| Application::Auth(AppId(a))))
                }
                code::ACCT_APPLICATION_ID if avp.vendor() == 0 => {
                    applications.extend(avp.as_u32().ok().map(|a| Application::Acct(AppId(a))))
                }
                code::VENDOR_SPECIFIC_APPLICATION_ID if avp.vendor() == 0 => {
                    let members: Vec<Avp> = avp.grouped_iter().filter_map(Result::ok).collect();
                    let get = |c| members.iter().find(|a| a.is(c, 0)).and_then(|a| a.as_u32().ok());
                    let vendor = VendorId(get(code::VENDOR_ID).unwrap_or(0));
                    if let Some(a) = get(code::AUTH_APPLICATION_ID) {
                        applications.push(Application::VendorAuth(vendor, AppId(a)));
                    }
                    if let Some(a) = get(code::ACCT_APPLICATION_ID) {
                        applications.push(Application::VendorAcct(vendor, AppId(a)));
                    }
                }
                _ => {}
            }
        }
        Some(PeerCapabilities {
            origin_host: text(code::ORIGIN_HOST)?,
            origin_realm: text(code::ORIGIN_REALM)?,
            origin_state_id: m.find(code::ORIGIN_STATE_ID, 0).and_then(|a| a.as_u32().ok()),
            product_name: text(code::PRODUCT_NAME).unwrap_or_default(),
            applications,
        })
    }

    /// The Application-Ids both sides support (RFC 6733 §5.3: a relay, 0xffffffff, supports every application;
    /// the common application 0 is implicit and not listed).
    pub fn common_applications(&self, local: &LocalIdentity) -> Vec<AppId> {
        let theirs: Vec<AppId> = self.applications.iter().map(|a| a.id()).collect();
        let ours: Vec<AppId> = local.applications.iter().map(|a| a.id()).collect();
        let relay_there = theirs.contains(&AppId::RELAY);
        let relay_here = ours.contains(&AppId::RELAY);
        let mut common: Vec<AppId> = if relay_here {
            theirs.iter().copied().filter(|a| *a != AppId::RELAY).collect()
        } else {
            ours.iter().copied().filter(|a| relay_there || theirs.contains(a)).collect()
        };
        if relay_here && relay_there {
            common.push(AppId::RELAY);
        }
        common.sort();
        common.dedup();
        common
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CommandCode;

    #[test]
    fn common_applications_follow_rfc6733_5_3() {
        let local = LocalIdentity::charging_client("a.example.net", "example.net", 1);
        let cer = |apps: &[Application]| {
            let mut id = LocalIdentity::charging_client("b.example.net", "example.net", 2);
            id.applications = apps.to_vec();
            let m = Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON);
            let mut m = m;
            m.avps = id.capability_avps();
            PeerCapabilities::from_message(&m).unwrap()
        };
        assert_eq!(
            cer(&[Application::Auth(AppId::CREDIT_CONTROL)]).common_applications(&local),
            vec![AppId::CREDIT_CONTROL]
        );
        assert_eq!(
            cer(&[Application::VendorAuth(VendorId::TGPP, AppId::GX)]).common_applications(&local),
            vec![AppId::GX]
        );
        // A relay agent supports everything we do.
        assert_eq!(
            cer(&[Application::Auth(AppId::RELAY)]).common_applications(&local),
            vec![AppId::CREDIT_CONTROL, AppId::GX]
        );
        assert!(cer(&[Application::Auth(AppId(16_777_236))]).common_applications(&local).is_empty());
        let caps = cer(&[]);
        assert_eq!((caps.origin_host.as_str(), caps.origin_state_id), ("b.example.net", Some(2)));
    }
}
