//! A small built-in Diameter client that measures the OCS simulator's throughput (or any OCS's): one connection,
//! `--sessions` sessions each with one CCR-U outstanding, for `--duration` seconds after a one-second warm-up.
//!
//! `cargo run --release --example ocs_load -- --ocs 127.0.0.1:39868 --sessions 100 --duration 10`
//! (bench/ocs.sh starts the simulator and runs this against it). The last line is `throughput: N tx/s`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use charging_ra::codec::{AppId, Avp, CommandCode, CommandFlags, HopByHopId, Message, code};
use charging_ra::peer::{ConnId, LocalIdentity};
use charging_ra::transport::{ConnEvent, spawn_connection};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_string())
}

fn ccr(session: u32, number: u32) -> Bytes {
    let mut m = Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL)
        .with(Avp::utf8(code::SESSION_ID, &format!("load.localdomain;1;{session}")))
        .with(Avp::utf8(code::ORIGIN_HOST, "load.localdomain"))
        .with(Avp::utf8(code::ORIGIN_REALM, "localdomain"))
        .with(Avp::utf8(code::DESTINATION_REALM, "localdomain"))
        .with(Avp::u32(code::AUTH_APPLICATION_ID, 4))
        .with(Avp::utf8(code::SERVICE_CONTEXT_ID, "32260@3gpp.org"))
        .with(Avp::i32(code::CC_REQUEST_TYPE, if number == 0 { 1 } else { 2 }))
        .with(Avp::u32(code::CC_REQUEST_NUMBER, number))
        .with(Avp::grouped(
            code::SUBSCRIPTION_ID,
            &[Avp::i32(code::SUBSCRIPTION_ID_TYPE, 0), Avp::utf8(code::SUBSCRIPTION_ID_DATA, "46701234567")],
        ));
    let mut mscc = vec![Avp::grouped(code::REQUESTED_SERVICE_UNIT, &[])];
    if number > 0 {
        mscc.push(Avp::grouped(code::USED_SERVICE_UNIT, &[Avp::u32(code::CC_TIME, 1)]));
    }
    mscc.push(Avp::u32(code::RATING_GROUP, 10));
    m.push(Avp::grouped(code::MULTIPLE_SERVICES_CREDIT_CONTROL, &mscc));
    m.header.hop_by_hop = HopByHopId(session << 20 | (number & 0xfffff));
    m.header.end_to_end = charging_ra::codec::EndToEndId(session << 20 | (number & 0xfffff));
    m.encode().expect("small message")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr: std::net::SocketAddr = arg("--ocs", "127.0.0.1:3868").parse().expect("--ocs ADDR");
    let sessions: u32 = arg("--sessions", "100").parse().expect("--sessions N");
    let duration = Duration::from_secs(arg("--duration", "10").parse().expect("--duration SECS"));
    let sock = tokio::net::TcpStream::connect(addr).await.expect("connect to the OCS");
    sock.set_nodelay(true).unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let conn = spawn_connection(ConnId(1), sock, events_tx, Default::default(), 1 << 16);
    let mut cer = Message::request(CommandCode::CAPABILITIES_EXCHANGE, AppId::COMMON);
    cer.header.flags = CommandFlags(CommandFlags::REQUEST);
    cer.avps = LocalIdentity::charging_client("load.localdomain", "localdomain", 1).capability_avps();
    conn.writer.send(cer.encode().unwrap()).await.unwrap();
    let Some(ConnEvent::Frame(_, cea)) = events.recv().await else { panic!("no CEA") };
    let cea = Message::decode(cea).unwrap();
    assert_eq!(cea.result_code().map(|r| r.0), Some(2001), "CER refused");
    let mut sent_at: HashMap<u32, Instant> = HashMap::new();
    let mut number = vec![0u32; sessions as usize];
    for s in 0..sessions {
        sent_at.insert(s, Instant::now());
        conn.writer.send(ccr(s, 0)).await.unwrap();
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(1);
    let end = measure_from + duration;
    let (mut counted, mut errors) = (0u64, 0u64);
    let mut latencies: Vec<u32> = Vec::with_capacity(1 << 20);
    while let Some(ev) = events.recv().await {
        let ConnEvent::Frame(_, frame) = ev else { panic!("connection closed") };
        let hbh = u32::from_be_bytes([frame[12], frame[13], frame[14], frame[15]]);
        if frame[4] & 0x80 != 0 {
            continue; // a DWR from the server; answered by nobody in this client (short runs)
        }
        let s = hbh >> 20;
        let now = Instant::now();
        if now >= measure_from {
            counted += 1;
            if let Some(t) = sent_at.get(&s) {
                latencies.push(now.duration_since(*t).as_micros() as u32);
            }
            // Result-Code 2001 is at a fixed place in our answers; any other is counted as an error.
            if !frame.windows(4).any(|w| w == 2001u32.to_be_bytes()) {
                errors += 1;
            }
        }
        if now >= end {
            break;
        }
        let n = &mut number[s as usize];
        *n += 1;
        sent_at.insert(s, now);
        if conn.writer.send(ccr(s, *n)).await.is_err() {
            break;
        }
    }
    let secs = duration.as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!("sessions: {sessions} outstanding on one connection, {counted} answers in {secs:.0} s, {errors} not 2001");
    println!(
        "latency: p50 {} us, p90 {} us, p99 {} us, max {} us",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        latencies.last().copied().unwrap_or(0)
    );
    println!("throughput: {:.0} tx/s", counted as f64 / secs);
}
