//! The module layers (docs/architecture.md, issue 18): which top-level module of `src/` may
//! name which. Read from the source: every `crate::<module>` outside comments, per file.
//!
//! - `cbor`, `error` and `shared` name nothing; `counters` only `shared`; `identity` only
//!   `cbor`; `wire` only `cbor`, `counters`, `identity` and `shared`:
//!   the pure codecs at the bottom, which everything may use.
//! - `net` names no service (`messaging`, `channels`, `mailbox`, `control`, `node`, `cli`).
//! - No import cycle between top-level modules.
//! - redb is named only under `store/`: everything else writes through named store
//!   functions (`enqueue`, `finish_outbox`, `accept_inbound`, ...).
//!
//! Run `cargo test --test layers -- --nocapture` to print the module graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The modules each bottom layer may name.
const PURE: &[(&str, &[&str])] = &[
    ("cbor", &[]),
    ("counters", &["shared"]),
    ("error", &[]),
    ("shared", &[]),
    ("identity", &["cbor"]),
    ("wire", &["cbor", "counters", "identity", "shared"]),
    ("ratchet", &["cbor", "identity", "wire"]),
];

/// What the network layer must not name.
const SERVICES: &[&str] = &["messaging", "channels", "mailbox", "control", "node", "cli"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, with its path relative to it.
fn sources() -> Vec<(String, String)> {
    let root = src();
    let mut out = Vec::new();
    let mut todo = vec![root.clone()];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(&root).unwrap().to_str().unwrap().to_string();
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// A source line without its comment.
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

type Graph = BTreeMap<String, BTreeSet<String>>;

fn graph() -> Graph {
    let modules: BTreeSet<String> = std::fs::read_dir(src())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_string();
            (p.is_dir() || p.extension()? == "rs").then_some(name)
        })
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut g = Graph::new();
    for (rel, text) in sources() {
        let top = rel.split('/').next().unwrap();
        let top = top.strip_suffix(".rs").unwrap_or(top).to_string();
        if !modules.contains(&top) {
            continue;
        }
        for line in text.lines() {
            let code = code(line);
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + "crate::".len()..]
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
fn the_network_layer_names_no_service() {
    let g = graph();
    let named: Vec<_> = g["net"]
        .iter()
        .filter(|m| SERVICES.contains(&m.as_str()))
        .collect();
    assert!(named.is_empty(), "net names {named:?}");
}

#[test]
fn no_import_cycle() {
    let g = graph();
    for (m, uses) in &g {
        println!(
            "{m} -> {}",
            uses.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let cycles: Vec<(&String, &String)> = g
        .iter()
        .flat_map(|(m, uses)| uses.iter().map(move |u| (m, u)))
        .filter(|(m, u)| on_cycle(&g, m, u))
        .collect();
    assert!(cycles.is_empty(), "edges on an import cycle: {cycles:?}");
}

/// The event loop routes and carries out; it touches no disk itself. The store is reached
/// only through the threads made for it: the identity keeper (`net/keeper.rs`), the
/// directory cache's writer (`event_loop/dht.rs`) and the reads run on blocking threads
/// (`event_loop/reads.rs`).
/// The code of `text` (comments out) as lines, with the lines rustfmt breaks a method
/// chain into (`.store` / `.read()` on lines of their own) joined back onto the line they
/// continue, each with the number of its first line.
fn statements(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = code(line).trim();
        match out.last_mut() {
            Some((_, last)) if l.starts_with('.') || l.starts_with('?') => last.push_str(l),
            _ => out.push((n + 1, l.to_string())),
        }
    }
    out
}

/// The checker itself: a split chain and an import used short are both caught.
#[test]
fn the_disk_check_sees_through_rustfmt() {
    let split = "let x = self\n    .store\n    .cached_document(&id)?;\nuse std::{fs, io};";
    let joined = statements(split);
    assert!(joined[0].1.contains("self.store.cached_document(&id)?;"));
    assert!(joined[1].1.starts_with("use std::{fs, io};"));
}

#[test]
fn the_event_loop_touches_no_disk() {
    let allowed = ["net/event_loop/dht.rs", "net/event_loop/reads.rs"];
    let touching: Vec<String> = sources()
        .into_iter()
        .filter(|(rel, _)| rel == "net/event_loop.rs" || rel.starts_with("net/event_loop/"))
        .filter(|(rel, _)| !allowed.contains(&rel.as_str()))
        .flat_map(|(rel, text)| {
            statements(&text)
                .into_iter()
                .filter(|(_, l)| {
                    // Handing the store on (`clone`) or taking its in-memory contacts is
                    // not a read; any other method of it is.
                    let store_call = l.match_indices("store.").any(|(i, _)| {
                        let rest = &l[i + "store.".len()..];
                        !rest.starts_with("clone()") && !rest.starts_with("contact_book()")
                    });
                    // `fs::` catches `std::fs`, `tokio::fs` and a `use std::fs` used short;
                    // an import of `fs` in braces is caught by its word.
                    let imports_fs = l.starts_with("use ")
                        && l.split(|c: char| !c.is_alphanumeric() && c != '_')
                            .any(|w| w == "fs");
                    store_call
                        || imports_fs
                        || ["fs::", "File::", "OpenOptions"]
                            .iter()
                            .any(|p| l.contains(p))
                })
                .map(|(n, l)| format!("{rel}:{n}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        touching.is_empty(),
        "the event loop touches the disk: {touching:#?}"
    );
}

#[test]
fn redb_stays_in_the_store() {
    let outside: Vec<String> = sources()
        .into_iter()
        .filter(|(rel, _)| !rel.starts_with("store/"))
        .filter(|(_, text)| {
            text.lines()
                .any(|l| code(l).contains("redb::") || code(l).contains("open_table("))
        })
        .map(|(rel, _)| rel)
        .collect();
    assert!(
        outside.is_empty(),
        "redb named outside store/ in {outside:?}"
    );
}
