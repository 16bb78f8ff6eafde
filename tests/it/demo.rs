//! The README's first command: `charging-ra demo` runs a three-node cluster with sessions and SIP calls, kills a
//! node, and ends with a clean ledger.

#[test]
fn the_demo_kills_a_node_and_the_ledger_stays_clean() {
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_charging-ra")).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // The bound for a first run on a fresh machine (it takes about 10 s here, debug build included).
    assert!(started.elapsed() < std::time::Duration::from_secs(120), "{:?}", started.elapsed());
    assert!(text.contains("first session adopted by n2"), "how long adoption took: {text}");
    // Its temporary directory is gone with it.
    let dir = text.split_whitespace().find(|w| w.ends_with("/store.db")).map(std::path::Path::new).unwrap();
    assert!(!dir.parent().unwrap().exists(), "{} left behind", dir.display());
    assert!(text.contains("kill -9 n1"), "{text}");
    assert!(text.contains("330 sessions opened, 330 terminated"), "300 sessions and 30 calls: {text}");
    assert!(text.contains("SIP calls: 30/30 carried to their BYE"), "{text}");
    assert!(text.contains("n1's calls adopted by n2: 10"), "{text}");
    assert_eq!(text.trim_end().lines().last(), Some("ledger check: clean"), "{text}");
}
