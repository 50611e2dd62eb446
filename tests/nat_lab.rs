//! Runs the NAT lab (tests/nat_lab.sh): real `ptpchat` processes in network namespaces
//! behind real (iptables) NATs. Needs root, iproute2, iptables and conntrack; without
//! them the test says so and passes without running (`.ci/run` installs them).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn nat_lab_reservation_connect_deny_and_symmetric_nat() {
    lab(&[]);
}

/// NATs that answer unsolicited packets (a TCP RST, an ICMP port unreachable) instead of
/// dropping them, and users that know their relay by its TCP address only: a TCP
/// simultaneous open is reset at once there, so the punch must go over QUIC, whose
/// mapping the user learns by dialing its relay over QUIC too.
#[test]
fn nat_lab_routers_that_reject_and_a_relay_known_by_tcp_only() {
    lab(&[("NAT_FILTER", "reject"), ("NAT_BOOTSTRAP", "tcp")]);
}

/// The same NATs, users with TCP alone, and 50 ms of round trip between the NATs (as
/// between two homes in one country): DCUtR's synchronisation then lets both SYNs leave
/// their NATs before either reaches the other's, so the simultaneous open works even where
/// each NAT answers the first unexpected SYN with a RST. Every round must end direct. The
/// lab's checks run too: through the symmetric NAT, whose RSTs end each round's dials at
/// once, `connect` must say `relayed` within seconds (A counts its failed dials and makes
/// one more attempt), not after its 30 s limit.
#[test]
fn nat_lab_tcp_alone_through_rejecting_nats_50_ms_apart() {
    let rounds = measured(
        &[
            ("NAT_FILTER", "reject"),
            ("NAT_TRANSPORT", "tcp"),
            ("NAT_RTT_MS", "50"),
        ],
        5,
    );
    if let Some(r) = rounds {
        assert_eq!(
            (r.direct, r.hangs),
            (5, 0),
            "every round direct: {}",
            r.line
        );
        assert!(
            r.path_rtt_ms >= 45.0,
            "the lab added its round trip: {}",
            r.line
        );
    }
}

/// A public host (no NAT) connects to a user behind a rejecting NAT: the user's own dial
/// out is what makes the connection direct.
#[test]
fn nat_lab_a_public_host_connects_to_a_user_behind_nat() {
    let rounds = measured(
        &[
            ("NAT_FILTER", "reject"),
            ("NAT_PEER", "p"),
            ("NAT_CHECKS", "0"),
        ],
        3,
    );
    if let Some(r) = rounds {
        assert_eq!(
            (r.direct, r.hangs),
            (3, 0),
            "every round direct: {}",
            r.line
        );
    }
}

/// What the measured rounds of one lab run came to (its `hole_punch` line).
struct Rounds {
    direct: u32,
    hangs: u32,
    path_rtt_ms: f64,
    line: String,
}

/// Runs the lab with `attempts` measured rounds; None if it could not be built here.
fn measured(env: &[(&str, &str)], attempts: u32) -> Option<Rounds> {
    let stdout = run_lab(env, &attempts.to_string())?;
    let line = stdout
        .lines()
        .find(|l| l.starts_with("hole_punch "))
        .unwrap_or_else(|| panic!("no hole_punch line in {stdout}"))
        .to_string();
    let field = |name: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_string()
    };
    let number = |name: &str| field(name).parse::<u32>().expect("a count");
    Some(Rounds {
        direct: number("direct"),
        hangs: number("hangs"),
        path_rtt_ms: field("path_rtt_ms").parse().expect("a round trip"),
        line,
    })
}

fn lab(env: &[(&str, &str)]) {
    run_lab(env, "0");
}

/// The latency helper, built beside the binary (`cargo test` builds the examples; the lab
/// says which is missing if a latency cell runs without it).
fn delay_helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ptpchat"))
        .parent()
        .expect("the binary's directory")
        .join("examples/nat_delay")
}

/// Runs tests/nat_lab.sh; its stdout, or None (and SKIPPED said) if the lab cannot be
/// built here. Panics if a check failed.
fn run_lab(env: &[(&str, &str)], attempts: &str) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nat_lab.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_ptpchat"))
        .arg(attempts)
        .env("RUST_LOG", "info")
        .env("NAT_DELAY_BIN", delay_helper())
        .envs(env.iter().copied())
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("nat_lab:"))
        .collect();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(77) => {
            eprintln!("NAT lab SKIPPED: {}", lines.join("\n"));
            None
        }
        Some(0) => {
            eprintln!("{}\n{stdout}", lines.join("\n"));
            assert!(lines.iter().any(|l| l.contains("all checks passed")));
            Some(stdout)
        }
        code => panic!("NAT lab failed (exit {code:?}):\n{stderr}"),
    }
}
