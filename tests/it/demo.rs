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

/// Ctrl-C (SIGINT to the demo alone, as when it runs outside a terminal's process group) stops its processes and
/// removes its directory.
#[test]
fn an_interrupted_demo_leaves_no_process_or_file_behind() {
    use std::io::BufRead;
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_charging-ra"))
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let dir = format!("charging-ra-demo-{}", demo.id());
    let mut lines = std::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let up = lines.by_ref().map_while(Result::ok).find(|l| l.contains("nodes n1, n2, n3 up"));
    assert!(up.is_some(), "the demo never started its nodes");
    let ps = std::process::Command::new("ps").args(["-eo", "pid=,ppid="]).output().unwrap();
    let children: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .filter(|(_, ppid)| *ppid == demo.id().to_string())
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(children.len(), 4, "the simulator and three nodes: {children:?}");
    let status = std::process::Command::new("kill").arg("-INT").arg(demo.id().to_string()).status().unwrap();
    assert!(status.success());
    assert_eq!(demo.wait().unwrap().code(), Some(130), "interrupted");
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Gone, or a zombie waiting for whoever inherited it to reap it (a container's init may never).
    let alive = |pid: &String| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    let left: Vec<&String> = children.iter().filter(|p| alive(p)).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    assert!(!std::env::temp_dir().join(&dir).exists(), "{dir} left");
}
