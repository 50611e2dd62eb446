//! Connection slots under attack, between real in-process nodes on loopback: one host with
//! many PeerIds cannot take more than its share of a relay's inbound connections.

mod common;

use std::time::Duration;

use common::{eventually, first_addr, rejected, test_config};
use ptpchat::config::Mode;
use ptpchat::net::iplimit::IpLimitConfig;
use ptpchat::node;

#[tokio::test]
async fn one_address_with_many_peer_ids_gets_only_its_share_of_a_relays_connections() {
    let dirs: Vec<_> = (0..7).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cfg = test_config(Mode::Relay, dirs[0].path(), &[]);
    // Count loopback (by default it is exempt), and allow three connections per address.
    cfg.ip_limits = IpLimitConfig {
        per_ip: 3,
        per_net: 64,
        loopback: true,
    };
    let relay = node::start(cfg).await.unwrap();
    let boot = vec![first_addr(&relay).await];

    // Six nodes, each its own PeerId, all from 127.0.0.1.
    let mut users = Vec::new();
    for d in &dirs[1..] {
        users.push(
            node::start(test_config(Mode::User, d.path(), &boot))
                .await
                .unwrap(),
        );
    }
    eventually(
        Duration::from_secs(30),
        "connections to be refused",
        || async { (rejected(&relay, "connection_ip_limit").await > 0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = relay.client.status().await.unwrap();
    assert!(
        status.connected_peers <= 3,
        "the relay holds {} peers from one address",
        status.connected_peers
    );
    for u in users {
        u.shutdown().await;
    }
    relay.shutdown().await;
}
