//! Shared test helpers: in-process nodes on loopback, and the real binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use ptpchat::config::{Mode, NodeConfig};
use ptpchat::node::{self, RunningNode};

/// A node config for tests: loopback TCP on port 0, no mDNS, no default bootstrap list.
pub fn test_config(mode: Mode, home: &Path, bootstrap: &[Multiaddr]) -> NodeConfig {
    let mut cfg = NodeConfig::new(mode, home.to_path_buf());
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.bootstrap = bootstrap.to_vec();
    cfg.mdns = false;
    // Every test address is a loopback one, which reach filtering drops by default.
    cfg.private_ips = true;
    cfg
}

/// Starts an in-process node with its own temporary home.
pub async fn start(mode: Mode, home: &Path, bootstrap: &[Multiaddr]) -> RunningNode {
    node::start(test_config(mode, home, bootstrap))
        .await
        .expect("node starts")
}

/// A public user node for channel tests: gossip forgets ids after 1 s (which the node
/// raises to its floor) and channels are re-announced every 2 s.
pub async fn channel_member(home: &Path, boot: &[Multiaddr]) -> RunningNode {
    let mut cfg = test_config(Mode::User, home, boot);
    cfg.public = true;
    cfg.gossip_duplicate_cache = Duration::from_secs(1);
    cfg.channel_announce_every = Duration::from_secs(2);
    node::start(cfg).await.expect("node starts")
}

/// Polls `f` until it returns `Some`, or panics after `timeout`: at once, then after 5 ms,
/// doubling to at most 100 ms, so a condition that holds soon is seen soon.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The ptpchat binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ptpchat"))
}

/// Output of one CLI run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.stdout))
    }
}

/// Runs `ptpchat --home HOME ARGS...` to completion.
pub fn cli(home: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A long-running ptpchat process (run or relay), killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub home: PathBuf,
}

impl Daemon {
    /// Starts `ptpchat --home HOME ARGS...` with stdout piped.
    /// A user node (`run`) gets `--private-ips`: every test address is a loopback one.
    pub fn spawn(home: &Path, args: &[&str]) -> Daemon {
        let mut lab: Vec<&str> = Vec::new();
        if args.first() == Some(&"run") {
            if !args.contains(&"--private-ips") {
                lab.push("--private-ips");
            }
            // Tests bind no fixed port: the app's default one among them.
            if !args
                .iter()
                .any(|a| a.starts_with("--http") || *a == "--no-http")
            {
                lab.extend(["--http", "127.0.0.1:0"]);
            }
        }
        let child = Command::new(bin())
            .arg("--home")
            .arg(home)
            .args(args)
            .args(&lab)
            // PTPCHAT_TEST_LOG=debug shows a daemon's logs when a test needs looking into.
            .env(
                "RUST_LOG",
                std::env::var("PTPCHAT_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("binary starts");
        Daemon {
            child,
            home: home.to_path_buf(),
        }
    }

    /// Waits until the node answers `status` on its control socket.
    pub fn wait_ready(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = cli(&self.home, &["status", "--json"]);
            if r.code == 0 {
                let s = r.json();
                if !s["listen_addrs"].as_array().unwrap().is_empty() {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node at {} never became ready",
                self.home.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node's first listen address with its /p2p/ suffix.
    pub fn dial_addr(&self) -> String {
        let s = self.wait_ready();
        format!(
            "{}/p2p/{}",
            s["listen_addrs"][0].as_str().unwrap(),
            s["peer_id"].as_str().unwrap()
        )
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many inputs of kind `what` the node refused so far (its `rejected` counters).
pub async fn rejected(node: &RunningNode, what: &str) -> u64 {
    let status = node.client.status().await.unwrap();
    status.rejected.get(what).copied().unwrap_or(0)
}

/// Every ```vectors block of `protocols/<spec>`: `vector: NAME` starts an entry, `key: value`
/// lines fill it (long hex wraps over several lines of the same key, which concatenate).
pub fn spec_vectors(spec: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let path = format!("{}/protocols/{spec}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut in_block = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        match line.trim() {
            "```vectors" => in_block = true,
            "```" => in_block = false,
            l if in_block => {
                let Some((k, v)) = l.split_once(':') else {
                    continue;
                };
                let (k, v) = (k.trim().to_string(), v.trim().to_string());
                if k == "vector" {
                    out.insert(v.clone(), BTreeMap::new());
                    current = Some(v);
                } else if let Some(c) = &current {
                    out.get_mut(c).unwrap().entry(k).or_default().push_str(&v);
                }
            }
            _ => {}
        }
    }
    assert!(!out.is_empty(), "no vectors in protocols/{spec}");
    out
}

/// A user node's whole stored history (both directions, channel posts too), oldest first.
pub fn history(node: &RunningNode) -> Vec<(u64, ptpchat::store::HistoryEntry)> {
    let m = node.messenger.as_ref().expect("a user node");
    m.store().history_after(0, 100_000).unwrap()
}

/// A node's first listen address, with `/p2p/`.
pub async fn first_addr(node: &RunningNode) -> Multiaddr {
    node.listen_addrs()
        .await
        .into_iter()
        .next()
        .expect("listening")
}

/// Where the 64 signature bytes sit in a signed form: after the key "sig" and the CBOR
/// header of a 64-byte string (0x58 0x40).
pub fn sig_offset(form: &[u8]) -> usize {
    let key = [0x63, b's', b'i', b'g', 0x58, 0x40];
    form.windows(key.len())
        .position(|w| w == key)
        .expect("a signed form has a sig")
        + key.len()
}

/// Waits until `n` holds a reservation on its one relay.
pub async fn reserved(n: &RunningNode) {
    eventually(Duration::from_secs(30), "a reservation", || async {
        let s = n.client.status().await.ok()?;
        (s.relays.len() == 1).then_some(())
    })
    .await;
}

/// `of`'s document as `by` finds it once it names a relay circuit.
pub async fn circuit_doc(by: &RunningNode, of: &RunningNode) -> ptpchat::identity::SignedDocument {
    let uuid = of.id.as_ref().unwrap().uuid;
    eventually(
        Duration::from_secs(30),
        "a document with a circuit address",
        || async {
            let doc = by.client.whois(uuid).await.ok()?;
            (!doc.doc().reach_addrs().is_empty()).then_some(doc)
        },
    )
    .await
}
