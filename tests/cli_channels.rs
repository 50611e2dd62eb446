//! Channels through the real binary, as CLI.md promises: create, discover with
//! `list --all`, join, send, `recv --follow --channel`, members, invitations into a
//! private channel, the exit codes for bad input, and a restarted member catching up.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bin, cli, Daemon, Run};

const WAIT: Duration = Duration::from_secs(30);

fn uuid_of(home: &Path) -> String {
    cli(home, &["id", "--json"]).json()["uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs the command until `ok` accepts its result.
fn until(home: &Path, args: &[&str], ok: impl Fn(&Run) -> bool) -> Run {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = cli(home, args);
        if ok(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "gave up on {args:?}: exit {} {} {}",
            r.code,
            r.stdout,
            r.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn json_lines(r: &Run) -> Vec<serde_json::Value> {
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `recv --follow --json --channel CH`, with its lines delivered to a channel.
fn follow(home: &Path, channel: &str) -> (std::process::Child, mpsc::Receiver<serde_json::Value>) {
    let mut child = Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(["recv", "--follow", "--json", "--channel", channel])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// A relay on loopback, and the `run` arguments of a public user node bootstrapped to it.
fn relay_and_run_args(home: &Path) -> (Daemon, Vec<String>) {
    let mut relay = Daemon::spawn(home, &["relay", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let mut line = String::new();
    BufReader::new(relay.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let run = [
        "run",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--quiet",
        "--public",
        "--bootstrap",
        line.trim(),
    ];
    (relay, run.iter().map(|s| s.to_string()).collect())
}

#[test]
fn channels_work_through_the_command_line() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (relay_home, a, b) = (dirs[0].path(), dirs[1].path(), dirs[2].path());
    let (_relay, run) = relay_and_run_args(relay_home);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let _a = Daemon::spawn(a, &run);
    let _b = Daemon::spawn(b, &run);
    _a.wait_ready();
    _b.wait_ready();
    let (a_uuid, b_uuid) = (uuid_of(a), uuid_of(b));

    // Bad input: exit 2; an unknown channel: exit 4.
    assert_eq!(cli(a, &["channel", "create", "Bad Name"]).code, 2);
    assert_eq!(cli(b, &["channel", "join", "no-such-channel"]).code, 4);

    let created = cli(a, &["channel", "create", "rust-talk", "--json"]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    let created = created.json();
    assert_eq!(created["name"], "rust-talk");
    assert_eq!(created["private"], false);
    let id = created["channel_id"].as_str().unwrap().to_string();

    // B discovers it without being told its name or id.
    let listed = until(b, &["channel", "list", "--all", "--json"], |r| {
        r.code == 0 && r.stdout.contains("rust-talk")
    });
    let entry = json_lines(&listed)
        .into_iter()
        .find(|c| c["name"] == "rust-talk")
        .unwrap();
    assert_eq!(entry["channel_id"], id.as_str());
    assert_eq!(entry["joined"], false);
    assert_eq!(
        cli(b, &["channel", "send", "rust-talk", "too early"]).code,
        1
    );

    let joined = cli(b, &["channel", "join", "rust-talk", "--json"]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    assert_eq!(joined.json()["channel_id"], id.as_str());
    let (mut reader, lines) = follow(b, "rust-talk");

    let sent = until(
        a,
        &["channel", "send", "rust-talk", "hi all", "--json"],
        |r| r.code == 0,
    )
    .json();
    assert_eq!(sent["status"], "sent");
    let got = lines.recv_timeout(WAIT).expect("B's recv prints the post");
    assert_eq!(got["text"], "hi all");
    assert_eq!(got["channel"], "rust-talk");
    assert_eq!(got["channel_id"], id.as_str());
    assert_eq!(got["from"], a_uuid.as_str());
    assert_eq!(got["msg_id"], sent["msg_id"]);
    assert!(got["from_name"].is_null());

    // A contact added while the stream runs names the sender from then on.
    let added = cli(b, &["contacts", "add", "alice", &a_uuid]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    until(a, &["channel", "send", "rust-talk", "named now"], |r| {
        r.code == 0
    });
    let got = lines
        .recv_timeout(WAIT)
        .expect("B's recv prints the second post");
    assert_eq!(got["text"], "named now");
    assert_eq!(got["from_name"], "alice");

    let members = until(a, &["channel", "members", "rust-talk", "--json"], |r| {
        r.code == 0 && r.stdout.contains(&b_uuid)
    });
    let mut uuids: Vec<String> = json_lines(&members)
        .iter()
        .map(|m| m["uuid"].as_str().unwrap().to_string())
        .collect();
    uuids.sort();
    let mut want = vec![a_uuid.clone(), b_uuid.clone()];
    want.sort();
    assert_eq!(uuids, want);
    let status = cli(b, &["status", "--json"]).json();
    assert_eq!(status["channels"], serde_json::json!(["rust-talk"]));

    // A private channel: B can join only once invited, and then reads it.
    assert_eq!(cli(a, &["channel", "create", "ops", "--private"]).code, 0);
    assert_eq!(cli(b, &["channel", "join", "ops"]).code, 4);
    let invited = cli(a, &["channel", "invite", "ops", &b_uuid, "--json"]);
    assert_eq!(invited.code, 0, "{}", invited.stderr);
    until(b, &["channel", "list", "--all", "--json"], |r| {
        json_lines(r)
            .iter()
            .any(|c| c["name"] == "ops" && c["invited"] == true && c["private"] == true)
    });
    assert_eq!(cli(b, &["channel", "join", "ops"]).code, 0);
    let (mut ops_reader, ops_lines) = follow(b, "ops");
    until(a, &["channel", "send", "ops", "deploy at noon"], |r| {
        r.code == 0
    });
    let got = ops_lines
        .recv_timeout(WAIT)
        .expect("B reads the private post");
    assert_eq!(got["text"], "deploy at noon");
    assert_eq!(got["channel"], "ops");
    // The rust-talk stream saw nothing of it.
    assert!(lines.recv_timeout(Duration::from_millis(500)).is_err());

    // A removes B from the private channel: the key turns over (the socket used to answer
    // this with "this node is a relay").
    let removed = cli(a, &["channel", "remove", "ops", &b_uuid, "--json"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    let removed = removed.json();
    assert_eq!(removed["removed"], b_uuid.as_str());
    assert!(removed["epoch"].as_u64().unwrap() >= 1, "{removed}");
    assert_eq!(cli(a, &["channel", "remove", "no-such", &b_uuid]).code, 4);

    assert_eq!(cli(b, &["channel", "leave", "rust-talk"]).code, 0);
    let mine = cli(b, &["channel", "list", "--json"]);
    let names: Vec<String> = json_lines(&mine)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["ops"]);
    for r in [&mut reader, &mut ops_reader] {
        let _ = r.kill();
        let _ = r.wait();
    }
}

/// A member whose node was stopped reads, once it runs again, what was posted meanwhile:
/// it asks the members it reconnects to (CHANNEL-HISTORY), and `recv` shows each post once.
#[test]
fn a_restarted_member_reads_what_was_posted_while_it_was_stopped() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, c) = (dirs[1].path(), dirs[2].path(), dirs[3].path());
    let (_relay, run) = relay_and_run_args(dirs[0].path());
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let _a = Daemon::spawn(a, &run);
    let _b = Daemon::spawn(b, &run);
    let mut c_node = Daemon::spawn(c, &run);
    for n in [&_a, &_b, &c_node] {
        n.wait_ready();
    }
    assert_eq!(cli(a, &["channel", "create", "lobby"]).code, 0);
    for n in [b, c] {
        until(n, &["channel", "join", "lobby"], |r| r.code == 0);
    }
    let posts = |home: &Path| -> Vec<String> {
        json_lines(&cli(home, &["recv", "--channel", "lobby", "--json"]))
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect()
    };
    until(a, &["channel", "send", "lobby", "hello"], |r| r.code == 0);
    until(c, &["recv", "--channel", "lobby", "--json"], |r| {
        r.stdout.contains("hello")
    });

    assert_eq!(c_node.terminate(), Some(0));
    until(
        a,
        &["channel", "send", "lobby", "while you were out"],
        |r| r.code == 0,
    );
    until(b, &["recv", "--channel", "lobby", "--json"], |r| {
        r.stdout.contains("while you were out")
    });
    assert!(!posts(c).contains(&"while you were out".to_string()));

    let _c = Daemon::spawn(c, &run);
    _c.wait_ready();
    until(c, &["recv", "--channel", "lobby", "--json"], |r| {
        r.stdout.contains("while you were out")
    });
    assert_eq!(posts(c), ["hello", "while you were out"]);
}
