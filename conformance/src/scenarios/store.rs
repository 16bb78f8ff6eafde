//! The store under the nodes: what a killed node leaves behind, and what a locked database does to sessions.

use std::time::Duration;

use serde_json::json;

use charging_ra::store::Store;

use super::cc::{ensure, numbering, requests, setup};
use crate::harness::wait_for;
use crate::{Ctx, SKIPPED, StoreKind};

fn count(ctx: &Ctx, kind: &str) -> Result<usize, String> {
    let store = ctx.store()?;
    ctx.rt.block_on(store.scan_prefix(&format!("conformance/{kind}/"))).map(|v| v.len()).map_err(|e| e.to_string())
}

pub(super) fn killed_node_records_expire(ctx: &mut Ctx) -> Result<(), String> {
    let (_ocs, mut node) = setup(ctx, "", |s| {
        s.replicate = true;
        s.record_ttl = Duration::from_secs(2);
    })?;
    let sid = node.open_ro("46700000201")?;
    node.update(&sid, 10)?;
    let n = (count(ctx, "conv")?, count(ctx, "proto/diameter")?, count(ctx, "state")?);
    ensure(n == (1, 1, 1), "the session's three records are in the store", &json!(n))?;
    node.kill();
    // Nobody adopts it (no event comes): the records' TTL removes them.
    wait_for("the records to expire", Duration::from_secs(6), || {
        let left = count(ctx, "conv").ok()? + count(ctx, "proto").ok()? + count(ctx, "state").ok()?;
        (left == 0).then_some(())
    })
}

pub(super) fn sqlite_locked_then_catches_up(ctx: &mut Ctx) -> Result<(), String> {
    if ctx.config.store != StoreKind::Sqlite {
        return Err(format!("{SKIPPED}needs the SQLite store"));
    }
    let (ocs, node) = setup(ctx, "", |s| {
        s.replicate = true;
        s.busy_timeout = Duration::from_millis(100);
    })?;
    let sid = node.open_ro("46700000202")?;
    // Another process holds the write lock far beyond the busy timeout.
    let lock = rusqlite::Connection::open(ctx.store_path()).map_err(|e| e.to_string())?;
    lock.execute_batch("BEGIN EXCLUSIVE").map_err(|e| e.to_string())?;
    for secs in [5, 6, 7] {
        let (s, b) = node.update(&sid, secs)?;
        ensure(s == 200, "charging goes on while the store is locked", &b)?;
    }
    let st = node.status()?;
    ensure(st["replication"]["store_down"] == true && st["replication"]["backlog"].as_u64() > Some(0), "backlog", &st)?;
    lock.execute_batch("ROLLBACK").map_err(|e| e.to_string())?;
    drop(lock);
    wait_for("the backlog to drain", Duration::from_secs(10), || {
        node.status().ok().filter(|s| s["replication"]["store_down"] == false && s["replication"]["backlog"] == 0)
    })?;
    node.terminate(&sid, 1)?;
    let fresh = numbering(&requests(&ocs, &sid)?)?;
    ensure(fresh == [0, 1, 2, 3, 4], "every number once, in order", &json!(fresh))?;
    ocs.clean().map(drop)
}

/// The database file moved away under a running node (an operator's mistake, a clean-up script): SQLite would go
/// on writing into it under its new name, where no other node reads. The node must notice, say so, keep charging,
/// hold the changes, and write them once the file is back.
pub(super) fn sqlite_file_moved_then_catches_up(ctx: &mut Ctx) -> Result<(), String> {
    if ctx.config.store != StoreKind::Sqlite {
        return Err(format!("{SKIPPED}needs the SQLite store"));
    }
    let (ocs, node) = setup(ctx, "", |s| s.replicate = true)?;
    let sid = node.open_ro("46700000203")?;
    let path = ctx.store_path();
    let aside = path.with_extension("aside");
    std::fs::rename(&path, &aside).map_err(|e| e.to_string())?;
    for secs in [5, 6, 7] {
        let (s, b) = node.update(&sid, secs)?;
        ensure(s == 200, "charging goes on while the file is away", &b)?;
    }
    let st = wait_for("the node to report the store down", Duration::from_secs(5), || {
        node.status().ok().filter(|s| s["replication"]["store_down"] == true)
    })?;
    ensure(st["replication"]["backlog"].as_u64() > Some(0), "the changes are held", &st)?;
    let log = std::fs::read_to_string(ctx.dir.join("n1.log")).unwrap_or_default();
    ensure(log.contains("deleted or moved"), "the log says what happened to the file", &json!(log))?;
    std::fs::rename(&aside, &path).map_err(|e| e.to_string())?;
    wait_for("the backlog to drain", Duration::from_secs(10), || {
        node.status().ok().filter(|s| s["replication"]["store_down"] == false && s["replication"]["backlog"] == 0)
    })?;
    // What the store holds is the session as it is now (its next request number is 4), not as it was.
    let store = ctx.store()?;
    let states = ctx.rt.block_on(store.scan_prefix("conformance/state/")).map_err(|e| e.to_string())?;
    let recs: Result<Vec<_>, _> = states.iter().map(|(_, v)| charging_ra::api::record_json(&v.value)).collect();
    let recs = recs.map_err(|e| e.to_string())?;
    let latest = recs.len() == 1 && recs[0]["state"]["cc"]["next_number"] == 4;
    ensure(latest, "the state written is the latest", &json!(recs))?;
    node.terminate(&sid, 1)?;
    let fresh = numbering(&requests(&ocs, &sid)?)?;
    ensure(fresh == [0, 1, 2, 3, 4], "every number once, in order", &json!(fresh))?;
    ocs.clean().map(drop)
}
