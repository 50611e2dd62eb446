//! `connect`, `requests`, `accept`, `deny` and `disconnect` through the real binary, on
//! loopback: two users who keep their addresses to themselves, behind one relay.

mod common;

use std::time::{Duration, Instant};

use common::{cli, Daemon};

fn user(home: &std::path::Path, relay: &str, policy: &str) -> Daemon {
    let d = Daemon::spawn(
        home,
        &[
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            relay,
            "--accept-connect",
            policy,
        ],
    );
    d.wait_ready();
    d
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn connect_asks_the_target_and_ends_direct_or_denied() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Daemon::spawn(
        &dir.path().join("relay"),
        &["relay", "--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let relay_addr = relay.dial_addr();
    let (alice_home, bob_home) = (dir.path().join("alice"), dir.path().join("bob"));
    let _alice = user(&alice_home, &relay_addr, "none");
    let _bob = user(&bob_home, &relay_addr, "ask");
    for home in [&alice_home, &bob_home] {
        wait_until("a relay reservation", || {
            let s = cli(home, &["status", "--json"]);
            s.code == 0 && s.json()["relays"].as_array().is_some_and(|r| r.len() == 1)
        });
    }
    let uuid = |home| {
        cli(home, &["id", "--json"]).json()["uuid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (alice, bob) = (uuid(&alice_home), uuid(&bob_home));
    wait_until("bob's document with a circuit address", || {
        let w = cli(&alice_home, &["whois", &bob, "--json"]);
        w.code == 0 && w.stdout.contains("p2p-circuit")
    });
    wait_until("alice's document with a circuit address", || {
        let w = cli(&bob_home, &["whois", &alice, "--json"]);
        w.code == 0 && w.stdout.contains("p2p-circuit")
    });

    // Bob asks his user: alice's connect waits until bob accepts.
    let asking = {
        let (home, bob) = (alice_home.clone(), bob.clone());
        std::thread::spawn(move || cli(&home, &["connect", &bob, "--timeout", "40", "--json"]))
    };
    let mut request = serde_json::Value::Null;
    wait_until("the request in bob's `requests`", || {
        let r = cli(&bob_home, &["requests", "--json"]);
        match r.stdout.lines().next() {
            Some(line) => {
                request = serde_json::from_str(line).unwrap();
                true
            }
            None => false,
        }
    });
    assert_eq!(request["from"], alice.as_str());
    assert_eq!(request["verified"], false);
    let id = request["request_id"].as_u64().unwrap().to_string();
    assert_eq!(cli(&bob_home, &["deny", "999999"]).code, 4);
    let accepted = cli(&bob_home, &["accept", &id]);
    assert_eq!(accepted.code, 0, "{}", accepted.stderr);
    let done = asking.join().unwrap();
    assert_eq!(done.code, 0, "connect: {} {}", done.stdout, done.stderr);
    let out = done.json();
    assert_eq!(out["status"], "direct");
    assert!(!out["addr"].as_str().unwrap().contains("p2p-circuit"));
    let bob_peer = cli(&bob_home, &["status", "--json"]).json()["peer_id"]
        .as_str()
        .unwrap()
        .to_string();
    let peers = cli(&alice_home, &["peers", "--json"]).stdout;
    assert!(
        peers
            .lines()
            .any(|l| l.contains(&bob_peer) && l.contains("\"relayed\":false")),
        "{peers}"
    );
    assert!(cli(&bob_home, &["requests", "--json"])
        .stdout
        .trim()
        .is_empty());

    // Hanging up closes everything with bob; a second time there is nothing to close.
    assert_eq!(cli(&alice_home, &["disconnect", &bob]).code, 0);
    wait_until("no connection to bob", || {
        !cli(&alice_home, &["peers", "--json"])
            .stdout
            .contains(&bob_peer)
    });
    assert_eq!(cli(&alice_home, &["disconnect", &bob]).code, 4);

    // Alice refuses everybody, and hanging up ended the consent of her own request: bob
    // hears "denied", exit 4, and no direct connection comes of it.
    let denied = cli(&bob_home, &["connect", &alice, "--json"]);
    assert_eq!(denied.code, 4, "{}", denied.stderr);
    assert_eq!(denied.json()["status"], "denied", "{}", denied.stderr);
    assert!(denied.json()["addr"].is_null());

    std::thread::sleep(Duration::from_secs(2));
    let alice_peer = cli(&alice_home, &["status", "--json"]).json()["peer_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!cli(&bob_home, &["peers", "--json"])
        .stdout
        .lines()
        .any(|l| l.contains(&alice_peer) && l.contains("\"relayed\":false")));
}
