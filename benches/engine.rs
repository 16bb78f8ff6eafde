//! Engine hot paths, sans I/O: `cargo bench --bench engine`. Results are in BENCHMARKS.md.
//!
//! - `cc/update-cycle`: one CCR-U/CCA of an open Ro session through the RFC 4006 machine (`CcSession`): the
//!   service's update, the request built and encoded, the answer (built here as a server would) handled, the
//!   outputs drained. What the engine's task does per transaction, without the network.
//! - `snapshot/encode`: what a write-ahead adds per CCR: the session's snapshot, with its request in flight, as the
//!   state record the store keeps, in each encoding (`[replication] state_encoding`).
//! - `snapshot/restore`: what an adopter does with it: the record parsed and the machine rebuilt.
//! - `ocs/tcc-expire`: one Tcc expiry pass of the OCS simulator with 200,000 sessions open and none idle for Tcc
//!   (the simulator runs one every Tcc/10, 20 ms to 1 s).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use charging_ra::cc::{CcConfig, CcOutput, CcSession, CcSnapshot, Ccfh, Ddfh};
use charging_ra::codec::{AppId, Avp, CommandCode, Message, code};
use charging_ra::ocs::{Ocs, OcsConfig};
use charging_ra::replication::{self, FORMAT, StateEncoding, StateRecord};
use charging_ra::units::Units;

fn config() -> CcConfig {
    CcConfig {
        application: AppId::CREDIT_CONTROL,
        origin_host: "as1.ims.example.net".into(),
        origin_realm: "ims.example.net".into(),
        destination_realm: "ocs.example.net".into(),
        destination_host: None,
        service_context_id: "32260@3gpp.org".into(),
        tx: Duration::from_secs(10),
        ccfh: Ccfh::Terminate,
        ddfh: Ddfh::TerminateOrBuffer,
        subscription: Some((0, "46701234567".into())),
    }
}

/// The server's answer: 2001 with 300 s more on rating group 10.
fn cca(ccr: &Message) -> Message {
    let mut a = Message::answer_to(ccr);
    a.push(Avp::utf8(code::ORIGIN_HOST, "ocs1.ocs.example.net"))
        .push(Avp::utf8(code::ORIGIN_REALM, "ocs.example.net"))
        .push(Avp::u32(code::RESULT_CODE, 2001));
    for c in [code::CC_REQUEST_TYPE, code::CC_REQUEST_NUMBER] {
        a.push(ccr.find(c, 0).expect("in every CCR").clone());
    }
    let gsu = Avp::grouped(code::GRANTED_SERVICE_UNIT, &[Avp::u32(code::CC_TIME, 300)]);
    a.push(Avp::grouped(
        code::MULTIPLE_SERVICES_CREDIT_CONTROL,
        &[gsu, Avp::u32(code::RATING_GROUP, 10), Avp::u32(code::RESULT_CODE, 2001)],
    ));
    a
}

/// The request the machine has to send, if any; every other output drained.
fn sent(s: &mut CcSession) -> Option<Message> {
    let mut out = None;
    while let Some(o) = s.poll_output() {
        if let CcOutput::Send(m) = o {
            out = Some(m);
        }
    }
    out
}

/// An open session (CCR-I answered).
fn open(now: Instant) -> CcSession {
    let mut s = CcSession::new(config(), "as1.ims.example.net;1798000000;1;a0e20".into());
    s.start(now, &[(Some(10), Units::default())], None);
    let ccr = sent(&mut s).expect("CCR-I");
    assert!(s.handle_answer(now, &cca(&ccr)));
    sent(&mut s);
    s
}

fn used() -> Vec<(Option<u32>, Units)> {
    vec![(Some(10), Units { time: Some(1), ..Units::default() })]
}

fn engine(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));

    let mut s = open(now);
    g.bench_function("cc/update-cycle", |b| {
        b.iter(|| {
            s.update(now, used(), vec![], None, None);
            let ccr = sent(&mut s).expect("CCR-U");
            black_box(ccr.encode().expect("encodes"));
            assert!(s.handle_answer(now, &cca(&ccr)));
            sent(&mut s);
        })
    });

    // A write-ahead's snapshot: the CCR-U is in flight.
    let mut s = open(now);
    s.update(now, used(), vec![], None, None);
    let _ccr = sent(&mut s).expect("CCR-U");
    let wall = 1_798_000_000_000;
    let record = |s: &CcSession| StateRecord {
        format: FORMAT,
        written_by_epoch: 1,
        written_by: "node-1".to_string(),
        state: s.snapshot(now, wall),
    };
    for (name, encoding) in [("json", StateEncoding::Json), ("binary", StateEncoding::Binary)] {
        let bytes = replication::encode_state(&record(&s), encoding);
        g.bench_function(format!("snapshot/encode {name} ({} octets)", bytes.len()), |b| {
            b.iter(|| black_box(replication::encode_state(&record(&s), encoding)))
        });
        // What a write-ahead does: the same bytes, serialized from the session in place.
        g.bench_function(format!("snapshot/encode {name} in place"), |b| {
            b.iter(|| {
                let view = StateRecord {
                    format: FORMAT,
                    written_by_epoch: 1,
                    written_by: "node-1",
                    state: s.snapshot_view(now, wall),
                };
                black_box(replication::encode_state(&view, encoding))
            })
        });
        g.bench_function(format!("snapshot/restore {name}"), |b| {
            b.iter(|| {
                let r: StateRecord<CcSnapshot> = replication::decode(&bytes).unwrap();
                black_box(CcSession::restore(&r.state, "as2.ims.example.net", now, wall).unwrap())
            })
        });
    }

    // The simulator with 200,000 sessions opened at `now` and Tcc 60 s: an expiry pass one second later has
    // nothing to close.
    let mut ocs = Ocs::new(OcsConfig { tcc: Duration::from_secs(60), ..Default::default() }, "ocs.bench", "bench");
    for k in 0..200_000u32 {
        let ccr_i = Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)
            .with(Avp::utf8(code::SESSION_ID, &format!("as1.bench;1;{k}")))
            .with(Avp::utf8(code::ORIGIN_HOST, "as1.bench"))
            .with(Avp::utf8(code::ORIGIN_REALM, "bench"))
            .with(Avp::utf8(code::DESTINATION_REALM, "bench"))
            .with(Avp::u32(code::AUTH_APPLICATION_ID, 4))
            .with(Avp::utf8(code::SERVICE_CONTEXT_ID, "32260@3gpp.org"))
            .with(Avp::i32(code::CC_REQUEST_TYPE, 1))
            .with(Avp::u32(code::CC_REQUEST_NUMBER, 0));
        ocs.handle_request(now, wall, charging_ra::router::PeerId(1), &ccr_i);
    }
    assert_eq!(ocs.check().sessions.open, 200_000);
    let later = now + Duration::from_secs(1);
    assert!(ocs.expire(later, wall + 1000).is_empty());
    g.bench_function("ocs/tcc-expire (200,000 open, none due)", |b| {
        b.iter(|| black_box(ocs.expire(later, wall + 1000)))
    });
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
