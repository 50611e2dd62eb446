//! Direct messages through the real binary: send/recv/history/contacts as CLI.md promises,
//! a receiver killed with SIGKILL in the middle of a stream, and a 200 MiB attachment in
//! bounded memory.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bin, cli, Daemon, Run};

const LOOPBACK: [&str; 4] = ["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--quiet"];

/// A relay and two user nodes: A (private) and B (public), both bootstrapped to the relay.
struct Net {
    dirs: Vec<tempfile::TempDir>,
    relay_addr: String,
    _relay: Daemon,
    _a: Daemon,
    b: Daemon,
    b_uuid: String,
    a_uuid: String,
}

fn run_args<'a>(relay: &'a str, public: bool, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend(LOOPBACK);
    args.extend(["--bootstrap", relay]);
    if public {
        args.push("--public");
    }
    args.extend(extra);
    args
}

fn uuid_of(home: &Path) -> String {
    cli(home, &["id", "--json"]).json()["uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

impl Net {
    fn start() -> Net {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut relay = Daemon::spawn(
            dirs[0].path(),
            &["relay", "--listen", "/ip4/127.0.0.1/tcp/0"],
        );
        let mut line = String::new();
        BufReader::new(relay.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let relay_addr = line.trim().to_string();
        let a = Daemon::spawn(dirs[1].path(), &run_args(&relay_addr, false, &[]));
        let b = Daemon::spawn(dirs[2].path(), &run_args(&relay_addr, true, &[]));
        a.wait_ready();
        b.wait_ready();
        let a_uuid = uuid_of(dirs[1].path());
        let b_uuid = uuid_of(dirs[2].path());
        let net = Net {
            dirs,
            relay_addr,
            _relay: relay,
            _a: a,
            b,
            b_uuid,
            a_uuid,
        };
        net.until(
            net.a_home(),
            &["whois", &net.b_uuid.clone()],
            Duration::from_secs(30),
        );
        net
    }

    fn a_home(&self) -> &Path {
        self.dirs[1].path()
    }

    fn b_home(&self) -> &Path {
        self.dirs[2].path()
    }

    fn scratch(&self) -> &Path {
        self.dirs[3].path()
    }

    /// Retries a CLI call until it exits 0.
    fn until(&self, home: &Path, args: &[&str], limit: Duration) -> Run {
        let deadline = Instant::now() + limit;
        loop {
            let r = cli(home, args);
            if r.code == 0 {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{args:?} kept failing: {}",
                r.stderr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn restart_b(&mut self, extra: &[&str]) {
        let relay = self.relay_addr.clone();
        self.b = Daemon::spawn(self.dirs[2].path(), &run_args(&relay, true, extra));
        self.b.wait_ready();
    }
}

fn lines(r: &Run) -> Vec<serde_json::Value> {
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn cli_stdin(home: &Path, args: &[&str], input: &str) -> Run {
    let mut child = Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn send_recv_history_and_contacts_work_as_the_cli_contract_says() {
    let mut net = Net::start();
    let (a, b) = (net.a_home().to_path_buf(), net.b_home().to_path_buf());

    // Contacts: add by UUID (looked up, key pinned, not yet verified).
    let added = cli(&a, &["contacts", "add", "bob", &net.b_uuid, "--json"]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert_eq!(added.json()["verified"], false);
    assert_eq!(
        cli(&a, &["contacts", "add", "bob", &net.b_uuid]).code,
        1,
        "name taken"
    );

    // Send by contact name; exit 0 means B ACKed.
    let sent = cli(&a, &["send", "bob", "hello bob", "--json"]);
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    let first = sent.json();
    assert_eq!(first["status"], "delivered");
    let first_id = first["msg_id"].as_str().unwrap().to_string();

    // Text from stdin.
    let piped = cli_stdin(&a, &["send", &net.b_uuid, "-", "--json"], "from stdin\n");
    assert_eq!(piped.code, 0, "{}", piped.stderr);

    let got = lines(&cli(&b, &["recv", "--json"]));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["text"], "hello bob");
    assert_eq!(got[0]["msg_id"], first_id.as_str());
    assert_eq!(got[0]["from"], net.a_uuid.as_str());
    assert_eq!(got[0]["channel"], serde_json::Value::Null);
    assert_eq!(got[0]["verified"], false);
    assert!(got[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(got[1]["text"], "from stdin");
    let since = lines(&cli(&b, &["recv", "--since", &first_id, "--json"]));
    assert_eq!(since.len(), 1);
    assert_eq!(since[0]["text"], "from stdin");
    assert_eq!(cli(&b, &["recv", "--since", "not-a-message"]).code, 4);

    // recv --follow streams a line as the message arrives.
    let mut follower = Command::new(bin())
        .arg("--home")
        .arg(&b)
        .args(["recv", "--follow", "--json", "--since", &first_id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let old = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(old.contains("from stdin"));
    let file = net.scratch().join("notes.txt");
    std::fs::write(&file, "attached words").unwrap();
    let with_file = cli(
        &a,
        &[
            "send",
            "bob",
            "live",
            "--attach",
            file.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(with_file.code, 0, "{}", with_file.stderr);
    let live: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    assert_eq!(live["text"], "live");
    let att = &live["attachments"][0];
    assert_eq!(att["name"], "notes.txt");
    assert_eq!(att["mime"], "text/plain");
    assert_eq!(att["size"], 14);
    assert_eq!(
        std::fs::read_to_string(att["path"].as_str().unwrap()).unwrap(),
        "attached words"
    );
    let _ = follower.kill();
    let _ = follower.wait();

    // History shows both directions.
    let a_hist = lines(&cli(&a, &["history", "bob", "--json"]));
    assert_eq!(a_hist.len(), 3);
    assert!(a_hist
        .iter()
        .all(|m| m["direction"] == "out" && m["status"] == "delivered"));
    assert_eq!(a_hist[0]["to_name"], "bob");

    // Unreachable recipient: exit 3, queued; delivered once B is back.
    net.b.terminate();
    let queued = cli(
        &a,
        &[
            "send",
            "bob",
            "while you were out",
            "--timeout",
            "1",
            "--json",
        ],
    );
    assert_eq!(queued.code, 3, "{}", queued.stderr);
    assert_eq!(queued.json()["status"], "queued");
    // B returns with a 1000-byte attachment limit.
    net.restart_b(&["--max-attachment", "1000"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let texts: Vec<String> = lines(&cli(&b, &["recv", "--json"]))
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect();
        if texts.iter().any(|t| t == "while you were out") {
            assert_eq!(
                texts.iter().filter(|t| *t == "while you were out").count(),
                1
            );
            break;
        }
        assert!(Instant::now() < deadline, "queued message never arrived");
        std::thread::sleep(Duration::from_millis(300));
    }

    // A NACK (attachment over B's limit) is exit 1 with the reason.
    let big = net.scratch().join("big.bin");
    std::fs::write(&big, vec![0u8; 2000]).unwrap();
    let refused = cli(
        &a,
        &["send", "bob", "too big", "--attach", big.to_str().unwrap()],
    );
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("too_large"), "{}", refused.stderr);
    let status = cli(&b, &["status", "--json"]).json();
    assert_eq!(status["rejected"]["message_too_large"], 1);

    // Unknown names are errors, not guesses.
    assert_eq!(cli(&a, &["send", "nobody", "hi"]).code, 1);

    // Verify: a wrong fingerprint changes nothing; the right one marks the contact verified.
    let fp = cli(&b, &["id", "--json"]).json()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let wrong = "00".repeat(32);
    assert_eq!(cli(&a, &["contacts", "verify", "bob", &wrong]).code, 1);
    assert_eq!(
        lines(&cli(&a, &["contacts", "list", "--json"]))[0]["verified"],
        false
    );
    let ok = cli(&a, &["contacts", "verify", "bob", &fp, "--json"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let listed = lines(&cli(&a, &["contacts", "list", "--json"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "bob");
    assert_eq!(listed[0]["uuid"], net.b_uuid.as_str());
    assert_eq!(listed[0]["fingerprint"], fp.as_str());
    assert_eq!(listed[0]["verified"], true);

    // B names A and sees A's messages marked verified once it checked A's fingerprint.
    let a_uri = cli(&a, &["id", "--json"]).json()["contact_uri"]
        .as_str()
        .unwrap()
        .to_string();
    let added = cli(&b, &["contacts", "add", "alice", &a_uri, "--json"]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert_eq!(
        added.json()["verified"],
        true,
        "a URI with fp= is a verification"
    );
    let got = lines(&cli(&b, &["recv", "--json"]));
    assert!(got
        .iter()
        .all(|m| m["from_name"] == "alice" && m["verified"] == true));

    assert_eq!(cli(&a, &["contacts", "rm", "bob"]).code, 0);
    assert_eq!(cli(&a, &["contacts", "rm", "bob"]).code, 4);
    assert!(lines(&cli(&a, &["contacts", "list", "--json"])).is_empty());
}

#[test]
fn a_rotated_contact_key_is_shown_loudly_until_verified_again() {
    let mut net = Net::start();
    let (a, b) = (net.a_home().to_path_buf(), net.b_home().to_path_buf());
    assert_eq!(cli(&a, &["contacts", "add", "bob", &net.b_uuid]).code, 0);
    net.b.terminate();
    let rotated = cli(&b, &["id", "--rotate"]);
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    net.restart_b(&[]);
    let new_key = cli(&b, &["id", "--json"]).json()["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    // A learns the new document from the directory.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cli(&a, &["whois", &net.b_uuid, "--json"]).json()["public_key"] != new_key.as_str() {
        assert!(Instant::now() < deadline, "A never saw B's new key");
        std::thread::sleep(Duration::from_millis(300));
    }
    let listed = cli(&a, &["contacts", "list", "--json"]);
    assert_eq!(lines(&listed)[0]["key_changed"], true);
    assert!(listed.stderr.contains("WARNING"), "{}", listed.stderr);
    let plain = cli(&a, &["contacts", "list"]);
    assert!(plain.stdout.contains("KEY CHANGED"), "{}", plain.stdout);
    let sent = cli(&a, &["send", "bob", "still you?"]);
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    assert!(sent.stderr.contains("WARNING"), "{}", sent.stderr);
    // Checking the (unchanged, genesis) fingerprint again pins the new key.
    let fp = cli(&b, &["id", "--json"]).json()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(cli(&a, &["contacts", "verify", "bob", &fp]).code, 0);
    let listed = cli(&a, &["contacts", "list", "--json"]);
    assert_eq!(lines(&listed)[0]["key_changed"], false);
    assert!(!listed.stderr.contains("WARNING"));
}

#[test]
fn sigkill_during_a_stream_loses_nothing_acked_and_delivers_the_rest_exactly_once() {
    let mut net = Net::start();
    let (a, b) = (net.a_home().to_path_buf(), net.b_home().to_path_buf());
    const N: usize = 40;
    let b_uuid = net.b_uuid.clone();
    let (tx, rx) = mpsc::channel();
    let sender = std::thread::spawn(move || {
        let mut results = Vec::new();
        for i in 0..N {
            let r = cli(
                &a,
                &[
                    "send",
                    &b_uuid,
                    &format!("m{i}"),
                    "--timeout",
                    "2",
                    "--json",
                ],
            );
            assert!(
                r.code == 0 || r.code == 3,
                "send {i}: {} {}",
                r.code,
                r.stderr
            );
            results.push((r.json()["msg_id"].as_str().unwrap().to_string(), r.code));
            let _ = tx.send(i);
        }
        results
    });
    // Kill B (SIGKILL: no clean shutdown) while the stream is flowing.
    while rx.recv().unwrap() < N / 3 {}
    net.b.child.kill().unwrap();
    net.b.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    net.restart_b(&[]);
    let results = sender.join().unwrap();
    let acked: Vec<&String> = results
        .iter()
        .filter(|(_, c)| *c == 0)
        .map(|(m, _)| m)
        .collect();
    assert!(acked.len() >= N / 3, "most were ACKed before the kill");

    // Every message ends up in B's history exactly once.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let hist = lines(&cli(&b, &["history", "--json"]));
        let mut count: HashMap<String, usize> = HashMap::new();
        for m in &hist {
            *count
                .entry(m["msg_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        assert!(
            count.values().all(|c| *c == 1),
            "a message was stored twice"
        );
        // Everything B ACKed survived the kill.
        if results.iter().all(|(m, _)| count.contains_key(m)) {
            assert_eq!(hist.len(), N);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing after restart: {:?}",
            results
                .iter()
                .filter(|(m, _)| !count.contains_key(m))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // And A's outbox agrees: everything delivered, nothing left queued.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a_hist = lines(&cli(net.a_home(), &["history", "--json"]));
        if a_hist.iter().all(|m| m["status"] == "delivered") {
            break;
        }
        assert!(Instant::now() < deadline, "A never recorded every delivery");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn sha256_file(p: &Path) -> [u8; 32] {
    ptpchat::messaging::files::hash_file(p).unwrap()
}

#[test]
fn a_200_mib_attachment_streams_through_in_bounded_memory() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let limit = (256u64 * 1024 * 1024).to_string();
    let mut b_args = vec!["run"];
    b_args.extend(LOOPBACK);
    b_args.extend(["--public", "--max-attachment", &limit]);
    let b = Daemon::spawn(dirs[1].path(), &b_args);
    let b_addr = b.dial_addr();
    let mut a_args = vec!["run"];
    a_args.extend(LOOPBACK);
    a_args.extend(["--bootstrap", &b_addr, "--max-attachment", &limit]);
    let a = Daemon::spawn(dirs[0].path(), &a_args);
    a.wait_ready();
    let b_uuid = uuid_of(dirs[1].path());

    // 200 MiB of non-repeating bytes.
    let file: PathBuf = dirs[2].path().join("video.mp4");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let mut block = [0u8; 4096];
        for i in 0u32..(200 * 256) {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i.wrapping_mul(31).wrapping_add(j as u32 * 7) % 253) as u8;
            }
            f.write_all(&block).unwrap();
        }
    }
    let sent = cli(
        dirs[0].path(),
        &[
            "send",
            &b_uuid,
            "the video",
            "--attach",
            file.to_str().unwrap(),
            "--timeout",
            "600",
            "--json",
        ],
    );
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    let got = lines(&cli(dirs[1].path(), &["recv", "--json"]));
    let att = &got[0]["attachments"][0];
    assert_eq!(att["size"], 200 * 1024 * 1024);
    assert_eq!(att["mime"], "video/mp4");
    let path = PathBuf::from(att["path"].as_str().unwrap());
    assert_eq!(sha256_file(&path), sha256_file(&file));
    // Neither node ever held the file in memory: peak RSS stays far below its size.
    for (who, d) in [("sender", &a), ("receiver", &b)] {
        let peak_mib = vm_hwm_kib(d.child.id()) / 1024;
        eprintln!("{who} peak RSS: {peak_mib} MiB");
        assert!(peak_mib < 120, "{who} peaked at {peak_mib} MiB");
    }
}
