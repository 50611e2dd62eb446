//! Channels between real in-process nodes on loopback: discovery, join, posts, members,
//! leave; private channels with invitations and key rotation; and every kind of bad frame
//! dropped, counted and scored down.

mod common;

use std::time::Duration;

use common::{eventually, first_addr, rejected, test_config};
use libp2p::Multiaddr;
use ptpchat::channels::Channels;
use ptpchat::config::Mode;
use ptpchat::net::dial::DialReason;
use ptpchat::node::{self, RunningNode};
use ptpchat::wire::frame::{self, ChannelBody};
use ptpchat::wire::verbs::{Request, Response};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

struct Net {
    _dirs: Vec<tempfile::TempDir>,
    relay: RunningNode,
    users: Vec<RunningNode>,
}

/// A relay and `n` user nodes bootstrapped to it. Users are public (DHT servers) so that
/// provider lookups can return their addresses on loopback, where nothing is NATed.
async fn network(n: usize) -> Net {
    let dirs: Vec<_> = (0..=n).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cfg = test_config(Mode::Relay, dirs[0].path(), &[]);
    cfg.gossip_duplicate_cache = Duration::from_secs(1);
    let relay = node::start(cfg).await.unwrap();
    let boot = vec![first_addr(&relay).await];
    let mut users = Vec::new();
    for d in &dirs[1..] {
        users.push(user(d.path(), &boot).await);
    }
    Net {
        _dirs: dirs,
        relay,
        users,
    }
}

async fn user(home: &std::path::Path, boot: &[Multiaddr]) -> RunningNode {
    common::channel_member(home, boot).await
}

impl Net {
    async fn stop(self) {
        for u in self.users {
            u.shutdown().await;
        }
        self.relay.shutdown().await;
    }
}

fn ch(n: &RunningNode) -> &Channels {
    n.channels.as_ref().unwrap()
}

fn uuid(n: &RunningNode) -> Uuid {
    n.id.as_ref().unwrap().uuid
}

/// A TEXT body from `from` in the public channel `channel` named `name`, stamped now.
fn text_body(from: &RunningNode, channel: Uuid, name: &str, text: &str) -> ChannelBody {
    ChannelBody {
        v: 1,
        msg_id: *Uuid::new_v4().as_bytes(),
        from: *uuid(from).as_bytes(),
        channel: *channel.as_bytes(),
        ts: ptpchat::unix_now_ms(),
        kind: "text".into(),
        name: name.into(),
        private: false,
        epoch: 0,
        text: text.into(),
    }
}

/// A node's current signing keys (to make frames in its name, or to forge them).
fn keys_of(n: &RunningNode) -> std::sync::Arc<ptpchat::identity::MessageKeys> {
    n.messenger.as_ref().unwrap().current_keys().unwrap()
}

/// Channel posts in a node's history: (channel id, from, text).
fn posts(n: &RunningNode) -> Vec<(Uuid, Uuid, String)> {
    common::history(n)
        .into_iter()
        .filter_map(|(_, e)| {
            let c = e.channel?;
            e.incoming
                .then(|| (Uuid::from_bytes(*c), Uuid::from_bytes(e.peer), e.text))
        })
        .collect()
}

/// `inviter` invites each of `members` into its private channel `name`; each accepts.
async fn invite_and_join(inviter: &RunningNode, name: &str, members: &[&RunningNode]) {
    for n in members {
        ch(inviter).invite(name, uuid(n)).await.unwrap();
        eventually(WAIT, "the invitation", || async {
            ch(n)
                .list(true)
                .iter()
                .any(|v| v.name == name && v.invited)
                .then_some(())
        })
        .await;
        ch(n).join(name).await.unwrap();
    }
}

/// Waits until `node` can post to `channel` (some member is connected and subscribed).
async fn send_when_meshed(node: &RunningNode, channel: &str, text: &str) -> Uuid {
    eventually(WAIT, "a member to be connected", || async {
        ch(node)
            .send(channel, text.to_string())
            .await
            .ok()
            .map(|(id, _)| id)
    })
    .await
}

async fn wait_post(node: &RunningNode, text: &str) {
    eventually(WAIT, &format!("the post {text:?}"), || async {
        posts(node).iter().any(|p| p.2 == text).then_some(())
    })
    .await
}

async fn wait_discovered(node: &RunningNode, name: &str) {
    eventually(WAIT, &format!("{name} to be discovered"), || async {
        ch(node)
            .list(true)
            .iter()
            .any(|c| c.name == name)
            .then_some(())
    })
    .await
}

async fn wait_members(node: &RunningNode, channel: &str, want: &[Uuid]) {
    let mut want = want.to_vec();
    want.sort();
    eventually(WAIT, "the member list", || async {
        (ch(node).members(channel).ok()? == want).then_some(())
    })
    .await
}

#[tokio::test]
async fn a_public_channel_is_discovered_joined_and_reaches_every_member() {
    let net = network(3).await;
    let [a, b, c] = &net.users[..] else { panic!() };
    let id = ch(a).create("rust-talk", false).await.unwrap();

    // B and C never heard of it: they discover it through the announce topic (via the
    // relay) and find A through the DHT's provider records.
    wait_discovered(b, "rust-talk").await;
    wait_discovered(c, "rust-talk").await;
    assert_eq!(ch(b).join("rust-talk").await.unwrap().0, id);
    assert_eq!(ch(c).join(&id.to_string()).await.unwrap().0, id);

    send_when_meshed(a, "rust-talk", "hi").await;
    wait_post(b, "hi").await;
    wait_post(c, "hi").await;
    assert_eq!(posts(b), vec![(id, uuid(a), "hi".to_string())]);
    wait_members(a, "rust-talk", &[uuid(a), uuid(b), uuid(c)]).await;
    assert_eq!(
        ch(b)
            .list(false)
            .iter()
            .map(|c| (c.name.as_str(), c.joined))
            .collect::<Vec<_>>(),
        vec![("rust-talk", true)]
    );

    // B leaves: everyone's member list drops B, and B gets nothing more.
    ch(b).leave("rust-talk").await.unwrap();
    wait_members(a, "rust-talk", &[uuid(a), uuid(c)]).await;
    wait_members(c, "rust-talk", &[uuid(a), uuid(c)]).await;
    send_when_meshed(c, "rust-talk", "after b left").await;
    wait_post(a, "after b left").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!posts(b).iter().any(|p| p.2 == "after b left"));
    assert_eq!(
        posts(a).len(),
        1,
        "A stores C's post once; its own post is not an incoming one"
    );
    net.stop().await;
}

/// Private members (the default) behind one relay: the joiner meets the channel's members
/// over circuits through its own relay, never by a direct dial to the addresses a provider
/// record names (DESIGN.md section 5), and hears their posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_members_meet_over_their_relay_and_never_connect_directly() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let relay = node::start(test_config(Mode::Relay, dirs[0].path(), &[]))
        .await
        .unwrap();
    let boot = vec![first_addr(&relay).await];
    let private = |home: &std::path::Path| {
        let mut cfg = test_config(Mode::User, home, &boot);
        cfg.channel_announce_every = Duration::from_secs(2);
        node::start(cfg)
    };
    let a = private(dirs[1].path()).await.unwrap();
    let b = private(dirs[2].path()).await.unwrap();
    for n in [&a, &b] {
        eventually(WAIT, "a relay reservation", || async {
            (n.client.status().await.ok()?.relays.len() == 1).then_some(())
        })
        .await;
    }
    ch(&a).create("porch", false).await.unwrap();
    wait_discovered(&b, "porch").await;
    ch(&b).join("porch").await.unwrap();
    send_when_meshed(&a, "porch", "over the relay").await;
    wait_post(&b, "over the relay").await;
    for (x, y) in [(&a, &b), (&b, &a)] {
        let peers = x.client.peers().await.unwrap();
        let to_y: Vec<_> = peers
            .iter()
            .filter(|p| p.peer_id == y.peer_id.to_string())
            .collect();
        assert!(!to_y.is_empty(), "connected, over the relay");
        assert!(
            to_y.iter().all(|p| p.relayed),
            "a direct connection: {to_y:?}"
        );
    }
    for n in [a, b, relay] {
        n.shutdown().await;
    }
}

/// A burst from one author is shown live (`recv --follow`) in the order it was written,
/// each post only once it is on disk: the member stores posts without waiting for each
/// commit, and a separate loop shows them as their commits land.
#[tokio::test]
async fn a_burst_of_posts_is_shown_live_in_order_and_only_once_durable() {
    const N: usize = 100;
    let net = network(2).await;
    let [a, b] = &net.users[..] else { panic!() };
    ch(a).create("burst", false).await.unwrap();
    wait_discovered(b, "burst").await;
    ch(b).join("burst").await.unwrap();
    // Subscribed before the warm-up, and past it once it is shown: a post can be in the
    // store a moment before the commit loop shows it.
    let mut live = b.messenger.as_ref().unwrap().subscribe();
    send_when_meshed(a, "burst", "warm-up").await;
    loop {
        let (_, e) = tokio::time::timeout(WAIT, live.recv())
            .await
            .unwrap()
            .unwrap();
        if e.text == "warm-up" {
            break;
        }
    }

    let sent: Vec<String> = (0..N).map(|i| format!("post {i}")).collect();
    for text in &sent {
        ch(a).send("burst", text.clone()).await.unwrap();
    }
    let store = b.messenger.as_ref().unwrap().store();
    let mut shown = Vec::new();
    let mut last_seq = 0;
    while shown.len() < N {
        let (seq, entry) = tokio::time::timeout(WAIT, live.recv())
            .await
            .expect("the burst to be shown")
            .expect("the live feed not to lag");
        assert!(
            seq > last_seq,
            "shown out of storage order: {seq} after {last_seq}"
        );
        last_seq = seq;
        // Already durable: the history read from the store has it.
        let on_disk = store.history_after(seq - 1, 1).unwrap();
        assert_eq!(
            on_disk.first().map(|(s, e)| (*s, &e.msg_id)),
            Some((seq, &entry.msg_id))
        );
        shown.push(entry.text);
    }
    assert_eq!(shown, sent, "one author's posts, in the order written");
    let stored: Vec<String> = posts(b).into_iter().map(|p| p.2).skip(1).collect();
    assert_eq!(stored, sent);
    net.stop().await;
}

/// Newcomers arriving together each learn the channels of the node they connect to within
/// seconds, not at its next periodic announcement (two minutes by default): the second
/// arrival's announcement, held back so a burst costs one, is still sent.
#[tokio::test]
async fn newcomers_arriving_together_all_discover_a_channel_at_once() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cfg = test_config(Mode::User, dirs[0].path(), &[]);
    cfg.public = true;
    assert!(cfg.channel_announce_every >= Duration::from_secs(120));
    let a = node::start(cfg).await.unwrap();
    ch(&a).create("lobby", false).await.unwrap();
    let boot = vec![first_addr(&a).await];
    let (b, c) = tokio::join!(user(dirs[1].path(), &boot), user(dirs[2].path(), &boot));
    wait_discovered(&b, "lobby").await;
    wait_discovered(&c, "lobby").await;
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_private_channel_is_read_by_invited_members_only_and_rotates_its_key_when_one_leaves() {
    let net = network(4).await;
    let [a, b, c, d] = &net.users[..] else {
        panic!()
    };
    let id = ch(a).create("ops", true).await.unwrap();
    let topic = frame::topic(&id);

    // Not announced, so B cannot find it, let alone join it by name.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!ch(b).list(true).iter().any(|c| c.name == "ops"));
    let e = ch(b).join("ops").await.unwrap_err();
    assert!(e.message.contains("no channel called ops"), "{}", e.message);

    // A invites C and D: the key goes to each in a sealed direct message.
    invite_and_join(a, "ops", &[c, d]).await;

    // B listens on the topic anyway: it gets ciphertext it cannot read.
    let mut b_tap = ch(b).tap(&topic).await;
    send_when_meshed(a, "ops", "deploy at noon").await;
    wait_post(c, "deploy at noon").await;
    wait_post(d, "deploy at noon").await;
    let seen_by_b = tokio::time::timeout(WAIT, b_tap.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(frame::sealed_header(&seen_by_b).is_ok());
    assert!(!String::from_utf8_lossy(&seen_by_b).contains("deploy"));
    assert!(posts(b).is_empty());

    // C leaves, keeping (as a malicious client would) the key it had.
    let (old_epoch, old_key) = ch(c).key_of(&id).unwrap();
    ch(c).leave("ops").await.unwrap();
    let rotated = |n: &RunningNode| ch(n).key_of(&id).filter(|(e, _)| *e > old_epoch);
    let (epoch, key) = eventually(WAIT, "A's key to rotate", || async { rotated(a) }).await;
    eventually(WAIT, "D to get the new key", || async {
        (rotated(d) == Some((epoch, key))).then_some(())
    })
    .await;
    assert_ne!(key, old_key);

    // What C picks up on the topic after the rotation does not open with its old key.
    let mut c_tap = ch(c).tap(&topic).await;
    send_when_meshed(a, "ops", "new plan").await;
    wait_post(d, "new plan").await;
    let after = loop {
        let f = tokio::time::timeout(WAIT, c_tap.recv())
            .await
            .unwrap()
            .unwrap();
        let h = frame::sealed_header(&f).unwrap();
        if h.epoch == epoch {
            break h;
        }
    };
    assert!(frame::open(&after, &old_key).is_err());
    assert!(!posts(c).iter().any(|p| p.2 == "new plan"));

    // And what C posts under the old epoch is dropped by those who stayed.
    let body = ChannelBody {
        private: true,
        epoch: old_epoch,
        ..text_body(c, id, "ops", "still here")
    };
    let sealed = frame::seal(
        &old_key,
        id.as_bytes(),
        old_epoch,
        [9; 12],
        &frame::sign(&body, &keys_of(c)),
    );
    let before = rejected(d, "channel_wrong_epoch").await;
    ch(c).publish_raw(&topic, sealed).await.unwrap();
    eventually(WAIT, "D to drop the old-epoch post", || async {
        (rejected(d, "channel_wrong_epoch").await > before).then_some(())
    })
    .await;
    assert!(!posts(d).iter().any(|p| p.2 == "still here"));
    assert!(!posts(a).iter().any(|p| p.2 == "still here"));
    net.stop().await;
}

#[tokio::test]
async fn forged_replayed_and_oversized_frames_are_dropped_counted_and_scored_down() {
    let net = network(3).await;
    let [a, b, m] = &net.users[..] else { panic!() };
    let id = ch(a).create("lobby", false).await.unwrap();
    let topic = frame::topic(&id);
    for n in [b, m] {
        wait_discovered(n, "lobby").await;
        ch(n).join("lobby").await.unwrap();
    }
    send_when_meshed(m, "lobby", "hello from m").await;
    wait_post(a, "hello from m").await;

    let body = |from: &RunningNode, text: &str| text_body(from, id, "lobby", text);
    async fn dropped(n: &RunningNode, what: &str, before: u64) {
        eventually(WAIT, what, || async {
            (rejected(n, what).await > before).then_some(())
        })
        .await;
    }

    // 1. M claims to be B: B's document with M's signature over the same body.
    let forged = body(b, "i am b");
    let forged_bytes = splice_signature(
        &frame::sign(&forged, &keys_of(b)),
        &frame::sign(&forged, &keys_of(m)),
    );
    let n = rejected(a, "channel_bad_signature").await;
    m_publish(m, &topic, forged_bytes).await;
    dropped(a, "channel_bad_signature", n).await;

    // 2. M re-publishes a frame B really signed: the gossip author is not B.
    let n = rejected(a, "channel_peer_mismatch").await;
    m_publish(m, &topic, frame::sign(&body(b, "b said this"), &keys_of(b))).await;
    dropped(a, "channel_peer_mismatch", n).await;

    // 3. M replays its own frame after gossip's duplicate cache (its shortest here) forgot it.
    let own = frame::sign(&body(m, "only once"), &keys_of(m));
    m_publish(m, &topic, own.clone()).await;
    wait_post(a, "only once").await;
    tokio::time::sleep(ptpchat::net::MIN_DUPLICATE_CACHE + Duration::from_secs(2)).await;
    let n = rejected(a, "channel_duplicate").await;
    m_publish(m, &topic, own).await;
    dropped(a, "channel_duplicate", n).await;
    assert_eq!(posts(a).iter().filter(|p| p.2 == "only once").count(), 1);

    // 4. A post over the 16 KiB limit (still under gossip's transmit cap).
    let n = rejected(a, "channel_too_large").await;
    let big = "x".repeat(frame::MAX_CHANNEL_TEXT + 1);
    m_publish(m, &topic, frame::sign(&body(m, &big), &keys_of(m))).await;
    dropped(a, "channel_too_large", n).await;

    // None of it was stored, and M's gossip score at A went negative.
    let texts: Vec<String> = posts(a).into_iter().map(|p| p.2).collect();
    assert_eq!(texts, vec!["hello from m", "only once"]);
    let score = eventually(WAIT, "M's score to drop", || async {
        let peers = a.client.gossip_peers(topic.clone()).await.ok()?;
        peers
            .into_iter()
            .find(|(p, _)| *p == m.peer_id)
            .map(|(_, s)| s)
            .filter(|s| *s < 0.0)
    })
    .await;
    assert!(score < 0.0);
    // 5. The forgery of step 1 as an announcement (last: by now A ignores M): the relay, which forwards announcements, checks
    // them too.
    let mut announce = body(b, "");
    announce.kind = "channel".into();
    let forged_announce = splice_signature(
        &frame::sign(&announce, &keys_of(b)),
        &frame::sign(&announce, &keys_of(m)),
    );
    let n = rejected(&net.relay, "channel_bad_signature").await;
    m_publish(m, frame::ANNOUNCE_TOPIC, forged_announce).await;
    dropped(&net.relay, "channel_bad_signature", n).await;

    // The channel still works for everyone else.
    send_when_meshed(a, "lobby", "still fine").await;
    wait_post(b, "still fine").await;
    net.stop().await;
}

/// Asks `peer` from `from` for the whole history of `channel` it holds (one page).
async fn ask_history(
    from: &RunningNode,
    peer: libp2p::PeerId,
    channel: Uuid,
) -> Result<Response, ptpchat::net::NetError> {
    let request = Request::ChannelHistory {
        channel: *channel.as_bytes(),
        since: 0,
        after: Vec::new(),
    };
    from.client
        .request(peer, Vec::new(), DialReason::Chosen, request)
        .await
}

/// Publishes from M, retrying while no peer is connected.
async fn m_publish(m: &RunningNode, topic: &str, data: Vec<u8>) {
    eventually(WAIT, "M to publish", || async {
        ch(m).publish_raw(topic, data.clone()).await.ok()
    })
    .await;
}

/// Puts the signature of `donor` into `form` (both signed forms, as CBOR maps).
fn splice_signature(form: &[u8], donor: &[u8]) -> Vec<u8> {
    let mut out = form.to_vec();
    let (fs, ds) = (common::sig_offset(form), common::sig_offset(donor));
    out[fs..fs + 64].copy_from_slice(&donor[ds..ds + 64]);
    out
}

#[tokio::test]
async fn a_restarted_member_rejoins_its_channels_by_itself() {
    let mut net = network(2).await;
    let id = ch(&net.users[0])
        .create("night-shift", false)
        .await
        .unwrap();
    wait_discovered(&net.users[1], "night-shift").await;
    ch(&net.users[1]).join("night-shift").await.unwrap();
    send_when_meshed(&net.users[0], "night-shift", "before").await;
    wait_post(&net.users[1], "before").await;

    let b = net.users.pop().unwrap();
    b.shutdown().await;
    let boot = vec![first_addr(&net.relay).await];
    let b = user(net._dirs[2].path(), &boot).await;
    assert_eq!(ch(&b).joined_names(), vec!["night-shift".to_string()]);
    // Gossip is not a mailbox: wait until the restarted B found A again (through the
    // provider records) before A posts.
    let a_peer = net.users[0].peer_id;
    eventually(WAIT, "B to find A again", || async {
        let peers = b.client.gossip_peers(frame::topic(&id)).await.ok()?;
        peers.iter().any(|(p, _)| *p == a_peer).then_some(())
    })
    .await;
    send_when_meshed(&net.users[0], "night-shift", "after").await;
    wait_post(&b, "after").await;
    assert_eq!(
        posts(&b)
            .iter()
            .map(|p| (p.0, p.2.as_str()))
            .collect::<Vec<_>>(),
        vec![(id, "before"), (id, "after")]
    );
    net.users.push(b);
    net.stop().await;
}

/// Gossip keeps nothing for a member who is away. Back, it asks a member for what it
/// missed (CHANNEL-HISTORY), in a public and a private channel alike, and stores each post
/// once. Only members get a channel's history: a peer that is not in it is refused.
#[tokio::test]
async fn a_member_back_from_away_catches_up_on_what_it_missed() {
    let mut net = network(3).await;
    let news = ch(&net.users[0]).create("news", false).await.unwrap();
    let ops = ch(&net.users[0]).create("ops", true).await.unwrap();
    for n in &net.users[1..] {
        wait_discovered(n, "news").await;
        ch(n).join("news").await.unwrap();
    }
    invite_and_join(&net.users[0], "ops", &[&net.users[1], &net.users[2]]).await;
    send_when_meshed(&net.users[0], "news", "before").await;
    send_when_meshed(&net.users[0], "ops", "ops before").await;
    wait_post(&net.users[1], "before").await;
    wait_post(&net.users[1], "ops before").await;

    let b = net.users.remove(1);
    b.shutdown().await;
    let missed = [
        ("news", "missed 1"),
        ("ops", "ops missed"),
        ("news", "missed 2"),
    ];
    for (channel, text) in missed {
        send_when_meshed(&net.users[0], channel, text).await;
        wait_post(&net.users[1], text).await;
    }

    let boot = vec![first_addr(&net.relay).await];
    let b = user(net._dirs[2].path(), &boot).await;
    for (_, text) in missed {
        wait_post(&b, text).await;
    }
    let mut got: Vec<(Uuid, String)> = posts(&b).into_iter().map(|p| (p.0, p.2)).collect();
    got.sort();
    let mut want = vec![
        (news, "before".to_string()),
        (news, "missed 1".into()),
        (news, "missed 2".into()),
        (ops, "ops before".into()),
        (ops, "ops missed".into()),
    ];
    want.sort();
    assert_eq!(got, want, "each missed post once, in its channel");

    // History goes to members only: C (in both channels) gets A's pages, the relay (in
    // neither, not even on the public topic) is refused both, and counted.
    let (a, c) = (&net.users[0], &net.users[1]);
    for (channel, count) in [(news, 3), (ops, 2)] {
        match ask_history(c, a.peer_id, channel).await.unwrap() {
            Response::ChannelHistory { frames, more, .. } => {
                assert_eq!(frames.len(), count, "A's posts in {channel}");
                assert!(!more);
            }
            other => panic!("expected a page of history, got {other:?}"),
        }
    }
    let before = rejected(a, "history_not_member").await;
    for channel in [news, ops] {
        assert_eq!(
            ask_history(&net.relay, a.peer_id, channel).await.unwrap(),
            Response::Nack {
                reason: "unknown_channel".into()
            }
        );
    }
    assert_eq!(rejected(a, "history_not_member").await, before + 2);
    // A cursor that is not one is refused, and counted.
    let before = rejected(a, "request_malformed").await;
    let bad_cursor = Request::ChannelHistory {
        channel: *news.as_bytes(),
        since: 0,
        after: vec![1, 2, 3],
    };
    assert_eq!(
        c.client
            .request(a.peer_id, Vec::new(), DialReason::Chosen, bad_cursor)
            .await
            .unwrap(),
        Response::Nack {
            reason: "malformed".into()
        }
    );
    assert_eq!(rejected(a, "request_malformed").await, before + 1);
    net.users.insert(1, b);
    net.stop().await;
}

/// A member hands history on but cannot forge it: a post in its page that claims a sender
/// who did not sign it is dropped and counted; the real post beside it is stored.
#[tokio::test]
async fn a_forged_post_in_a_history_page_is_dropped_and_counted() {
    let mut net = network(3).await;
    let id = ch(&net.users[0]).create("lobby", false).await.unwrap();
    for n in &net.users[1..] {
        wait_discovered(n, "lobby").await;
        ch(n).join("lobby").await.unwrap();
    }
    send_when_meshed(&net.users[0], "lobby", "warm-up").await;
    for n in &net.users[1..] {
        wait_post(n, "warm-up").await;
    }
    let b = net.users.remove(2);
    b.shutdown().await;
    let (a, m) = (&net.users[0], &net.users[1]);
    send_when_meshed(a, "lobby", "real").await;
    wait_post(m, "real").await;

    // M keeps a post that names A as its sender but carries M's signature.
    let body = text_body(a, id, "lobby", "forged");
    let forged = splice_signature(
        &frame::sign(&body, &keys_of(a)),
        &frame::sign(&body, &keys_of(m)),
    );
    let (writer, thread) = m.messenger.as_ref().unwrap().store().writer();
    writer
        .write(move |txn| {
            ptpchat::store::channels::keep_channel_frame(
                txn,
                &body.channel,
                body.ts,
                &body.msg_id,
                &forged,
            )
        })
        .await
        .unwrap();
    drop(writer);
    if let Some(t) = thread {
        t.join().unwrap();
    }

    // A leaves: only M can tell B what it missed.
    let a = net.users.remove(0);
    a.shutdown().await;
    let boot = vec![first_addr(&net.relay).await];
    let b = user(net._dirs[3].path(), &boot).await;
    wait_post(&b, "real").await;
    eventually(WAIT, "the forged post counted", || async {
        (rejected(&b, "channel_bad_signature").await == 1).then_some(())
    })
    .await;
    let texts: Vec<String> = posts(&b).into_iter().map(|p| p.2).collect();
    assert_eq!(texts, ["warm-up", "real"]);
    net.users.push(b);
    net.stop().await;
}

#[tokio::test]
async fn a_removed_member_gets_no_new_key_and_cannot_read_what_follows() {
    let net = network(3).await;
    let [a, c, d] = &net.users[..] else { panic!() };
    let id = ch(a).create("staff", true).await.unwrap();
    invite_and_join(a, "staff", &[c, d]).await;
    send_when_meshed(a, "staff", "all three").await;
    wait_post(d, "all three").await;

    let (_, old) = ch(d).key_of(&id).unwrap();
    let (_, epoch) = ch(a).remove("staff", uuid(d)).await.unwrap();
    eventually(WAIT, "C to get the new key", || async {
        (ch(c).key_of(&id).map(|k| k.0) == Some(epoch)).then_some(())
    })
    .await;
    send_when_meshed(a, "staff", "without d").await;
    wait_post(c, "without d").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!posts(d).iter().any(|p| p.2 == "without d"));
    assert_eq!(
        ch(d).key_of(&id).map(|k| k.1),
        Some(old),
        "D never got the new key"
    );
    assert!(
        rejected(d, "channel_unknown_epoch").await > 0,
        "D saw a frame it cannot open"
    );
    net.stop().await;
}

/// A hostile member tries to make itself unremovable by granting the last epoch there is:
/// the others ignore a key that far ahead, and removing it still cuts it off (before the
/// fix the grant was taken and the removal overflowed the epoch).
#[tokio::test]
async fn a_member_granting_a_far_epoch_is_ignored_and_can_still_be_removed() {
    let net = network(3).await;
    let [a, c, d] = &net.users[..] else { panic!() };
    let id = ch(a).create("staff", true).await.unwrap();
    invite_and_join(a, "staff", &[c, d]).await;
    send_when_meshed(a, "staff", "all three").await;
    wait_post(d, "all three").await;
    let (epoch, key) = ch(a).key_of(&id).unwrap();

    let hostile = frame::KeyGrant {
        v: frame::FRAME_VERSION,
        channel: *id.as_bytes(),
        name: "staff".into(),
        epoch: u32::MAX,
        key: [0x66; 32],
        members: [a, c, d]
            .iter()
            .map(|n| serde_bytes::ByteArray::new(*uuid(n).as_bytes()))
            .collect(),
    };
    let before =
        rejected(a, "channel_grant_ignored").await + rejected(c, "channel_grant_ignored").await;
    for n in [a, c] {
        d.messenger
            .as_ref()
            .unwrap()
            .send_grant(uuid(n), &hostile)
            .await
            .unwrap();
    }
    eventually(WAIT, "both grants to be ignored", || async {
        let now =
            rejected(a, "channel_grant_ignored").await + rejected(c, "channel_grant_ignored").await;
        (now >= before + 2).then_some(())
    })
    .await;
    for n in [a, c] {
        assert_eq!(
            ch(n).key_of(&id),
            Some((epoch, key)),
            "the far key was not taken"
        );
    }

    let (_, next) = ch(a).remove("staff", uuid(d)).await.unwrap();
    assert_eq!(next, epoch + 1);
    eventually(WAIT, "C to get the new key", || async {
        (ch(c).key_of(&id) == ch(a).key_of(&id)).then_some(())
    })
    .await;
    send_when_meshed(a, "staff", "without d").await;
    wait_post(c, "without d").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!posts(d).iter().any(|p| p.2 == "without d"));
    assert_ne!(
        ch(d).key_of(&id).map(|k| k.1),
        ch(a).key_of(&id).map(|k| k.1)
    );
    net.stop().await;
}
