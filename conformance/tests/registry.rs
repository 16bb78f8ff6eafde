//! Runs the whole registry with real processes under `cargo test --workspace`, so CI runs the suite once.

use conformance::{Config, StoreKind, Subject, glob_match, sibling_binary};

#[test]
fn every_scenario_passes_with_real_processes() {
    let exe = std::env::current_exe().unwrap();
    // `cargo test --workspace` builds the charging-ra binary (its package has integration tests) before any test
    // runs; it lives in the target directory above deps/.
    let binary = sibling_binary(&exe).expect("charging-ra binary next to target/<profile>/: run `cargo build` first");
    let config = Config { subject: Subject::Exec, store: StoreKind::Sqlite, binary };
    let mut out = Vec::new();
    let (reports, totals) = conformance::run(&config, None, &mut out);
    let text = String::from_utf8_lossy(&out);
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}{}", totals.line());
    assert!(!reports.is_empty());
    assert_eq!(totals.failed, 0, "{text}");
    assert_eq!(totals.passed + totals.skipped, reports.len());
}

#[test]
fn inproc_subject_agrees() {
    let config = Config { subject: Subject::Inproc, store: StoreKind::Memory, binary: Default::default() };
    let (_, totals) = conformance::run(&config, Some("codec-*"), &mut std::io::sink());
    assert_eq!(totals.failed, 0);
}

#[test]
fn globs_select_scenarios() {
    assert!(glob_match("codec-*", "codec-golden-decode"));
    assert!(glob_match("*-avp", "codec-missing-avp"));
    assert!(glob_match("codec-?issing-avp", "codec-missing-avp"));
    assert!(!glob_match("peer-*", "codec-golden-decode"));
}
