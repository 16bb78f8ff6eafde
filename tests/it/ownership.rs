//! Ownership across OS processes on one SQLite file: A owns a session and is killed with SIGKILL; B and C wait
//! for A's lease to run out and race for the session; one wins the CAS, the other learns who owns it now.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use charging_ra::ownership::{Ownership, Resolution};
use charging_ra::replication::{NodeIdentity, keys};
use charging_ra::store::SqliteStore;

const ROLE: &str = "CHARGING_RA_OWNERSHIP_ROLE";
const TEST: &str = "ownership::a_killed_owners_session_is_adopted_by_exactly_one_survivor";

fn node(name: &str) -> NodeIdentity {
    NodeIdentity {
        node: name.into(),
        incarnation: std::process::id() as u64,
        diameter_uri: format!("aaa://{name}.cluster:3869"),
        http: None,
        sip: None,
        state_layout: charging_ra::replication::BINARY_LAYOUT,
    }
}

fn child(role: &str, db: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let store = Arc::new(SqliteStore::open(std::path::Path::new(db), Duration::from_secs(10)).unwrap());
        let own = Arc::new(Ownership::new(store, "c1", node(role), Duration::from_secs(1)));
        own.renew_lease().await.unwrap();
        let _hb = own.spawn_heartbeat(Duration::from_millis(200));
        let key = keys::diameter("c1", "as1;1;1");
        if role == "A" {
            own.create("conv-1", &key, None).await.unwrap();
            println!("READY");
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        let end = Instant::now() + Duration::from_secs(15);
        let r = loop {
            let r = own.resolve(&key).await.unwrap();
            if !matches!(&r, Resolution::Proxy { owner, .. } if owner == "A") || Instant::now() > end {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match r {
            Resolution::Owned { epoch, adopted_from, .. } => {
                println!("RESULT owned epoch={epoch} adopted={}", adopted_from.is_some())
            }
            Resolution::Proxy { owner, .. } => println!("RESULT proxy {owner}"),
            Resolution::Unknown => println!("RESULT unknown"),
        }
        // Stay alive a little so the loser, re-reading, finds the winner's lease valid.
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
}

fn spawn(role: &str, db: &std::path::Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
        .env(ROLE, format!("{role}|{}", db.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_owners_session_is_adopted_by_exactly_one_survivor() {
    if let Ok(spec) = std::env::var(ROLE) {
        let (role, db) = spec.split_once('|').unwrap();
        return child(role, db);
    }
    let dir = crate::wire::tempdir("ownership");
    let db = dir.join("store.db");
    drop(SqliteStore::open(&db, Duration::from_secs(1)).unwrap());
    let mut a = spawn("A", &db);
    // The test harness prints its own lines first.
    let ready = BufReader::new(a.stdout.take().unwrap()).lines().map_while(Result::ok).any(|l| l.ends_with("READY"));
    assert!(ready, "A did not create its session");
    // SIGKILL: no goodbye, the lease just stops being renewed.
    Command::new("kill").args(["-9", &a.id().to_string()]).status().unwrap();
    a.wait().unwrap();
    let killed = Instant::now();
    let (b, c) = (spawn("B", &db), spawn("C", &db));
    let out: Vec<String> = [b, c]
        .into_iter()
        .map(|p| {
            String::from_utf8(p.wait_with_output().unwrap().stdout)
                .unwrap()
                .lines()
                .find_map(|l| l.find("RESULT").map(|i| l[i..].to_string()))
                .unwrap_or_default()
        })
        .collect();
    let waited = killed.elapsed();
    let adopted: Vec<&String> = out.iter().filter(|l| l.contains("adopted=true")).collect();
    assert_eq!(adopted.len(), 1, "exactly one survivor adopts: {out:?}");
    assert!(adopted[0].contains("epoch=2"), "{out:?}");
    let winner = if out[0].contains("adopted=true") { "B" } else { "C" };
    let loser = out.iter().find(|l| !l.contains("adopted=true")).unwrap();
    assert_eq!(loser, &format!("RESULT proxy {winner}"), "the other learns who owns it now: {out:?}");
    assert!(waited < Duration::from_secs(10), "adoption bounded by the lease: {waited:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
