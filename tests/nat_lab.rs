//! Runs the NAT lab (tests/nat_lab.sh): real `ptpchat` processes in network namespaces
//! behind real (iptables) NATs. Needs root, iproute2, iptables and conntrack; without
//! them the test says so and passes without running (`.ci/run` installs them).

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

fn lab(env: &[(&str, &str)]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nat_lab.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_ptpchat"))
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("nat_lab:"))
        .collect();
    match out.status.code() {
        Some(77) => eprintln!("NAT lab SKIPPED: {}", lines.join("\n")),
        Some(0) => {
            eprintln!("{}", lines.join("\n"));
            assert!(lines.iter().any(|l| l.contains("all checks passed")));
        }
        code => panic!("NAT lab failed (exit {code:?}):\n{stderr}"),
    }
}
