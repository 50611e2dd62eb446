//! "No IP address before consent", attacked through the real binary: a stranger X
//! (`--public`) writes to a private user V while V is away; when V comes back and drains
//! its mailbox, its delivery receipt reaches X over the relay circuit, and X never sees a
//! direct connection from V (which would give it V's address).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{cli, Daemon};

const LOOPBACK: [&str; 4] = ["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--quiet"];
const WAIT: Duration = Duration::from_secs(40);

fn relay(home: &Path) -> (Daemon, String) {
    let mut d = Daemon::spawn(home, &["relay", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let mut line = String::new();
    BufReader::new(d.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (d, line.trim().to_string())
}

fn user(home: &Path, relay: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["run"];
    args.extend(LOOPBACK);
    args.extend(["--bootstrap", relay, "--relay", relay]);
    args.extend(extra);
    let d = Daemon::spawn(home, &args);
    d.wait_ready();
    d
}

fn id_field(home: &Path, field: &str) -> String {
    cli(home, &["id", "--json"]).json()[field]
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

/// X's connections with `peer`, as `(addr, relayed)`.
fn connections_with(home: &Path, peer: &str) -> Vec<(String, bool)> {
    cli(home, &["peers", "--json"])
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|p| p["peer_id"] == peer)
        .map(|p| {
            (
                p["addr"].as_str().unwrap_or_default().to_string(),
                p["relayed"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn a_private_node_sends_a_strangers_receipt_over_the_relay_never_directly() {
    let dir = tempfile::tempdir().unwrap();
    let (r_home, v_home, x_home) = (
        dir.path().join("relay"),
        dir.path().join("v"),
        dir.path().join("x"),
    );
    let (_r, relay_addr) = relay(&r_home);

    // V is online once, so its document (naming its mailbox at R) is in the DHT.
    let mut v = user(&v_home, &relay_addr, &[]);
    let v_uuid = id_field(&v_home, "uuid");
    let v_peer = id_field(&v_home, "peer_id");
    let _x = user(&x_home, &relay_addr, &["--public"]);
    until("X to find V's mailbox", || {
        let r = cli(&x_home, &["whois", &v_uuid, "--json"]);
        r.code == 0 && r.stdout.contains("p2p-circuit")
    });
    until("V to find X's document", || {
        let r = cli(&v_home, &["whois", &id_field(&x_home, "uuid"), "--json"]);
        r.code == 0 && r.stdout.contains("p2p-circuit")
    });
    assert_eq!(v.terminate(), Some(0));

    // The stranger writes while V is away: the message waits at R.
    let sent = cli(&x_home, &["send", &v_uuid, "where are you", "--json"]);
    assert_eq!(sent.code, 3, "{} {}", sent.stdout, sent.stderr);
    assert_eq!(sent.json()["status"], "stored");

    // V comes back, drains its mailbox and sends its receipt. X watches its connections.
    let _v = user(&v_home, &relay_addr, &[]);
    let mut direct = Vec::new();
    until("X's history to say delivered (V's receipt)", || {
        direct.extend(
            connections_with(&x_home, &v_peer)
                .into_iter()
                .filter(|(_, relayed)| !relayed),
        );
        let h = cli(&x_home, &["history", "--json"]);
        h.stdout.contains("\"delivered\"")
    });
    // A while longer: the receipt's retries and any lookups.
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        direct.extend(
            connections_with(&x_home, &v_peer)
                .into_iter()
                .filter(|(_, relayed)| !relayed),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        direct.is_empty(),
        "the stranger saw direct connections from V: {direct:?}"
    );
    let r = cli(&v_home, &["recv", "--json"]);
    assert!(r.stdout.contains("where are you"), "{}", r.stdout);
}
