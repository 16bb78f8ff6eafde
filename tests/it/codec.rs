//! Round trips, golden vectors, and malformed vectors with the Result-Code each must get.

use bytes::{BufMut, Bytes, BytesMut};

use charging_ra::codec::{
    AppId, Avp, AvpFlags, CommandCode, DecodeError, DecodeErrorKind, DecodeLimits, Message, ResultCode, VendorId, code,
    peek_frame_length,
};
use charging_ra::dict::Dictionary;
use charging_ra::samples;

fn decode_and_validate(dict: &Dictionary, bytes: Bytes) -> Result<Message, DecodeError> {
    let limits = DecodeLimits::default();
    let msg = Message::decode_with(bytes, &limits)?;
    dict.validate(&msg, &limits)?;
    Ok(msg)
}

#[test]
fn every_sample_round_trips_and_validates() {
    let dict = Dictionary::builtin();
    for (name, msg) in samples::all(&dict) {
        let bytes = msg.encode().unwrap();
        assert_eq!(bytes.len(), msg.encoded_len(), "{name}");
        let back = decode_and_validate(&dict, bytes.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, msg, "{name}");
        assert_eq!(back.encode().unwrap(), bytes, "{name}: re-encoding changed bytes");
    }
}

/// Golden vectors: the exact bytes of every sample, committed. A change to the encoder or to the samples shows
/// up here; regenerate deliberately with `UPDATE_GOLDEN=1 cargo test golden`.
#[test]
fn golden_vectors_match() {
    let dict = Dictionary::builtin();
    let mut text = String::new();
    for (name, msg) in samples::all(&dict) {
        text.push_str(&format!("# {name}\n{}\n", hex::encode(msg.encode().unwrap())));
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/samples.hex");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(path).expect("tests/golden/samples.hex (UPDATE_GOLDEN=1 writes it)");
    for (want, got) in golden.lines().zip(text.lines()) {
        assert_eq!(got, want);
    }
    assert_eq!(golden.lines().count(), text.lines().count());
    // And the golden bytes decode to the samples (the decoder against fixed input, not its own encoder).
    let decoded: Vec<Message> = golden
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| decode_and_validate(&dict, Bytes::from(hex::decode(l).unwrap())).unwrap())
        .collect();
    let originals: Vec<Message> = samples::all(&dict).into_iter().map(|(_, m)| m).collect();
    assert_eq!(decoded, originals);
}

/// A DWR written octet by octet from RFC 6733 §3 and §4.1, independent of our encoder.
#[test]
fn hand_written_dwr_decodes() {
    #[rustfmt::skip]
    let bytes: &[u8] = &[
        0x01, 0x00, 0x00, 0x30,             // version 1, length 48
        0x80, 0x00, 0x01, 0x18,             // R, Device-Watchdog 280
        0x00, 0x00, 0x00, 0x00,             // application 0
        0x12, 0x34, 0x56, 0x78,             // hop-by-hop
        0x9a, 0xbc, 0xde, 0xf0,             // end-to-end
        0x00, 0x00, 0x01, 0x08, 0x40, 0x00, 0x00, 0x0d, b'a', b'.', b'b', b'c', b'd', 0, 0, 0, // Origin-Host "a.bcd", padded
        0x00, 0x00, 0x01, 0x28, 0x40, 0x00, 0x00, 0x0b, b'b', b'c', b'd', 0, // Origin-Realm "bcd", padded
    ];
    let dict = Dictionary::builtin();
    let m = decode_and_validate(&dict, Bytes::from_static(bytes)).unwrap();
    assert_eq!(m.header.code, CommandCode::DEVICE_WATCHDOG);
    assert_eq!(m.header.hop_by_hop.0, 0x1234_5678);
    assert_eq!(m.find(code::ORIGIN_HOST, 0).unwrap().as_identity(), Ok("a.bcd"));
    assert_eq!(m.find(code::ORIGIN_REALM, 0).unwrap().as_identity(), Ok("bcd"));
    assert_eq!(&m.encode().unwrap()[..], bytes);
}

/// Builds a message from raw AVP bytes (so that malformed AVPs can be written), with a correct header length.
fn raw_message(flags: u8, cmd: u32, app: u32, body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(1 << 24 | (20 + body.len()) as u32);
    b.put_u32(u32::from(flags) << 24 | cmd);
    b.put_u32(app);
    b.put_u32(7);
    b.put_u32(8);
    b.put_slice(body);
    b.freeze()
}

fn avp_bytes(avps: &[Avp]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for a in avps {
        a.encode_into(&mut b);
    }
    b.to_vec()
}

/// A valid DWR body to which each case adds or changes something.
fn dwr_avps() -> Vec<Avp> {
    vec![Avp::utf8(code::ORIGIN_HOST, "as1.example.net"), Avp::utf8(code::ORIGIN_REALM, "example.net")]
}

fn ccr_u(dict: &Dictionary) -> Message {
    samples::ro_ccr_update(dict)
}

struct Case {
    name: &'static str,
    bytes: Bytes,
    rc: u32,
    /// Code of the top-level Failed-AVP, when one is expected.
    failed: Option<u32>,
}

fn cases(dict: &Dictionary) -> Vec<Case> {
    let dwr = |avps: &[Avp]| raw_message(0x80, 280, 0, &avp_bytes(avps));
    let mut v = vec![];
    let good = dwr(&dwr_avps());
    let mut b = good.to_vec();
    b[0] = 2;
    v.push(Case { name: "version 2", bytes: b.into(), rc: 5011, failed: None });
    let mut b = good.to_vec();
    b.push(0);
    b[3] += 1;
    v.push(Case { name: "length not a multiple of 4", bytes: b.into(), rc: 5015, failed: None });
    let mut b = good.to_vec();
    b[3] += 8;
    v.push(Case { name: "length beyond the frame", bytes: b.into(), rc: 5015, failed: None });
    let mut b = good.to_vec();
    b[3] -= 4;
    v.push(Case { name: "length short of the frame", bytes: b.into(), rc: 5015, failed: None });
    let mut b = good.to_vec();
    b[4] |= 0x20;
    v.push(Case { name: "E bit on a request", bytes: b.into(), rc: 3008, failed: None });
    // AVP length 7: below the 8-octet header.
    let mut body = avp_bytes(&dwr_avps());
    body[7] = 7;
    v.push(Case {
        name: "AVP length below header",
        bytes: raw_message(0x80, 280, 0, &body),
        rc: 5014,
        failed: Some(264),
    });
    let mut body = avp_bytes(&dwr_avps());
    body[6] = 0x10;
    v.push(Case {
        name: "AVP length beyond message",
        bytes: raw_message(0x80, 280, 0, &body),
        rc: 5014,
        failed: Some(264),
    });
    // V bit set but the AVP is only 8 octets long: no room for the Vendor-ID.
    let mut body = avp_bytes(&dwr_avps());
    body.extend_from_slice(&[0, 0, 0, 1, 0x80, 0, 0, 8]);
    v.push(Case {
        name: "V bit without room for Vendor-ID",
        bytes: raw_message(0x80, 280, 0, &body),
        rc: 5014,
        failed: Some(1),
    });
    // Grouped AVP (Proxy-Info) whose member overruns it.
    let mut inner = avp_bytes(&[Avp::utf8(code::PROXY_HOST, "p.example.net")]);
    inner[7] += 8;
    let proxy_info = Avp::mandatory(code::PROXY_INFO, Bytes::from(inner));
    v.push(Case {
        name: "grouped member overruns its parent",
        bytes: dwr(&[dwr_avps(), vec![proxy_info]].concat()),
        rc: 5014,
        failed: Some(284),
    });
    // Nesting beyond the limit: Proxy-Info inside Proxy-Info … (allowed by *[AVP]).
    let mut deep = Avp::utf8(code::PROXY_HOST, "p.example.net");
    for _ in 0..40 {
        deep = Avp::grouped(code::PROXY_INFO, &[deep]);
    }
    v.push(Case {
        name: "nesting beyond the limit",
        bytes: dwr(&[dwr_avps(), vec![deep]].concat()),
        rc: 5004,
        failed: Some(284),
    });
    let mut m = ccr_u(dict);
    m.avps.retain(|a| !a.is(461, 0));
    m.avps.insert(4, Avp::octets(461, Bytes::from_static(b"32260@\xff\xfe")));
    v.push(Case { name: "invalid UTF-8 in UTF8String", bytes: m.encode().unwrap(), rc: 5004, failed: Some(461) });
    let cer = |extra: Avp| {
        let mut m = samples::all(dict).remove(0).1;
        m.avps.retain(|a| !a.is(code::HOST_IP_ADDRESS, 0));
        m.avps.insert(2, extra);
        m.encode().unwrap()
    };
    v.push(Case {
        name: "Address family 0",
        bytes: cer(Avp::octets(257, Bytes::from_static(&[0, 0, 127, 0, 0, 1]))),
        rc: 5004,
        failed: Some(257),
    });
    v.push(Case {
        name: "IPv4 Address of 5 octets",
        bytes: cer(Avp::octets(257, Bytes::from_static(&[0, 1, 127, 0, 0, 1, 9]))),
        rc: 5014,
        failed: Some(257),
    });
    v.push(Case {
        name: "Unsigned32 of 3 octets",
        bytes: dwr(&[dwr_avps(), vec![Avp::octets(code::ORIGIN_STATE_ID, Bytes::from_static(&[0, 0, 1]))]].concat()),
        rc: 5014,
        failed: Some(278),
    });
    v.push(Case {
        name: "unknown AVP with the M bit",
        bytes: dwr(
            &[dwr_avps(), vec![Avp::octets(99_999, Bytes::from_static(b"zz")).with_vendor(VendorId(4242))]].concat()
        ),
        rc: 5001,
        failed: Some(99_999),
    });
    v.push(Case { name: "missing Origin-Realm", bytes: dwr(&dwr_avps()[..1]), rc: 5005, failed: Some(296) });
    let mut m = ccr_u(dict);
    m.avps.retain(|a| !a.is(code::CC_REQUEST_NUMBER, 0));
    v.push(Case { name: "CCR without CC-Request-Number", bytes: m.encode().unwrap(), rc: 5005, failed: Some(415) });
    let mut m = ccr_u(dict);
    m.avps.push(Avp::grouped(code::SUBSCRIPTION_ID, &[Avp::i32(code::SUBSCRIPTION_ID_TYPE, 1)]));
    v.push(Case { name: "Subscription-Id without its Data", bytes: m.encode().unwrap(), rc: 5005, failed: Some(443) });
    v.push(Case {
        name: "Origin-Host twice",
        bytes: dwr(&[dwr_avps(), vec![Avp::utf8(code::ORIGIN_HOST, "x.example.net")]].concat()),
        rc: 5009,
        failed: Some(264),
    });
    // Error-Message must not have the M bit (RFC 6733 §4.5).
    v.push(Case {
        name: "M bit where the definition forbids it",
        bytes: dwr(&[dwr_avps(), vec![Avp::utf8(code::ERROR_MESSAGE, "x")]].concat()),
        rc: 3009,
        failed: Some(281),
    });
    v.push(Case {
        name: "unknown command",
        bytes: raw_message(0x80, 9999, 0, &avp_bytes(&dwr_avps())),
        rc: 3001,
        failed: None,
    });
    v.push(Case {
        name: "unknown application",
        bytes: raw_message(0x80, 272, 77, &avp_bytes(&dwr_avps())),
        rc: 3007,
        failed: None,
    });
    v
}

#[test]
fn malformed_vectors_get_the_right_result_code_and_failed_avp() {
    let dict = Dictionary::builtin();
    for case in cases(&dict) {
        let err = decode_and_validate(&dict, case.bytes.clone()).expect_err(case.name);
        assert_eq!(err.result_code(), ResultCode(case.rc), "{}: {err}", case.name);
        assert_eq!(err.failed_avp().map(Avp::code), case.failed, "{}: Failed-AVP", case.name);
        // Every one of these is a request whose header could be read: it can be answered, and the answer is a
        // valid message of its own (E bit for 3xxx, Failed-AVP, Error-Message).
        let request = Message::decode(case.bytes.clone()).ok();
        let answer = err.to_answer(request.as_ref(), "ocs.example.net", "example.net").expect(case.name);
        assert_eq!(answer.header.flags.is_error(), case.rc / 1000 == 3, "{}", case.name);
        assert_eq!(answer.result_code(), Some(ResultCode(case.rc)));
        let bytes = answer.encode().unwrap();
        let back = Message::decode(bytes).unwrap();
        if case.rc / 1000 == 3 || case.rc == 5001 {
            // Protocol-error answers use the generic answer grammar (RFC 6733 §7.2).
            if back.header.flags.is_error() {
                dict.validate(&back, &DecodeLimits::default())
                    .unwrap_or_else(|e| panic!("{}: answer invalid: {e}", case.name));
            }
        }
    }
}

#[test]
fn nested_failure_is_reported_inside_its_parent() {
    let dict = Dictionary::builtin();
    let mut m = ccr_u(&dict);
    m.avps.push(Avp::grouped(code::SUBSCRIPTION_ID, &[Avp::i32(code::SUBSCRIPTION_ID_TYPE, 1)]));
    let err = decode_and_validate(&dict, m.encode().unwrap()).unwrap_err();
    let failed = err.failed_avp().unwrap();
    // RFC 6733 §7.5: the Grouped AVP containing an example of the missing member, zero-filled.
    let inner = failed.grouped_avps().unwrap();
    assert_eq!(inner.len(), 1);
    assert!(inner[0].is(code::SUBSCRIPTION_ID_DATA, 0));
}

#[test]
fn unknown_optional_avps_commands_and_applications_survive_byte_for_byte() {
    let dict = Dictionary::builtin();
    // An unknown non-M vendor AVP with odd length and reserved flag bits set: accepted, and re-encoded as is.
    let odd = Avp::new(77_777, AvpFlags(0x1f), Some(VendorId(4242)), Bytes::from_static(b"abcde"));
    let mut m = ccr_u(&dict);
    m.avps.push(odd.clone());
    let bytes = m.encode().unwrap();
    let back = decode_and_validate(&dict, bytes.clone()).unwrap();
    assert_eq!(back.avps.last(), Some(&odd));
    assert_eq!(back.encode().unwrap(), bytes);
    // An unknown command of an unknown application decodes (validation alone says 3001/3007), keeping the header
    // so that the answer can be built.
    let unknown = raw_message(0xc0 | 0x0f, 12_345, 0x0100_0001, &avp_bytes(&dwr_avps()));
    let msg = Message::decode(unknown.clone()).unwrap();
    assert_eq!(msg.header.flags.0, 0xcf, "reserved command flag bits kept");
    assert_eq!(msg.encode().unwrap(), unknown);
}

#[test]
fn grouped_payload_without_last_padding_is_accepted() {
    // Some peers omit the final member's padding inside a Grouped AVP; the message itself stays aligned.
    let mut inner = avp_bytes(&[Avp::utf8(code::PROXY_HOST, "p.example.net")]);
    inner.truncate(inner.len() - 3);
    let mut body = avp_bytes(&dwr_avps());
    body.extend(avp_bytes(&[Avp::mandatory(code::PROXY_INFO, Bytes::from(inner))]));
    let dict = Dictionary::builtin();
    let m = decode_and_validate(&dict, raw_message(0x80, 280, 0, &body));
    // Proxy-Info requires Proxy-State too: the structure is read, the grammar then applies.
    let err = m.unwrap_err();
    assert_eq!(err.result_code(), ResultCode::MISSING_AVP);
}

#[test]
fn frame_length_is_checked_before_reading() {
    let limits = DecodeLimits { max_message_size: 4096, ..Default::default() };
    assert_eq!(peek_frame_length(&[1, 0], &limits), Ok(None));
    assert_eq!(peek_frame_length(&[1, 0, 0, 20, 0x80], &limits), Ok(Some(20)));
    let too_big = peek_frame_length(&[1, 0xff, 0xff, 0xfc], &limits).unwrap_err();
    assert!(matches!(too_big.kind, DecodeErrorKind::TooLarge { .. }));
    assert_eq!(peek_frame_length(&[2, 0, 0, 20], &limits).unwrap_err().result_code(), ResultCode::UNSUPPORTED_VERSION);
    assert_eq!(
        peek_frame_length(&[1, 0, 0, 19], &limits).unwrap_err().result_code(),
        ResultCode::INVALID_MESSAGE_LENGTH
    );
    assert_eq!(
        peek_frame_length(&[1, 0, 0, 22], &limits).unwrap_err().result_code(),
        ResultCode::INVALID_MESSAGE_LENGTH
    );
    // A frame decoder under the limit refuses the big message without reading it.
    let big =
        Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL).with(Avp::octets(1, vec![0u8; 8000]));
    let err = Message::decode_with(big.encode().unwrap(), &limits).unwrap_err();
    assert_eq!(err.kind, DecodeErrorKind::TooLarge { length: big.encoded_len(), max: 4096 });
    assert!(err.header.is_some());
}

#[test]
fn experimental_result_reads_like_result_code() {
    let exp = Avp::grouped(
        code::EXPERIMENTAL_RESULT,
        &[Avp::u32(code::VENDOR_ID, 10415), Avp::u32(code::EXPERIMENTAL_RESULT_CODE, 5065)],
    );
    let m = Message::request(CommandCode::CREDIT_CONTROL, AppId::GX).with(exp);
    assert_eq!(m.result_code(), Some(ResultCode(5065)));
}
