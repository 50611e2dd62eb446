//! Relay memory with many idle reservations: the real binary runs as a relay; this process
//! holds `n` minimal relay clients (TCP, Noise, Yamux, relay v2 client, nothing else), each
//! with an accepted reservation. All come from 127.0.0.1, so the relay runs with
//! `--reservation-ip-burst 5000` (its default, 60 then one a minute, would refuse most).
//! The relay serves `--metrics`: scrapes are timed idle and with every reservation held.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::{multiaddr::Protocol, noise, relay, swarm::SwarmEvent, tcp, yamux, Multiaddr};

use crate::common;

pub struct RelayMemory {
    pub idle_kib: u64,
    pub loaded_kib: u64,
    pub accepted: usize,
    pub took: Duration,
    pub scrape_idle: Scrapes,
    pub scrape_loaded: Scrapes,
    /// What the loaded scrape's `ptpchat_relay_reservations` said.
    pub reservations_gauge: Option<f64>,
}

/// Scrapes of `/metrics`, each timed from connect to the last byte.
pub struct Scrapes {
    pub p50: Duration,
    pub max: Duration,
    pub bytes: usize,
}

pub const SCRAPES: usize = 50;

/// One scrape: the body, and how long it took.
async fn scrape(addr: std::net::SocketAddr) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).await.unwrap();
    let took = t.elapsed();
    let body = all.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (body.unwrap_or_default(), took)
}

async fn scrapes(addr: std::net::SocketAddr) -> (Scrapes, String) {
    let mut times = Vec::with_capacity(SCRAPES);
    let mut last = String::new();
    for _ in 0..SCRAPES {
        let (body, took) = scrape(addr).await;
        times.push(took);
        last = body;
    }
    times.sort();
    let s = Scrapes {
        p50: times[times.len() / 2],
        max: times[times.len() - 1],
        bytes: last.len(),
    };
    (s, last)
}

/// A free loopback port (bound and let go: the relay takes it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let relay = common::Daemon::spawn(
        home.path(),
        &[
            "relay",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--quiet",
            "--reservation-ip-burst",
            "5000",
            "--metrics",
            &metrics.to_string(),
        ],
    );
    let addr: Multiaddr = relay.dial_addr().parse().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = relay.child.id();
    let idle_kib = rss_kib(pid);
    let (scrape_idle, _) = scrapes(metrics).await;
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
    let (scrape_loaded, text) = scrapes(metrics).await;
    let reservations_gauge = text
        .lines()
        .find_map(|l| l.strip_prefix("ptpchat_relay_reservations "))
        .and_then(|v| v.trim().parse().ok());
    for t in tasks {
        t.abort();
    }
    RelayMemory {
        idle_kib,
        loaded_kib,
        accepted,
        took,
        scrape_idle,
        scrape_loaded,
        reservations_gauge,
    }
}

/// The encode cost of libp2p's identify collector, which keeps each connected peer's
/// identify info (the clients above run no identify: the relay would drop them as foreign
/// peers). `n` peers' infos, as ptpchat users send them, are recorded into a registry like
/// the node's; returns the median of 50 encodes and the text's size.
pub fn identify_encode(n: usize) -> (Duration, usize) {
    use libp2p::metrics::Recorder;
    use libp2p::{identify, identity::Keypair, swarm::ConnectionId, StreamProtocol};
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = libp2p::metrics::Metrics::new(&mut registry);
    let protocols: Vec<StreamProtocol> = [
        "/ptpchat/1.0.0",
        "/ipfs/kad/1.0.0",
        "/ipfs/id/1.0.0",
        "/ipfs/id/push/1.0.0",
        "/ipfs/ping/1.0.0",
        "/libp2p/circuit/relay/0.2.0/stop",
        "/libp2p/dcutr",
        "/meshsub/1.1.0",
        "/meshsub/1.0.0",
        "/libp2p/autonat/1.0.0",
    ]
    .into_iter()
    .map(StreamProtocol::new)
    .collect();
    for i in 0..n {
        let key = Keypair::generate_ed25519().public();
        let peer_id = key.to_peer_id();
        let port = 4001 + (i % 1000) as u16;
        let info = identify::Info {
            public_key: key,
            protocol_version: "/ptpchat/id/1.0.0".into(),
            agent_version: "ptpchat/0.1.0".into(),
            listen_addrs: vec![
                format!("/ip4/10.0.{}.{}/tcp/{port}", i / 250, i % 250)
                    .parse()
                    .unwrap(),
                format!("/ip4/10.0.{}.{}/udp/{port}/quic-v1", i / 250, i % 250)
                    .parse()
                    .unwrap(),
            ],
            protocols: protocols.clone(),
            observed_addr: "/ip4/198.51.100.7/tcp/4001".parse().unwrap(),
            signed_peer_record: None,
        };
        metrics.record(&identify::Event::Received {
            connection_id: ConnectionId::new_unchecked(i),
            peer_id,
            info,
        });
    }
    let mut times = Vec::with_capacity(SCRAPES);
    let mut bytes = 0;
    for _ in 0..SCRAPES {
        let t = Instant::now();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        times.push(t.elapsed());
        bytes = out.len();
    }
    times.sort();
    (times[times.len() / 2], bytes)
}
