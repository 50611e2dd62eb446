//! The resident memory of a busy node: the real binary, in `channels` public channels it
//! created, with `peers` in-process nodes connected to it that discover and join every one
//! of them and post into each, so the binary holds gossipsub meshes, channel state and
//! history for all of them.

use std::time::{Duration, Instant};

use ptpchat::config::Mode;
use ptpchat::node::{self, RunningNode};

use crate::{common, relay};

pub struct Busy {
    pub peers: usize,
    pub channels: usize,
    /// The binary's connected peers when measured.
    pub connected: u64,
    /// Channel posts the binary had stored when measured, of `peers × channels`.
    pub stored: usize,
    pub idle_kib: u64,
    pub rss_kib: u64,
    /// The binary's counters of refused input (`status --json` → `rejected`).
    pub rejected: serde_json::Value,
}

/// The channel posts the binary has stored (`recv --json` lines with a channel).
fn posts_stored(home: &std::path::Path) -> Vec<serde_json::Value> {
    let run = common::cli(home, &["recv", "--json"]);
    run.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| !v["channel"].is_null())
        .collect()
}

pub async fn run(peers: usize, channels: usize) -> Busy {
    let home = tempfile::tempdir().unwrap();
    let binary = common::Daemon::spawn(
        home.path(),
        &[
            "run",
            "--no-mdns",
            "--public",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--quiet",
        ],
    );
    let boot: libp2p::Multiaddr = binary.dial_addr().parse().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_kib = relay::rss_kib(binary.child.id());
    let mut ids = Vec::new();
    for c in 0..channels {
        let run = common::cli(
            home.path(),
            &["channel", "create", &format!("busy-{c}"), "--json"],
        );
        assert_eq!(run.code, 0, "channel create: {}", run.stderr);
        ids.push(run.json()["channel_id"].as_str().unwrap().to_string());
    }

    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<RunningNode> = Vec::new();
    for chunk in (0..peers).collect::<Vec<_>>().chunks(10) {
        nodes.extend(
            futures::future::join_all(chunk.iter().map(|i| {
                let mut cfg = common::test_config(
                    Mode::User,
                    &dir.path().join(format!("p{i}")),
                    std::slice::from_ref(&boot),
                );
                cfg.public = true;
                async move { node::start(cfg).await.expect("peer starts") }
            }))
            .await,
        );
    }
    for n in &nodes {
        let c = n.channels.clone().unwrap();
        for id in &ids {
            common::eventually(
                Duration::from_secs(60),
                "the channels to be discovered",
                || {
                    let c = c.clone();
                    async move { c.join(id).await.ok().map(|_| ()) }
                },
            )
            .await;
        }
    }
    // A post is refused while its sender has no gossip peer on the channel yet.
    for (i, n) in nodes.iter().enumerate() {
        let c = n.channels.clone().unwrap();
        for id in &ids {
            common::eventually(Duration::from_secs(60), "a post to go out", || {
                let c = c.clone();
                async move { c.send(id, format!("hello from peer {i}")).await.ok() }
            })
            .await;
        }
    }
    let want = peers * channels;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stored = posts_stored(home.path()).len();
    while stored < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stored = posts_stored(home.path()).len();
    }
    // Settle: the posts' gossip and the joins' announcements die down.
    tokio::time::sleep(Duration::from_secs(if super::smoke() { 1 } else { 5 })).await;
    let status = common::cli(home.path(), &["status", "--json"]).json();
    let rss_kib = relay::rss_kib(binary.child.id());
    if stored < want {
        // Whose posts are missing: a few senders entirely, or a share of everyone's?
        let mut per_sender = std::collections::HashMap::<String, usize>::new();
        for v in posts_stored(home.path()) {
            *per_sender.entry(v["from"].to_string()).or_default() += 1;
        }
        let mut hist = std::collections::BTreeMap::<usize, usize>::new();
        for n in &nodes {
            let uuid = format!("\"{}\"", n.id.as_ref().unwrap().uuid);
            *hist
                .entry(per_sender.get(&uuid).copied().unwrap_or(0))
                .or_default() += 1;
        }
        println!("posts stored per sender (posts: senders): {hist:?}");
    }
    for n in &nodes {
        let s = tokio::time::timeout(Duration::from_secs(2), n.client.status()).await;
        match s {
            Ok(Ok(s)) => {
                if s.connected_peers == 0 {
                    println!("peer {} has no connection", n.peer_id);
                }
            }
            _ => println!("peer {}: event loop does not answer", n.peer_id),
        }
    }
    assert!(rss_kib > 0, "VmRSS in /proc/<pid>/status");
    for n in nodes {
        n.shutdown().await;
    }
    Busy {
        peers,
        channels,
        connected: status["connected_peers"].as_u64().unwrap_or(0),
        stored,
        idle_kib,
        rss_kib,
        rejected: status["rejected"].clone(),
    }
}
