//! The binary's edge: `check-config` prints the effective configuration, which parses back to the same thing, and
//! names what is wrong in a bad file.

use std::process::Command;

fn check_config(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_charging-ra")).arg("check-config").arg(path).output().unwrap()
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let example = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"));
    let out = check_config(example);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let again = charging_ra::config::Config::parse(&printed, std::path::Path::new("printed")).unwrap();
    assert_eq!(again, charging_ra::config::Config::default(), "the example is the defaults, printed in full");
    assert!(printed.contains("[sip]") && printed.contains("t1 = \"500ms\""), "{printed}");
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = std::env::temp_dir().join(format!("charging-ra-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, says) in [
        ("[node]\nid = \"n1\"\nwatchdgo = \"6s\"\n", "unknown field `watchdgo`"),
        ("[sip]\nt1 = \"1s\"\nt2 = \"500ms\"\n", "sip.t1"),
        ("[replication]\nlease_ttl = \"100ms\"\n", "replication.lease_ttl"),
        ("[node]\naccept_peers = [\"*ocs.example.net\"]\n", "node.accept_peers"),
        ("[node]\nhttp_token = \"short\"\n", "node.http_token"),
        ("[limits]\nmax_sessions = 0\n", "limits"),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = check_config(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says) && err.contains("bad.toml"), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_config_never_prints_the_http_token() {
    let dir = std::env::temp_dir().join(format!("charging-ra-cli-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(&path, "[node]\nhttp_token = \"file-token-0123456789\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_charging-ra"))
        .arg("check-config")
        .arg(&path)
        .env("CHARGING_RA_HTTP_TOKEN", "env-token-0123456789abc")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("http_token = \"<set, not shown>\""), "{printed}");
    assert!(!printed.contains("0123456789"), "{printed}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A node whose store cannot be reached at start says which store and that it does not start (a store lost while
/// running only pauses replication: the conformance scenarios `store-*`).
#[cfg(feature = "scylla")]
#[test]
fn a_node_without_its_store_at_start_says_so_and_exits() {
    let dir = std::env::temp_dir().join(format!("charging-ra-cli-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        "[node]\nhttp_listen = \"127.0.0.1:0\"\n[replication]\nenabled = true\n\
         [store]\ntype = \"scylla\"\n[store.scylla]\nnodes = [\"127.0.0.1:1\"]\nconnect_timeout = \"1s\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_charging-ra")).args(["node", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("127.0.0.1:1") && err.contains("unreachable"), "{err}");
    assert!(err.contains("does not start without its store"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
