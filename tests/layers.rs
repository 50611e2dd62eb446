//! The module layers (docs/architecture.md, issue 18): which top-level module of `src/` may
//! name which. Read from the source: every `crate::<module>` outside comments, per file.
//!
//! - `cbor` names nothing; `identity` only `cbor`; `wire` only `cbor` and `identity`: the
//!   pure codecs at the bottom, which everything may use.
//! - No other import cycle than those listed in [`KNOWN_CYCLE_EDGES`], which the core
//!   redesign is removing. The list must stay exact: an edge that is gone must leave it (so
//!   it only shrinks), and a new edge that closes a cycle fails the test.
//!
//! Run `cargo test --test layers -- --nocapture` to print the module graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Edges (`from`, `to`) that lie on an import cycle today.
const KNOWN_CYCLE_EDGES: &[(&str, &str)] = &[
    ("cli", "control"),
    ("cli", "node"),
    ("config", "mailbox"),
    ("config", "net"),
    ("control", "cli"),
    ("control", "node"),
    ("mailbox", "net"),
    ("net", "config"),
    ("node", "control"),
];

/// The modules each bottom layer may name.
const PURE: &[(&str, &[&str])] = &[
    ("cbor", &[]),
    ("identity", &["cbor"]),
    ("wire", &["cbor", "identity"]),
];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_string();
            (p.is_dir() || p.extension()? == "rs").then_some(name)
        })
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut g = Graph::new();
    let mut files = vec![src.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = p.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_str().unwrap();
        let top = top.strip_suffix(".rs").unwrap_or(top).to_string();
        if !modules.contains(&top) {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != top && modules.contains(&name) {
                    g.entry(top.clone()).or_default().insert(name);
                }
            }
        }
        g.entry(top).or_default();
    }
    g
}

/// Whether `to` reaches `from` (so the edge `from -> to` closes a cycle).
fn on_cycle(g: &Graph, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![to.to_string()];
    while let Some(n) = stack.pop() {
        if n == from {
            return true;
        }
        if seen.insert(n.clone()) {
            stack.extend(g.get(&n).into_iter().flatten().cloned());
        }
    }
    false
}

#[test]
fn the_pure_layers_name_nothing_above_them() {
    let g = graph();
    for (module, allowed) in PURE {
        let uses = g.get(*module).cloned().unwrap_or_default();
        let above: Vec<_> = uses
            .iter()
            .filter(|u| !allowed.contains(&u.as_str()))
            .collect();
        assert!(above.is_empty(), "{module} names {above:?}");
    }
}

#[test]
fn no_import_cycle_but_the_known_ones() {
    let g = graph();
    for (m, uses) in &g {
        println!(
            "{m} -> {}",
            uses.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let cycles: BTreeSet<(String, String)> = g
        .iter()
        .flat_map(|(m, uses)| uses.iter().map(move |u| (m.clone(), u.clone())))
        .filter(|(m, u)| on_cycle(&g, m, u))
        .collect();
    let known: BTreeSet<(String, String)> = KNOWN_CYCLE_EDGES
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = cycles.difference(&known).collect();
    assert!(new.is_empty(), "new import cycles through {new:?}");
    let gone: Vec<_> = known.difference(&cycles).collect();
    assert!(
        gone.is_empty(),
        "no longer on a cycle, take them off KNOWN_CYCLE_EDGES: {gone:?}"
    );
}
