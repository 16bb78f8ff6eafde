//! The shipped dictionaries: lint, and a minimal valid message for every command built from its grammar.

use bytes::Bytes;

use charging_ra::codec::value::Address;
use charging_ra::codec::{AppId, Avp, CommandCode, CommandFlags, DecodeLimits, Message};
use charging_ra::dict::{AvpDef, DataType, Dictionary};

#[test]
fn shipped_dictionaries_lint_clean() {
    let dict = Dictionary::builtin();
    let findings = dict.lint();
    assert!(findings.is_empty(), "{}", findings.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n"));
    // What the lint proves is only worth something if it can fail: a broken file is caught.
    let bad = r#"<diameter><application id="4" name="bad">
        <avp name="Broken-Group " code="4242" must="M"><data type="Grouped"><rule avp="No-Such-AVP" required="true"/></data></avp>
        <avp name="Twice" code="4243" must="M"><data type="Enumerated"><item code="1" name="A"/><item code="1" name="B"/></data></avp>
        <avp name="Rating-Group" code="432" must="M"><data type="Unsigned32"/></avp>
        <avp name="Vendorless" code="4244" must="V,M"><data type="Unsigned32"/></avp>
    </application></diameter>"#;
    let dict = Dictionary::with_files(&[("bad.xml", bad)]).unwrap();
    let problems: Vec<String> = dict.lint().iter().map(|f| f.problem.clone()).collect();
    for expected in [
        "stray whitespace",
        "undefined AVP \"No-Such-AVP\"",
        "value 1 listed twice",
        "defined again",
        "vendor-id 0 but V is in must",
    ] {
        assert!(problems.iter().any(|p| p.contains(expected)), "lint missed {expected:?}: {problems:?}");
    }
}

#[test]
fn dictionary_files_report_where_they_are_wrong() {
    let err = Dictionary::with_files(&[("x.xml", "<diameter><application id=\"4\">\n<avp name=\"A\" code=\"1\"><data type=\"Text\"/></avp></application></diameter>")]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("x.xml") && msg.contains("line 2") && msg.contains("\"Text\""), "{msg}");
    assert!(Dictionary::with_files(&[("y.xml", "<diameter><application>")]).is_err());
}

#[test]
fn codes_the_stack_uses_agree_with_the_dictionary() {
    use charging_ra::codec::code::*;
    let dict = Dictionary::builtin();
    for (name, code) in [
        ("Session-Id", SESSION_ID),
        ("Origin-Host", ORIGIN_HOST),
        ("Result-Code", RESULT_CODE),
        ("Failed-AVP", FAILED_AVP),
        ("Experimental-Result-Code", EXPERIMENTAL_RESULT_CODE),
        ("CC-Request-Number", CC_REQUEST_NUMBER),
        ("Multiple-Services-Credit-Control", MULTIPLE_SERVICES_CREDIT_CONTROL),
        ("Validity-Time", VALIDITY_TIME),
        ("Final-Unit-Action", FINAL_UNIT_ACTION),
        ("Service-Context-Id", SERVICE_CONTEXT_ID),
        ("Route-Record", ROUTE_RECORD),
        ("Proxy-Info", PROXY_INFO),
    ] {
        assert_eq!(dict.avp_by_name(name).map(|d| d.code), Some(code), "{name}");
    }
}

/// A valid value for any AVP: the smallest thing its format and grammar accept.
fn minimal_avp(dict: &Dictionary, def: &AvpDef, depth: usize) -> Avp {
    assert!(depth < 12, "required members recurse through {}", def.name);
    let data: Bytes = match def.data_type {
        DataType::OctetString => Bytes::from_static(b"x"),
        DataType::Integer32 | DataType::Unsigned32 | DataType::Float32 | DataType::Time => {
            Bytes::from_static(&[0, 0, 0, 1])
        }
        DataType::Enumerated => Bytes::copy_from_slice(&def.items.first().map_or(0, |i| i.code).to_be_bytes()),
        DataType::Integer64 | DataType::Unsigned64 | DataType::Float64 => Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 1]),
        DataType::Address => Avp::address(0, &Address::Ipv4([192, 0, 2, 1].into())).data().clone(),
        DataType::UTF8String => Bytes::from_static("é".as_bytes()),
        DataType::DiameterIdentity => Bytes::from_static(b"host.example.net"),
        DataType::DiameterURI => Bytes::from_static(b"aaa://host.example.net:3868;transport=tcp"),
        DataType::IPFilterRule => Bytes::from_static(b"permit out ip from any to assigned"),
        DataType::QoSFilterRule => Bytes::from_static(b"meter out ip from any to any"),
        DataType::Grouped => {
            let members = required_members(dict, &def.grammar.clone().unwrap_or_default().rules, depth + 1);
            return def.make(Avp::grouped(0, &members).data().clone());
        }
    };
    def.make(data)
}

fn required_members(dict: &Dictionary, rules: &[charging_ra::dict::Rule], depth: usize) -> Vec<Avp> {
    let mut out = Vec::new();
    for rule in rules {
        let def = dict.avp_by_name(&rule.name).unwrap();
        for _ in 0..rule.min {
            out.push(minimal_avp(dict, def, depth));
        }
    }
    out
}

#[test]
fn every_command_round_trips_with_its_required_avps() {
    let dict = Dictionary::builtin();
    let limits = DecodeLimits::default();
    let mut count = 0;
    for (app, cmd) in dict.commands() {
        for request in [true, false] {
            let grammar = if request { &cmd.request } else { &cmd.answer };
            let mut m = Message::request(
                CommandCode(cmd.code),
                if app.0 == 0 && cmd.code == 272 { AppId::CREDIT_CONTROL } else { app },
            );
            if !request {
                m.header.flags = CommandFlags(CommandFlags::PROXIABLE);
            }
            m.avps = required_members(&dict, &grammar.rules, 0);
            let bytes = m.encode().unwrap();
            let back = Message::decode_with(bytes.clone(), &limits).unwrap();
            assert_eq!(back, m);
            dict.validate(&back, &limits)
                .unwrap_or_else(|e| panic!("{} {}: {e}", cmd.name, if request { "request" } else { "answer" }));
            count += 1;
        }
    }
    // base (CE, DW, DP, RA, AS, ST, AC) + CC for Ro + CC and RA for Gx, each request and answer.
    assert!(count >= 20, "{count}");
}

#[test]
fn every_avp_definition_builds_a_valid_value() {
    let dict = Dictionary::builtin();
    for def in dict.avps() {
        if def.vendor == 0 && (def.code == 264 || def.code == 296) {
            continue; // the DWR carries them already
        }
        let avp = minimal_avp(&dict, def, 0);
        // Inside a DWR (which allows any AVP), each AVP passes validation: its value, flags and members.
        let m = Message::request(CommandCode::DEVICE_WATCHDOG, AppId::COMMON)
            .with(Avp::utf8(264, "a.example.net"))
            .with(Avp::utf8(296, "example.net"))
            .with(avp);
        let back = Message::decode(m.encode().unwrap()).unwrap();
        dict.validate(&back, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{}: {e}", def.name));
    }
    assert!(dict.avps().len() > 350, "{}", dict.avps().len());
}
