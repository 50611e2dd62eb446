//! The UUID directory at scale: `n` public user nodes (Kademlia servers) in this process on
//! loopback QUIC, each bootstrapped from one random node started before it, each publishing
//! its identity document as it would on the internet. Then `whois` of random UUIDs from
//! random nodes, one lookup at a time; half of the lookups run with every node up, the
//! other half after 20% of the nodes were stopped.
//!
//! QUIC rather than TCP because every connection is in this one process: with TCP each
//! costs two file descriptors here, and 200 nodes with their DHT connections come close to
//! the usual limit of 20,000. QUIC carries them all on one UDP socket per node.
//!
//! Hops: libp2p's Kademlia does not expose a lookup's path, so each node counts, per lookup
//! that found a document, the peers that had answered before the first valid document came
//! plus the one that sent it (`status` → `lookups.hops_bound`). Every peer on the path to
//! the holder is among them, so it is an upper bound on the hop count; with 3 requests in
//! flight it also counts the side branches.

use std::time::{Duration, Instant};

use ptpchat::config::Mode;
use ptpchat::node::{self, RunningNode};
use uuid::Uuid;

use crate::common;

/// A reproducible pseudo-random sequence (xorshift64*): the same run picks the same nodes.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// The lookups of one phase.
#[derive(Default)]
pub struct Phase {
    pub lookups: usize,
    /// `whois` answered with the right document.
    pub succeeded: usize,
    /// Of the lookups, the ones the DHT itself answered (not the fallbacks).
    pub dht_found: u64,
    pub dht_done: u64,
    pub requests: u64,
    pub hops_bound: u64,
    /// Time of each successful `whois`, sorted.
    pub latency: Vec<Duration>,
}

impl Phase {
    pub fn mean_hops_bound(&self) -> f64 {
        self.hops_bound as f64 / self.dht_found.max(1) as f64
    }
    pub fn mean_requests(&self) -> f64 {
        self.requests as f64 / self.dht_done.max(1) as f64
    }
}

pub struct Directory {
    pub nodes: usize,
    pub stopped: usize,
    pub setup: Duration,
    pub all_up: Phase,
    pub churn: Phase,
}

async fn start(home: std::path::PathBuf, boot: Option<libp2p::Multiaddr>) -> RunningNode {
    let boot: Vec<_> = boot.into_iter().collect();
    let mut cfg = common::test_config(Mode::User, &home, &boot);
    cfg.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    cfg.public = true;
    node::start(cfg).await.expect("node starts")
}

/// `lookups` random `whois` from the nodes in `up`, of UUIDs drawn from all `uuids`.
async fn phase(
    nodes: &[Option<RunningNode>],
    up: &[usize],
    uuids: &[Uuid],
    lookups: usize,
    rng: &mut Rng,
) -> Phase {
    let mut p = Phase::default();
    for _ in 0..lookups {
        let from = nodes[up[rng.below(up.len())]].as_ref().expect("running");
        let own = from.id.as_ref().map(|i| i.uuid);
        let target = loop {
            let t = uuids[rng.below(uuids.len())];
            if Some(t) != own {
                break t;
            }
        };
        let before = from.client.status().await.expect("status").lookups;
        let t0 = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(30), from.client.whois(target)).await;
        let took = t0.elapsed();
        let after = from.client.status().await.expect("status").lookups;
        p.lookups += 1;
        if matches!(&got, Ok(Ok(doc)) if doc.doc().uuid() == target) {
            p.succeeded += 1;
            p.latency.push(took);
        }
        p.dht_done += after.done - before.done;
        p.dht_found += after.found - before.found;
        p.requests += after.requests - before.requests;
        p.hops_bound += after.hops_bound - before.hops_bound;
    }
    p.latency.sort();
    p
}

pub async fn run(n: usize, lookups: usize) -> Directory {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t0 = Instant::now();
    let mut nodes: Vec<Option<RunningNode>> = Vec::with_capacity(n);
    let mut addrs: Vec<libp2p::Multiaddr> = Vec::with_capacity(n);
    for i in 0..n {
        let boot = (i > 0).then(|| addrs[rng.below(i)].clone());
        let node = start(dir.path().join(format!("n{i}")), boot).await;
        addrs.push(common::first_addr(&node).await);
        nodes.push(Some(node));
    }
    let uuids: Vec<Uuid> = nodes
        .iter()
        .map(|n| n.as_ref().unwrap().id.as_ref().unwrap().uuid)
        .collect();
    // Every document published (to its closest peers) before the first lookup.
    for node in nodes.iter().flatten() {
        common::eventually(
            Duration::from_secs(120),
            "every node to publish",
            || async {
                node.client
                    .status()
                    .await
                    .ok()
                    .and_then(|s| s.published_seq)
            },
        )
        .await;
    }
    let setup = t0.elapsed();

    let all: Vec<usize> = (0..n).collect();
    let all_up = phase(&nodes, &all, &uuids, lookups / 2, &mut rng).await;

    // Stop 20% of the nodes, chosen at random; their documents stay in the others' stores.
    let stopped = n / 5;
    let mut up = all.clone();
    for _ in 0..stopped {
        let i = up.swap_remove(rng.below(up.len()));
        nodes[i].take().unwrap().shutdown().await;
    }
    let churn = phase(&nodes, &up, &uuids, lookups - lookups / 2, &mut rng).await;

    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    Directory {
        nodes: n,
        stopped,
        setup,
        all_up,
        churn,
    }
}
