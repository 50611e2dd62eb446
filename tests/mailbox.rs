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
use ptpchat::mailbox::{mailbox_id, mailboxes};
use ptpchat::messaging::Delivery;
use ptpchat::node::{self, RunningNode};
use ptpchat::verbs::{DepositResult, Request, Response};
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
    let sending = alice
        .messenger
        .as_ref()
        .unwrap()
        .send(bob_id, "see you".into(), vec![])
        .await
        .unwrap();
    let outcome = tokio::time::timeout(WAIT, sending.outcome).await.unwrap();
    assert_eq!(outcome.unwrap(), Delivery::Stored(2));
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
