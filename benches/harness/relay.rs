//! Relay memory with many idle reservations: the real binary runs as a relay; this process
//! holds `n` minimal relay clients (TCP, Noise, Yamux, relay v2 client, nothing else), each
//! with an accepted reservation. All come from 127.0.0.1, so the relay runs with
//! `--reservation-ip-burst 5000` (its default, 60 then one a minute, would refuse most).

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::{multiaddr::Protocol, noise, relay, swarm::SwarmEvent, tcp, yamux, Multiaddr};

use crate::common;

pub struct RelayMemory {
    pub idle_kib: u64,
    pub loaded_kib: u64,
    pub accepted: usize,
    pub took: Duration,
}

/// A process's resident memory in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

/// One client: reserves on `relay`, then keeps its connection open until aborted.
async fn client(relay: Multiaddr, accepted: tokio::sync::mpsc::Sender<()>) {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .expect("relay client")
        .with_behaviour(|_, relay_client| relay_client)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    swarm
        .listen_on(relay.with(Protocol::P2pCircuit))
        .expect("listen via relay");
    loop {
        if let SwarmEvent::Behaviour(relay::client::Event::ReservationReqAccepted {
            renewal: false,
            ..
        }) = swarm.select_next_some().await
        {
            let _ = accepted.send(()).await;
        }
    }
}

pub async fn reservations(n: usize) -> RelayMemory {
    let home = tempfile::tempdir().unwrap();
    let relay = common::Daemon::spawn(
        home.path(),
        &[
            "relay",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--quiet",
            "--reservation-ip-burst",
            "5000",
        ],
    );
    let addr: Multiaddr = relay.dial_addr().parse().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = relay.child.id();
    let idle_kib = rss_kib(pid);
    let (tx, mut rx) = tokio::sync::mpsc::channel(n.max(1));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let mut accepted = 0;
    for i in 0..n {
        tasks.push(tokio::spawn(client(addr.clone(), tx.clone())));
        // Batches of 50, so pending connections stay under the relay's limit of 128.
        if i % 50 == 49 {
            while accepted < i + 1 - 50 {
                match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
                    Ok(Some(())) => accepted += 1,
                    _ => break,
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(())) => accepted += 1,
            _ => continue,
        }
    }
    let took = started.elapsed();
    // Idle: let the reservation traffic settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded_kib = rss_kib(pid);
    for t in tasks {
        t.abort();
    }
    RelayMemory {
        idle_kib,
        loaded_kib,
        accepted,
        took,
    }
}
