//! Property: decode(encode(m)) == m for arbitrary messages, and Grouped members come back as built.

use bytes::Bytes;
use proptest::prelude::*;

use charging_ra::codec::{
    AppId, Avp, AvpFlags, CommandCode, CommandFlags, EndToEndId, Header, HopByHopId, Message, VendorId,
};

fn leaf() -> impl Strategy<Value = Avp> {
    (any::<u32>(), any::<u8>(), proptest::option::of(any::<u32>()), proptest::collection::vec(any::<u8>(), 0..40))
        .prop_map(|(code, flags, vendor, data)| {
            Avp::new(code, AvpFlags(flags), vendor.map(VendorId), Bytes::from(data))
        })
}

fn avp() -> impl Strategy<Value = Avp> {
    leaf().prop_recursive(4, 32, 5, |inner| {
        (any::<u32>(), proptest::collection::vec(inner, 0..5))
            .prop_map(|(code, children)| Avp::grouped(code, &children))
    })
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u8>(), 0u32..1 << 24, any::<u32>(), any::<u32>(), any::<u32>(), proptest::collection::vec(avp(), 0..12))
        .prop_map(|(flags, code, app, hbh, e2e, avps)| {
            // The one header rule the decoder enforces: no E bit on a request.
            let flags = if flags & 0x80 != 0 { flags & !0x20 } else { flags };
            Message {
                header: Header {
                    flags: CommandFlags(flags),
                    code: CommandCode(code),
                    application_id: AppId(app),
                    hop_by_hop: HopByHopId(hbh),
                    end_to_end: EndToEndId(e2e),
                },
                avps,
            }
        })
}

proptest! {
    #[test]
    fn decode_inverts_encode(m in message()) {
        let bytes = m.encode().unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        let back = Message::decode(bytes.clone()).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.encode().unwrap(), bytes);
    }

    #[test]
    fn grouped_members_come_back(code in any::<u32>(), children in proptest::collection::vec(leaf(), 0..8)) {
        let g = Avp::grouped(code, &children);
        prop_assert_eq!(g.grouped_avps().unwrap(), children);
    }
}
