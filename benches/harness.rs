//! The performance harness (`cargo bench --bench harness`): every comparison is measured
//! side by side in one run, because the machine is shared and noisy. It prints a table and
//! writes the same figures as JSON to `target/bench/results.json` (or `BENCH_JSON`).
//!
//! 1. crypto floor (`crypto`): ed25519 sign, strict verify and batch verify; seal and open of a 1 KiB
//!    envelope (a fresh ephemeral key each, the worst case); CBOR encode/decode of it;
//! 2. direct messages (`direct`) over TCP and QUIC, two nodes in one process on loopback with a
//!    connection open: sustained 1 KiB messages/s until every ACK is back (each signed,
//!    sealed, verified, opened and durably committed on both sides) with its ratio to one
//!    core's verify rate; and one 100-byte message from writing `send` on A's control
//!    socket to reading the line on B's `recv --follow`, p50/p90/p99; with the disk's
//!    floor under that latency: a 4 KiB write + `fdatasync`, and a durable
//!    redb commit of one row (the latency path holds two durable commits in series);
//! 3. channel fan-out, 50 members, side by side with a Mosquitto broker (`fanout`);
//! 4. the directory: 200 nodes in this process, `whois` of random UUIDs with every node up
//!    and with 20% stopped: success, hops, latency (`directory`);
//! 5. memory of the real binary: idle (`binary`), in 10 channels with 50 peers (`busy`),
//!    and as a relay with 1,000 idle reservations (`relay`);
//! 6. the real binary: `ptpchat status` round trip against a running node, process start
//!    included (`binary`);
//! 7. a flood of mailbox deposits at the real relay binary, past its disk cap: deposits
//!    stored per second, refusals, the relay's memory (`mailbox`);
//! 8. the browser app and HTTP API (`web`): a message from A's HTTP API to B's event stream
//!    beside the same from A's control socket to B's `recv --follow`, sample by sample; the
//!    app's first load; its assets' size; memory for 100 open event streams.
//!
//! `BENCH_ONLY=crypto,direct,fanout,binary,directory,busy,relay,mailbox,web` runs the sections named.
//! `BENCH_SMOKE=1` runs every section with tiny sizes in a few seconds (CI does, so the
//! harness never rots); `BENCH_*` variables override the sizes (docs/benchmarks.md lists
//! them). Results go in docs/benchmarks.md.

#[path = "harness/busy.rs"]
mod busy;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "harness/directory.rs"]
mod directory;
#[path = "harness/fanout.rs"]
mod fanout;
#[path = "harness/mailbox.rs"]
mod mailbox;
#[path = "harness/relay.rs"]
mod relay;
#[path = "harness/web.rs"]
mod web;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use ptpchat::config::{Mode, NodeConfig};
use ptpchat::control::{ControlRequest, ControlResponse};
use ptpchat::identity::Identity;
use ptpchat::messaging::Delivery;
use ptpchat::node::{self, RunningNode};
use ptpchat::wire::envelope::{self, Envelope};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// ed25519 `verify_strict` of a 1.1 KiB message per second on one core: the baseline the
/// direct-message throughput is compared with.
fn verify_rate(secs: f64) -> f64 {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let public = key.verifying_key();
    let msg = vec![0x5au8; 1100];
    let sig = key.sign(&msg);
    rate(secs, || {
        public
            .verify_strict(std::hint::black_box(&msg), &sig)
            .expect("valid");
    })
}

/// The loopback transports measured, by name and listen address.
const TRANSPORTS: [(&str, &str); 2] = [
    ("TCP", "/ip4/127.0.0.1/tcp/0"),
    ("QUIC", "/ip4/127.0.0.1/udp/0/quic-v1"),
];

fn config(home: &Path, listen: &str, public: bool, bootstrap: &[libp2p::Multiaddr]) -> NodeConfig {
    let mut cfg = common::test_config(Mode::User, home, bootstrap);
    cfg.listen = vec![listen.parse().expect("a listen multiaddr")];
    cfg.public = public;
    cfg
}

/// A and B, connected, A holding B's document.
async fn pair(dir: &Path, listen: &str) -> (RunningNode, RunningNode) {
    pair_with(dir, listen, false).await
}

/// The same, each also serving its HTTP API on loopback if `http`.
async fn pair_with(dir: &Path, listen: &str, http: bool) -> (RunningNode, RunningNode) {
    let loopback = http.then(|| "127.0.0.1:0".parse().expect("an address"));
    let mut cb = config(&dir.join("b"), listen, true, &[]);
    cb.http = loopback;
    let b = node::start(cb).await.expect("B starts");
    let b_addrs = b.listen_addrs().await;
    let mut ca = config(&dir.join("a"), listen, false, &b_addrs);
    ca.http = loopback;
    let a = node::start(ca).await.expect("A starts");
    let b_uuid = b.id.as_ref().unwrap().uuid;
    let doc = common::eventually(Duration::from_secs(30), "B's certificate", || async {
        a.client.fetch_certificate(b.peer_id, b_uuid).await.ok()
    })
    .await;
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
            channel: None,
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
            idempotency_key: None,
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

/// Runs `f` for about `secs` and returns operations per second.
fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..20 {
            f();
        }
        n += 20;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The crypto and encoding floor, in operations per second (one core).
fn crypto_floor(secs: f64) -> Vec<(&'static str, f64)> {
    let now = ptpchat::unix_now();
    let mut id = Identity::generate(now);
    let doc = id.issue_document(&[], now);
    let keys = id.message_keys(doc);
    let mut recipient = Identity::generate(now);
    let recipient_pub = recipient.encryption_public();
    let recipient_doc = recipient.issue_document(&[], now);
    let recipient_keys = recipient.message_keys(recipient_doc);

    let key = SigningKey::from_bytes(&[7u8; 32]);
    let msg = vec![0x5au8; 1100];
    let batch = 64;
    let batch_keys: Vec<SigningKey> = (0..batch as u8)
        .map(|i| SigningKey::from_bytes(&[i; 32]))
        .collect();
    let batch_msgs: Vec<Vec<u8>> = (0..batch).map(|i| vec![i as u8; 1100]).collect();
    let batch_sigs: Vec<_> = batch_keys
        .iter()
        .zip(&batch_msgs)
        .map(|(k, m)| k.sign(m))
        .collect();
    let batch_pubs: Vec<VerifyingKey> = batch_keys.iter().map(|k| k.verifying_key()).collect();
    let batch_refs: Vec<&[u8]> = batch_msgs.iter().map(|m| m.as_slice()).collect();

    let env = Envelope {
        v: envelope::ENVELOPE_VERSION,
        msg_id: [1; 16],
        from: *keys.uuid.as_bytes(),
        to: *recipient_keys.uuid.as_bytes(),
        ts: now * 1000,
        kind: "text".into(),
        body: "x".repeat(1024),
        attachments: vec![],
    };
    let signed = envelope::sign(&env, &keys);
    let sealed = envelope::seal_with([9; 32], [3; 12], &recipient_pub, &signed);
    let open_cache = ptpchat::shared::Shared::new(envelope::OpenCache::default());
    let encoded = ptpchat::cbor::to_vec(&env).unwrap();

    // Olm's double ratchet (decision 0022), on the same signed form: Alice's session with
    // Bob established (Bob answered once), so every message is a normal one on one chain.
    let bob_ratchet = ptpchat::ratchet::Account::new();
    let alice_ratchet = ptpchat::ratchet::Account::new();
    let (alice_ik, bob_keys) = (
        alice_ratchet.identity_key(),
        bob_ratchet.public_keys().unwrap(),
    );
    let mut alice_peer = ptpchat::ratchet::Peer::default();
    alice_peer.add(
        alice_ratchet
            .start(bob_keys.identity, bob_keys.fallback)
            .unwrap(),
    );
    let first = alice_peer.encrypt(alice_ik, b"hello").unwrap().unwrap();
    let mut bob_peer = ptpchat::ratchet::Peer::default()
        .decrypt(&bob_ratchet, &first)
        .unwrap()
        .peer;
    let answer = bob_peer
        .encrypt(bob_ratchet.identity_key(), b"hi")
        .unwrap()
        .unwrap();
    alice_peer = alice_peer.decrypt(&alice_ratchet, &answer).unwrap().peer;
    let mut encrypt_only = alice_peer.clone();

    let mut eph_counter = 0u64;
    vec![
        (
            "ratchet encrypt 1 KiB signed form (Olm, one chain)",
            rate(secs, || {
                let m = encrypt_only.encrypt(alice_ik, std::hint::black_box(&signed));
                std::hint::black_box(m.expect("encrypts"));
            }),
        ),
        (
            "ratchet encrypt + decrypt on a copy of the state, per message",
            rate(secs, || {
                let m = alice_peer
                    .encrypt(alice_ik, &signed)
                    .unwrap()
                    .expect("session");
                let opened = bob_peer.decrypt(&bob_ratchet, &m).expect("opens");
                bob_peer = opened.peer;
            }),
        ),
        (
            "ratchet state of one contact, stored (encrypted pickle)",
            rate(secs, || {
                std::hint::black_box(bob_peer.to_stored(&[1; 32]));
            }),
        ),
        (
            "ed25519 sign (1.1 KiB)",
            rate(secs, || {
                std::hint::black_box(key.sign(std::hint::black_box(&msg)));
            }),
        ),
        ("ed25519 verify_strict (1.1 KiB)", verify_rate(secs)),
        (
            "ed25519 batch verify, per signature (batches of 64)",
            rate(secs, || {
                ed25519_dalek::verify_batch(&batch_refs, &batch_sigs, &batch_pubs).expect("valid");
            }) * batch as f64,
        ),
        (
            "seal 1 KiB envelope (fresh X25519 ephemeral)",
            rate(secs, || {
                eph_counter += 1;
                let mut eph = [5u8; 32];
                eph[..8].copy_from_slice(&eph_counter.to_le_bytes());
                std::hint::black_box(envelope::seal_with(
                    eph,
                    [3; 12],
                    &recipient_pub,
                    std::hint::black_box(&signed),
                ));
            }),
        ),
        (
            "open 1 KiB envelope (new ephemeral: DH each time)",
            rate(secs, || {
                // A fresh cache each time makes every open pay its Diffie-Hellman.
                let cache = ptpchat::shared::Shared::new(envelope::OpenCache::default());
                envelope::open(std::hint::black_box(&sealed), &recipient_keys, &cache)
                    .expect("opens");
            }),
        ),
        (
            "open 1 KiB envelope (ephemeral key cached)",
            rate(secs, || {
                envelope::open(std::hint::black_box(&sealed), &recipient_keys, &open_cache)
                    .expect("opens");
            }),
        ),
        (
            "CBOR encode envelope",
            rate(secs, || {
                std::hint::black_box(ptpchat::cbor::to_vec(std::hint::black_box(&env)).unwrap());
            }),
        ),
        (
            "CBOR decode envelope",
            rate(secs, || {
                let e: Envelope =
                    ptpchat::cbor::from_slice(std::hint::black_box(&encoded), 1 << 20).unwrap();
                std::hint::black_box(e);
            }),
        ),
    ]
}

/// The real binary: `ptpchat status` round trips (process start included) against a
/// running node, and that node's resident memory once idle, in KiB.
fn binary(samples: usize) -> (u64, Vec<Duration>) {
    let home = tempfile::tempdir().unwrap();
    let node = common::Daemon::spawn(
        home.path(),
        &[
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--quiet",
        ],
    );
    node.wait_ready();
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let run = common::cli(home.path(), &["status", "--json"]);
        times.push(t.elapsed());
        assert_eq!(run.code, 0, "status failed: {}", run.stderr);
    }
    // Idle: let start-up work (bootstrap attempts, first publish) finish.
    std::thread::sleep(Duration::from_secs(if smoke() { 1 } else { 5 }));
    let rss = relay::rss_kib(node.child.id());
    assert!(rss > 0, "VmRSS in /proc/<pid>/status");
    times.sort();
    (rss, times)
}

/// Whether a section runs: all of them, or those named in `BENCH_ONLY` (comma-separated).
fn wanted(section: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|s| s.trim() == section))
}

fn smoke() -> bool {
    std::env::var_os("BENCH_SMOKE").is_some()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let smoke = smoke();
    let messages = env_usize("BENCH_MESSAGES", if smoke { 200 } else { 20_000 });
    let samples = env_usize("BENCH_LATENCY_SAMPLES", if smoke { 20 } else { 1_000 });
    let secs = if smoke { 0.05 } else { 1.0 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "ptpchat performance harness ({cores} cores){}",
        if smoke {
            " — smoke mode, figures meaningless"
        } else {
            ""
        }
    );
    let mut json = serde_json::json!({ "cores": cores, "smoke": smoke });

    if wanted("crypto") {
        println!("\n## 1. crypto floor (one core)");
        let crypto = crypto_floor(secs);
        for (name, r) in &crypto {
            println!("{name:<55} {r:>12.0}/s  {:>8.2} µs", 1e6 / r);
        }
        json["crypto_per_second"] = crypto
            .iter()
            .map(|(n, r)| (n.to_string(), serde_json::json!(r.round())))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if wanted("direct") {
        println!("\n## 2. direct messages");
        let verify_before = verify_rate(secs * 2.0);
        let mut rates = Vec::new();
        for (name, listen) in TRANSPORTS {
            rates.push((name, rt.block_on(throughput(listen, messages))));
        }
        let verify_after = verify_rate(secs * 2.0);
        let verify = (verify_before + verify_after) / 2.0;
        println!("ed25519 verify_strict, one core, around the runs: {verify:.0}/s (before {verify_before:.0}, after {verify_after:.0})");
        json["verify_per_second"] = serde_json::json!(verify.round());
        for (name, rate) in &rates {
            println!(
            "{name:<5} 1 KiB messages A->B, signed+sealed+verified+opened+committed: {rate:>8.0}/s ({messages} messages); ratio to verify: {:.2} (goal >= 0.50)",
            rate / verify
        );
            json["direct"][name] = serde_json::json!({ "messages_per_second": rate.round(), "ratio_to_verify": rate / verify });
        }
        let (raw, commit) = disk_floor(if smoke { 20 } else { 500 });
        println!(
        "disk: 4 KiB write + fdatasync p50 {:.3} ms; durable redb commit p50 {:.3} ms; two commits in series {:.3} ms",
        ms(raw), ms(commit), ms(commit * 2)
    );
        json["disk"] =
            serde_json::json!({ "fdatasync_4k_p50_ms": ms(raw), "redb_commit_p50_ms": ms(commit) });
        for (name, listen) in TRANSPORTS {
            let mut lat = rt.block_on(latency(listen, samples));
            lat.sort();
            println!(
            "{name:<5} 100-byte message, A's control socket -> B's recv --follow line ({} samples): p50 {:.3} ms  p90 {:.3}  p99 {:.3}  max {:.3} (goal p50 < 1, p99 < 5)",
            lat.len(),
            ms(pct(&lat, 0.50)),
            ms(pct(&lat, 0.90)),
            ms(pct(&lat, 0.99)),
            ms(lat[lat.len() - 1])
        );
            json["direct"][name]["latency_ms"] = serde_json::json!({
                "p50": ms(pct(&lat, 0.50)), "p90": ms(pct(&lat, 0.90)), "p99": ms(pct(&lat, 0.99))
            });
        }
    }
    if wanted("fanout") {
        println!("\n## 3. channel fan-out, side by side with Mosquitto");
        let members = env_usize("BENCH_MEMBERS", if smoke { 5 } else { 50 });
        let posts = env_usize("BENCH_FANOUT_MESSAGES", if smoke { 20 } else { 1_000 });
        let pace = Duration::from_millis(env_usize("BENCH_FANOUT_PACE_MS", 10) as u64);
        let settle = Duration::from_secs(env_usize(
            "BENCH_FANOUT_SETTLE_S",
            if smoke { 0 } else { 30 },
        ) as u64);
        let gossip = rt.block_on(fanout::gossip(members, posts, pace, settle));
        let broker = rt.block_on(fanout::mosquitto(members, posts, pace));
        let show = |name: &str, f: &fanout::Fan| {
            let (p50, p99) = if f.to_last.is_empty() {
                (f64::NAN, f64::NAN)
            } else {
                (ms(pct(&f.to_last, 0.50)), ms(pct(&f.to_last, 0.99)))
            };
            println!(
            "{name:<10} {members} members, {posts} posts every {} ms: delivery {:.2}%  to the last member p50 {p50:.3} ms  p99 {p99:.3} ms",
            pace.as_millis(),
            f.delivery * 100.0
        );
            if !f.each.is_empty() {
                println!(
                    "{name:<10} every delivery: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms",
                    ms(pct(&f.each, 0.5)),
                    ms(pct(&f.each, 0.9)),
                    ms(pct(&f.each, 0.99))
                );
            }
            if let Some(cpu) = f.cpu_per_post {
                println!(
                    "{name:<10} CPU per post, all nodes: {:.2} ms ({:.0} µs per member); the publisher's gossip peers on the channel: {}",
                    ms(cpu),
                    cpu.as_secs_f64() * 1e6 / members as f64,
                    f.direct.map_or("?".into(), |d| d.to_string())
                );
            }
            if let (Some(raw), Some((before, after))) = (f.cpu_raw_per_post, f.idle_ms_per_sec) {
                println!(
                    "{name:<10} CPU per post before the idle mesh is taken out: {:.2} ms; idle mesh {before:.1} ms/s before the posts, {after:.1} after (the smaller is taken out)",
                    ms(raw)
                );
            }
            serde_json::json!({ "delivery": f.delivery, "p50_ms": p50, "p99_ms": p99,
                "cpu_per_post_ms": f.cpu_per_post.map(ms),
                "cpu_raw_per_post_ms": f.cpu_raw_per_post.map(ms),
                "idle_ms_per_sec": f.idle_ms_per_sec.map(|(b, a)| serde_json::json!({ "before": b, "after": a })),
                "publisher_gossip_peers": f.direct })
        };
        json["fanout"]["members"] = serde_json::json!(members);
        json["fanout"]["messages"] = serde_json::json!(posts);
        json["fanout"]["ptpchat"] = show("ptpchat", &gossip);
        match &broker {
            Some(b) => {
                json["fanout"]["mosquitto"] = show("mosquitto", b);
                if !gossip.to_last.is_empty() && !b.to_last.is_empty() {
                    let r50 = pct(&gossip.to_last, 0.5).as_secs_f64()
                        / pct(&b.to_last, 0.5).as_secs_f64();
                    let r99 = pct(&gossip.to_last, 0.99).as_secs_f64()
                        / pct(&b.to_last, 0.99).as_secs_f64();
                    println!("ratio ptpchat/mosquitto: p50 {r50:.1}x (goal <= 3)  p99 {r99:.1}x (goal <= 5); delivery goal 100%");
                    // The least any design meeting the issue's own checks can cost: every
                    // member verifies the gossip author's signature and the frame's.
                    let verify = verify_rate(secs);
                    let floor =
                        Duration::from_secs_f64(2.0 * members as f64 / verify / cores as f64);
                    println!(
                        "signature floor: {members} members x 2 ed25519 checks at {:.1} µs on {cores} cores = {:.3} ms to the last member, {:.1}x Mosquitto's p50",
                        1e6 / verify,
                        ms(floor),
                        floor.as_secs_f64() / pct(&b.to_last, 0.5).as_secs_f64()
                    );
                    json["fanout"]["signature_floor_ms"] = serde_json::json!(ms(floor));
                    json["fanout"]["ratio_p50"] = serde_json::json!(r50);
                    json["fanout"]["ratio_p99"] = serde_json::json!(r99);
                }
            }
            None => println!(
                "mosquitto: not available on this machine (and could not be installed); no ratio"
            ),
        }
    }
    if wanted("directory") {
        let n = env_usize("BENCH_DIRECTORY_NODES", if smoke { 12 } else { 200 });
        let lookups = env_usize("BENCH_LOOKUPS", if smoke { 20 } else { 1_000 });
        println!(
            "\n## 4. directory: {n} nodes in this process (loopback QUIC), whois of random UUIDs"
        );
        let d = rt.block_on(directory::run(n, lookups));
        if smoke {
            // A few nodes all up: every lookup must find its document, or the harness rots.
            assert_eq!(
                d.all_up.succeeded, d.all_up.lookups,
                "directory smoke lookups failed"
            );
        }
        println!(
            "{n} nodes started, bootstrapped and published in {:.1} s",
            d.setup.as_secs_f64()
        );
        let mut out = serde_json::json!({ "nodes": d.nodes, "stopped": d.stopped });
        for (name, p) in [("all up", &d.all_up), ("20% stopped", &d.churn)] {
            let (p50, p90) = if p.latency.is_empty() {
                (f64::NAN, f64::NAN)
            } else {
                (ms(pct(&p.latency, 0.5)), ms(pct(&p.latency, 0.9)))
            };
            let success = p.succeeded as f64 / p.lookups.max(1) as f64;
            println!(
                "{name:<12} {} lookups: success {:.1}% (DHT alone {}/{}); hops (upper bound) mean {:.2} (goal <= 4); DHT requests per lookup {:.1}; latency p50 {p50:.1} ms p90 {p90:.1} ms",
                p.lookups,
                success * 100.0,
                p.dht_found,
                p.dht_done,
                p.mean_hops_bound(),
                p.mean_requests(),
            );
            let key = if name == "all up" {
                "all_up"
            } else {
                "churn_20pct"
            };
            out[key] = serde_json::json!({
                "lookups": p.lookups, "success": success, "dht_found": p.dht_found,
                "mean_hops_bound": p.mean_hops_bound(), "mean_requests": p.mean_requests(),
                "p50_ms": p50, "p90_ms": p90,
            });
        }
        json["directory"] = out;
    }
    if wanted("binary") {
        println!("\n## 5 and 6. the real binary: idle memory, `status` round trip");
        let (rss_kib, status) = binary(if smoke { 5 } else { 100 });
        println!(
        "`ptpchat status` round trip, process start included ({} runs): p50 {:.1} ms  p90 {:.1} ms (goal < 20 ms)",
        status.len(),
        ms(pct(&status, 0.5)),
        ms(pct(&status, 0.9))
    );
        println!(
            "idle node resident memory: {:.1} MiB (goal < 30 MiB)",
            rss_kib as f64 / 1024.0
        );
        json["cli_status_ms"] =
            serde_json::json!({ "p50": ms(pct(&status, 0.5)), "p90": ms(pct(&status, 0.9)) });
        json["idle_node_rss_mib"] = serde_json::json!(rss_kib as f64 / 1024.0);
    }

    if wanted("busy") {
        let peers = env_usize("BENCH_BUSY_PEERS", if smoke { 5 } else { 50 });
        let channels = env_usize("BENCH_BUSY_CHANNELS", if smoke { 2 } else { 10 });
        println!(
            "\n## 5. memory: a node in {channels} channels with {peers} peers (the real binary)"
        );
        let b = rt.block_on(busy::run(peers, channels));
        println!(
            "busy node RSS {:.1} MiB (idle before: {:.1} MiB); {} peers connected; {}/{} channel posts stored",
            b.rss_kib as f64 / 1024.0,
            b.idle_kib as f64 / 1024.0,
            b.connected,
            b.stored,
            b.peers * b.channels
        );
        println!("busy node refused input: {}", b.rejected);
        json["busy_node"] = serde_json::json!({
            "channels": b.channels, "peers": b.peers, "connected": b.connected,
            "stored_posts": b.stored, "idle_rss_mib": b.idle_kib as f64 / 1024.0,
            "rss_mib": b.rss_kib as f64 / 1024.0,
        });
    }
    if wanted("relay") {
        println!("\n## 5. memory: a relay with idle reservations (the real binary)");
        let n = env_usize("BENCH_RESERVATIONS", if smoke { 20 } else { 1_000 });
        let r = rt.block_on(relay::reservations(n));
        println!(
            "relay RSS idle {:.1} MiB; with {}/{n} reservations accepted {:.1} MiB (goal < 300 MiB); {:.0} KiB per reservation; all reserved in {:.1} s",
            r.idle_kib as f64 / 1024.0,
            r.accepted,
            r.loaded_kib as f64 / 1024.0,
            (r.loaded_kib.saturating_sub(r.idle_kib)) as f64 / r.accepted.max(1) as f64,
            r.took.as_secs_f64()
        );
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "scrape of /metrics (connect to last byte, {} each): idle p50 {:.2} ms max {:.2} ms ({} B); with {} reservations p50 {:.2} ms max {:.2} ms ({} B; goal < 5 ms), its gauge says {:?}",
            relay::SCRAPES,
            ms(r.scrape_idle.p50),
            ms(r.scrape_idle.max),
            r.scrape_idle.bytes,
            r.accepted,
            ms(r.scrape_loaded.p50),
            ms(r.scrape_loaded.max),
            r.scrape_loaded.bytes,
            r.reservations_gauge
        );
        let (encode, encoded) = relay::identify_encode(n);
        println!(
            "libp2p's identify collector holding {n} users' infos (in-process, as a relay with that many identified peers keeps them): encode p50 {:.2} ms, {encoded} B",
            ms(encode)
        );
        assert_eq!(
            r.reservations_gauge,
            Some(r.accepted as f64),
            "the relay's reservation gauge disagrees with the clients"
        );
        json["relay"] = serde_json::json!({
            "reservations": r.accepted,
            "idle_rss_mib": r.idle_kib as f64 / 1024.0,
            "rss_mib": r.loaded_kib as f64 / 1024.0,
            "scrape_idle_p50_ms": ms(r.scrape_idle.p50),
            "scrape_p50_ms": ms(r.scrape_loaded.p50),
            "scrape_max_ms": ms(r.scrape_loaded.max),
            "identify_encode_p50_ms": ms(encode),
        });
    }

    if wanted("mailbox") {
        let senders = env_usize("BENCH_MAIL_SENDERS", if smoke { 2 } else { 20 });
        let cap = env_usize("BENCH_MAIL_CAP_MIB", if smoke { 1 } else { 256 }) as u64;
        let blob = env_usize("BENCH_MAIL_BLOB_KIB", if smoke { 1 } else { 8 });
        println!("\n## 7. a flood of mailbox deposits past the disk cap (the real relay binary)");
        let f = rt.block_on(mailbox::run(senders, cap, blob));
        let offered = f.stored + f.refused.values().sum::<u64>();
        println!(
            "{} senders offered {offered} x {blob} KiB: {} stored ({:.0}/s over {:.1} s), refused {:?}; relay holds {} items, {:.1} MiB (cap {cap} MiB) in a {:.1} MiB database file ({:.1} MiB on disk)",
            f.senders,
            f.stored,
            f.stored as f64 / f.took.as_secs_f64(),
            f.took.as_secs_f64(),
            f.refused,
            f.items_held,
            f.bytes_held as f64 / 1048576.0,
            f.db_bytes as f64 / 1048576.0,
            f.db_disk_bytes as f64 / 1048576.0
        );
        println!(
            "relay RSS idle {:.1} MiB, peak during the flood {:.1} MiB, after {:.1} MiB",
            f.idle_kib as f64 / 1024.0,
            f.peak_kib as f64 / 1024.0,
            f.after_kib as f64 / 1024.0
        );
        assert!(f.stored > 0, "the relay stored nothing");
        assert!(f.bytes_held <= cap * 1048576, "the disk cap was overrun");
        json["mailbox_flood"] = serde_json::json!({
            "senders": f.senders, "blob_kib": blob, "offered": offered, "stored": f.stored,
            "stored_per_s": f.stored as f64 / f.took.as_secs_f64(), "refused": f.refused,
            "held_items": f.items_held, "held_mib": f.bytes_held as f64 / 1048576.0,
            "db_file_mib": f.db_bytes as f64 / 1048576.0,
            "db_disk_mib": f.db_disk_bytes as f64 / 1048576.0,
            "idle_rss_mib": f.idle_kib as f64 / 1024.0, "peak_rss_mib": f.peak_kib as f64 / 1024.0,
            "after_rss_mib": f.after_kib as f64 / 1024.0,
        });
    }

    if wanted("web") {
        let streams = env_usize("BENCH_STREAMS", if smoke { 10 } else { 100 });
        println!(
            "\n## 8. the browser app and the HTTP API (two nodes in this process, loopback TCP)"
        );
        let w = rt.block_on(web::run(samples, streams));
        let (mut s, mut h) = (w.socket.clone(), w.http.clone());
        s.sort();
        h.sort();
        let show = |name: &str, l: &[Duration]| {
            println!(
                "{name:<44} p50 {:.3} ms  p90 {:.3}  p99 {:.3}  ({} samples)",
                ms(pct(l, 0.5)),
                ms(pct(l, 0.9)),
                ms(pct(l, 0.99)),
                l.len()
            );
        };
        show("control socket send -> recv --follow line", &s);
        show("HTTP POST /send -> event stream data line", &h);
        let ratio = pct(&h, 0.5).as_secs_f64() / pct(&s, 0.5).as_secs_f64();
        println!("ratio HTTP/socket p50 {ratio:.2}x (goal <= 1.5), interleaved in one run");
        let (mut a, mut r) = (w.assets.clone(), w.ready.clone());
        a.sort();
        r.sort();
        println!(
            "first load: the three assets on a new connection p50 {:.3} ms (p99 {:.3}); with the API calls before the page shows anything p50 {:.3} ms (goal < 100)",
            ms(pct(&a, 0.5)),
            ms(pct(&a, 0.99)),
            ms(pct(&r, 0.5))
        );
        println!(
            "assets: {:.1} KiB raw, {} compressed (goal < 300 KiB)",
            w.asset_bytes as f64 / 1024.0,
            w.asset_gzip_bytes
                .map_or("? (no gzip)".to_string(), |g| format!(
                    "{:.1} KiB gzip -9",
                    g as f64 / 1024.0
                ))
        );
        let grown = w.rss_after_kib.saturating_sub(w.rss_before_kib);
        println!(
            "{} event streams open on B: RSS {:.1} -> {:.1} MiB, +{:.2} MiB ({:.1} KiB a stream; goal < 20 MiB for 100)",
            w.streams,
            w.rss_before_kib as f64 / 1024.0,
            w.rss_after_kib as f64 / 1024.0,
            grown as f64 / 1024.0,
            grown as f64 / w.streams.max(1) as f64
        );
        json["web"] = serde_json::json!({
            "socket_p50_ms": ms(pct(&s, 0.5)), "http_p50_ms": ms(pct(&h, 0.5)),
            "socket_p99_ms": ms(pct(&s, 0.99)), "http_p99_ms": ms(pct(&h, 0.99)),
            "ratio_p50": ratio, "first_load_assets_p50_ms": ms(pct(&a, 0.5)),
            "first_load_ready_p50_ms": ms(pct(&r, 0.5)), "asset_bytes": w.asset_bytes,
            "asset_gzip_bytes": w.asset_gzip_bytes, "streams": w.streams,
            "rss_growth_mib": grown as f64 / 1024.0,
        });
    }

    let path = std::env::var("BENCH_JSON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/results.json")
        });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("results directory");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).expect("results written");
    println!("\nresults: {}", path.display());
}
