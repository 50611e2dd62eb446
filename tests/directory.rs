//! The UUID directory across real nodes in one process on loopback: publishing, lookups,
//! validation of everything the DHT is asked to store or returns, and key rotation.

mod common;

use std::time::Duration;

use common::{eventually, first_addr, rejected, start, test_config};
use futures::StreamExt;
use libp2p::{
    kad, multiaddr::Protocol, noise, swarm::SwarmEvent, tcp, yamux, Multiaddr, PeerId, Swarm,
};
use ptpchat::config::Mode;
use ptpchat::identity::{dht_key, Identity};
use ptpchat::net::{LookupError, KAD_PROTOCOL};
use ptpchat::node::{self, RunningNode};
use ptpchat::store::Store;
use ptpchat::unix_now;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// A relay, and a user node bootstrapped from it whose document the relay already holds.
async fn relay_holding_a_user(
    relay_home: &std::path::Path,
    user_home: &std::path::Path,
) -> (RunningNode, Multiaddr, RunningNode, Uuid) {
    let a = start(Mode::Relay, relay_home, &[]).await;
    let a_addr = first_addr(&a).await;
    let b = start(Mode::User, user_home, std::slice::from_ref(&a_addr)).await;
    let b_uuid = b.id.clone().unwrap().uuid;
    eventually(WAIT, "the relay to hold B's document", || async {
        a.client.whois(b_uuid).await.ok()
    })
    .await;
    (a, a_addr, b, b_uuid)
}

/// A relay A and two user nodes B and C bootstrapped from it (homes `dirs[0..3]`); also
/// returns the bootstrap list, for restarting B or C.
async fn relay_and_two_users(
    dirs: &[tempfile::TempDir],
) -> (RunningNode, Vec<Multiaddr>, RunningNode, RunningNode) {
    let a = start(Mode::Relay, dirs[0].path(), &[]).await;
    let boot = vec![first_addr(&a).await];
    let b = start(Mode::User, dirs[1].path(), &boot).await;
    let c = start(Mode::User, dirs[2].path(), &boot).await;
    (a, boot, b, c)
}

/// Waits until `node` has published its document to at least one DHT peer.
async fn wait_published(
    lookup_from: &RunningNode,
    uuid: Uuid,
) -> ptpchat::identity::SignedDocument {
    eventually(WAIT, "the document to be findable", || async {
        lookup_from.client.whois(uuid).await.ok()
    })
    .await
}

#[tokio::test]
async fn whois_finds_a_document_and_the_dht_keeps_it_after_its_owner_stops() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, boot, b, c) = relay_and_two_users(&dirs).await;
    let b_id = b.id.clone().unwrap();

    let doc = wait_published(&c, b_id.uuid).await;
    assert_eq!(doc.doc().uuid(), b_id.uuid);
    assert_eq!(doc.doc().peer_id().unwrap(), b.peer_id);
    assert_eq!(doc.doc().fingerprint().to_string(), b_id.fingerprint);
    assert!(
        doc.doc().reach.iter().all(|a| a.contains("/p2p-circuit")),
        "a non-public node publishes no direct address, only relay circuits: {:?}",
        doc.doc().reach
    );

    b.shutdown().await;
    // A node that never saw B finds it through the DHT alone.
    let d = start(Mode::User, dirs[3].path(), &boot).await;
    let again = wait_published(&d, b_id.uuid).await;
    assert_eq!(again.doc().seq, doc.doc().seq);
    // D's status accounts for the lookup: D is a DHT client holding nothing, so the
    // document came from at least one hop away.
    let counted = d.client.status().await.unwrap().lookups;
    assert!(
        counted.found >= 1 && counted.done >= counted.found,
        "{counted:?}"
    );
    assert!(counted.hops_bound >= counted.found, "{counted:?}");
    assert!(counted.requests >= counted.found, "{counted:?}");

    // Nobody owns this UUID.
    let nobody = Uuid::from_bytes([0x42; 16]);
    assert_eq!(
        d.client.whois(nobody).await,
        Err(LookupError::NotFound(nobody))
    );

    for n in [a, c, d] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn public_node_publishes_its_direct_addresses() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cfg = test_config(Mode::User, dirs[0].path(), &[]);
    cfg.public = true;
    let a = node::start(cfg).await.unwrap();
    let boot = vec![first_addr(&a).await];
    let b = start(Mode::User, dirs[1].path(), &boot).await;
    let doc = wait_published(&b, a.id.clone().unwrap().uuid).await;
    let listen: Vec<String> = a.client.status().await.unwrap().listen_addrs;
    assert_eq!(doc.doc().reach, listen);
    a.shutdown().await;
    b.shutdown().await;
}

/// A misbehaving peer: plain Kademlia on our protocol name, storing whatever it is given.
fn evil_swarm() -> Swarm<kad::Behaviour<kad::store::MemoryStore>> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut cfg = kad::Config::new(KAD_PROTOCOL);
            cfg.set_query_timeout(Duration::from_secs(5));
            let mut kad =
                kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), cfg);
            kad.set_mode(Some(kad::Mode::Server));
            kad
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    swarm
}

async fn evil_listen_addr(swarm: &mut Swarm<kad::Behaviour<kad::store::MemoryStore>>) -> Multiaddr {
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address.with(Protocol::P2p(*swarm.local_peer_id()));
        }
    }
}

/// Sends each record straight to `target` and drives the swarm until all were answered.
async fn evil_put(
    swarm: &mut Swarm<kad::Behaviour<kad::store::MemoryStore>>,
    target: PeerId,
    target_addr: Multiaddr,
    records: Vec<kad::Record>,
) {
    swarm.behaviour_mut().add_address(&target, target_addr);
    let mut pending = records.len();
    for r in records {
        swarm
            .behaviour_mut()
            .put_record_to(r, std::iter::once(target), kad::Quorum::One);
    }
    tokio::time::timeout(WAIT, async {
        while pending > 0 {
            if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::PutRecord(_),
                ..
            }) = swarm.select_next_some().await
            {
                pending -= 1;
            }
        }
    })
    .await
    .expect("puts answered");
}

fn record(uuid: &Uuid, value: Vec<u8>) -> kad::Record {
    kad::Record::new(dht_key(uuid), value)
}

#[tokio::test]
async fn the_dht_refuses_forged_stale_expired_and_oversized_documents() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let now = unix_now();
    // Prepare B's identity and an older document of it before B starts.
    let (old_doc, b_uuid) = {
        let store = Store::open(dirs[1].path()).unwrap();
        let (mut id, _) = store.load_or_create_identity(now).unwrap();
        (id.issue_document(&[], now - 100), id.uuid())
    };

    let (a, boot, b, c) = relay_and_two_users(&dirs).await;
    let a_addr = boot[0].clone();
    let genuine = wait_published(&c, b_uuid).await;
    assert!(genuine.doc().seq > old_doc.doc().seq);

    // The attacker's own valid document, a forgery claiming B's UUID, an expired one and junk.
    let mut attacker = Identity::generate(now);
    let own = attacker.issue_document(&[], now);
    let expired = attacker.issue_document(&[], now - 15 * 24 * 3600);
    let mut forged = own.bytes().to_vec();
    let pos = forged
        .windows(16)
        .position(|w| w == attacker.uuid().as_bytes())
        .unwrap();
    forged[pos..pos + 16].copy_from_slice(b_uuid.as_bytes());

    let mut evil = evil_swarm();
    evil_listen_addr(&mut evil).await;
    evil_put(
        &mut evil,
        a.peer_id,
        a_addr.clone(),
        vec![
            record(&b_uuid, forged),
            record(&b_uuid, own.bytes().to_vec()),
            record(&b_uuid, old_doc.bytes().to_vec()),
            record(&attacker.uuid(), expired.bytes().to_vec()),
            record(&b_uuid, vec![0xa5; 9_000]),
            kad::Record::new(b"/ipfs/not-ours".to_vec(), b"x".to_vec()),
        ],
    )
    .await;

    eventually(WAIT, "the relay to count the bad records", || async {
        let invalid = rejected(&a, "dht_put_invalid_document").await;
        let stale = rejected(&a, "dht_put_superseded").await;
        let bad_key = rejected(&a, "dht_put_bad_key").await;
        // forged, wrong-uuid, expired and oversized; the stale one; the foreign key
        (invalid >= 4 && stale >= 1 && bad_key >= 1).then_some(())
    })
    .await;

    // Lookups still return B's genuine, newest document; the attacker's expired one is nowhere.
    let found = c.client.whois(b_uuid).await.unwrap();
    assert_eq!(found, genuine);
    assert_eq!(
        c.client.whois(attacker.uuid()).await,
        Err(LookupError::NotFound(attacker.uuid()))
    );
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_peer_answering_lookups_with_garbage_does_not_stop_the_valid_answer() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, a_addr, b, b_uuid) = relay_holding_a_user(dirs[0].path(), dirs[1].path()).await;

    // The evil peer serves a well-formed, validly signed document of someone else under B's key.
    let mut evil = evil_swarm();
    let evil_addr = evil_listen_addr(&mut evil).await;
    let mut other = Identity::generate(unix_now());
    {
        use libp2p::kad::store::RecordStore;
        let doc = other.issue_document(&[], unix_now());
        evil.behaviour_mut()
            .store_mut()
            .put(record(&b_uuid, doc.bytes().to_vec()))
            .unwrap();
    }
    let evil_task = tokio::spawn(async move {
        loop {
            evil.select_next_some().await;
        }
    });

    // C knows the evil peer first (it bootstraps from it and the relay).
    let c = start(Mode::User, dirs[2].path(), &[evil_addr, a_addr]).await;
    let found = eventually(WAIT, "a valid answer", || async {
        c.client.whois(b_uuid).await.ok()
    })
    .await;
    assert_eq!(found.doc().peer_id().unwrap(), b.peer_id);
    assert!(
        rejected(&c, "lookup_invalid_document").await >= 1,
        "the evil answer was seen and counted"
    );
    evil_task.abort();
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_rotated_key_supersedes_the_old_document_and_keeps_the_uuid() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, boot, b, c) = relay_and_two_users(&dirs).await;
    let b_id = b.id.clone().unwrap();
    let before = wait_published(&c, b_id.uuid).await;
    let old_peer = b.peer_id;
    b.shutdown().await;

    {
        let store = Store::open(dirs[1].path()).unwrap();
        let mut id = store.load_identity().unwrap().unwrap();
        id.rotate_identity_key().unwrap();
        store.save_identity(&id).unwrap();
    }
    let b = start(Mode::User, dirs[1].path(), &boot).await;
    assert_ne!(b.peer_id, old_peer);
    assert_eq!(b.id.clone().unwrap().uuid, b_id.uuid);

    let after = eventually(WAIT, "the rotated document", || async {
        c.client
            .whois(b_id.uuid)
            .await
            .ok()
            .filter(|d| d.doc().seq > before.doc().seq)
    })
    .await;
    assert_eq!(after.doc().peer_id().unwrap(), b.peer_id);
    assert_eq!(after.doc().key_chain.len(), 1);
    assert_eq!(after.doc().fingerprint(), before.doc().fingerprint());
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn getcertificate_fetches_a_document_straight_from_a_peer() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(Mode::User, dirs[0].path(), &[]).await;
    let b = start(Mode::User, dirs[1].path(), &[first_addr(&a).await]).await;
    let a_uuid = a.id.clone().unwrap().uuid;
    let doc = eventually(WAIT, "GETCERTIFICATE to answer", || async {
        b.client.fetch_certificate(a.peer_id, a_uuid).await.ok()
    })
    .await;
    assert_eq!(doc.doc().peer_id().unwrap(), a.peer_id);
    let nobody = Uuid::from_bytes([7; 16]);
    assert_eq!(
        b.client.fetch_certificate(a.peer_id, nobody).await,
        Err(LookupError::NotFound(nobody))
    );
    // Neither node is a DHT server here, so whois falls back to asking connected peers.
    assert_eq!(b.client.whois(a_uuid).await.unwrap(), doc);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn getcertificate_on_a_user_node_answers_only_for_its_own_uuid() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(Mode::User, dirs[0].path(), &[]).await;
    let b = start(Mode::User, dirs[1].path(), &[first_addr(&a).await]).await;
    let (a_uuid, b_uuid) = (a.id.clone().unwrap().uuid, b.id.clone().unwrap().uuid);
    // B looks A up: A's document is now in B's cache (B "knows" A).
    eventually(WAIT, "B to find A", || async {
        b.client.whois(a_uuid).await.ok()
    })
    .await;

    // A stranger connected to B asks B for A's document: B does not tell whom it knows.
    let c = start(Mode::User, dirs[2].path(), &[first_addr(&b).await]).await;
    let own = eventually(WAIT, "B to answer for itself", || async {
        c.client.fetch_certificate(b.peer_id, b_uuid).await.ok()
    })
    .await;
    assert_eq!(own.doc().peer_id().unwrap(), b.peer_id);
    assert_eq!(
        c.client.fetch_certificate(b.peer_id, a_uuid).await,
        Err(LookupError::NotFound(a_uuid))
    );
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn documents_held_by_a_relay_survive_its_restart() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, a_addr, b, b_uuid) = relay_holding_a_user(dirs[0].path(), dirs[1].path()).await;
    b.shutdown().await;
    a.shutdown().await;

    // Same relay home and port: it re-seeds its DHT store from disk.
    let mut cfg = test_config(Mode::Relay, dirs[0].path(), &[]);
    cfg.listen = vec![a_addr.iter().take(2).collect()];
    let a = node::start(cfg).await.unwrap();
    let c = start(Mode::User, dirs[2].path(), &[a_addr]).await;
    let found = eventually(WAIT, "B's document from the restarted relay", || async {
        c.client.whois(b_uuid).await.ok()
    })
    .await;
    assert_eq!(found.doc().uuid(), b_uuid);
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn peers_that_speak_no_ptpchat_protocol_are_disconnected() {
    use libp2p::{identify, ping, swarm::NetworkBehaviour};
    #[derive(NetworkBehaviour)]
    struct Foreign {
        identify: identify::Behaviour,
        ping: ping::Behaviour,
    }
    let dir = tempfile::tempdir().unwrap();
    let node = start(Mode::User, dir.path(), &[]).await;
    let addr = first_addr(&node).await;
    let mut foreign = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| Foreign {
            identify: identify::Behaviour::new(identify::Config::new(
                "/other/1.0.0".into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
        })
        .unwrap()
        .build();
    foreign.dial(addr).unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        let mut connected = false;
        loop {
            match foreign.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => connected = true,
                SwarmEvent::ConnectionClosed { .. } if connected => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the node kept a connection to a foreign peer"
    );
    assert_eq!(rejected(&node, "foreign_peer").await, 1);
    assert_eq!(node.client.status().await.unwrap().connected_peers, 0);
    node.shutdown().await;
}
