//! Offline delivery through the real binary: `send` to a user who is away answers
//! `"status":"stored"` with exit 3; the relay, killed with SIGKILL and restarted, still
//! holds what it receipted; the recipient drains it when back, and the sender's history
//! shows it delivered. A relay restarted with its clock past the retention holds nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{cli, Daemon};

const LOOPBACK: [&str; 4] = ["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--quiet"];
const WAIT: Duration = Duration::from_secs(30);

/// Starts a relay listening on `listen`; returns it and its dial address.
fn relay(home: &Path, listen: &str, extra: &[&str]) -> (Daemon, String) {
    let mut args = vec!["relay", "--listen", listen];
    args.extend(extra);
    let mut d = Daemon::spawn(home, &args);
    let mut line = String::new();
    BufReader::new(d.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (d, line.trim().to_string())
}

fn user(home: &Path, relay: &str) -> Daemon {
    let mut args = vec!["run"];
    args.extend(LOOPBACK);
    args.extend(["--bootstrap", relay]);
    let d = Daemon::spawn(home, &args);
    d.wait_ready();
    d
}

fn uuid_of(home: &Path) -> String {
    cli(home, &["id", "--json"]).json()["uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `by` finds `uuid`'s document with a relay circuit (its mailbox).
fn mailbox_published(by: &Path, uuid: &str) {
    until("a document naming a mailbox", || {
        let r = cli(by, &["whois", uuid, "--json"]);
        r.code == 0 && r.stdout.contains("p2p-circuit")
    });
}

fn mail_items(relay: &Path) -> u64 {
    let r = cli(relay, &["status", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.json()["mail"]["items"].as_u64().unwrap()
}

fn history_lines(home: &Path) -> Vec<serde_json::Value> {
    cli(home, &["history", "--json"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("done").is_none())
        .collect()
}

/// Alice and Bob share a relay; Bob goes away and Alice's message is stored for him.
fn stored_for_absent_bob(
    dir: &Path,
    relay_addr: &str,
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let (bob_home, alice_home) = (dir.join("bob"), dir.join("alice"));
    let mut bob = user(&bob_home, relay_addr);
    let mut alice = user(&alice_home, relay_addr);
    let bob_id = uuid_of(&bob_home);
    mailbox_published(&alice_home, &bob_id);
    mailbox_published(&bob_home, &uuid_of(&alice_home));
    assert_eq!(bob.terminate(), Some(0));

    let sent = cli(&alice_home, &["send", &bob_id, "see you", "--json"]);
    assert_eq!(sent.code, 3, "{} {}", sent.stdout, sent.stderr);
    assert_eq!(sent.json()["status"], "stored");
    assert_eq!(alice.terminate(), Some(0));
    (bob_home, alice_home, bob_id)
}

#[test]
fn stored_mail_survives_a_relay_kill_and_reaches_the_recipient_with_its_ack() {
    let dir = tempfile::tempdir().unwrap();
    let relay_home = dir.path().join("relay");
    let (mut r, relay_addr) = relay(&relay_home, "/ip4/127.0.0.1/tcp/0", &[]);
    let (bob_home, alice_home, _) = stored_for_absent_bob(dir.path(), &relay_addr);
    assert_eq!(mail_items(&relay_home), 1);

    // SIGKILL: no clean stop. Restarted on the same address, it still holds the message.
    r.child.kill().unwrap();
    r.child.wait().unwrap();
    let listen = relay_addr.split("/p2p/").next().unwrap().to_string();
    let (_r, again) = relay(&relay_home, &listen, &[]);
    assert_eq!(again, relay_addr, "same identity, same address");
    assert_eq!(mail_items(&relay_home), 1);

    // Bob is back: `recv` shows the message, and the relay has deleted it.
    let _bob = user(&bob_home, &relay_addr);
    until("the message at Bob's", || {
        let r = cli(&bob_home, &["recv", "--json"]);
        r.stdout.contains("\"see you\"")
    });
    // Bob's receipt waits at Alice's mailbox (she is away) until she is back.
    until("the relay to hold only Bob's receipt", || {
        mail_items(&relay_home) == 1
    });
    let _alice = user(&alice_home, &relay_addr);
    until("Alice's history to say delivered", || {
        let h = history_lines(&alice_home);
        h.len() == 1 && h[0]["status"] == "delivered"
    });
    until("the relay to be empty", || mail_items(&relay_home) == 0);
}

#[test]
fn a_relay_deletes_mail_past_its_retention_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let relay_home = dir.path().join("relay");
    let (mut r, relay_addr) = relay(&relay_home, "/ip4/127.0.0.1/tcp/0", &[]);
    stored_for_absent_bob(dir.path(), &relay_addr);
    assert_eq!(mail_items(&relay_home), 1);
    assert_eq!(r.terminate(), Some(0));
    let listen = relay_addr.split("/p2p/").next().unwrap().to_string();

    // Six days on (an injected clock): still kept.
    let six_days = (6 * 24 * 3600).to_string();
    let (mut r, _) = relay(&relay_home, &listen, &["--mail-clock-offset", &six_days]);
    assert_eq!(mail_items(&relay_home), 1);
    assert_eq!(r.terminate(), Some(0));

    // Seven days and a minute on: deleted when the relay starts.
    let past = (7 * 24 * 3600 + 60).to_string();
    let (_r, _) = relay(&relay_home, &listen, &["--mail-clock-offset", &past]);
    until("the expired mail to be deleted", || {
        mail_items(&relay_home) == 0
    });
}
