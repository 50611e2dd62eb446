//! The metrics endpoint as an operator's Prometheus sees it. A relay that holds
//! reservations and carries a circuit is scraped, and the text is parsed by the
//! Prometheus project's own OpenMetrics parser (python3-prometheus-client, which .ci/run
//! installs) and linted by `promtool check metrics` where present. A user node's scrape,
//! after it has messaged someone and posted in a channel, names no UUID, peer id,
//! address or channel.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{circuit_doc, eventually, reserved, start, test_config};
use libp2p::Multiaddr;
use ptpchat::config::Mode;
use ptpchat::messaging::Delivery;
use ptpchat::node::{self, RunningNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// One GET on the metrics address: (status line, content type, body).
async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).await.unwrap();
    let (head, body) = all.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.lines().next().unwrap_or_default().to_string();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (status, content_type, body.to_string())
}

/// The value of the first line of a scrape that starts with `prefix` (a sample's name and
/// labels, and the space): for waiting on a value before the text is parsed.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// A metric family as the parser saw it.
#[derive(Debug, serde::Deserialize)]
struct Family {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    unit: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
print(json.dumps([
    {"name": f.name, "type": f.type, "unit": f.unit,
     "samples": [[s.name, s.labels, s.value] for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]))
"#;

/// A python with the Prometheus client library (Debian's, else the one on PATH).
fn python() -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn pipe(program: &str, args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(program)
        .args(args)
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
    child.wait_with_output().unwrap()
}

/// Parses a scrape with the OpenMetrics parser (a scrape it refuses fails the test), or
/// `None`, said on the test's output, when no parser is installed.
fn parse(text: &str) -> Option<Vec<Family>> {
    let Some(py) = python() else {
        println!(
            "SKIPPED: the OpenMetrics parser is not installed (apt install python3-prometheus-client; .ci/run does)"
        );
        return None;
    };
    let out = pipe(py, &["-c", PARSER], text);
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The sample `name` whose labels include `labels`, summed over the rest.
fn value(families: &[Family], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

fn family<'a>(families: &'a [Family], name: &str) -> &'a Family {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

/// `promtool check metrics`, where installed: its linter reads the Prometheus text
/// format, in which a counter's HELP names the sample (`x_total`); OpenMetrics names
/// the family (`x`), so promtool reports each counter as "no help text". That, for a
/// family the parser saw as a counter, is the one finding allowed.
fn promtool_lint(text: &str, families: &[Family]) {
    if Command::new("promtool").arg("--version").output().is_err() {
        println!("SKIPPED: promtool is not installed (apt install prometheus; .ci/run does)");
        return;
    }
    let out = pipe("promtool", &["check", "metrics"], text);
    let findings =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for line in findings.lines().filter(|l| !l.trim().is_empty()) {
        let counter = line
            .strip_suffix(" no help text")
            .and_then(|s| s.strip_suffix("_total"))
            .is_some_and(|base| {
                families
                    .iter()
                    .any(|f| f.name == base && f.kind == "counter")
            });
        assert!(counter, "promtool: {line}\n{findings}");
    }
}

async fn user(home: &std::path::Path, relay: &[Multiaddr], metrics: bool) -> RunningNode {
    let mut cfg = test_config(Mode::User, home, relay);
    if metrics {
        cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    }
    node::start(cfg).await.expect("node starts")
}

async fn message(from: &RunningNode, to: &RunningNode, text: &str) {
    let sending = from
        .messenger
        .as_ref()
        .unwrap()
        .send(to.id.as_ref().unwrap().uuid, text.into(), vec![])
        .await
        .unwrap();
    let outcome = tokio::time::timeout(WAIT, sending.outcome).await.unwrap();
    assert_eq!(outcome.unwrap(), Delivery::Delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_shows_its_reservations_and_the_circuit_it_carries() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(Mode::Relay, &dir.path().join("relay"), &[]);
    cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    let relay = node::start(cfg).await.unwrap();
    let metrics = relay.metrics_addr.unwrap();
    let relay_addrs = relay.listen_addrs().await;
    let a = user(&dir.path().join("a"), &relay_addrs, false).await;
    let b = user(&dir.path().join("b"), &relay_addrs, false).await;
    reserved(&a).await;
    reserved(&b).await;
    circuit_doc(&a, &b).await;
    // A reaches B (private, on the relay) over a circuit the relay carries.
    message(&a, &b, "over the relay").await;

    let (status, content_type, text) = get(metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    let (missing, _, _) = get(metrics, "/other").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    // Whom it relays for is nobody's business either.
    for n in [&a, &b] {
        let uuid = n.id.as_ref().unwrap().uuid;
        for s in [
            n.peer_id.to_string(),
            uuid.to_string(),
            uuid.simple().to_string(),
        ] {
            assert!(
                !text.contains(s.as_str()),
                "the relay's scrape names {s}:\n{text}"
            );
        }
    }
    assert!(
        !text.contains("127.0.0.1"),
        "the relay's scrape names an address:\n{text}"
    );
    let Some(f) = parse(&text) else { return };
    let v = |name: &str, labels: &[(&str, &str)]| value(&f, name, labels);

    // Ours: the two reservations and the circuit held now, and what the node holds.
    assert_eq!(v("ptpchat_relay_reservations", &[]), Some(2.0), "{text}");
    assert!(v("ptpchat_relay_circuits", &[]) >= Some(1.0), "{text}");
    assert_eq!(family(&f, "ptpchat_relay_reservations").kind, "gauge");
    assert_eq!(v("ptpchat_connected_peers", &[]), Some(2.0), "{text}");
    assert!(v("ptpchat_dht_records", &[]) >= Some(2.0), "{text}");
    assert_eq!(family(&f, "ptpchat_rejected").kind, "counter");
    assert_eq!(
        v(
            "ptpchat_rejected_total",
            &[("kind", "relay_circuit_denied")]
        ),
        Some(0.0)
    );
    let commits = family(&f, "ptpchat_store_commit_seconds");
    assert_eq!(
        (commits.kind.as_str(), commits.unit.as_str()),
        ("histogram", "seconds")
    );
    assert!(v("ptpchat_store_commit_seconds_count", &[]) >= Some(1.0));
    // libp2p's: the relay's own events, connections by role and transport, bytes.
    let relay_event = |e: &str| v("libp2p_relay_events_total", &[("event", e)]);
    assert!(relay_event("ReservationReqAccepted") >= Some(2.0), "{text}");
    assert!(relay_event("CircuitReqAccepted") >= Some(1.0), "{text}");
    let inbound = [("role", "Listener"), ("protocols", "/ip4/tcp")];
    assert!(v("libp2p_swarm_connections_established_total", &inbound) >= Some(2.0));
    assert!(v("libp2p_bandwidth_bytes_total", &[("direction", "Inbound")]) > Some(0.0));
    assert!(
        v("libp2p_identify_received_total", &[]) >= Some(2.0),
        "{text}"
    );
    assert_eq!(family(&f, "libp2p_bandwidth_bytes").unit, "bytes");
    assert!(v("process_resident_memory_bytes", &[]) > Some(1e6));
    assert!(v("process_cpu_seconds_total", &[]) > Some(0.0));
    promtool_lint(&text, &f);
    dashboard_queries_name_what_is_served(&f);

    // B goes: its reservation and the circuit to it end, and the gauges say so, no lower
    // (libp2p reports a close for every connection, and a circuit's end from both sides).
    b.shutdown().await;
    eventually(WAIT, "the gauges to show B gone", || async {
        let (_, _, text) = get(metrics, "/metrics").await;
        let held = (
            sample(&text, "ptpchat_relay_reservations "),
            sample(&text, "ptpchat_relay_circuits "),
        );
        (held == (Some(1.0), Some(0.0))).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, _, text) = get(metrics, "/metrics").await;
    assert_eq!(
        sample(&text, "ptpchat_relay_reservations "),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ptpchat_relay_circuits "),
        Some(0.0),
        "{text}"
    );

    a.shutdown().await;
    relay.shutdown().await;
}

/// Every series the relay dashboard (bootstrap/grafana-relay.json) queries is one the relay
/// serves: a renamed family would leave a panel empty without any error.
fn dashboard_queries_name_what_is_served(families: &[Family]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bootstrap/grafana-relay.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 14, "{exprs:?}");
    let served: std::collections::BTreeSet<&str> = families
        .iter()
        .flat_map(|f| &f.samples)
        .map(|(n, _, _)| n.as_str())
        .collect();
    for expr in exprs {
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| {
                ["ptpchat_", "libp2p_", "process_"]
                    .iter()
                    .any(|p| w.starts_with(p))
            });
        for name in names {
            assert!(
                served.contains(name),
                "the dashboard queries {name}, which is not served"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_nodes_metrics_name_no_person_peer_address_or_channel() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(Mode::Relay, &dir.path().join("relay"), &[]).await;
    let relay_addrs = relay.listen_addrs().await;
    let a = user(&dir.path().join("a"), &relay_addrs, true).await;
    let b = user(&dir.path().join("b"), &relay_addrs, false).await;
    reserved(&b).await;
    circuit_doc(&a, &b).await;
    message(&a, &b, "hello").await;
    // A private channel (its topic joined: gossipsub would list it) and a public one,
    // announced to the relay.
    let channels = a.channels.as_ref().unwrap();
    let channel = channels.create("secret-plans", true).await.unwrap();
    channels.create("open-plaza", false).await.unwrap();
    eventually(WAIT, "an announcement published", || async {
        let (_, _, text) = get(a.metrics_addr.unwrap(), "/metrics").await;
        let announced = "ptpchat_channel_frames_published_total{topic=\"Announce\"} ";
        (sample(&text, announced) >= Some(1.0)).then_some(())
    })
    .await;

    let (_, _, text) = get(a.metrics_addr.unwrap(), "/metrics").await;
    let mut secrets: Vec<String> = Vec::new();
    for n in [&a, &b] {
        let uuid = n.id.as_ref().unwrap().uuid;
        secrets.push(uuid.to_string());
        secrets.push(uuid.simple().to_string());
    }
    for n in [&a, &b, &relay] {
        secrets.push(n.peer_id.to_string());
        for addr in n.listen_addrs().await {
            secrets.push(addr.to_string());
            if let Some(libp2p::multiaddr::Protocol::Tcp(port)) = addr.iter().nth(1) {
                secrets.push(format!(":{port}"));
                secrets.push(format!("/{port}"));
            }
        }
    }
    secrets.extend([
        "127.0.0.1".to_string(),
        "secret-plans".to_string(),
        channel.to_string(),
        channel.simple().to_string(),
        "/ptpchat/ch/".to_string(),
    ]);
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "the scrape names {s}:\n{text}");
    }

    let Some(f) = parse(&text) else { return };
    let v = |name: &str, labels: &[(&str, &str)]| value(&f, name, labels);
    assert_eq!(
        v("ptpchat_messages_sent_total", &[("outcome", "Delivered")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(v("ptpchat_outbox_messages", &[]), Some(0.0), "{text}");
    assert_eq!(
        family(&f, "ptpchat_outbox_oldest_age_seconds").unit,
        "seconds"
    );
    let announced = [("topic", "Announce")];
    assert!(v("ptpchat_channel_frames_published_total", &announced) >= Some(1.0));
    // The one topic gossipsub's families may name is the public announcement topic.
    for (name, labels, _) in f.iter().flat_map(|f| &f.samples) {
        for key in ["hash", "topic_hash"] {
            if let Some(topic) = labels.get(key) {
                assert_eq!(topic, "/ptpchat/announce/1", "{name}");
            }
        }
    }
    promtool_lint(&text, &f);

    // Restarted, A joins its channels' topics again at once: still not one is named.
    a.shutdown().await;
    let a = user(&dir.path().join("a"), &relay_addrs, true).await;
    assert_eq!(a.channels.as_ref().unwrap().joined_names().len(), 2);
    // Its channel service joins their topics as it starts: the relay hears of it.
    let topic = format!("/ptpchat/ch/1/{}", channel.simple());
    eventually(WAIT, "A in its private channel's topic again", || async {
        let peers = relay.client.gossip_peers(topic.clone()).await.ok()?;
        peers.iter().any(|(p, _)| *p == a.peer_id).then_some(())
    })
    .await;
    let (_, _, text) = get(a.metrics_addr.unwrap(), "/metrics").await;
    assert!(text.contains("hash=\"/ptpchat/announce/1\""), "{text}");
    for s in [channel.simple().to_string(), "/ptpchat/ch/".to_string()] {
        assert!(
            !text.contains(s.as_str()),
            "after a restart the scrape names {s}:\n{text}"
        );
    }

    a.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_punches_are_counted_as_they_start_and_end() {
    use ptpchat::config::ConnectPolicy;
    use ptpchat::net::ConnectOutcome;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(Mode::Relay, &dir.path().join("relay"), &[]).await;
    let relay_addrs = relay.listen_addrs().await;
    let a = user(&dir.path().join("a"), &relay_addrs, true).await;
    let mut open = Vec::new();
    for (name, policy) in [("c", ConnectPolicy::All), ("d", ConnectPolicy::None)] {
        let mut cfg = test_config(Mode::User, &dir.path().join(name), &relay_addrs);
        cfg.accept_connect = policy;
        let n = node::start(cfg).await.unwrap();
        reserved(&n).await;
        circuit_doc(&a, &n).await;
        open.push(n);
    }
    let reach = |n: &RunningNode| {
        let a = &a;
        let uuid = n.id.as_ref().unwrap().uuid;
        async move { a.client.whois(uuid).await.unwrap().doc().reach_addrs() }
    };
    let before = a.client.status().await.unwrap().punches;
    assert_eq!(before.last_direct_ms, None, "no punch yet: {before:?}");
    // D denies: no punch starts. C accepts: one starts and ends in a direct connection.
    let to_d = a.client.connect(open[1].peer_id, reach(&open[1]).await);
    assert_eq!(to_d.await.unwrap(), ConnectOutcome::Denied);
    let to_c = a.client.connect(open[0].peer_id, reach(&open[0]).await);
    let outcome = to_c.await.unwrap();
    assert!(matches!(outcome, ConnectOutcome::Direct(_)), "{outcome:?}");

    // `status --json` says the same.
    let punches = a.client.status().await.unwrap().punches;
    assert_eq!((punches.started, punches.succeeded), (1, 1), "{punches:?}");
    assert_eq!(punches.failed.values().sum::<u64>(), 0, "{punches:?}");
    assert_eq!(
        punches.failed.len(),
        4,
        "every reason is listed: {punches:?}"
    );
    // How long it took after the accept (loopback: well under the 30 s it may take).
    assert!(
        punches.last_direct_ms.is_some_and(|ms| ms < 30_000),
        "{punches:?}"
    );

    let (_, _, text) = get(a.metrics_addr.unwrap(), "/metrics").await;
    let Some(f) = parse(&text) else { return };
    let v = |name: &str| value(&f, name, &[]);
    assert_eq!(v("ptpchat_hole_punches_started_total"), Some(1.0), "{text}");
    assert_eq!(
        v("ptpchat_hole_punches_succeeded_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(v("ptpchat_hole_punches_failed_total"), Some(0.0), "{text}");
    assert_eq!(
        v("ptpchat_hole_punch_duration_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(v("ptpchat_hole_punch_retries_total"), Some(0.0), "{text}");

    for n in open {
        n.shutdown().await;
    }
    a.shutdown().await;
    relay.shutdown().await;
}

/// libp2p labels addresses by protocol stack, and identify lets a peer name any: each new
/// stack would be a new series, kept for as long as the peer stays. A peer that speaks
/// ptpchat's DHT (so it is not dropped as foreign) and lists a listen address of an odd
/// stack adds no label value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_mint_label_values_with_addresses_of_its_choosing() {
    use futures::StreamExt;
    use libp2p::{identify, kad, noise, swarm::NetworkBehaviour, tcp, yamux};
    #[derive(NetworkBehaviour)]
    struct Odd {
        identify: identify::Behaviour,
        kad: kad::Behaviour<kad::store::MemoryStore>,
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(Mode::Relay, dir.path(), &[]);
    cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    let relay = node::start(cfg).await.unwrap();
    let metrics = relay.metrics_addr.unwrap();
    let mut odd = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            Odd {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/ptpchat/id/1.0.0".into(),
                    key.public(),
                )),
                kad: kad::Behaviour::with_config(
                    id,
                    kad::store::MemoryStore::new(id),
                    kad::Config::new(ptpchat::net::KAD_PROTOCOL),
                ),
            }
        })
        .unwrap()
        .build();
    odd.add_external_address("/ip4/192.0.2.1/tcp/1/tcp/2/tcp/3".parse().unwrap());
    odd.add_external_address("/ip4/192.0.2.1/udp/1/quic-v1/webtransport".parse().unwrap());
    odd.dial(common::first_addr(&relay).await).unwrap();
    let driving = tokio::spawn(async move {
        loop {
            odd.select_next_some().await;
        }
    });
    let text = eventually(WAIT, "the relay to identify the odd peer", || async {
        let (_, _, text) = get(metrics, "/metrics").await;
        (sample(&text, "libp2p_identify_received_total ") >= Some(1.0)).then_some(text)
    })
    .await;
    assert_eq!(
        relay.client.peers().await.unwrap().len(),
        1,
        "the odd peer was dropped as foreign: the test proves nothing"
    );
    for stack in ["/tcp/tcp", "webtransport"] {
        assert!(!text.contains(stack), "a label names {stack}:\n{text}");
    }
    driving.abort();
    relay.shutdown().await;
}

/// An address a peer could hand us (a DHT answer, a document, a bootstrap list) in an odd
/// form that still connects (libp2p's TCP transport reads only the last IP and port) is
/// not dialed at all: it would otherwise be a new label of the dial and bandwidth series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_of_odd_forms_are_not_dialed_so_they_label_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(Mode::Relay, &dir.path().join("relay"), &[]).await;
    let good = common::first_addr(&relay).await;
    let odd: Multiaddr = format!("/ip4/127.0.0.1{good}").parse().unwrap();
    let mut cfg = test_config(Mode::User, &dir.path().join("a"), &[odd]);
    cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    let a = node::start(cfg).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, _, text) = get(a.metrics_addr.unwrap(), "/metrics").await;
    assert!(
        !text.contains("/ip4/ip4"),
        "an odd address was dialed:\n{text}"
    );
    assert!(
        a.client.peers().await.unwrap().is_empty(),
        "connected through an odd address"
    );
    a.shutdown().await;
    relay.shutdown().await;
}
