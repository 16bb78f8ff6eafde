//! The integration test binary: codec and dictionaries against the wire, real peers where installed.

mod cli;
mod codec;
mod crosscheck;
mod demo;
mod deps;
mod dict;
mod engine;
mod erlang;
mod freediameter;
mod http_front;
mod ocs;
mod ownership;
mod prop;
mod replication;
mod sip;
mod stack;
mod store_contract;
mod tls;
mod wire;

use std::io::Write;

/// Prints a skip reason where plain `cargo test` shows it (the print macros are captured).
pub fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Whether a program is on the PATH.
pub fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}
