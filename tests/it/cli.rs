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
    let unset = printed.lines().find(|l| l.starts_with("# Not set")).unwrap_or_default();
    assert!(unset.contains("node.diameter_listen") && unset.contains("sip.next_hop"), "unset options named: {printed}");
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
        ("[node]\nworker_threads = 0\n", "node.worker_threads"),
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

#[test]
fn environment_overrides_set_the_per_node_values_and_bad_ones_are_named() {
    let dir = std::env::temp_dir().join(format!("charging-ra-cli-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shared.toml");
    std::fs::write(&path, "[node]\nid = \"n1\"\n").unwrap();
    let run = |vars: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_charging-ra"));
        c.arg("check-config").arg(&path);
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&[
        ("CHARGING_RA_NODE_ID", "n7"),
        ("CHARGING_RA_ORIGIN_HOST", "n7.charging.example.net"),
        ("CHARGING_RA_DIAMETER_LISTEN", "127.0.0.1:3977"),
        ("CHARGING_RA_HTTP_LISTEN", "127.0.0.1:8077"),
        ("CHARGING_RA_SIP_LISTEN", "127.0.0.1:5077"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = charging_ra::config::Config::parse(&String::from_utf8(out.stdout).unwrap(), &path).unwrap();
    assert_eq!(printed.node.id, "n7");
    assert_eq!(printed.node.origin_host, "n7.charging.example.net");
    assert_eq!(printed.node.diameter_listen, Some("127.0.0.1:3977".parse().unwrap()));
    assert_eq!(printed.node.http_listen, Some("127.0.0.1:8077".parse().unwrap()));
    assert_eq!(printed.sip.listen, "127.0.0.1:5077".parse().unwrap());
    let out = run(&[("CHARGING_RA_DIAMETER_LISTEN", "not-an-address")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("CHARGING_RA_DIAMETER_LISTEN"), "names the variable: {err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A pcap of raw IPv4 (link type 101) carrying `payload` in one TCP segment to port 3868.
fn raw_ip_capture(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    for v in [0xa1b2_c3d4u32.to_le_bytes().to_vec(), 2u16.to_le_bytes().to_vec(), 4u16.to_le_bytes().to_vec()] {
        f.extend(v);
    }
    f.extend([0u8; 8]);
    f.extend(65535u32.to_le_bytes());
    f.extend(101u32.to_le_bytes());
    let total = (40 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend(total.to_be_bytes());
    ip.extend([0, 0, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2]);
    ip.extend(41000u16.to_be_bytes());
    ip.extend(3868u16.to_be_bytes());
    ip.extend(1u32.to_be_bytes());
    ip.extend([0, 0, 0, 0, 0x50, 0x18, 0x20, 0, 0, 0, 0, 0]);
    ip.extend_from_slice(payload);
    f.extend([0u8; 8]);
    f.extend((ip.len() as u32).to_le_bytes());
    f.extend((ip.len() as u32).to_le_bytes());
    f.extend(ip);
    f
}

#[test]
fn decode_reads_hex_and_captures_and_names_what_is_wrong() {
    let dict = charging_ra::dict::Dictionary::builtin();
    let ccr = charging_ra::samples::ro_ccr_update(&dict).encode().unwrap();
    let hex: String = ccr.iter().map(|b| format!("{b:02x}")).collect();
    let decode =
        |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_charging-ra")).arg("decode").args(args).output().unwrap();
    let out = decode(&[&hex]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Credit-Control-Request") && text.contains("Multiple-Services-Credit-Control"), "{text}");
    let dir = std::env::temp_dir().join(format!("charging-ra-cli-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("one.pcap");
    std::fs::write(&pcap, raw_ip_capture(&ccr)).unwrap();
    let out = decode(&["--pcap", &pcap.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("192.0.2.1:41000") && text.contains("Credit-Control-Request"), "{text}");
    // A broken AVP length: the Result-Code a peer would answer (RFC 6733 §7.1.5: 5014 DIAMETER_INVALID_AVP_LENGTH).
    let mut bad = ccr.to_vec();
    bad[20 + 5..20 + 8].copy_from_slice(&[0, 0, 3]);
    let hex: String = bad.iter().map(|b| format!("{b:02x}")).collect();
    let out = decode(&[&hex]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && all.contains("5014"), "{all}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn version_names_the_release() {
    let out = Command::new(env!("CARGO_BIN_EXE_charging-ra")).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("charging-ra {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn load_needs_one_target_and_names_what_is_wrong() {
    let load = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_charging-ra")).arg("load").args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = load(&[]);
    assert!(!ok && err.contains("--ocs") && err.contains("--nodes"), "{err}");
    let (ok, err) = load(&["--ocs", "127.0.0.1:1", "--nodes", "127.0.0.1:2"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let (ok, err) = load(&["--nodes", "http://127.0.0.1:2", "--replication", "memory"]);
    assert!(!ok && err.contains("nodes replicate as their configuration says"), "{err}");
    let (ok, err) = load(&["--nodes", "http://no-such-node.invalid:8080"]);
    assert!(!ok && err.contains("\"http://no-such-node.invalid:8080\""), "{err}");
    let (ok, err) = load(&["--nodes", "127.0.0.1"]);
    assert!(!ok && err.contains("host:port"), "{err}");
}
