//! A flood of deposits at the real relay binary: `senders` in-process peers, each
//! depositing `blob_kib` KiB sealed messages in batches of 64 into random mailboxes as fast as the
//! relay answers, until each has used its per-sender quota (2,000 a day by default). The
//! relay runs with a small disk cap, so the flood runs past it: what is stored per second
//! (each batch one durable commit), what is refused, and the relay's memory before,
//! at its peak, and after.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ptpchat::config::Mode;
use ptpchat::node;
use ptpchat::wire::verbs::{DepositResult, Request, Response};

use crate::{common, relay};

pub struct Flood {
    pub senders: usize,
    pub stored: u64,
    pub refused: std::collections::BTreeMap<String, u64>,
    pub took: Duration,
    pub idle_kib: u64,
    pub peak_kib: u64,
    pub after_kib: u64,
    pub items_held: u64,
    pub bytes_held: u64,
    /// Size of the relay's database file after the flood, and the disk it takes (the file
    /// is sparse where redb grew it ahead of use).
    pub db_bytes: u64,
    pub db_disk_bytes: u64,
}

pub async fn run(senders: usize, cap_mib: u64, blob_kib: usize) -> Flood {
    let home = tempfile::tempdir().unwrap();
    let cap = cap_mib.to_string();
    let binary = common::Daemon::spawn(
        home.path(),
        &[
            "relay",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--mail-disk-cap",
            &cap,
        ],
    );
    let addr: libp2p::Multiaddr = binary.dial_addr().parse().unwrap();
    let relay_peer = match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("no /p2p/ in {addr}"),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = binary.child.id();
    let idle_kib = relay::rss_kib(pid);

    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..senders {
        let mut cfg = common::test_config(
            Mode::Relay,
            &dir.path().join(format!("s{i}")),
            std::slice::from_ref(&addr),
        );
        cfg.mailbox = None;
        cfg.control_socket = false;
        nodes.push(node::start(cfg).await.expect("sender starts"));
    }
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(idle_kib));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(relay::rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let start = Instant::now();
    let results = futures::future::join_all(nodes.iter().enumerate().map(|(i, n)| {
        let addr = addr.clone();
        async move {
            let mut stored = 0u64;
            let mut refused: std::collections::BTreeMap<String, u64> = Default::default();
            // 32 batches of 64: just over the 2,000-a-day quota. Batches stay under the
            // request limit (1 MiB).
            let per_batch = (512 / blob_kib.max(1)).clamp(1, 64);
            for b in 0..(2048 / per_batch) as u32 {
                let mut mailbox = [0u8; 32];
                mailbox[..4].copy_from_slice(&(i as u32).to_be_bytes());
                mailbox[4..8].copy_from_slice(&b.to_be_bytes());
                let sealed = (0..per_batch)
                    .map(|k| serde_bytes::ByteBuf::from(vec![k as u8; blob_kib * 1024]))
                    .collect();
                let r = n
                    .client
                    .request(
                        relay_peer,
                        vec![addr.clone()],
                        ptpchat::net::dial::DialReason::Own,
                        Request::Deposit { mailbox, sealed },
                    )
                    .await;
                match r {
                    Ok(Response::Deposited { results }) => {
                        for d in results {
                            match d {
                                DepositResult::Stored { .. } => stored += 1,
                                DepositResult::Nack { reason } => {
                                    *refused.entry(reason).or_default() += 1
                                }
                            }
                        }
                    }
                    Ok(Response::Nack { reason }) => {
                        *refused.entry(reason).or_default() += per_batch as u64
                    }
                    other => panic!("deposit failed: {other:?}"),
                }
            }
            (stored, refused)
        }
    }))
    .await;
    let took = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let mut stored = 0;
    let mut refused: std::collections::BTreeMap<String, u64> = Default::default();
    for (s, r) in results {
        stored += s;
        for (k, v) in r {
            *refused.entry(k).or_default() += v;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_kib = relay::rss_kib(pid);
    let status = common::cli(home.path(), &["status", "--json"]).json();
    let (db_bytes, db_disk_bytes) = std::fs::metadata(home.path().join("ptpchat.redb"))
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.len(), m.blocks() * 512)
        })
        .unwrap_or((0, 0));
    for n in nodes {
        n.shutdown().await;
    }
    Flood {
        senders,
        stored,
        refused,
        took,
        idle_kib,
        peak_kib: peak.load(Ordering::Relaxed),
        after_kib,
        items_held: status["mail"]["items"].as_u64().unwrap_or(0),
        bytes_held: status["mail"]["bytes"].as_u64().unwrap_or(0),
        db_bytes,
        db_disk_bytes,
    }
}
