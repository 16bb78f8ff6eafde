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
    println!("| {name} | {put:.0} | {get:.0} | {cas:.0} | {create:.0} | {grouped:.0} |");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        println!("| backend | put/s | get/s | CAS/s | create (IF NOT EXISTS)/s | CAS in batches of 100 /s |");
        println!("|---|---|---|---|---|---|");
        measure("memory", Arc::new(MemoryStore::new()), 200_000).await;
        let dir = std::env::temp_dir().join(format!("charging-ra-store-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir.join("bench.db"), Duration::from_secs(5)).unwrap();
        measure("sqlite (WAL, synchronous=NORMAL)", Arc::new(store), 20_000).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}
