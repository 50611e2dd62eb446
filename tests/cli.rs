//! The real binary, driven through the command-line contract (../shared/CLI.md).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{cli, Daemon};

fn loopback() -> [&'static str; 4] {
    ["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--quiet"]
}

/// Retries a CLI call until it exits 0 (the DHT needs a moment after a node starts).
fn until_ok(home: &std::path::Path, args: &[&str]) -> common::Run {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = cli(home, args);
        if r.code == 0 || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_nodes_find_each_other_by_uuid_through_the_relay() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut relay = Daemon::spawn(
        dirs[0].path(),
        &[
            "relay",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ],
    );
    // The relay prints each dialable address, with /p2p/, on stdout as soon as it listens.
    let mut out = BufReader::new(relay.child.stdout.take().unwrap());
    let mut printed = vec![String::new(), String::new()];
    for line in printed.iter_mut() {
        out.read_line(line).unwrap();
        *line = line.trim().to_string();
    }
    printed.sort();
    let relay_addr = printed[0].clone();
    assert!(
        relay_addr.starts_with("/ip4/127.0.0.1/tcp/") && relay_addr.contains("/p2p/12D3Koo"),
        "{printed:?}"
    );
    assert!(
        printed[1].starts_with("/ip4/127.0.0.1/udp/")
            && printed[1].contains("/quic-v1/p2p/12D3Koo"),
        "{printed:?}"
    );

    let mut args = vec!["run"];
    args.extend(loopback());
    args.extend(["--bootstrap", relay_addr.as_str()]);
    let mut b = Daemon::spawn(dirs[1].path(), &args);
    let c = Daemon::spawn(dirs[2].path(), &args);
    b.wait_ready();
    c.wait_ready();

    let b_id = cli(dirs[1].path(), &["id", "--json"]);
    assert_eq!(b_id.code, 0, "{}", b_id.stderr);
    let b_id = b_id.json();
    let uuid = b_id["uuid"].as_str().unwrap().to_string();

    let found = until_ok(dirs[2].path(), &["whois", &uuid, "--json"]);
    assert_eq!(found.code, 0, "{}", found.stderr);
    let doc = found.json();
    assert_eq!(doc["uuid"], uuid.as_str());
    assert_eq!(doc["peer_id"], b_id["peer_id"]);
    assert_eq!(doc["public_key"], b_id["public_key"]);
    assert_eq!(doc["fingerprint"], b_id["fingerprint"]);
    assert!(doc["seq"].as_u64().unwrap() > 0);
    assert!(doc["reach"].is_array());

    // A contact URI works too, and its fingerprint is checked.
    let uri = b_id["contact_uri"].as_str().unwrap();
    assert_eq!(cli(dirs[2].path(), &["whois", uri, "--json"]).code, 0);
    let wrong = format!("{}{}", &uri[..uri.len() - 4], "0000");
    let mismatch = cli(dirs[2].path(), &["whois", &wrong]);
    assert_eq!(mismatch.code, 1);
    assert!(
        mismatch.stderr.contains("fingerprint mismatch"),
        "{}",
        mismatch.stderr
    );

    // B stops; the DHT still answers.
    assert_eq!(b.terminate(), Some(0));
    assert!(
        !dirs[1].path().join("ptpchat.sock").exists(),
        "socket removed on clean exit"
    );
    // A node started only now, which never met B, finds it in the DHT (not in a cache).
    let d = Daemon::spawn(dirs[3].path(), &args);
    d.wait_ready();
    let again = until_ok(dirs[3].path(), &["whois", &uuid, "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.json()["peer_id"], b_id["peer_id"]);

    // A UUID nobody owns: nothing on stdout, exit 4.
    let none = cli(
        dirs[2].path(),
        &["whois", "4242aaaa-0000-8000-8000-000000000000", "--json"],
    );
    assert_eq!(none.code, 4, "{}", none.stderr);
    assert!(none.stdout.is_empty());

    // status and peers answer through the socket.
    let status = cli(dirs[2].path(), &["status", "--json"]).json();
    for key in [
        "uuid",
        "peer_id",
        "listen_addrs",
        "external_addrs",
        "nat",
        "connected_peers",
        "relays",
        "channels",
    ] {
        assert!(status.get(key).is_some(), "status lacks {key}");
    }
    assert!(status["connected_peers"].as_u64().unwrap() >= 1);
    let peers = cli(dirs[2].path(), &["peers", "--json"]);
    let relay_line = peers
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|p| relay_addr.ends_with(p["peer_id"].as_str().unwrap()))
        .expect("the relay is a connected peer");
    assert_eq!(relay_line["relayed"], false);
    assert!(relay_line["agent"]
        .as_str()
        .unwrap()
        .starts_with("ptpchat/"));
}

#[test]
fn client_commands_without_a_node_say_so() {
    let home = tempfile::tempdir().unwrap();
    for cmd in [
        &["status"][..],
        &["peers"],
        &["whois", "4242aaaa-0000-8000-8000-000000000000"],
    ] {
        let r = cli(home.path(), cmd);
        assert_eq!(r.code, 1, "{cmd:?}");
        assert!(
            r.stderr
                .contains(&format!("no node running for {}", home.path().display())),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn init_is_idempotent_and_id_shows_the_same_identity() {
    let home = tempfile::tempdir().unwrap();
    let first = cli(home.path(), &["init", "--json"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let second = cli(home.path(), &["init", "--json"]).json();
    assert_eq!(first.json(), second);
    for key in ["uuid", "peer_id", "fingerprint"] {
        assert!(second[key].is_string());
    }
    let id = cli(home.path(), &["id", "--json"]).json();
    assert_eq!(id["uuid"], second["uuid"]);
    let uri = id["contact_uri"].as_str().unwrap();
    assert!(uri.starts_with(&format!("ptpchat:{}?fp=", id["uuid"].as_str().unwrap())));

    // Key material is private to the owner.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(home.path()), 0o700);
    assert_eq!(mode(&home.path().join("ptpchat.redb")), 0o600);

    let qr = cli(home.path(), &["id", "--qr"]);
    assert_eq!(qr.code, 0);
    assert!(
        qr.stdout.lines().count() > 20 && qr.stdout.contains('█'),
        "{}",
        qr.stdout
    );

    // Rotation keeps the UUID and fingerprint and changes the key and peer id.
    let rotated = cli(home.path(), &["id", "--rotate", "--json"]);
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let rotated = rotated.json();
    assert_eq!(rotated["uuid"], id["uuid"]);
    assert_eq!(rotated["fingerprint"], id["fingerprint"]);
    assert_ne!(rotated["peer_id"], id["peer_id"]);
    assert_ne!(rotated["public_key"], id["public_key"]);
}

#[test]
fn a_running_node_owns_its_home() {
    let home = tempfile::tempdir().unwrap();
    let mut args = vec!["run"];
    args.extend(loopback());
    let mut node = Daemon::spawn(home.path(), &args);
    let status = node.wait_ready();
    let sock = home.path().join("ptpchat.sock");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A second node on the same home refuses, plainly.
    let second = cli(home.path(), &args);
    assert_eq!(second.code, 1);
    assert!(
        second.stderr.contains("already running"),
        "{}",
        second.stderr
    );
    // Rotation needs the node stopped; id and init still answer through the socket.
    let rotate = cli(home.path(), &["id", "--rotate"]);
    assert_eq!(rotate.code, 1);
    assert!(rotate.stderr.contains("stop it"), "{}", rotate.stderr);
    let id = cli(home.path(), &["id", "--json"]).json();
    assert_eq!(id["uuid"], status["uuid"]);
    assert_eq!(
        cli(home.path(), &["init", "--json"]).json()["uuid"],
        status["uuid"]
    );

    // Killed without a chance to clean up, it leaves a stale socket; the next run replaces it.
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    assert!(sock.exists());
    assert_eq!(cli(home.path(), &["status"]).code, 1);
    let again = Daemon::spawn(home.path(), &args);
    assert_eq!(
        again.wait_ready()["uuid"],
        status["uuid"],
        "same identity after a crash"
    );
}

/// Whatever sits at the socket path and is not a socket (a file a user put there, or one
/// planted) is left alone: the node refuses to start instead of deleting it.
#[test]
fn a_file_in_the_way_of_the_socket_is_not_removed() {
    let home = tempfile::tempdir().unwrap();
    assert_eq!(cli(home.path(), &["init"]).code, 0);
    let sock = home.path().join("ptpchat.sock");
    std::fs::write(&sock, b"precious").unwrap();
    let mut args = vec!["run"];
    args.extend(loopback());
    let run = cli(home.path(), &args);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("not a socket"), "{}", run.stderr);
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");

    // Without it the node binds, 0600, and leaves nothing of how it did so behind.
    std::fs::remove_file(&sock).unwrap();
    let node = Daemon::spawn(home.path(), &args);
    node.wait_ready();
    assert_eq!(
        std::fs::symlink_metadata(&sock)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let leftovers: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".control-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn bad_input_gets_one_clear_line_and_no_panic() {
    let home = tempfile::tempdir().unwrap();
    let check = |r: &common::Run, code: i32, needle: &str| {
        assert_eq!(r.code, code, "stderr: {}", r.stderr);
        assert!(
            r.stderr.contains(needle),
            "expected {needle:?} in {:?}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("panicked") && !r.stderr.contains("backtrace"),
            "{}",
            r.stderr
        );
    };
    check(
        &cli(
            home.path(),
            &["run", "--no-mdns", "--listen", "/ip4/nope/tcp/1"],
        ),
        2,
        "invalid multiaddr",
    );
    check(
        &cli(home.path(), &["run", "--no-mdns", "--bootstrap", "garbage"]),
        2,
        "invalid multiaddr",
    );
    check(&cli(home.path(), &["whois", "not-a-uuid"]), 2, "not a UUID");
    check(
        &cli(home.path(), &["frobnicate"]),
        2,
        "unrecognized subcommand",
    );
    check(
        &cli(home.path(), &["relay", "--metrics", "nowhere"]),
        2,
        "invalid --metrics",
    );

    // A home that is a file, not a directory.
    let file = home.path().join("plainfile");
    std::fs::write(&file, b"x").unwrap();
    check(&cli(&file, &["init"]), 1, "cannot use home");

    // A corrupt database.
    let corrupt = tempfile::tempdir().unwrap();
    std::fs::write(corrupt.path().join("ptpchat.redb"), vec![0x33; 4096]).unwrap();
    check(&cli(corrupt.path(), &["init"]), 1, "corrupt");
    check(
        &cli(
            corrupt.path(),
            &["run", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"],
        ),
        1,
        "corrupt",
    );

    // A config file with a bad address in it.
    let bad_addr = tempfile::tempdir().unwrap();
    std::fs::write(
        bad_addr.path().join("config.toml"),
        "listen = [\"/ip4/nope\"]\n",
    )
    .unwrap();
    check(&cli(bad_addr.path(), &["run"]), 1, "config.toml");

    // A config file with a typo.
    let typo = tempfile::tempdir().unwrap();
    std::fs::write(typo.path().join("config.toml"), "lisen = []\n").unwrap();
    check(&cli(typo.path(), &["run"]), 1, "config.toml");

    // Help works for every command and carries an example.
    for cmd in ["init", "id", "run", "relay", "status", "peers", "whois"] {
        let r = cli(home.path(), &[cmd, "--help"]);
        assert_eq!(r.code, 0);
        assert!(r.stdout.contains("Example"), "{cmd} --help has no example");
    }
}
