//! One contract for every store backend (`cargo test contract`): versioned reads, a CAS race that exactly one of
//! 32 tasks wins, TTL expiry, conditional deletion, fencing with tokens that are never reused, prefix scans, and
//! for SQLite the same race across separate OS processes. ScyllaDB runs the same contract when the crate is built with
//! the `scylla` feature and `SCYLLA_URI` names a server (`SCYLLA_URI=127.0.0.1:9042 cargo test --features scylla
//! contract`); without a server only its unreachable case runs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use charging_ra::store::{Expect, MemoryStore, SqliteStore, Store, StoreError, Write};

async fn contract<S: Store>(store: Arc<S>) {
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    // Versioned reads and writes.
    assert_eq!(store.get("k").await.unwrap(), None);
    let v1 = store.put("k", b("one"), Expect::Absent, None).await.unwrap();
    let got = store.get("k").await.unwrap().unwrap();
    assert_eq!((got.value, got.version), (b("one"), v1));
    assert_eq!(store.put("k", b("again"), Expect::Absent, None).await, Err(StoreError::Conflict { current: Some(v1) }));
    let v2 = store.put("k", b("two"), Expect::Version(v1), None).await.unwrap();
    assert!(v2 > v1);
    assert_eq!(
        store.put("k", b("stale"), Expect::Version(v1), None).await,
        Err(StoreError::Conflict { current: Some(v2) })
    );
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b("two"));
    // 32 tasks race to move the record from the same version: exactly one wins.
    let base = store.put("race", b("0"), Expect::Any, None).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(
                async move { s.put("race", Bytes::from(format!("winner-{i}")), Expect::Version(base), None).await },
            )
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => winners += 1,
            Err(StoreError::Conflict { current: Some(_) }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(winners, 1, "exactly one compare-and-set wins");
    // TTL: the record lives, then reads as absent, and can be created again.
    let short = store.put("ttl", b("short"), Expect::Absent, Some(Duration::from_millis(300))).await.unwrap();
    let doomed = store.put("ttl-cas", b("short"), Expect::Absent, Some(Duration::from_millis(300))).await.unwrap();
    assert!(store.get("ttl").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(store.get("ttl").await.unwrap(), None);
    // An expired record does not exist for a condition either: its last version no longer matches.
    assert_eq!(
        store.put("ttl-cas", b("late"), Expect::Version(doomed), None).await,
        Err(StoreError::Conflict { current: None })
    );
    assert_eq!(store.delete("ttl-cas", Expect::Version(doomed)).await, Err(StoreError::Conflict { current: None }));
    store.delete("ttl-cas", Expect::Absent).await.unwrap();
    let again = store.put("ttl", b("again"), Expect::Absent, None).await.unwrap();
    assert!(again > short, "a record created over an expired one gets a new version");
    assert_eq!(store.delete("ttl", Expect::Absent).await, Err(StoreError::Conflict { current: Some(again) }));
    // Conditional delete.
    let v = store.get("k").await.unwrap().unwrap().version;
    assert_eq!(store.delete("k", Expect::Version(v + 1000)).await, Err(StoreError::Conflict { current: Some(v) }));
    store.delete("k", Expect::Version(v)).await.unwrap();
    assert_eq!(store.get("k").await.unwrap(), None);
    store.delete("k", Expect::Any).await.unwrap();
    assert_eq!(store.delete("k", Expect::Version(v)).await, Err(StoreError::Conflict { current: None }));
    // Fencing: a writer holding an old token is refused, even after the key was deleted and created again
    // (tokens are never reused).
    let old = store.put("fence", b("epoch-1"), Expect::Absent, None).await.unwrap();
    let new = store.put("fence", b("epoch-2 by the adopter"), Expect::Version(old), None).await.unwrap();
    assert!(store.put("fence", b("epoch-1 wakes up"), Expect::Version(old), None).await.is_err());
    store.delete("fence", Expect::Version(new)).await.unwrap();
    let recreated = store.put("fence", b("epoch-3"), Expect::Absent, None).await.unwrap();
    assert!(recreated != old && recreated != new);
    assert!(store.put("fence", b("epoch-1 again"), Expect::Version(old), None).await.is_err());
    // Prefix scans, in key order, without expired records.
    for k in ["own/b", "own/a", "other/c"] {
        store.put(k, b("x"), Expect::Any, None).await.unwrap();
    }
    store.put("own/c", b("gone soon"), Expect::Any, Some(Duration::from_millis(50))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let keys: Vec<String> = store.scan_prefix("own/").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["own/a", "own/b"]);
    // Group commit: each write conditional on its own expectation; a stale one fails alone.
    let a = store.get("own/a").await.unwrap().unwrap().version;
    let w = |key: &str, value: Option<&'static str>, expect| Write {
        key: key.into(),
        value: value.map(b),
        expect,
        ttl: None,
    };
    let out = store
        .batch(vec![
            w("own/a", Some("a2"), Expect::Version(a)),
            w("own/b", Some("stale writer"), Expect::Version(1)),
            w("batch/new", Some("n"), Expect::Absent),
            w("other/c", None, Expect::Any),
        ])
        .await
        .unwrap();
    assert!(out[0].is_ok() && out[2].is_ok() && out[3].is_ok(), "{out:?}");
    assert!(matches!(out[1], Err(StoreError::Conflict { .. })), "{out:?}");
    assert_eq!(store.get("own/a").await.unwrap().unwrap().value, b("a2"));
    assert_eq!(store.get("own/b").await.unwrap().unwrap().value, b("x"));
    assert!(store.get("batch/new").await.unwrap().is_some());
    assert!(store.get("other/c").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_memory() {
    contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_sqlite() {
    let dir = crate::wire::tempdir("store-contract");
    let store = SqliteStore::open(&dir.join("store.db"), Duration::from_secs(5)).unwrap();
    contract(Arc::new(store.clone())).await;
    // The sweeper removes what expired.
    store.put("sweep-me", Bytes::from_static(b"x"), Expect::Any, Some(Duration::from_millis(10))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(store.sweep().await.unwrap() >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A batch that fails part-way applies nothing and leaves no transaction open: a write lock kept by a failed batch
/// would stop every node on the host. The failure is made by a trigger, as a full disk or an I/O error would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_batch_failing_part_way_applies_nothing_and_releases_the_lock() {
    let dir = crate::wire::tempdir("store-abort");
    let path = dir.join("store.db");
    let store = SqliteStore::open(&path, Duration::from_millis(500)).unwrap();
    let kept = store.put("kept", Bytes::from_static(b"1"), Expect::Absent, None).await.unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON records WHEN NEW.key = 'boom' BEGIN SELECT RAISE(ABORT, 'disk'); END;",
        )
        .unwrap();
    let w = |key: &str, expect| Write { key: key.into(), value: Some(Bytes::from_static(b"2")), expect, ttl: None };
    let failed =
        store.batch(vec![w("kept", Expect::Version(kept)), w("new", Expect::Absent), w("boom", Expect::Any)]).await;
    assert!(matches!(failed, Err(StoreError::Unavailable { .. })), "{failed:?}");
    assert_eq!(store.get("kept").await.unwrap().map(|v| v.version), Some(kept), "the first write was rolled back");
    assert_eq!(store.get("new").await.unwrap(), None);
    // Another process can take the write lock at once, and this store goes on writing.
    other.execute_batch("BEGIN IMMEDIATE; DROP TRIGGER boom; COMMIT;").unwrap();
    let out = store.batch(vec![w("kept", Expect::Version(kept)), w("boom", Expect::Absent)]).await.unwrap();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_checkpointed_in_the_background_and_stays_small() {
    // Writers checkpoint themselves only past 16,000 pages (64 MB of WAL); the background checkpointer keeps the
    // WAL far below that. 32 MB of records, written in batches over about a second and a half: the WAL file is
    // reused from its start after each checkpoint, so on an idle machine it stays near what 100 ms of writes need
    // (a few MB). On a busy one the checkpointer runs late, and one CI run saw 21.9 MB. Without it nothing would be
    // checkpointed before 64 MB: the database file would hold none of the records and the WAL all 32 MB of them.
    let dir = crate::wire::tempdir("store-wal");
    let path = dir.join("store.db");
    let store = SqliteStore::open(&path, Duration::from_secs(5)).unwrap();
    let value = Bytes::from(vec![b'x'; 1000]);
    for round in 0..64 {
        let writes = (0..500)
            .map(|i| Write { key: format!("k{round}-{i}"), value: Some(value.clone()), expect: Expect::Any, ttl: None })
            .collect();
        assert!(store.batch(writes).await.unwrap().iter().all(Result::is_ok));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // One more period, for the checkpointer to copy what the last batches wrote.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let wal = std::fs::metadata(dir.join("store.db-wal")).unwrap().len();
    let db = std::fs::metadata(&path).unwrap().len();
    assert!(db > 16 << 20, "the database file holds {db} bytes of 32 MB written: not checkpointed");
    assert!(wal < 28 << 20, "the WAL grew to {wal} bytes for 32 MB written: its start was not reused");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn contract_sqlite_unreachable_says_where_and_what_happens() {
    let err = SqliteStore::open(std::path::Path::new("/nonexistent-dir/charging-ra/store.db"), Duration::from_secs(1))
        .unwrap_err();
    match err {
        StoreError::Unavailable { reason, .. } => {
            assert!(reason.contains("/nonexistent-dir/charging-ra/store.db") && reason.contains("writable"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sqlite_file_moved_or_replaced_under_the_store_is_reported_not_written_blind() {
    let dir = crate::wire::tempdir("store-moved");
    let path = dir.join("store.db");
    let store = SqliteStore::open(&path, Duration::from_secs(1)).unwrap();
    let v1 = store.put("k", Bytes::from_static(b"1"), Expect::Absent, None).await.unwrap();
    let unavailable = |e: StoreError| match e {
        StoreError::Unavailable { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    // Moved away: SQLite would go on writing to the file at its new name; the store refuses and says why.
    std::fs::rename(&path, dir.join("aside.db")).unwrap();
    let why = unavailable(store.put("k", Bytes::from_static(b"2"), Expect::Version(v1), None).await.unwrap_err());
    assert!(why.contains("deleted or moved") && why.contains("store.db"), "{why}");
    assert!(store.get("k").await.is_err(), "reads refused too: they would read what no other node writes");
    // Another database put at the path (a restore, say): still refused, since its records are not the ones this
    // node's versions refer to.
    std::fs::create_dir_all(dir.join("other")).unwrap();
    drop(SqliteStore::open(&dir.join("other/store.db"), Duration::from_secs(1)).unwrap());
    std::fs::rename(dir.join("other/store.db"), &path).unwrap();
    let why = unavailable(store.put("k", Bytes::from_static(b"2"), Expect::Version(v1), None).await.unwrap_err());
    assert!(why.contains("replaced"), "{why}");
    // The original back: writes resume where they were, nothing lost or gone backwards.
    std::fs::rename(dir.join("aside.db"), &path).unwrap();
    let v2 = store.put("k", Bytes::from_static(b"2"), Expect::Version(v1), None).await.unwrap();
    assert!(v2 > v1);
    assert_eq!(&store.get("k").await.unwrap().unwrap().value[..], b"2");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sqlite_on_a_read_only_file_system_is_refused_at_open_with_the_reason() {
    use std::process::Command;
    let dir = crate::wire::tempdir("store-ro");
    let (src, mnt) = (dir.join("src"), dir.join("mnt"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    drop(SqliteStore::open(&src.join("store.db"), Duration::from_secs(1)).unwrap());
    let mount = |args: &[&str]| Command::new("mount").args(args).status().is_ok_and(|s| s.success());
    let (s, m) = (src.to_str().unwrap(), mnt.to_str().unwrap());
    if !(mount(&["--bind", s, m]) && mount(&["-o", "remount,bind,ro", m])) {
        let _ = Command::new("umount").arg(m).status();
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED sqlite_on_a_read_only_file_system: needs root to make a read-only bind mount"
        );
        return;
    }
    let opened = SqliteStore::open(&mnt.join("store.db"), Duration::from_secs(1));
    let _ = Command::new("umount").arg(m).status();
    match opened {
        Err(StoreError::Unavailable { reason, .. }) => {
            assert!(reason.contains("store.db") && reason.contains("writable"), "{reason}")
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a store on a read-only file system opened as if it could be written"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The contract against a real ScyllaDB at `SCYLLA_URI` (`host:port`, comma-separated for several), in a fresh
/// keyspace that is dropped afterwards.
#[cfg(feature = "scylla")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_scylla() {
    use charging_ra::store::{ScyllaConfig, ScyllaStore};

    let Some(uri) = std::env::var("SCYLLA_URI").ok().filter(|u| !u.trim().is_empty()) else {
        crate::skip("contract_scylla", "SCYLLA_URI is not set (e.g. SCYLLA_URI=127.0.0.1:9042)");
        return;
    };
    let nodes: Vec<String> = uri.split(',').map(|n| n.trim().to_string()).collect();
    let keyspace = format!("cra_contract_{}", uuid::Uuid::now_v7().simple());
    let config = ScyllaConfig {
        nodes: nodes.clone(),
        keyspace: keyspace.clone(),
        create_schema: true,
        replication_factor: 1,
        request_timeout: Duration::from_secs(10),
        ..ScyllaConfig::default()
    };
    let store = ScyllaStore::connect(&config).await.unwrap_or_else(|e| panic!("SCYLLA_URI={uri}: {e}"));
    contract(Arc::new(store.clone())).await;
    // Records of one cluster spread over partitions, and a scan of the cluster's kind finds them all in key order.
    let keys: Vec<String> = (0..40).map(|i| format!("c1/conv/{i:02}")).collect();
    let writes = keys
        .iter()
        .map(|k| Write { key: k.clone(), value: Some(Bytes::from_static(b"x")), expect: Expect::Absent, ttl: None })
        .collect();
    assert!(store.batch(writes).await.unwrap().iter().all(Result::is_ok));
    store.put("c1/node/n1", Bytes::from_static(b"lease"), Expect::Any, None).await.unwrap();
    store.put("c2/conv/00", Bytes::from_static(b"other cluster"), Expect::Any, None).await.unwrap();
    let found: Vec<String> = store.scan_prefix("c1/conv/").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(found, keys);
    drop(store);
    let session = scylla::client::session_builder::SessionBuilder::new().known_nodes(&nodes).build().await.unwrap();
    session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ()).await.unwrap();
}

#[cfg(not(feature = "scylla"))]
#[test]
fn contract_scylla() {
    crate::skip(
        "contract_scylla",
        "the crate was built without the `scylla` feature \
         (SCYLLA_URI=127.0.0.1:9042 cargo test --features scylla contract)",
    );
}

/// Needs no server: nothing listens on port 1.
#[cfg(feature = "scylla")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_scylla_unreachable_says_where_and_what_happens() {
    use charging_ra::store::{ScyllaConfig, ScyllaStore};

    let config = ScyllaConfig {
        nodes: vec!["127.0.0.1:1".into()],
        connect_timeout: Duration::from_secs(2),
        ..ScyllaConfig::default()
    };
    let started = std::time::Instant::now();
    match ScyllaStore::connect(&config).await.unwrap_err() {
        StoreError::Unavailable { reason, retry_after } => {
            assert!(reason.contains("127.0.0.1:1") && reason.contains("unreachable"), "{reason}");
            assert!(retry_after > Duration::ZERO);
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
}

/// The CAS race across separate OS processes sharing one SQLite file: this test binary re-runs itself as the
/// contenders.
#[test]
fn contract_sqlite_cas_race_across_processes() {
    const CHILD: &str = "CHARGING_RA_STORE_RACE";
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    if let Ok(spec) = std::env::var(CHILD) {
        let (path, version, id) = {
            let mut p = spec.split('|');
            (p.next().unwrap().to_string(), p.next().unwrap().parse::<u64>().unwrap(), p.next().unwrap().to_string())
        };
        let store = SqliteStore::open(std::path::Path::new(&path), Duration::from_secs(10)).unwrap();
        let r = rt.block_on(store.put("own/convergence-1", Bytes::from(id), Expect::Version(version), None));
        println!("RESULT {}", if r.is_ok() { "WON" } else { "LOST" });
        return;
    }
    let dir = crate::wire::tempdir("store-race");
    let path = dir.join("store.db");
    let store = SqliteStore::open(&path, Duration::from_secs(10)).unwrap();
    let base =
        rt.block_on(store.put("own/convergence-1", Bytes::from_static(b"dead-node"), Expect::Any, None)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..8)
        .map(|i| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "store_contract::contract_sqlite_cas_race_across_processes",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD, format!("{}|{base}|node-{i}", path.display()))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut won = 0;
    let mut lost = 0;
    for c in children {
        let out = String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap();
        won += out.matches("RESULT WON").count();
        lost += out.matches("RESULT LOST").count();
    }
    assert_eq!((won, lost), (1, 7), "exactly one process wins the compare-and-set");
    let owner = rt.block_on(store.get("own/convergence-1")).unwrap().unwrap();
    assert!(String::from_utf8_lossy(&owner.value).starts_with("node-"));
    let _ = std::fs::remove_dir_all(&dir);
}
