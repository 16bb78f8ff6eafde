//! Codec benchmarks, side by side with the `diameter` crate (diameter-rs 0.7.1) in the same run:
//! `cargo bench --bench codec`. Results and the machine are recorded in BENCHMARKS.md.

use std::hint::black_box;
use std::io::Cursor;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use charging_ra::codec::{DecodeLimits, Message};
use charging_ra::dict::{BUILTIN_FILES, Dictionary};
use charging_ra::samples;

/// The diameter crate's dictionary loaded with our XML files (it lacks application 1 and the filter-rule types;
/// see tests/it/crosscheck.rs).
fn their_dictionary() -> Arc<diameter::dictionary::Dictionary> {
    let texts: Vec<String> = BUILTIN_FILES
        .iter()
        .map(|(_, t)| {
            t.replace(r#"application id="1""#, r#"application id="0""#)
                .replace(r#"type="IPFilterRule""#, r#"type="OctetString""#)
                .replace(r#"type="QoSFilterRule""#, r#"type="OctetString""#)
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    Arc::new(diameter::dictionary::Dictionary::new(&refs))
}

fn bench_message(
    c: &mut Criterion,
    label: &str,
    msg: &Message,
    dict: &Dictionary,
    theirs: &Arc<diameter::dictionary::Dictionary>,
) {
    let bytes = msg.encode().unwrap();
    let limits = DecodeLimits::default();
    let mut g = c.benchmark_group(format!("{label} ({} octets)", bytes.len()));
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode/charging-ra", |b| {
        b.iter(|| Message::decode_with(black_box(bytes.clone()), &limits).unwrap())
    });
    g.bench_function("decode+validate/charging-ra", |b| {
        b.iter(|| {
            let m = Message::decode_with(black_box(bytes.clone()), &limits).unwrap();
            dict.validate(&m, &limits).unwrap();
            m
        })
    });
    g.bench_function("decode/diameter-crate", |b| {
        b.iter(|| {
            diameter::DiameterMessage::decode_from(&mut Cursor::new(black_box(&bytes[..])), Arc::clone(theirs)).unwrap()
        })
    });
    let mut buf = BytesMut::with_capacity(4096);
    g.bench_function("encode/charging-ra", |b| {
        b.iter(|| {
            buf.clear();
            black_box(msg).encode_into(&mut buf).unwrap();
        })
    });
    let their_msg = diameter::DiameterMessage::decode_from(&mut Cursor::new(&bytes[..]), Arc::clone(theirs)).unwrap();
    let mut out = Vec::with_capacity(4096);
    g.bench_function("encode/diameter-crate", |b| {
        b.iter(|| {
            out.clear();
            black_box(&their_msg).encode_to(&mut out).unwrap();
        })
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let dict = Dictionary::builtin();
    let theirs = their_dictionary();
    bench_message(c, "Ro CCR-U", &samples::ro_ccr_update(&dict), &dict, &theirs);
    bench_message(c, "Gx CCR-I", &samples::gx_ccr_initial(&dict), &dict, &theirs);
}

criterion_group!(benches, codec);
criterion_main!(benches);
