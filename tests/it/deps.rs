//! The dependency review CI can afford without an advisory database: every crate's licence against
//! `.ci/licenses-allowed.txt`, and crates built in several versions against `.ci/duplicates-allowed.txt`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert!(out.status.success(), "cargo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Non-comment lines of a file under `.ci/`, first word each.
fn allowed(file: &str, whole_line: bool) -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{}/.ci/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| if whole_line { l.to_string() } else { l.split_whitespace().next().unwrap_or_default().to_string() })
        .collect()
}

/// Whether an SPDX expression (with `OR`, `AND`, parentheses, `WITH`, and the old `/` for OR) is satisfied by
/// licences all in `ok`.
fn satisfied(expr: &str, ok: &BTreeSet<String>) -> bool {
    let spaced = expr.replace('(', " ( ").replace(')', " ) ").replace('/', " OR ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut pos = 0;
    let v = or_expr(&tokens, &mut pos, ok);
    v && pos == tokens.len()
}

fn or_expr(t: &[&str], pos: &mut usize, ok: &BTreeSet<String>) -> bool {
    let mut v = and_expr(t, pos, ok);
    while t.get(*pos) == Some(&"OR") {
        *pos += 1;
        v |= and_expr(t, pos, ok);
    }
    v
}

fn and_expr(t: &[&str], pos: &mut usize, ok: &BTreeSet<String>) -> bool {
    let mut v = term(t, pos, ok);
    while t.get(*pos) == Some(&"AND") {
        *pos += 1;
        v &= term(t, pos, ok);
    }
    v
}

fn term(t: &[&str], pos: &mut usize, ok: &BTreeSet<String>) -> bool {
    match t.get(*pos) {
        Some(&"(") => {
            *pos += 1;
            let v = or_expr(t, pos, ok);
            if t.get(*pos) == Some(&")") {
                *pos += 1;
            }
            v
        }
        Some(id) => {
            *pos += 1;
            let mut id = id.to_string();
            if t.get(*pos) == Some(&"WITH") {
                id = format!("{id} WITH {}", t.get(*pos + 1).unwrap_or(&""));
                *pos += 2;
            }
            ok.contains(&id)
        }
        None => false,
    }
}

#[test]
fn spdx_expressions_are_read_as_spdx_says() {
    let ok: BTreeSet<String> = ["MIT", "Apache-2.0", "Unicode-3.0"].map(String::from).into();
    assert!(satisfied("MIT OR Apache-2.0", &ok));
    assert!(satisfied("MIT/Apache-2.0", &ok));
    assert!(satisfied("(MIT OR Apache-2.0) AND Unicode-3.0", &ok));
    assert!(satisfied("GPL-3.0 OR MIT", &ok));
    assert!(!satisfied("MIT AND GPL-3.0", &ok));
    assert!(!satisfied("GPL-3.0", &ok));
    assert!(!satisfied("Apache-2.0 WITH LLVM-exception", &ok), "an exception is its own entry");
}

#[test]
fn dependency_review_licences_and_duplicates() {
    let ok = allowed("licenses-allowed.txt", true);
    let meta: serde_json::Value =
        serde_json::from_str(&cargo(&["metadata", "--format-version", "1", "--locked"])).unwrap();
    let mut refused = Vec::new();
    for p in meta["packages"].as_array().unwrap() {
        if p["source"].is_null() {
            continue; // this workspace
        }
        let name = format!("{} {}", p["name"].as_str().unwrap(), p["version"].as_str().unwrap());
        match p["license"].as_str() {
            Some(l) if satisfied(l, &ok) => {}
            Some(l) => refused.push(format!("{name}: {l}")),
            None => refused.push(format!("{name}: no SPDX licence (license-file only?)")),
        }
    }
    assert!(refused.is_empty(), "licences not in .ci/licenses-allowed.txt:\n{}", refused.join("\n"));

    let tree = cargo(&["tree", "--locked", "--workspace", "--duplicates", "-e", "normal,build", "--prefix", "none"]);
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in tree.lines() {
        let mut w = line.split_whitespace();
        if let (Some(name), Some(v)) = (w.next(), w.next())
            && v.starts_with('v')
        {
            versions.entry(name.to_string()).or_default().insert(v.to_string());
        }
    }
    let dup: BTreeSet<String> = versions.into_iter().filter(|(_, v)| v.len() > 1).map(|(n, _)| n).collect();
    let listed = allowed("duplicates-allowed.txt", false);
    let new: Vec<_> = dup.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&dup).collect();
    assert!(new.is_empty(), "crates in several versions, not in .ci/duplicates-allowed.txt: {new:?}");
    assert!(stale.is_empty(), "no longer duplicated, drop from .ci/duplicates-allowed.txt: {stale:?}");
}
