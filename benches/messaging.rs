//! Direct-message benchmarks (`cargo bench --bench messaging`), measured side by side in
//! one run because the machine is shared and noisy:
//!
//! 1. the physical limit: ed25519 strict verifications per second on one core;
//! 2. throughput: 1 KiB messages from node A to node B over loopback with a connection open,
//!    each signed, sealed, verified, opened and durably committed on both sides (outbox and
//!    history), until every ACK is back — reported with its ratio to (1);
//! 3. latency: one 100-byte message, from writing `send` on A's control socket to reading
//!    the line on B's `recv --follow` stream, p50/p90/p99 over many sequential messages;
//! 4. the disk's floor under that latency: a 4 KiB write + `fdatasync`, and a durable redb
//!    commit of one small row, each p50 — the latency path holds two durable commits in
//!    series (A's outbox before sending, B's history before showing and ACKing).
//!
//! Throughput and latency run over TCP and over QUIC.
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

/// The loopback transports measured, by name and listen address.
const TRANSPORTS: [(&str, &str); 2] = [
    ("TCP", "/ip4/127.0.0.1/tcp/0"),
    ("QUIC", "/ip4/127.0.0.1/udp/0/quic-v1"),
];

fn config(
    home: &Path,
    listen: &str,
    public: bool,
    bootstrap: Vec<libp2p::Multiaddr>,
) -> NodeConfig {
    let mut cfg = NodeConfig::new(Mode::User, home.to_path_buf());
    cfg.listen = vec![listen.parse().expect("a listen multiaddr")];
    cfg.bootstrap = bootstrap;
    cfg.mdns = false;
    cfg.public = public;
    cfg
}

/// A and B, connected, A holding B's document.
async fn pair(dir: &Path, listen: &str) -> (RunningNode, RunningNode) {
    let b = node::start(config(&dir.join("b"), listen, true, vec![]))
        .await
        .expect("B starts");
    let b_addrs = b.listen_addrs().await;
    let a = node::start(config(&dir.join("a"), listen, false, b_addrs))
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

async fn throughput(listen: &str, messages: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path(), listen).await;
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

async fn raw_line(reader: &mut BufReader<UnixStream>) -> String {
    let mut l = String::new();
    reader.read_line(&mut l).await.unwrap();
    l
}

async fn line(reader: &mut BufReader<UnixStream>) -> ControlResponse {
    serde_json::from_str(&raw_line(reader).await).unwrap()
}

async fn latency(listen: &str, samples: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path(), listen).await;
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
        // The clock stops when the line is read; checking it comes after.
        let got = raw_line(&mut follow).await;
        let dt = t0.elapsed();
        let got: ControlResponse = serde_json::from_str(&got).unwrap();
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

/// p50 of a 4 KiB overwrite + fdatasync, and of a durable one-row redb commit.
fn disk_floor(samples: usize) -> (Duration, Duration) {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    f.sync_all().unwrap();
    let mut raw = Vec::with_capacity(samples);
    for i in 0..samples {
        f.seek(SeekFrom::Start(0)).unwrap();
        let t = Instant::now();
        f.write_all(&[i as u8; 4096]).unwrap();
        f.sync_data().unwrap();
        raw.push(t.elapsed());
    }
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    let db = redb::Database::create(dir.path().join("db.redb")).unwrap();
    let mut commits = Vec::with_capacity(samples);
    for i in 0..samples as u64 {
        let t = Instant::now();
        let txn = db.begin_write().unwrap();
        txn.open_table(T)
            .unwrap()
            .insert(i, [7u8; 300].as_slice())
            .unwrap();
        txn.commit().unwrap();
        commits.push(t.elapsed());
    }
    raw.sort();
    commits.sort();
    (pct(&raw, 0.5), pct(&commits, 0.5))
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
    let mut rates = Vec::new();
    for (name, listen) in TRANSPORTS {
        rates.push((name, rt.block_on(throughput(listen, messages))));
    }
    let verify_after = verify_rate();
    let verify = (verify_before + verify_after) / 2.0;
    println!("ed25519 verify_strict, one core: {verify:.0}/s (before {verify_before:.0}, after {verify_after:.0})");
    for (name, rate) in rates {
        println!(
            "{name}: 1 KiB messages A->B, signed+sealed+verified+opened+committed: {rate:.0}/s ({messages} messages); ratio to one core's verify rate: {:.2} (target >= 0.50)",
            rate / verify
        );
    }
    let (raw, commit) = disk_floor(500);
    println!(
        "disk: 4 KiB write + fdatasync p50 {raw:?}; durable redb commit p50 {commit:?}; two commits in series {:?}",
        commit * 2
    );
    for (name, listen) in TRANSPORTS {
        let mut lat = rt.block_on(latency(listen, samples));
        lat.sort();
        println!(
            "{name}: 100-byte message, A's control socket -> B's recv --follow line ({} samples): p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
            lat.len(),
            pct(&lat, 0.50),
            pct(&lat, 0.90),
            pct(&lat, 0.99),
            lat[lat.len() - 1]
        );
    }
}
