//! Offline delivery through relay mailboxes, with in-process nodes on loopback: a message
//! to a recipient who is away is stored (signed receipts) at each relay its document
//! names, drained once it is back (deduplicated across mailboxes), deleted from the relays
//! only after that, and the sender learns it was delivered from the recipient's signed
//! delivery receipt, itself left at the sender's mailbox while the sender was away. The
//! relay refuses strangers' logins and over-quota deposits, and counts them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{eventually, history, rejected, test_config};
use libp2p::Multiaddr;
use ptpchat::config::Mode;
use ptpchat::mailbox::service::MailboxConfig;
use ptpchat::messaging::Delivery;
use ptpchat::net::dial::DialReason;
use ptpchat::node::{self, RunningNode};
use ptpchat::wire::mailbox::{mailbox_id, mailboxes};
use ptpchat::wire::verbs::{DepositResult, Request, Response};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

async fn relay(home: &Path, mailbox: MailboxConfig) -> RunningNode {
    let mut cfg = test_config(Mode::Relay, home, &[]);
    cfg.mailbox = Some(mailbox);
    node::start(cfg).await.expect("relay starts")
}

async fn user(home: &Path, relays: &[Multiaddr]) -> RunningNode {
    node::start(test_config(Mode::User, home, relays))
        .await
        .expect("user starts")
}

fn uuid_of(n: &RunningNode) -> Uuid {
    n.id.as_ref().unwrap().uuid
}

/// Waits until `by` finds `of`'s document naming `count` mailbox relays.
async fn mailboxes_seen(by: &RunningNode, of: Uuid, count: usize) {
    eventually(WAIT, "a document naming the mailboxes", || async {
        let doc = by.client.whois(of).await.ok()?;
        (mailboxes(doc.doc()).len() == count).then_some(())
    })
    .await;
}

async fn mail_items(relay: &RunningNode) -> u64 {
    relay.client.status().await.unwrap().mail.unwrap().items
}

/// Sends `text` from `from` to `to` and waits for how it went (delivered, stored, ...).
async fn send_to(from: &RunningNode, to: Uuid, text: &str) -> Delivery {
    let sending = from
        .messenger
        .as_ref()
        .unwrap()
        .send(to, text.into(), vec![])
        .await
        .unwrap();
    tokio::time::timeout(WAIT, sending.outcome)
        .await
        .unwrap()
        .unwrap()
}

fn texts(node: &RunningNode) -> Vec<(String, String)> {
    history(node)
        .into_iter()
        .map(|(_, e)| (e.text, e.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_for_an_offline_user_is_stored_twice_drained_once_and_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let r1 = relay(&dir.path().join("r1"), MailboxConfig::default()).await;
    let r2 = relay(&dir.path().join("r2"), MailboxConfig::default()).await;
    let relays: Vec<Multiaddr> = [r1.listen_addrs().await, r2.listen_addrs().await].concat();
    let bob_home = dir.path().join("bob");
    let alice_home = dir.path().join("alice");
    let bob = user(&bob_home, &relays).await;
    let alice = user(&alice_home, &relays[..1]).await;
    let bob_id = uuid_of(&bob);
    let alice_id = uuid_of(&alice);
    mailboxes_seen(&alice, bob_id, 2).await;
    mailboxes_seen(&bob, alice_id, 1).await;
    bob.shutdown().await;

    // Bob is away: the message is stored at both of his mailboxes.
    assert_eq!(
        send_to(&alice, bob_id, "see you").await,
        Delivery::Stored(2)
    );
    assert_eq!(texts(&alice), [("see you".into(), "stored".into())]);
    assert_eq!((mail_items(&r1).await, mail_items(&r2).await), (1, 1));
    alice.shutdown().await;

    // Bob is back: he drains both mailboxes, keeps one copy, and the relays delete theirs.
    let bob = user(&bob_home, &relays).await;
    eventually(WAIT, "the message drained", || async {
        (texts(&bob) == [("see you".to_string(), "received".to_string())]).then_some(())
    })
    .await;
    eventually(WAIT, "the second copy drained", || async {
        (rejected(&bob, "message_duplicate").await == 1).then_some(())
    })
    .await;

    // Bob's receipt waits at Alice's mailbox; when she is back her history says delivered.
    let alice = user(&alice_home, &relays[..1]).await;
    eventually(WAIT, "the delivery receipt", || async {
        (texts(&alice) == [("see you".to_string(), "delivered".to_string())]).then_some(())
    })
    .await;
    assert_eq!(texts(&bob).len(), 1, "a receipt is not a message");
    // Every item was deleted once its owner had it: Bob's two copies, Alice's receipt.
    eventually(WAIT, "both relays emptied", || async {
        (mail_items(&r1).await == 0 && mail_items(&r2).await == 0).then_some(())
    })
    .await;
    for n in [alice, bob, r1, r2] {
        n.shutdown().await;
    }
}

fn nack(r: Result<Response, ptpchat::net::NetError>) -> String {
    match r {
        Ok(Response::Nack { reason }) => reason,
        other => panic!("expected a NACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_open_a_mailbox_and_quotas_refuse_without_evicting() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = MailboxConfig::default();
    config.limits.per_mailbox_items = 2;
    config.sender_items_per_day = 5;
    let r = relay(&dir.path().join("r"), config).await;
    let r_addrs = r.listen_addrs().await;
    let bob_home = dir.path().join("bob");
    let bob = user(&bob_home, &r_addrs).await;
    let alice = user(&dir.path().join("alice"), &r_addrs).await;
    let eve = user(&dir.path().join("eve"), &r_addrs).await;
    let bob_id = uuid_of(&bob);
    mailboxes_seen(&alice, bob_id, 1).await;
    let bob_doc = eve.client.whois(bob_id).await.unwrap();
    bob.shutdown().await;

    // Three messages for Bob: his mailbox holds two; the third stays in Alice's outbox.
    let m = alice.messenger.as_ref().unwrap();
    let mut outcomes = Vec::new();
    for text in ["one", "two", "three"] {
        let sending = m.send(bob_id, text.into(), vec![]).await.unwrap();
        outcomes.push(tokio::time::timeout(Duration::from_secs(5), sending.outcome).await);
    }
    assert_eq!(
        outcomes[0].as_ref().unwrap().as_ref().unwrap(),
        &Delivery::Stored(1)
    );
    assert_eq!(
        outcomes[1].as_ref().unwrap().as_ref().unwrap(),
        &Delivery::Stored(1)
    );
    assert!(
        outcomes[2].is_err(),
        "the third is not stored: {:?}",
        outcomes[2]
    );
    let statuses: Vec<String> = history(&alice).into_iter().map(|(_, e)| e.status).collect();
    assert_eq!(statuses, ["stored", "stored", "queued"]);
    assert!(rejected(&r, "mail_mailbox_full").await >= 1);

    // Eve can deposit (anyone may), but a full mailbox evicts nothing for her…
    let mailbox = mailbox_id(&r.peer_id, &bob_id);
    let deposit = |n: usize| Request::Deposit {
        mailbox,
        sealed: vec![serde_bytes::ByteBuf::from(vec![0xa5; 100]); n],
    };
    match eve
        .client
        .request(r.peer_id, r_addrs.clone(), DialReason::Own, deposit(1))
        .await
    {
        Ok(Response::Deposited { results }) => assert_eq!(
            results,
            [DepositResult::Nack {
                reason: "mailbox_full".into()
            }]
        ),
        other => panic!("{other:?}"),
    }
    // …and her own quota (5 a day here) runs out, whatever the mailbox; what a mailbox
    // refused costs her nothing of it.
    let reasons = |r: Result<Response, ptpchat::net::NetError>| -> Vec<String> {
        match r {
            Ok(Response::Deposited { results }) => results
                .into_iter()
                .map(|d| match d {
                    DepositResult::Stored { .. } => "stored".to_string(),
                    DepositResult::Nack { reason } => reason,
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    };
    let to = |mailbox: [u8; 32], n: usize| Request::Deposit {
        mailbox,
        sealed: vec![serde_bytes::ByteBuf::from(vec![0xa5; 100]); n],
    };
    let first = eve
        .client
        .request(r.peer_id, r_addrs.clone(), DialReason::Own, to([9; 32], 6))
        .await;
    assert_eq!(
        reasons(first),
        [
            "stored",
            "stored",
            "mailbox_full",
            "mailbox_full",
            "mailbox_full",
            "sender_quota"
        ]
    );
    for (i, expect) in ["stored", "stored", "stored", "sender_quota"]
        .iter()
        .enumerate()
    {
        let one = eve
            .client
            .request(
                r.peer_id,
                r_addrs.clone(),
                DialReason::Own,
                to([10 + i as u8; 32], 1),
            )
            .await;
        assert_eq!(reasons(one), [*expect]);
    }
    assert!(rejected(&r, "mail_sender_quota").await >= 2);

    // Bad input gets a clear NACK and is counted: an empty DEPOSIT, an oversized message,
    // and any mailbox verb sent to a node that keeps no mail.
    let empty = Request::Deposit {
        mailbox: [1; 32],
        sealed: Vec::new(),
    };
    let empty = eve
        .client
        .request(r.peer_id, r_addrs.clone(), DialReason::Own, empty)
        .await;
    assert_eq!(nack(empty), "malformed");
    let huge = Request::Deposit {
        mailbox: [1; 32],
        sealed: vec![serde_bytes::ByteBuf::from(vec![0; 200 * 1024])],
    };
    let huge = eve
        .client
        .request(r.peer_id, r_addrs.clone(), DialReason::Own, huge)
        .await;
    assert_eq!(reasons(huge), ["too_large"]);
    assert!(rejected(&r, "mail_malformed").await >= 1);
    assert!(rejected(&r, "mail_too_large").await >= 1);
    let alice_addrs = alice.listen_addrs().await;
    let to_user = eve
        .client
        .request(
            alice.peer_id,
            alice_addrs,
            DialReason::Chosen,
            to([1; 32], 1),
        )
        .await;
    assert_eq!(nack(to_user), "no_mailbox");

    // Eve cannot read Bob's mail: no login without a nonce, not with Bob's document (her
    // connection is not Bob's), not with a signature that is not the owner's, and a nonce
    // works once only.
    let ask = |req: Request| {
        eve.client
            .request(r.peer_id, r_addrs.clone(), DialReason::Own, req)
    };
    let stranger = relay(&dir.path().join("stranger"), MailboxConfig::default()).await;
    let stranger_ack = stranger
        .client
        .request(
            r.peer_id,
            r_addrs.clone(),
            DialReason::Own,
            Request::MailAck { ack: vec![1, 2] },
        )
        .await;
    assert_eq!(nack(stranger_ack), "not_logged_in");
    // Eve's node is logged in to her own mailbox (it drains it): acknowledging Bob's item
    // numbers there deletes nothing of his.
    match ask(Request::MailAck { ack: vec![1, 2] }).await {
        Ok(Response::Mail { items, .. }) => assert!(items.is_empty()),
        other => panic!("{other:?}"),
    }
    let login = |doc: Vec<u8>| Request::MailLogin { doc, sig: [0; 64] };
    assert_eq!(
        nack(ask(login(bob_doc.bytes().to_vec())).await),
        "no_challenge"
    );
    assert!(matches!(
        ask(Request::MailChallenge).await,
        Ok(Response::Challenge { .. })
    ));
    assert_eq!(
        nack(ask(login(bob_doc.bytes().to_vec())).await),
        "peer_mismatch"
    );
    assert_eq!(
        nack(ask(login(bob_doc.bytes().to_vec())).await),
        "no_challenge",
        "used up"
    );
    let eve_doc = alice.client.whois(uuid_of(&eve)).await.unwrap();
    assert!(matches!(
        ask(Request::MailChallenge).await,
        Ok(Response::Challenge { .. })
    ));
    assert_eq!(
        nack(ask(login(eve_doc.bytes().to_vec())).await),
        "bad_signature"
    );
    assert!(rejected(&r, "mail_login_refused").await >= 4);

    // Bob's two messages are still there for him, and the third comes from Alice's outbox.
    let bob = user(&bob_home, &r_addrs).await;
    eventually(WAIT, "Bob's mail drained", || async {
        let mut t: Vec<String> = history(&bob).into_iter().map(|(_, e)| e.text).collect();
        t.sort();
        (t == ["one", "three", "two"]).then_some(())
    })
    .await;
    for n in [alice, bob, eve, stranger, r] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_user_keeps_a_mailbox_at_the_relay_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir.path().join("r"), MailboxConfig::default()).await;
    let r_addrs = r.listen_addrs().await;
    let mut cfg = test_config(Mode::User, &dir.path().join("bob"), &r_addrs);
    cfg.public = true;
    cfg.relays = r_addrs.clone();
    let bob = node::start(cfg).await.unwrap();
    let alice = user(&dir.path().join("alice"), &r_addrs).await;
    let bob_id = uuid_of(&bob);
    mailboxes_seen(&alice, bob_id, 1).await;
    let doc = alice.client.whois(bob_id).await.unwrap();
    let reach = doc.doc().reach_addrs();
    assert!(
        reach.iter().any(|a| !a.to_string().contains("p2p-circuit")),
        "its direct address is published too: {reach:?}"
    );
    bob.shutdown().await;
    assert_eq!(
        send_to(&alice, bob_id, "while you were out").await,
        Delivery::Stored(1)
    );
    for n in [alice, r] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_away_key_no_longer_opens_the_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir.path().join("r"), MailboxConfig::default()).await;
    let r_addrs = r.listen_addrs().await;
    let home = dir.path().join("bob");
    let bob = user(&home, &r_addrs).await;
    let bob_id = uuid_of(&bob);
    bob.shutdown().await;
    // A copy of Bob's home keeps the old key; Bob rotates his.
    let old_home = dir.path().join("bob-old");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&home)
        .arg(&old_home)
        .status()
        .unwrap();
    assert!(copied.success());
    let rotated = common::cli(&home, &["id", "--rotate"]);
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let bob = user(&home, &r_addrs).await;
    eventually(WAIT, "the relay to hold Bob's rotated document", || async {
        let doc = r.client.whois(bob_id).await.ok()?;
        (!doc.doc().key_chain.is_empty()).then_some(())
    })
    .await;
    bob.shutdown().await;
    // The old key's node logs in (its drainer does) and is refused, and counted.
    let before = rejected(&r, "mail_login_refused").await;
    let old = user(&old_home, &r_addrs).await;
    eventually(WAIT, "the old key's login refused", || async {
        (rejected(&r, "mail_login_refused").await > before).then_some(())
    })
    .await;
    for n in [old, r] {
        n.shutdown().await;
    }
}
