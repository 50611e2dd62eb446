//! The fuzz corpus as a regression suite: every seed under `fuzz/corpus/<target>/` and every
//! input under `fuzz/regressions/<target>/` (a crash the fuzzer found, kept after its fix)
//! goes through the same entry point as the fuzz target, and none may panic.
//! The seeds are made from the `protocols/` vectors; `WRITE_FUZZ_SEEDS=1 cargo test --test
//! fuzz_regressions` writes them afresh after a vector changes.

mod common;

use std::path::{Path, PathBuf};

use ptpchat::fuzzing::{self, TARGETS};
use ptpchat::identity::Identity;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Which targets a vector field seeds.
fn targets_for(vector: &str, field: &str) -> &'static [&'static str] {
    match (vector, field) {
        ("channel-history", "page") => &["history_page", "verbs_response"],
        (_, "cbor") if vector.ends_with("-request") => &["verbs_request", "mailbox"],
        (_, "cbor") if vector.ends_with("-response") => &["verbs_response", "mailbox"],
        ("channel-history", "request") => &["verbs_request"],
        (_, "document" | "sender_document") => &["identity_document"],
        ("message-sealed" | "mailbox-receipt", "sealed") => &["envelope"],
        ("message-signed", "signed") => &["envelope"],
        ("channel-public-text" | "channel-private-text", "signed") => &["channel_frame"],
        ("channel-sealed", "sealed") => &["channel_frame"],
        ("channel-key-grant", "grant") => &["key_grant"],
        _ => &[],
    }
}

/// (target, file name, bytes) of every seed.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for spec in [
        "identity.md",
        "verbs.md",
        "messages.md",
        "channels.md",
        "mailbox.md",
        "connect.md",
    ] {
        for (vector, fields) in common::spec_vectors(spec) {
            for (field, value) in fields {
                for target in targets_for(&vector, &field) {
                    let Ok(bytes) = hex::decode(&value) else {
                        continue;
                    };
                    out.push((*target, format!("seed-{vector}-{field}"), bytes));
                    if field == "grant" {
                        out.push((
                            *target,
                            format!("seed-{vector}-{field}-text"),
                            value.clone().into(),
                        ));
                    }
                }
            }
        }
    }
    // The control socket's request lines, as the table of protocols/control.md shows them.
    let control =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols/control.md"))
            .unwrap();
    for (i, line) in control
        .split('`')
        .filter(|s| s.starts_with("{\"cmd\""))
        .enumerate()
    {
        out.push((
            "control_request",
            format!("seed-control-{i:02}"),
            line.into(),
        ));
    }
    // A home's secret identity record: fresh, and after a rotation.
    let signing = [0x9d; 32];
    let mut id = Identity::from_secret_keys(signing, [0x77; 32], fuzzing::NOW);
    out.push((
        "identity_from_bytes",
        "seed-identity".into(),
        id.to_bytes().to_vec(),
    ));
    id.rotate_identity_key_to([0x4c; 32]).unwrap();
    out.push((
        "identity_from_bytes",
        "seed-identity-rotated".into(),
        id.to_bytes().to_vec(),
    ));
    out.push((
        "delivery_receipt",
        "seed-receipt".into(),
        b"6f1c2b3a-4d5e-4f60-a1b2-c3d4e5f60718,00000000-0000-4000-8000-000000000001".to_vec(),
    ));
    out
}

#[test]
fn seed_corpus_matches_the_vectors() {
    let write = std::env::var_os("WRITE_FUZZ_SEEDS").is_some();
    let seeds = seeds();
    for (name, _) in TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| t == name),
            "no seed for target {name}"
        );
    }
    for (target, name, bytes) in seeds {
        let path = fuzz_dir().join("corpus").join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let held = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (WRITE_FUZZ_SEEDS=1 writes it)", path.display())
            });
            assert_eq!(held, bytes, "{} is stale", path.display());
        }
    }
}

/// The committed seeds and every regression input, by target.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (dir, only_seeds) in [("corpus", true), ("regressions", false)] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !only_seeds || name.starts_with("seed-") {
                files.push(e.path());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn no_decoder_panics_on_the_corpus_or_a_past_crash() {
    let mut ran = 0;
    for (target, entry) in TARGETS {
        for path in inputs(target) {
            let data = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| entry(&data));
            assert!(result.is_ok(), "{target} panicked on {}", path.display());
            ran += 1;
        }
    }
    assert!(ran > 0, "no corpus found under {}", fuzz_dir().display());
}
