//! Store operations per second per backend, single task, one process: `cargo bench --bench store`.
//! (Prints a table; BENCHMARKS.md records it.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use charging_ra::store::{Expect, MemoryStore, SqliteStore, Store, Write};

async fn measure<S: Store>(name: &str, store: Arc<S>, n: u64) {
    let value = Bytes::from(vec![7u8; 300]); // about a session snapshot's size
    let t = Instant::now();
    for i in 0..n {
        store.put(&format!("k{i}"), value.clone(), Expect::Any, Some(Duration::from_secs(3600))).await.unwrap();
    }
    let put = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        store.get(&format!("k{i}")).await.unwrap().unwrap();
    }
    let get = n as f64 / t.elapsed().as_secs_f64();
    let mut version = store.put("cas", value.clone(), Expect::Any, None).await.unwrap();
    let t = Instant::now();
    for _ in 0..n {
        version = store.put("cas", value.clone(), Expect::Version(version), None).await.unwrap();
    }
    let cas = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        store.put(&format!("new{i}"), value.clone(), Expect::Absent, None).await.unwrap();
    }
    let create = n as f64 / t.elapsed().as_secs_f64();
    // Group commit: 100 sessions' records per batch, each conditional on its own version.
    let mut versions: Vec<u64> = Vec::new();
    for i in 0..100 {
        versions.push(store.put(&format!("g{i}"), value.clone(), Expect::Any, None).await.unwrap());
    }
    let rounds = n / 100;
    let t0 = Instant::now();
    for _ in 0..rounds {
        let writes = (0..100)
            .map(|i| Write {
                key: format!("g{i}"),
                value: Some(value.clone()),
                expect: Expect::Version(versions[i]),
                ttl: None,
            })
            .collect();
        let out = store.batch(writes).await.unwrap();
        for (i, r) in out.into_iter().enumerate() {
            versions[i] = r.unwrap();
        }
    }
    let grouped = (rounds * 100) as f64 / t0.elapsed().as_secs_f64();
    let process_cpu = || charging_ra::load::process_cpu().expect("/proc/self/stat");
    let cpu = process_cpu();
    let (sessions, records) = sessions(&*store, n * 5).await;
    // CPU per record, every thread of the process (the SQLite work runs on tokio's blocking pool): steadier than
    // the rate on a shared machine.
    let cpu = (process_cpu() - cpu).as_secs_f64() * 1e6 / records as f64;
    println!("| {name} | {put:.0} | {get:.0} | {cas:.0} | {create:.0} | {grouped:.0} | {sessions:.0} | {cpu:.2} |");
}

/// Records per second when the batches are shaped like the engine's (docs/replication.md): 100 sessions at a time,
/// each created (convergence, protocol and a 530-octet state record (a binary one with a CCR-U in flight), absent
/// before, and a timer hint), its state written four times more (each conditional on its version), then deleted
/// (conditional) with its hint; one batch per step for all 100, 12 records per session.
async fn sessions<S: Store>(store: &S, n: u64) -> (f64, u64) {
    let small = Bytes::from(vec![b's'; 110]);
    let state = Bytes::from(vec![b'x'; 530]);
    let hint = Bytes::from_static(b"1798000000000");
    let rounds = (n / 1200).max(1);
    let mut records = 0u64;
    let t = Instant::now();
    for round in 0..rounds {
        // Keys shaped like the engine's: cluster, kind, a UUIDv7 convergence name (its leading time digits shared by
        // the sessions of one millisecond) and the Session-Id (host, boot time and a counter).
        let key = |kind: &str, i: u64| {
            format!(
                "charging-ra/{kind}/0193a4c2-7f1e-7{round:03x}-8{i:03x}-4f2d9c0e1b7a/diameter/as1.ims.example.net;\
                 1798000000;{round}-{i}"
            )
        };
        let write = |key: String, value: Option<Bytes>, expect| Write { key, value, expect, ttl: None };
        let created: Vec<Write> = (0..100)
            .flat_map(|i| {
                [
                    write(key("conv", i), Some(small.clone()), Expect::Absent),
                    write(key("proto", i), Some(small.clone()), Expect::Absent),
                    write(key("state", i), Some(state.clone()), Expect::Absent),
                    write(key("deadline", i), Some(hint.clone()), Expect::Any),
                ]
            })
            .collect();
        records += created.len() as u64;
        let out = store.batch(created).await.unwrap();
        let v = |i: u64, r: usize| *out[i as usize * 4 + r].as_ref().unwrap();
        let (conv, proto, mut st): (Vec<u64>, Vec<u64>, Vec<u64>) = (
            (0..100).map(|i| v(i, 0)).collect(),
            (0..100).map(|i| v(i, 1)).collect(),
            (0..100).map(|i| v(i, 2)).collect(),
        );
        for _ in 0..4 {
            let w: Vec<Write> = (0..100)
                .map(|i| write(key("state", i), Some(state.clone()), Expect::Version(st[i as usize])))
                .collect();
            records += w.len() as u64;
            st = store.batch(w).await.unwrap().into_iter().map(Result::unwrap).collect();
        }
        let deleted: Vec<Write> = (0..100)
            .flat_map(|i| {
                let i = i as usize;
                [
                    write(key("conv", i as u64), None, Expect::Version(conv[i])),
                    write(key("proto", i as u64), None, Expect::Version(proto[i])),
                    write(key("state", i as u64), None, Expect::Version(st[i])),
                    write(key("deadline", i as u64), None, Expect::Any),
                ]
            })
            .collect();
        records += deleted.len() as u64;
        assert!(store.batch(deleted).await.unwrap().iter().all(Result::is_ok));
    }
    (records as f64 / t.elapsed().as_secs_f64(), records)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        println!(
            "| backend | put/s | get/s | CAS/s | create (IF NOT EXISTS)/s | CAS in batches of 100 /s | session-shaped batches, records/s | CPU µs per record, session-shaped |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        // STORE=sqlite runs the SQLite row alone.
        if std::env::var("STORE").as_deref() != Ok("sqlite") {
            measure("memory", Arc::new(MemoryStore::new()), 200_000).await;
        }
        let dir = std::env::temp_dir().join(format!("charging-ra-store-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir.join("bench.db"), Duration::from_secs(5)).unwrap();
        measure("sqlite (WAL, synchronous=NORMAL)", Arc::new(store), 20_000).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}
