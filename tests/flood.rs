//! A stranger cannot stop the network: a flood of valid, signed frames from a few dozen
//! fresh identities (each its own node, as gossip authors must be) leaves a public
//! channel working for its members and channel discovery bounded; and a fresh identity's
//! frame with a bad signature leaves no trace of its document.

mod common;

use std::time::Duration;

use common::{eventually, first_addr, rejected, test_config};
use libp2p::Multiaddr;
use ptpchat::channels::Channels;
use ptpchat::config::Mode;
use ptpchat::node::{self, RunningNode};
use ptpchat::wire::frame::{self, ChannelBody};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
/// Fresh identities flooding, each from its own node.
const ATTACKERS: usize = 20;
/// Frames each attacker publishes per second, on the channel and the announce topic.
const ATTACKER_PER_SEC: u64 = 10;
/// How long the flood lasts: long enough for each attacker's 200 posts to go beyond its
/// author bucket (a burst of 128, then 2 a second).
const FLOOD: Duration = Duration::from_secs(20);
/// Fresh channels each attacker announces.
const FAKE_CHANNELS: usize = 40;

async fn user(home: &std::path::Path, boot: &[Multiaddr]) -> RunningNode {
    common::channel_member(home, boot).await
}

fn ch(n: &RunningNode) -> &Channels {
    n.channels.as_ref().unwrap()
}

fn uuid(n: &RunningNode) -> Uuid {
    n.id.as_ref().unwrap().uuid
}

/// A node's signing keys, once it has issued its first document (on a busy machine that can
/// come after it is connected and on a topic).
async fn keys_of(n: &RunningNode) -> std::sync::Arc<ptpchat::identity::MessageKeys> {
    n.messenger.as_ref().unwrap().wait_keys().await.unwrap()
}

fn body(from: &RunningNode, channel: Uuid, name: &str, kind: &str, text: &str) -> ChannelBody {
    ChannelBody {
        v: 1,
        msg_id: *Uuid::new_v4().as_bytes(),
        from: *uuid(from).as_bytes(),
        channel: *channel.as_bytes(),
        ts: ptpchat::unix_now_ms(),
        kind: kind.into(),
        name: name.into(),
        private: false,
        epoch: 0,
        text: text.into(),
    }
}

fn texts(n: &RunningNode) -> Vec<String> {
    common::history(n)
        .into_iter()
        .filter(|(_, e)| e.incoming && e.channel.is_some())
        .map(|(_, e)| e.text)
        .collect()
}

async fn wait_post(node: &RunningNode, text: &str) {
    eventually(WAIT, &format!("the post {text:?}"), || async {
        texts(node).iter().any(|t| t == text).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_valid_frames_from_fresh_identities_does_not_stop_a_public_channel() {
    let dirs: Vec<_> = (0..3 + ATTACKERS)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut cfg = test_config(Mode::Relay, dirs[0].path(), &[]);
    cfg.gossip_duplicate_cache = Duration::from_secs(1);
    let relay = node::start(cfg).await.unwrap();
    let boot = vec![first_addr(&relay).await];
    let a = user(dirs[1].path(), &boot).await;
    let b = user(dirs[2].path(), &boot).await;
    let id = ch(&a).create("town", false).await.unwrap();
    eventually(WAIT, "B to discover town", || async {
        ch(&b)
            .list(true)
            .iter()
            .any(|c| c.name == "town")
            .then_some(())
    })
    .await;
    ch(&b).join("town").await.unwrap();
    eventually(WAIT, "A and B to mesh", || async {
        ch(&a).send("town", "warm-up".into()).await.ok()
    })
    .await;
    wait_post(&b, "warm-up").await;

    // The attackers: fresh identities that join the channel (so they are connected to
    // A and B and on its topic) and then flood it and the announce topic.
    // They only listen on the topic (no validation, no forwarding) and dial A and B
    // themselves, so the machine's work is the members', as with attackers elsewhere.
    let topic = frame::topic(&id);
    let (a_addr, b_addr) = (first_addr(&a).await, first_addr(&b).await);
    let mut attackers = Vec::new();
    let mut taps = Vec::new();
    for d in &dirs[3..] {
        let m = node::start(test_config(Mode::User, d.path(), &boot))
            .await
            .unwrap();
        taps.push(ch(&m).tap(&topic).await);
        m.client.dial(a_addr.clone()).await.unwrap();
        m.client.dial(b_addr.clone()).await.unwrap();
        attackers.push(m);
    }
    for m in &attackers {
        eventually(WAIT, "an attacker on the members' topic", || async {
            let peers = b.client.gossip_peers(topic.clone()).await.ok()?;
            peers.iter().any(|(p, _)| *p == m.peer_id).then_some(())
        })
        .await;
    }
    let mut attacker_keys = Vec::new();
    for m in &attackers {
        attacker_keys.push(keys_of(m).await);
    }
    let floods: Vec<_> = attackers
        .iter()
        .zip(attacker_keys)
        .map(|(m, keys)| {
            let client = m.client.clone();
            let (posts, announces): (Vec<_>, Vec<_>) = (0..FLOOD.as_secs() * ATTACKER_PER_SEC)
                .map(|i| {
                    let post =
                        frame::sign(&body(m, id, "town", "text", &format!("spam {i}")), &keys);
                    let fake = Uuid::new_v4();
                    let name = format!("fake-{}", fake.simple());
                    let ann = body(m, fake, &name, "channel", "");
                    (post, frame::sign(&ann, &keys))
                })
                .unzip();
            let topic = topic.clone();
            tokio::spawn(async move {
                let every = Duration::from_millis(1000 / ATTACKER_PER_SEC);
                for (i, (post, ann)) in posts.into_iter().zip(announces).enumerate() {
                    let _ = client.publish(topic.clone(), post).await;
                    if i < FAKE_CHANNELS {
                        let _ = client.publish(frame::ANNOUNCE_TOPIC.into(), ann).await;
                    }
                    tokio::time::sleep(every).await;
                }
            })
        })
        .collect();

    // A keeps talking during the flood; B must hear it, during the flood and after.
    let start = std::time::Instant::now();
    let mut said = Vec::new();
    let mut i = 0;
    while start.elapsed() < FLOOD {
        let text = format!("honest {i}");
        let _ = ch(&a).send("town", text.clone()).await;
        said.push(text);
        i += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for f in floods {
        let _ = f.await;
    }
    // The channel is not stopped: what A says after the flood arrives, and so does what it
    // said during it, but for at most one post (before gossip's patience was fixed, B
    // graylisted A for seconds at a time, or A's posts expired in its queue to B, and lost
    // up to 3 in 10). A post lost to the flood is a known limit (docs/security.md).
    eventually(WAIT, "A to post after the flood", || async {
        ch(&a).send("town", "after the flood".into()).await.ok()
    })
    .await;
    wait_post(&b, "after the flood").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heard = texts(&b);
    let got = said.iter().filter(|t| heard.contains(t)).count();
    assert!(
        got + 1 >= said.len(),
        "B heard {got} of the {} posts A made during the flood",
        said.len()
    );
    // Beyond their buckets the attackers' frames were ignored and counted.
    assert!(
        rejected(&b, "gossip_rate_author").await > 0,
        "the flood went over the per-author buckets"
    );
    // Discovery holds at most a few channels per attacker, not everything announced.
    let fakes = ch(&b)
        .list(true)
        .iter()
        .filter(|c| c.name.starts_with("fake-"))
        .count();
    assert!(
        fakes <= ATTACKERS * ptpchat::channels::MAX_DISCOVERED_PER_ORIGIN,
        "{fakes} fake channels discovered"
    );
    for m in attackers {
        m.shutdown().await;
    }
    a.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_fresh_identity_with_a_bad_signature_leaves_no_document_behind() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let relay = node::start(test_config(Mode::Relay, dirs[0].path(), &[]))
        .await
        .unwrap();
    let boot = vec![first_addr(&relay).await];
    // B is no DHT server, so X's document cannot reach B's directory through a DHT PUT
    // (a path with its own rate limit and writer): only through the frame.
    let mut cfg = test_config(Mode::User, dirs[1].path(), &boot);
    cfg.gossip_duplicate_cache = Duration::from_secs(1);
    let b = node::start(cfg).await.unwrap();
    let x = user(dirs[2].path(), &boot).await;
    let id = ch(&b).create("quiet", false).await.unwrap();
    let topic = frame::topic(&id);
    // X is on the topic and connected to B, but has sent nothing valid.
    let _tap = ch(&x).tap(&topic).await;
    x.client.dial(first_addr(&b).await).await.unwrap();
    eventually(WAIT, "X on B's topic", || async {
        let peers = b.client.gossip_peers(topic.clone()).await.ok()?;
        peers.iter().any(|(p, _)| *p == x.peer_id).then_some(())
    })
    .await;
    let keys = keys_of(&x).await;
    let mut forged = frame::sign(&body(&x, id, "quiet", "text", "hi"), &keys);
    let at = common::sig_offset(&forged);
    forged[at] ^= 1;
    let before = rejected(&b, "channel_bad_signature").await;
    eventually(WAIT, "X to publish", || async {
        x.client.publish(topic.clone(), forged.clone()).await.ok()
    })
    .await;
    eventually(WAIT, "the bad signature to be counted", || async {
        (rejected(&b, "channel_bad_signature").await > before).then_some(())
    })
    .await;
    // Give a write that should not happen time to land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = b.messenger.as_ref().unwrap();
    let on_disk = m
        .store()
        .cached_document(&uuid(&x), ptpchat::unix_now())
        .unwrap();
    assert!(
        on_disk.is_none(),
        "X's document was written to B's directory"
    );
    assert!(m.known_document(&uuid(&x)).is_none());
    x.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await;
}
