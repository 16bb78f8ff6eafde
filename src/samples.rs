//! Realistic sample messages: the golden set used by the tests, the benchmarks, the conformance suite, the
//! wire check with tshark and `charging-ra demo`. Built by name through the shipped dictionary, so a sample that
//! no longer fits the dictionary fails loudly in the tests.

use bytes::Bytes;

use crate::codec::value::{Address, Time};
use crate::codec::{AppId, Avp, CommandCode, CommandFlags, EndToEndId, HopByHopId, Message, ResultCode};
use crate::dict::{AvpValue, Dictionary};

/// Builds AVPs by name; panics on a name or value the dictionary rejects (samples are fixed and tested).
struct B<'d>(&'d Dictionary);

impl B<'_> {
    fn a<'v>(&self, name: &str, v: impl Into<AvpValue<'v>>) -> Avp {
        self.0.avp(name, v).unwrap_or_else(|e| panic!("sample AVP {name}: {e}"))
    }
    fn g(&self, name: &str, members: Vec<Avp>) -> Avp {
        self.a(name, members)
    }
}

const SID: &str = "as1.ims.example.net;1795763400;42;app=ro";
const GX_SID: &str = "pgw1.epc.example.net;1795763400;7";
/// 2026-11-27T07:10:00Z.
const NOW: i64 = 1_795_763_400;

fn ids(mut m: Message, hbh: u32, e2e: u32) -> Message {
    m.header.hop_by_hop = HopByHopId(hbh);
    m.header.end_to_end = EndToEndId(e2e);
    m
}

fn answer(req: &Message, b: &B, host: &str, realm: &str, rc: ResultCode) -> Message {
    let mut m = Message::answer_to(req);
    m.push(b.a("Result-Code", rc.0)).push(b.a("Origin-Host", host)).push(b.a("Origin-Realm", realm));
    m
}

fn capabilities(b: &B, m: Message, host: &str, realm: &str) -> Message {
    m.with(b.a("Origin-Host", host))
        .with(b.a("Origin-Realm", realm))
        .with(b.a("Host-IP-Address", Address::Ipv4([127, 0, 0, 1].into())))
        .with(b.a("Vendor-Id", 0))
        .with(b.a("Product-Name", "charging-ra"))
        .with(b.a("Origin-State-Id", 1_795_763_400u32))
        .with(b.a("Supported-Vendor-Id", 10415))
        .with(b.a("Auth-Application-Id", 4))
        .with(b.g(
            "Vendor-Specific-Application-Id",
            vec![b.a("Vendor-Id", 10415), b.a("Auth-Application-Id", AppId::GX.0)],
        ))
        .with(b.a("Firmware-Revision", 1))
}

fn ro_ccr(b: &B, request_type: &str, number: u32) -> Message {
    Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)
        .with(b.a("Session-Id", SID))
        .with(b.a("Origin-Host", "as1.ims.example.net"))
        .with(b.a("Origin-Realm", "ims.example.net"))
        .with(b.a("Destination-Realm", "ocs.example.net"))
        .with(b.a("Auth-Application-Id", 4))
        .with(b.a("Service-Context-Id", "32260@3gpp.org"))
        .with(b.a("CC-Request-Type", request_type))
        .with(b.a("CC-Request-Number", number))
        .with(b.a("Destination-Host", "ocs1.ocs.example.net"))
        .with(b.a("Event-Timestamp", Time::from_unix(NOW).expect("in range")))
        .with(b.g(
            "Subscription-Id",
            vec![b.a("Subscription-Id-Type", "END_USER_E164"), b.a("Subscription-Id-Data", "46701234567")],
        ))
        .with(b.a("Multiple-Services-Indicator", "MULTIPLE_SERVICES_SUPPORTED"))
}

fn ims_information(b: &B) -> Avp {
    b.g(
        "Service-Information",
        vec![b.g(
            "IMS-Information",
            vec![
                b.g("Event-Type", vec![b.a("SIP-Method", "INVITE")]),
                b.a("Role-Of-Node", "ORIGINATING_ROLE"),
                b.a("Node-Functionality", "AS"),
                b.a("User-Session-Id", "a84b4c76e66710@pc33.ims.example.net"),
                b.a("Calling-Party-Address", "sip:+46701234567@ims.example.net"),
                b.a("Called-Party-Address", "tel:+46709876543"),
                b.g(
                    "Time-Stamps",
                    vec![
                        b.a("SIP-Request-Timestamp", Time::from_unix(NOW - 30).expect("in range")),
                        b.a("SIP-Response-Timestamp", Time::from_unix(NOW - 29).expect("in range")),
                    ],
                ),
                b.a("IMS-Charging-Identifier", "icid-0d8f1e2a77c4"),
            ],
        )],
    )
}

/// The Ro CCR-Update of the benchmarks: about 650 octets, one MSCC with USU and RSU, IMS Service-Information, a
/// Subscription-Id.
pub fn ro_ccr_update(d: &Dictionary) -> Message {
    let b = B(d);
    ids(ro_ccr(&b, "UPDATE_REQUEST", 1), 0x2a00_0002, 0x5e0c_0002)
        .with(b.g(
            "Multiple-Services-Credit-Control",
            vec![
                b.g("Requested-Service-Unit", vec![b.a("CC-Time", 300)]),
                b.g("Used-Service-Unit", vec![b.a("CC-Time", 287), b.a("Reporting-Reason", "QUOTA_EXHAUSTED")]),
                b.a("Service-Identifier", 1000),
                b.a("Rating-Group", 100),
            ],
        ))
        .with(ims_information(&b))
}

/// Every sample, named: base messages, Ro session and event charging, Gx, and an error answer.
pub fn all(d: &Dictionary) -> Vec<(&'static str, Message)> {
    let b = B(d);
    let cer = ids(
        capabilities(
            &b,
            Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON),
            "as1.ims.example.net",
            "ims.example.net",
        ),
        1,
        0x5e0c_0001,
    );
    let mut cer_no_p = cer.clone();
    cer_no_p.header.flags = CommandFlags(CommandFlags::REQUEST);
    let cea = capabilities(
        &b,
        Message::answer_to(&cer_no_p).with(b.a("Result-Code", ResultCode::SUCCESS.0)),
        "ocs1.ocs.example.net",
        "ocs.example.net",
    );
    let dwr = ids(Message::request(CommandCode::DEVICE_WATCHDOG, AppId::COMMON), 2, 0x5e0c_0003)
        .with(b.a("Origin-Host", "as1.ims.example.net"))
        .with(b.a("Origin-Realm", "ims.example.net"))
        .with(b.a("Origin-State-Id", 1_795_763_400u32));
    let mut dwr = dwr;
    dwr.header.flags = CommandFlags(CommandFlags::REQUEST);
    let dwa = answer(&dwr, &b, "ocs1.ocs.example.net", "ocs.example.net", ResultCode::SUCCESS);
    let mut dpr = ids(Message::request(CommandCode::DISCONNECT_PEER, AppId::COMMON), 3, 0x5e0c_0004)
        .with(b.a("Origin-Host", "as1.ims.example.net"))
        .with(b.a("Origin-Realm", "ims.example.net"))
        .with(b.a("Disconnect-Cause", "REBOOTING"));
    dpr.header.flags = CommandFlags(CommandFlags::REQUEST);
    let dpa = answer(&dpr, &b, "ocs1.ocs.example.net", "ocs.example.net", ResultCode::SUCCESS);

    let ccr_i = ids(ro_ccr(&b, "INITIAL_REQUEST", 0), 0x2a00_0001, 0x5e0c_0010)
        .with(b.g(
            "Subscription-Id",
            vec![b.a("Subscription-Id-Type", "END_USER_IMSI"), b.a("Subscription-Id-Data", "240011234567890")],
        ))
        .with(b.g(
            "Multiple-Services-Credit-Control",
            vec![b.g("Requested-Service-Unit", vec![b.a("CC-Time", 300)]), b.a("Rating-Group", 100)],
        ))
        .with(b.g(
            "User-Equipment-Info",
            vec![
                b.a("User-Equipment-Info-Type", "IMEISV"),
                b.a("User-Equipment-Info-Value", Bytes::from_static(b"3569380356438091")),
            ],
        ))
        .with(ims_information(&b));
    let cca_i = answer(&ccr_i, &b, "ocs1.ocs.example.net", "ocs.example.net", ResultCode::SUCCESS)
        .with(b.a("Auth-Application-Id", 4))
        .with(b.a("CC-Request-Type", "INITIAL_REQUEST"))
        .with(b.a("CC-Request-Number", 0))
        .with(b.g(
            "Multiple-Services-Credit-Control",
            vec![
                b.g("Granted-Service-Unit", vec![b.a("CC-Time", 300)]),
                b.a("Rating-Group", 100),
                b.a("Validity-Time", 600),
                b.a("Result-Code", ResultCode::SUCCESS.0),
                b.a("Time-Quota-Threshold", 30),
                b.a("Quota-Holding-Time", 120),
            ],
        ))
        .with(b.a("Credit-Control-Failure-Handling", "RETRY_AND_TERMINATE"))
        .with(b.a("CC-Session-Failover", "FAILOVER_SUPPORTED"));
    let ccr_u = ro_ccr_update(d);
    let cca_u_fui = answer(&ccr_u, &b, "ocs1.ocs.example.net", "ocs.example.net", ResultCode::SUCCESS)
        .with(b.a("Auth-Application-Id", 4))
        .with(b.a("CC-Request-Type", "UPDATE_REQUEST"))
        .with(b.a("CC-Request-Number", 1))
        .with(b.g(
            "Multiple-Services-Credit-Control",
            vec![
                b.g("Granted-Service-Unit", vec![b.a("CC-Time", 60)]),
                b.a("Rating-Group", 100),
                b.a("Result-Code", ResultCode::SUCCESS.0),
                b.g(
                    "Final-Unit-Indication",
                    vec![
                        b.a("Final-Unit-Action", "REDIRECT"),
                        b.g(
                            "Redirect-Server",
                            vec![
                                b.a("Redirect-Address-Type", "SIP URI"),
                                b.a("Redirect-Server-Address", "sip:topup@ims.example.net"),
                            ],
                        ),
                    ],
                ),
            ],
        ));
    let mut ccr_t = ids(ro_ccr(&b, "TERMINATION_REQUEST", 2), 0x2a00_0003, 0x5e0c_0011)
        .with(b.g(
            "Multiple-Services-Credit-Control",
            vec![b.g("Used-Service-Unit", vec![b.a("CC-Time", 41)]), b.a("Rating-Group", 100)],
        ))
        .with(b.a("Termination-Cause", "DIAMETER_LOGOUT"));
    ccr_t.header.flags = CommandFlags(ccr_t.header.flags.0 | CommandFlags::RETRANSMIT);
    let cca_t = answer(&ccr_t, &b, "ocs1.ocs.example.net", "ocs.example.net", ResultCode::SUCCESS)
        .with(b.a("Auth-Application-Id", 4))
        .with(b.a("CC-Request-Type", "TERMINATION_REQUEST"))
        .with(b.a("CC-Request-Number", 2));
    let ccr_e = ids(Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL), 0x2a00_0004, 0x5e0c_0012)
        .with(b.a("Session-Id", "as1.ims.example.net;1795763400;43"))
        .with(b.a("Origin-Host", "as1.ims.example.net"))
        .with(b.a("Origin-Realm", "ims.example.net"))
        .with(b.a("Destination-Realm", "ocs.example.net"))
        .with(b.a("Auth-Application-Id", 4))
        .with(b.a("Service-Context-Id", "32274@3gpp.org"))
        .with(b.a("CC-Request-Type", "EVENT_REQUEST"))
        .with(b.a("CC-Request-Number", 0))
        .with(b.a("Requested-Action", "DIRECT_DEBITING"))
        .with(b.g(
            "Subscription-Id",
            vec![b.a("Subscription-Id-Type", "END_USER_E164"), b.a("Subscription-Id-Data", "46701234567")],
        ))
        .with(b.g("Requested-Service-Unit", vec![b.a("CC-Service-Specific-Units", 1)]))
        .with(b.a("Service-Identifier", 2))
        .with(b.a("Direct-Debiting-Failure-Handling", "TERMINATE_OR_BUFFER"));
    let cca_e = answer(&ccr_e, &b, "ocs1.ocs.example.net", "ocs.example.net", ResultCode::CREDIT_LIMIT_REACHED)
        .with(b.a("Auth-Application-Id", 4))
        .with(b.a("CC-Request-Type", "EVENT_REQUEST"))
        .with(b.a("CC-Request-Number", 0))
        .with(b.g(
            "Cost-Information",
            vec![
                b.g("Unit-Value", vec![b.a("Value-Digits", 150i64), b.a("Exponent", -2)]),
                b.a("Currency-Code", 752),
                b.a("Cost-Unit", "SMS"),
            ],
        ));
    let rar = ids(Message::request(CommandCode::RE_AUTH, AppId::CREDIT_CONTROL), 0x0c00_0001, 0x0c5e_0001)
        .with(b.a("Session-Id", SID))
        .with(b.a("Origin-Host", "ocs1.ocs.example.net"))
        .with(b.a("Origin-Realm", "ocs.example.net"))
        .with(b.a("Destination-Realm", "ims.example.net"))
        .with(b.a("Destination-Host", "as1.ims.example.net"))
        .with(b.a("Auth-Application-Id", 4))
        .with(b.a("Re-Auth-Request-Type", "AUTHORIZE_ONLY"))
        .with(b.a("Rating-Group", 100));
    let raa = answer(&rar, &b, "as1.ims.example.net", "ims.example.net", ResultCode::SUCCESS);
    let asr = ids(Message::request(CommandCode::ABORT_SESSION, AppId::CREDIT_CONTROL), 0x0c00_0002, 0x0c5e_0002)
        .with(b.a("Session-Id", SID))
        .with(b.a("Origin-Host", "ocs1.ocs.example.net"))
        .with(b.a("Origin-Realm", "ocs.example.net"))
        .with(b.a("Destination-Realm", "ims.example.net"))
        .with(b.a("Destination-Host", "as1.ims.example.net"))
        .with(b.a("Auth-Application-Id", 4))
        .with(b.g(
            "Proxy-Info",
            vec![b.a("Proxy-Host", "dra1.example.net"), b.a("Proxy-State", Bytes::from_static(b"\x01\x02state"))],
        ));
    let mut asa = answer(&asr, &b, "as1.ims.example.net", "ims.example.net", ResultCode::SUCCESS);
    asa.echo_proxy_info(&asr);
    let mut error = Message::answer_to(&ccr_u);
    error.header.flags = CommandFlags(error.header.flags.0 | CommandFlags::ERROR);
    error
        .push(b.a("Origin-Host", "ocs1.ocs.example.net"))
        .push(b.a("Origin-Realm", "ocs.example.net"))
        .push(b.a("Result-Code", ResultCode::AVP_UNSUPPORTED.0))
        .push(b.a("Error-Message", "unsupported AVP 99999 with the M bit"))
        .push(b.g(
            "Failed-AVP",
            vec![Avp::octets(99_999, Bytes::from_static(b"x")).with_vendor(crate::codec::VendorId::TGPP)],
        ));

    let gx = gx_samples(&b);
    let mut out = vec![
        ("CER", cer),
        ("CEA", cea),
        ("DWR", dwr),
        ("DWA", dwa),
        ("DPR", dpr),
        ("DPA", dpa),
        ("Ro CCR-I", ccr_i),
        ("Ro CCA-I", cca_i),
        ("Ro CCR-U", ccr_u),
        ("Ro CCA-U with FUI", cca_u_fui),
        ("Ro CCR-T (T flag)", ccr_t),
        ("Ro CCA-T", cca_t),
        ("Ro CCR-E direct debit", ccr_e),
        ("Ro CCA-E 4012", cca_e),
        ("Ro RAR", rar),
        ("Ro RAA", raa),
        ("Ro ASR with Proxy-Info", asr),
        ("Ro ASA", asa),
        ("error answer 5001", error),
    ];
    out.extend(gx);
    out
}

/// The Gx CCR-Initial of the benchmarks.
pub fn gx_ccr_initial(d: &Dictionary) -> Message {
    let b = B(d);
    ids(Message::request(CommandCode::CREDIT_CONTROL, AppId::GX), 0x6700_0001, 0x7e0c_0001)
        .with(b.a("Session-Id", GX_SID))
        .with(b.a("Auth-Application-Id", AppId::GX.0))
        .with(b.a("Origin-Host", "pgw1.epc.example.net"))
        .with(b.a("Origin-Realm", "epc.example.net"))
        .with(b.a("Destination-Realm", "pcrf.example.net"))
        .with(b.a("CC-Request-Type", "INITIAL_REQUEST"))
        .with(b.a("CC-Request-Number", 0))
        .with(b.g(
            "Supported-Features",
            vec![b.a("Vendor-Id", 10415), b.a("Feature-List-ID", 1), b.a("Feature-List", 0x0000_0003)],
        ))
        .with(b.g(
            "Subscription-Id",
            vec![b.a("Subscription-Id-Type", "END_USER_IMSI"), b.a("Subscription-Id-Data", "240011234567890")],
        ))
        .with(b.g(
            "Subscription-Id",
            vec![b.a("Subscription-Id-Type", "END_USER_E164"), b.a("Subscription-Id-Data", "46701234567")],
        ))
        .with(b.a("Network-Request-Support", "NETWORK_REQUEST SUPPORTED"))
        .with(b.a("Framed-IP-Address", Bytes::from_static(&[10, 45, 0, 7])))
        .with(b.a("IP-CAN-Type", "3GPP-EPS"))
        .with(b.a("RAT-Type", "EUTRAN"))
        .with(b.g(
            "QoS-Information",
            vec![b.a("APN-Aggregate-Max-Bitrate-UL", 50_000_000), b.a("APN-Aggregate-Max-Bitrate-DL", 150_000_000)],
        ))
        .with(b.g(
            "Default-EPS-Bearer-QoS",
            vec![
                b.a("QoS-Class-Identifier", "QCI_9"),
                b.g(
                    "Allocation-Retention-Priority",
                    vec![
                        b.a("Priority-Level", 8),
                        b.a("Pre-emption-Capability", "PRE-EMPTION_CAPABILITY_DISABLED"),
                        b.a("Pre-emption-Vulnerability", "PRE-EMPTION_VULNERABILITY_ENABLED"),
                    ],
                ),
            ],
        ))
        .with(b.a(
            "3GPP-User-Location-Info",
            Bytes::from_static(&[0x82, 0x42, 0xf0, 0x10, 0x00, 0x01, 0x42, 0xf0, 0x10, 0x00, 0x00, 0x10, 0x01]),
        ))
        .with(b.a("3GPP-MS-TimeZone", Bytes::from_static(&[0x40, 0x00])))
        .with(b.a("Called-Station-Id", "internet"))
        .with(b.a("AN-GW-Address", Address::Ipv4([192, 0, 2, 20].into())))
}

fn gx_samples(b: &B) -> Vec<(&'static str, Message)> {
    let ccr = gx_ccr_initial(b.0);
    let cca = answer(&ccr, b, "pcrf1.pcrf.example.net", "pcrf.example.net", ResultCode::SUCCESS)
        .with(b.a("Auth-Application-Id", AppId::GX.0))
        .with(b.a("CC-Request-Type", "INITIAL_REQUEST"))
        .with(b.a("CC-Request-Number", 0))
        .with(b.g(
            "Supported-Features",
            vec![b.a("Vendor-Id", 10415), b.a("Feature-List-ID", 1), b.a("Feature-List", 0x0000_0003)],
        ))
        .with(b.a("Bearer-Control-Mode", "UE_NW"))
        .with(b.a("Event-Trigger", "RAT_CHANGE"))
        .with(b.a("Event-Trigger", "USAGE_REPORT"))
        .with(b.g(
            "Charging-Rule-Install",
            vec![
                b.g(
                    "Charging-Rule-Definition",
                    vec![
                        b.a("Charging-Rule-Name", Bytes::from_static(b"video-zero-rated")),
                        b.g(
                            "Flow-Information",
                            vec![
                                b.a("Flow-Description", "permit out 17 from 198.51.100.0/24 443 to assigned"),
                                b.a("Flow-Direction", "DOWNLINK"),
                            ],
                        ),
                        b.g(
                            "QoS-Information",
                            vec![b.a("QoS-Class-Identifier", "QCI_8"), b.a("Max-Requested-Bandwidth-DL", 20_000_000)],
                        ),
                        b.a("Rating-Group", 200),
                        b.a("Online", "DISABLE_ONLINE"),
                        b.a("Offline", "ENABLE_OFFLINE"),
                        b.a("Metering-Method", "VOLUME"),
                        b.a("Precedence", 100),
                        b.a("Monitoring-Key", Bytes::from_static(b"mk-video")),
                    ],
                ),
                b.a("Charging-Rule-Base-Name", "default-internet"),
            ],
        ))
        .with(b.g(
            "Usage-Monitoring-Information",
            vec![
                b.a("Monitoring-Key", Bytes::from_static(b"mk-video")),
                b.g("Granted-Service-Unit", vec![b.a("CC-Total-Octets", 1_000_000_000u64)]),
                b.a("Usage-Monitoring-Level", "PCC_RULE_LEVEL"),
            ],
        ));
    let rar = ids(Message::request(CommandCode::RE_AUTH, AppId::GX), 0x0d00_0001, 0x0d5e_0001)
        .with(b.a("Session-Id", GX_SID))
        .with(b.a("Auth-Application-Id", AppId::GX.0))
        .with(b.a("Origin-Host", "pcrf1.pcrf.example.net"))
        .with(b.a("Origin-Realm", "pcrf.example.net"))
        .with(b.a("Destination-Realm", "epc.example.net"))
        .with(b.a("Destination-Host", "pgw1.epc.example.net"))
        .with(b.a("Re-Auth-Request-Type", "AUTHORIZE_ONLY"))
        .with(b.a("Event-Trigger", "SUCCESSFUL_RESOURCE_ALLOCATION"))
        .with(b.g("Charging-Rule-Remove", vec![b.a("Charging-Rule-Name", Bytes::from_static(b"video-zero-rated"))]));
    let raa = answer(&rar, b, "pgw1.epc.example.net", "epc.example.net", ResultCode::SUCCESS).with(b.g(
        "Charging-Rule-Report",
        vec![
            b.a("Charging-Rule-Name", Bytes::from_static(b"video-zero-rated")),
            b.a("PCC-Rule-Status", "INACTIVE"),
            b.a("Rule-Failure-Code", "RESOURCE_ALLOCATION_FAILURE"),
        ],
    ));
    vec![("Gx CCR-I", ccr), ("Gx CCA-I", cca), ("Gx RAR", rar), ("Gx RAA", raa)]
}

/// A dictionary file of our own covering what the loader reads (the seed of the dictionary fuzzing): an application with a vendor, a command with both
/// grammars, AVPs of several types, an Enumerated, Grouped AVPs naming each other (a cycle), and an override of a
/// shipped AVP.
pub const DICTIONARY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<diameter>
  <application id="16777999" type="auth" name="Fuzz App">
    <vendor id="99999" name="Fuzz"/>
    <command code="8388001" short="FZ" name="Fuzz-Command">
      <request>
        <rule avp="Session-Id" required="true" max="1"/>
        <rule avp="Origin-Host" required="true" max="1"/>
        <rule avp="Origin-Realm" required="true" max="1"/>
        <rule avp="Fuzz-Group" required="false"/>
      </request>
      <answer>
        <rule avp="Session-Id" required="true" max="1"/>
        <rule avp="Result-Code" required="false" max="1"/>
      </answer>
    </command>
    <avp name="Fuzz-Group" code="9001" must="V,M" may="P" must-not="-" may-encrypt="Y" vendor-id="99999">
      <data type="Grouped">
        <rule avp="Fuzz-Inner" required="false" max="2"/>
        <rule avp="Fuzz-Kind" required="true" max="1"/>
      </data>
    </avp>
    <avp name="Fuzz-Inner" code="9002" must="V" may="P" must-not="-" may-encrypt="Y" vendor-id="99999">
      <data type="Grouped">
        <rule avp="Fuzz-Group" required="false"/>
        <rule avp="Fuzz-Address" required="false" max="1"/>
      </data>
    </avp>
    <avp name="Fuzz-Kind" code="9003" must="V,M" may="P" must-not="-" may-encrypt="Y" vendor-id="99999">
      <data type="Enumerated">
        <item code="0" name="ZERO"/>
        <item code="4294967295" name="BIG"/>
      </data>
    </avp>
    <avp name="Fuzz-Address" code="9004" must="V" may="P" must-not="-" may-encrypt="N" vendor-id="99999">
      <data type="Address"/>
    </avp>
    <avp name="Fuzz-Time" code="9005" must="V" may="P" must-not="M" may-encrypt="N" vendor-id="99999">
      <data type="Time"/>
    </avp>
    <avp name="Rating-Group" code="432" must="M" may="P" must-not="V" may-encrypt="Y">
      <data type="Unsigned32"/>
    </avp>
  </application>
</diameter>
"#;

/// One body of each kind the HTTP front takes (route, JSON): the seeds of its fuzzing, valid as they are.
pub fn http_bodies() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "open",
            r#"{"app": "ro", "subscriber": {"type": "msisdn", "data": "46701"}, "service_context": "32260@3gpp.org",
        "rating_groups": [{"rating_group": 10, "service_id": 1, "requested": {"time": 60, "total_octets": 1000}}],
        "convergence": "call-1", "replicate": true,
        "avps": [{"name": "Service-Information", "value": [{"name": "IMS-Information", "value": [{"name": "Node-Functionality", "value": 0}]}]}]}"#,
        ),
        (
            "update",
            r#"{"used": [{"rating_group": 10, "used": {"time": 30}, "reporting_reason": 3}], "requested": [{"rating_group": 10, "requested": {}}],
        "idempotency_key": "k1", "avps": [{"name": "Event-Trigger", "value": 13}, {"name": "Framed-IP-Address", "value": "10.0.0.1"}]}"#,
        ),
        (
            "terminate",
            r#"{"used": [{"rating_group": 10, "used": {"input_octets": 5, "output_octets": 7}}], "avps": [{"name": "Termination-Cause", "value": "DIAMETER_LOGOUT"}]}"#,
        ),
        (
            "event",
            r#"{"subscriber": {"type": "imsi", "data": "240011234567890"}, "requested_action": "direct_debiting", "requested": {"service_specific_units": 3}, "service_id": 7}"#,
        ),
    ]
}

/// SIP messages with the forms a parser must handle (compact headers, folding, comma-joined Vias and
/// Record-Routes, a quoted comma, IPv6): seeds for the SIP fuzz targets and tests.
pub fn sip() -> Vec<(&'static str, &'static str)> {
    let texts: [&'static str; 3] = [
        "INVITE sip:bob@192.0.2.4 SIP/2.0\r\nv: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport, SIP/2.0/TCP p:5070;branch=z9hG4bK2\r\n\
     f: \"A, B\" <sip:alice@a.example>;tag=1\r\nt: <sip:bob@b.example>\r\ni: abc@192.0.2.1\r\nCSeq: 1 INVITE\r\n\
     m: <sip:alice@192.0.2.1>\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\nMax-Forwards: 70\r\nSubject: a\r\n folded\r\n\
     c: application/sdp\r\nl: 4\r\n\r\nv=0\r\n",
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: <sip:a@a>;tag=1\r\nTo: <sip:b@b>;tag=2\r\n\
     Call-ID: x\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        "BYE sip:b2bua@[::1]:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:5061;branch=z9hG4bK9;received=::1\r\nFrom: <sip:a@a>;tag=1\r\n\
     To: <sip:b@b>;tag=2\r\nCall-ID: y\r\nCSeq: 7 BYE\r\nMax-Forwards: 70\r\nRoute: <sip:10.0.0.1;lr>\r\n\r\n",
    ];
    ["invite_compact_folded", "ok_to_bye", "bye_ipv6_route"].into_iter().zip(texts).collect()
}
