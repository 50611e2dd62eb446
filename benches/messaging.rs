//! Direct-message benchmarks (`cargo bench --bench messaging`), measured side by side in
//! one run because the machine is shared and noisy:
//!
//! 1. the physical limit: ed25519 strict verifications per second on one core;
//! 2. throughput: 1 KiB messages from node A to node B over loopback with a connection open,
//!    each signed, sealed, verified, opened and durably committed on both sides (outbox and
//!    history), until every ACK is back — reported with its ratio to (1);
//! 3. latency: one 100-byte message, from writing `send` on A's control socket to reading
//!    the line on B's `recv --follow` stream, p50/p90/p99 over many sequential messages.
//!
//! Results go in docs/benchmarks.md. `BENCH_MESSAGES` and `BENCH_LATENCY_SAMPLES` override
//! the sizes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use ptpchat::config::{Mode, NodeConfig};
use ptpchat::control::{ControlRequest, ControlResponse};
use ptpchat::messaging::Delivery;
use ptpchat::node::{self, RunningNode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn verify_rate() -> f64 {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let public = key.verifying_key();
    let msg = vec![0x5au8; 1100];
    let sig = key.sign(&msg);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for _ in 0..100 {
            public
                .verify_strict(std::hint::black_box(&msg), &sig)
                .expect("valid");
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn config(home: &Path, public: bool, bootstrap: Vec<libp2p::Multiaddr>) -> NodeConfig {
    let mut cfg = NodeConfig::new(Mode::User, home.to_path_buf());
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.bootstrap = bootstrap;
    cfg.mdns = false;
    cfg.public = public;
    cfg
}

/// A and B, connected, A holding B's document.
async fn pair(dir: &Path) -> (RunningNode, RunningNode) {
    let b = node::start(config(&dir.join("b"), true, vec![]))
        .await
        .expect("B starts");
    let b_addrs = b.listen_addrs().await;
    let a = node::start(config(&dir.join("a"), false, b_addrs))
        .await
        .expect("A starts");
    let b_uuid = b.id.as_ref().unwrap().uuid;
    let deadline = Instant::now() + Duration::from_secs(30);
    let doc = loop {
        if let Ok(d) = a.client.fetch_certificate(b.peer_id, b_uuid).await {
            break d;
        }
        assert!(Instant::now() < deadline, "B never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    a.messenger.as_ref().unwrap().remember_document(&doc);
    (a, b)
}

async fn throughput(messages: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path()).await;
    let b_uuid = b.id.as_ref().unwrap().uuid;
    let messenger = a.messenger.clone().unwrap();
    let text = "x".repeat(1024);
    // Warm up: one message opens the streams and caches.
    let s = messenger.send(b_uuid, text.clone(), vec![]).await.unwrap();
    assert_eq!(s.outcome.await.unwrap(), Delivery::Delivered);

    let window = Arc::new(tokio::sync::Semaphore::new(4096));
    let start = Instant::now();
    let mut waits = tokio::task::JoinSet::new();
    for _ in 0..messages {
        let permit = window.clone().acquire_owned().await.unwrap();
        let m = messenger.clone();
        let t = text.clone();
        waits.spawn(async move {
            let s = m.send(b_uuid, t, vec![]).await.expect("accepted");
            let d = s.outcome.await.expect("outcome");
            drop(permit);
            d
        });
    }
    while let Some(d) = waits.join_next().await {
        assert_eq!(d.unwrap(), Delivery::Delivered);
    }
    let rate = messages as f64 / start.elapsed().as_secs_f64();
    let stored = b
        .messenger
        .as_ref()
        .unwrap()
        .store()
        .history_after(0, messages + 10)
        .unwrap()
        .len();
    assert_eq!(stored, messages + 1, "every message committed at B");
    drop(messenger);
    a.shutdown().await;
    b.shutdown().await;
    rate
}

async fn line(reader: &mut BufReader<UnixStream>) -> ControlResponse {
    let mut l = String::new();
    reader.read_line(&mut l).await.unwrap();
    serde_json::from_str(&l).unwrap()
}

async fn latency(samples: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path()).await;
    let b_uuid = b.id.as_ref().unwrap().uuid.to_string();
    let request = |r: &ControlRequest| {
        let mut v = serde_json::to_vec(r).unwrap();
        v.push(b'\n');
        v
    };
    // B's recv --follow stream, and one control connection to A.
    let mut follow = BufReader::new(
        UnixStream::connect(dir.path().join("b/ptpchat.sock"))
            .await
            .unwrap(),
    );
    follow
        .get_mut()
        .write_all(&request(&ControlRequest::Recv {
            since: None,
            follow: true,
        }))
        .await
        .unwrap();
    let mut ctl = BufReader::new(
        UnixStream::connect(dir.path().join("a/ptpchat.sock"))
            .await
            .unwrap(),
    );
    let text = "y".repeat(100);
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + 20 {
        let send = request(&ControlRequest::Send {
            to: b_uuid.clone(),
            text: text.clone(),
            attach: vec![],
            timeout_ms: None,
        });
        let t0 = Instant::now();
        ctl.get_mut().write_all(&send).await.unwrap();
        let got = line(&mut follow).await;
        let dt = t0.elapsed();
        assert!(got.ok && got.data.is_some());
        let answer = line(&mut ctl).await;
        assert!(answer.ok, "{:?}", answer.error);
        // The first messages warm up connections and caches.
        if i >= 20 {
            out.push(dt);
        }
    }
    a.shutdown().await;
    b.shutdown().await;
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let messages = env_usize("BENCH_MESSAGES", 20_000);
    let samples = env_usize("BENCH_LATENCY_SAMPLES", 1_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "ptpchat messaging benchmark ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let verify_before = verify_rate();
    let rate = rt.block_on(throughput(messages));
    let verify_after = verify_rate();
    let verify = (verify_before + verify_after) / 2.0;
    println!("ed25519 verify_strict, one core: {verify:.0}/s (before {verify_before:.0}, after {verify_after:.0})");
    println!("1 KiB messages A->B, signed+sealed+verified+opened+committed: {rate:.0}/s ({messages} messages)");
    println!(
        "ratio to one core's verify rate: {:.2} (target >= 0.50)",
        rate / verify
    );

    let mut lat = rt.block_on(latency(samples));
    lat.sort();
    println!(
        "100-byte message, A's control socket -> B's recv --follow line ({} samples): p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        lat.len(),
        pct(&lat, 0.50),
        pct(&lat, 0.90),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );
}
